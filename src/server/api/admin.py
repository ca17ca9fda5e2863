"""AdminService: directory CRUD with update masks, and access tokens."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf import field_mask_pb2

from assigncore import validation as v
from assigncore.errors import InvalidArgument, NotFound, shown
from assigncore.model import HelpLink, SupportButton
from assigncore.v1 import admin_service_pb2 as apb
from assigncore.v1 import admin_service_pb2_grpc as agrpc

from ..desk.tokens import Principal, PrincipalKind
from ..ops import audit
from . import convert
from .calls import OnDesk
from .errors import rpc

TEAM_FIELDS = {
    "team_id": "team.id",
    "name": "team.display_name",
    "kind": "team.kind",
    "settings": "team.queue_settings",
    "settings.waiting_rule.overflow": "team.queue_settings.waiting_rule.overflow_queue",
}
REP_FIELDS = {
    # (a capacity profile's parts are named as the API has them; before "permissions")
    "permissions.capacity.total": "rep.permissions.capacity.total_units",
    "permissions.capacity.cost": "rep.permissions.capacity.channels",
    "permissions.capacity.limit": "rep.permissions.capacity.channels",
    "rep_id": "rep.id",
    "name": "rep.display_name",
    "skills": "rep.skills",
    "permissions": "rep.permissions",
    "teams": "rep.team_ids",
}
ISSUE_TYPE_FIELDS = {
    "issue_type.name": "issue_type.display_name",
    "issue_type.channel": "issue_type.service_channel",
}
BUTTON_FIELDS = {"support_button.name": "support_button.display_name"}
LINK_FIELDS = {"help_link.name": "help_link.display_name"}


def masked(
    request: Any, resource: str, current: Callable[[], Any], allowed: set[str]
) -> tuple[Any, set[str]]:
    """An update's resource as it will be, and the top-level fields it touches.

    Without an update_mask every updatable field is replaced by the request's. With one,
    each path names an updatable field or a field inside it (`queue_settings.
    offer_timeout`, `permissions.may_transfer`); protobuf's FieldMask merges just those
    from the request into the current resource, so the rest stays as it is."""
    msg = getattr(request, resource)
    paths = list(request.update_mask.paths) if request.HasField("update_mask") else []
    if not paths:
        return msg, set(allowed)
    bad = [
        p
        for p in paths
        if p.split(".", 1)[0] not in allowed
        or not field_mask_pb2.FieldMask(paths=[p]).IsValidForDescriptor(msg.DESCRIPTOR)
    ]
    if bad:
        raise InvalidArgument(
            "update_mask",
            f"cannot update {', '.join(shown(p) for p in bad[:5])}; updatable: "
            f"{sorted(allowed)} and the fields inside them",
        )
    out = current()
    field_mask_pb2.FieldMask(paths=paths).MergeMessage(
        msg, out, replace_message_field=True, replace_repeated_field=True
    )
    return out, {p.split(".", 1)[0] for p in paths}


def required(field: str, present: bool) -> None:
    if not present:
        raise InvalidArgument(field, "required")


MAX_TOKEN_TTL = 10 * 366 * 86400  # seconds: ten years


class AdminServicer(OnDesk, agrpc.AdminServiceServicer):
    SERVICE = "assigncore.v1.AdminService"

    # ------------------------------------------------------------- reps

    @rpc(audited=True, fields=REP_FIELDS)
    async def CreateRep(self, request: apb.CreateRepRequest, context: Any) -> Any:
        required("rep", request.HasField("rep"))
        r = request.rep
        rep = self.rt.command(
            self.engine.create_rep,
            r.id,
            r.display_name,
            dict(r.skills),
            convert.permissions_in(r.permissions),
            list(r.team_ids),
        ).value
        return apb.CreateRepResponse(rep=convert.rep_out(rep))

    @rpc
    async def GetRep(self, request: apb.GetRepRequest, context: Any) -> Any:
        return apb.GetRepResponse(rep=convert.rep_out(self.engine.rep(request.rep_id)))

    @rpc
    async def ListReps(self, request: apb.ListRepsRequest, context: Any) -> Any:
        chunk, token = convert.page("", self.engine.reps(), request.page_size, request.page_token)
        return apb.ListRepsResponse(reps=[convert.rep_out(r) for r in chunk], next_page_token=token)

    @rpc(audited=True, fields=REP_FIELDS)
    async def UpdateRep(self, request: apb.UpdateRepRequest, context: Any) -> Any:
        required("rep", request.HasField("rep"))
        r, paths = masked(
            request,
            "rep",
            lambda: convert.rep_out(self.engine.rep(request.rep.id)),
            {"display_name", "skills", "permissions", "team_ids"},
        )
        rep = self.rt.command(
            self.engine.update_rep,
            request.rep.id,
            name=r.display_name if "display_name" in paths else None,
            skills=dict(r.skills) if "skills" in paths else None,
            permissions=convert.permissions_in(r.permissions) if "permissions" in paths else None,
            teams=list(r.team_ids) if "team_ids" in paths else None,
        ).value
        return apb.UpdateRepResponse(rep=convert.rep_out(rep))

    @rpc(audited=True)
    async def DeleteRep(self, request: apb.DeleteRepRequest, context: Any) -> Any:
        self.rt.command(self.engine.delete_rep, request.rep_id)
        self.rt.tokens.revoke_rep(request.rep_id)
        return apb.DeleteRepResponse()

    # ------------------------------------------------------------- teams

    @rpc(audited=True, fields=TEAM_FIELDS)
    async def CreateTeam(self, request: apb.CreateTeamRequest, context: Any) -> Any:
        required("team", request.HasField("team"))
        t = request.team
        team = self.rt.command(
            self.engine.create_team,
            t.id,
            t.display_name,
            convert.team_kind_in(t.kind),
            convert.settings_in(t.queue_settings),
        ).value
        return apb.CreateTeamResponse(team=convert.team_out(team))

    @rpc
    async def GetTeam(self, request: apb.GetTeamRequest, context: Any) -> Any:
        return apb.GetTeamResponse(team=convert.team_out(self.engine.team(request.team_id)))

    @rpc
    async def ListTeams(self, request: apb.ListTeamsRequest, context: Any) -> Any:
        chunk, token = convert.page("", self.engine.teams(), request.page_size, request.page_token)
        return apb.ListTeamsResponse(
            teams=[convert.team_out(t) for t in chunk], next_page_token=token
        )

    @rpc(audited=True, fields=TEAM_FIELDS)
    async def UpdateTeam(self, request: apb.UpdateTeamRequest, context: Any) -> Any:
        required("team", request.HasField("team"))
        t, paths = masked(
            request,
            "team",
            lambda: convert.team_out(self.engine.team(request.team.id)),
            {"display_name", "kind", "queue_settings"},
        )
        team = self.rt.command(
            self.engine.update_team,
            request.team.id,
            name=t.display_name if "display_name" in paths else None,
            kind=convert.team_kind_in(t.kind) if "kind" in paths else None,
            settings=convert.settings_in(t.queue_settings) if "queue_settings" in paths else None,
        ).value
        return apb.UpdateTeamResponse(team=convert.team_out(team))

    @rpc(audited=True)
    async def DeleteTeam(self, request: apb.DeleteTeamRequest, context: Any) -> Any:
        self.rt.command(self.engine.delete_team, request.team_id)
        return apb.DeleteTeamResponse()

    # ------------------------------------------------------------- issue types

    @rpc(audited=True, fields=ISSUE_TYPE_FIELDS)
    async def CreateIssueType(self, request: apb.CreateIssueTypeRequest, context: Any) -> Any:
        required("issue_type", request.HasField("issue_type"))
        it = self.rt.command(
            self.engine.create_issue_type, convert.issue_type_in(request.issue_type)
        ).value
        return apb.CreateIssueTypeResponse(issue_type=convert.issue_type_out(it))

    @rpc
    async def GetIssueType(self, request: apb.GetIssueTypeRequest, context: Any) -> Any:
        return apb.GetIssueTypeResponse(
            issue_type=convert.issue_type_out(self.engine.issue_type(request.issue_type_id))
        )

    @rpc
    async def ListIssueTypes(self, request: apb.ListIssueTypesRequest, context: Any) -> Any:
        chunk, token = convert.page(
            "", self.engine.issue_types(), request.page_size, request.page_token
        )
        return apb.ListIssueTypesResponse(
            issue_types=[convert.issue_type_out(i) for i in chunk], next_page_token=token
        )

    @rpc(audited=True, fields=ISSUE_TYPE_FIELDS)
    async def UpdateIssueType(self, request: apb.UpdateIssueTypeRequest, context: Any) -> Any:
        required("issue_type", request.HasField("issue_type"))
        updated, _ = masked(
            request,
            "issue_type",
            lambda: convert.issue_type_out(self.engine.issue_type(request.issue_type.id)),
            {"display_name", "team_id", "required_skills", "priority"},
        )
        it = self.rt.command(self.engine.update_issue_type, convert.issue_type_in(updated)).value
        return apb.UpdateIssueTypeResponse(issue_type=convert.issue_type_out(it))

    @rpc(audited=True)
    async def DeleteIssueType(self, request: apb.DeleteIssueTypeRequest, context: Any) -> Any:
        self.rt.command(self.engine.delete_issue_type, request.issue_type_id)
        return apb.DeleteIssueTypeResponse()

    # ------------------------------------------------------------- buttons and links

    def _entry(self, kind: str, entry_id: str) -> Any:
        if kind == "support_button":
            return self.engine.support_button(entry_id)
        return self.engine.help_link(entry_id)

    def _entry_in(self, kind: str, msg: Any) -> Any:
        cls = SupportButton if kind == "support_button" else HelpLink
        return cls(msg.id, msg.display_name, convert.target_in(msg.target))

    def _entry_out(self, kind: str, entry: Any) -> Any:
        cls = apb.SupportButton if kind == "support_button" else apb.HelpLink
        return cls(id=entry.id, display_name=entry.name, target=convert.target_out(entry.target))

    def _update_entry(self, kind: str, request: Any, command: Any) -> Any:
        entry_id = getattr(request, kind).id
        updated, _ = masked(
            request,
            kind,
            lambda: self._entry_out(kind, self._entry(kind, entry_id)),
            {"display_name", "target"},
        )
        return self._entry_out(kind, self.rt.command(command, self._entry_in(kind, updated)).value)

    @rpc(audited=True, fields=BUTTON_FIELDS)
    async def CreateSupportButton(self, request: Any, context: Any) -> Any:
        required("support_button", request.HasField("support_button"))
        b = self.rt.command(
            self.engine.create_support_button,
            self._entry_in("support_button", request.support_button),
        ).value
        return apb.CreateSupportButtonResponse(support_button=self._entry_out("support_button", b))

    @rpc
    async def GetSupportButton(self, request: Any, context: Any) -> Any:
        return apb.GetSupportButtonResponse(
            support_button=self._entry_out(
                "support_button", self._entry("support_button", request.support_button_id)
            )
        )

    @rpc
    async def ListSupportButtons(self, request: Any, context: Any) -> Any:
        chunk, token = convert.page(
            "", self.engine.support_buttons(), request.page_size, request.page_token
        )
        return apb.ListSupportButtonsResponse(
            support_buttons=[self._entry_out("support_button", b) for b in chunk],
            next_page_token=token,
        )

    @rpc(audited=True, fields=BUTTON_FIELDS)
    async def UpdateSupportButton(self, request: Any, context: Any) -> Any:
        required("support_button", request.HasField("support_button"))
        return apb.UpdateSupportButtonResponse(
            support_button=self._update_entry(
                "support_button", request, self.engine.update_support_button
            )
        )

    @rpc(audited=True)
    async def DeleteSupportButton(self, request: Any, context: Any) -> Any:
        self.rt.command(self.engine.delete_support_button, request.support_button_id)
        return apb.DeleteSupportButtonResponse()

    @rpc(audited=True, fields=LINK_FIELDS)
    async def CreateHelpLink(self, request: Any, context: Any) -> Any:
        required("help_link", request.HasField("help_link"))
        x = self.rt.command(
            self.engine.create_help_link, self._entry_in("help_link", request.help_link)
        ).value
        return apb.CreateHelpLinkResponse(help_link=self._entry_out("help_link", x))

    @rpc
    async def GetHelpLink(self, request: Any, context: Any) -> Any:
        return apb.GetHelpLinkResponse(
            help_link=self._entry_out("help_link", self._entry("help_link", request.help_link_id))
        )

    @rpc
    async def ListHelpLinks(self, request: Any, context: Any) -> Any:
        chunk, token = convert.page(
            "", self.engine.help_links(), request.page_size, request.page_token
        )
        return apb.ListHelpLinksResponse(
            help_links=[self._entry_out("help_link", x) for x in chunk], next_page_token=token
        )

    @rpc(audited=True, fields=LINK_FIELDS)
    async def UpdateHelpLink(self, request: Any, context: Any) -> Any:
        required("help_link", request.HasField("help_link"))
        return apb.UpdateHelpLinkResponse(
            help_link=self._update_entry("help_link", request, self.engine.update_help_link)
        )

    @rpc(audited=True)
    async def DeleteHelpLink(self, request: Any, context: Any) -> Any:
        self.rt.command(self.engine.delete_help_link, request.help_link_id)
        return apb.DeleteHelpLinkResponse()

    # ------------------------------------------------------------- tokens

    def _token_out(self, record: Any) -> apb.AccessToken:
        out = apb.AccessToken(
            token_id=record.token_id,
            rep_id=record.principal.rep_id,
            kind=apb.PrincipalKind.Value("PRINCIPAL_KIND_" + record.principal.kind.value),
            description=record.description,
            create_time=convert.timestamp(record.created),
            team_ids=sorted(record.principal.teams),
        )
        if record.expires is not None:
            out.expire_time.CopyFrom(convert.timestamp(record.expires))
        return out

    @staticmethod
    def _seconds(
        c: v.Checks, field: str, request: Any, lo: float, hi: float, why: str
    ) -> float | None:
        """A Duration field in seconds (None when unset), within [lo, hi]."""
        if not request.HasField(field):
            return None
        value = convert.seconds_of(getattr(request, field))
        if not lo <= value <= hi:
            c.add(field, why)
        return value

    @rpc(audited=True)
    async def IssueAccessToken(self, request: apb.IssueAccessTokenRequest, context: Any) -> Any:
        c = v.Checks()
        kind = c(
            convert.enum_in,
            "kind",
            apb.PrincipalKind,
            "PRINCIPAL_KIND_",
            PrincipalKind,
            request.kind,
        )
        if len(request.description) > 200:
            c.add("description", "at most 200 characters")
        rep_id, teams = "", frozenset(request.team_ids)
        wants_rep = kind is PrincipalKind.REP or (
            kind is PrincipalKind.SUPERVISOR and request.rep_id
        )
        if wants_rep:
            c(v.ident, "rep_id", request.rep_id)
        elif request.rep_id and kind is not None:
            c.add("rep_id", "only for REP and SUPERVISOR tokens")
        if kind is PrincipalKind.SUPERVISOR:
            if not teams:
                c.add("team_ids", "a supervisor token names at least one team")
            for i, team_id in enumerate(request.team_ids):
                c(v.ident, f"team_ids[{i}]", team_id)
        elif teams and kind is not None:
            c.add("team_ids", "only for SUPERVISOR tokens")
        ttl = self._seconds(c, "ttl", request, 1, MAX_TOKEN_TTL, "must be 1 s to 10 years")
        c.done()
        if wants_rep:
            rep_id = self.engine.rep(request.rep_id).id
        for team_id in request.team_ids if kind is PrincipalKind.SUPERVISOR else ():
            self.engine.team(team_id)
        expires = None if ttl is None else self.rt.settings.clock() + ttl
        record, secret = self.rt.tokens.issue(
            Principal(kind, rep_id, teams=teams), request.description, expires
        )
        return apb.IssueAccessTokenResponse(access_token=self._token_out(record), secret=secret)

    @rpc(audited=True)
    async def RotateAccessToken(self, request: apb.RotateAccessTokenRequest, context: Any) -> Any:
        c = v.Checks()
        c(v.ident, "token_id", request.token_id)
        overlap = self._seconds(c, "overlap", request, 0, 86400, "must be 0 to 1 day") or 0.0
        ttl = self._seconds(c, "ttl", request, 1, MAX_TOKEN_TTL, "must be 1 s to 10 years")
        c.done()
        old = self.rt.tokens.get(request.token_id)
        if old is None:
            raise NotFound("access token", request.token_id)
        now = self.rt.settings.clock()
        expires = old.expires if ttl is None else now + ttl
        record, secret = self.rt.tokens.issue(old.principal, old.description, expires)
        if overlap:
            self.rt.tokens.set_expiry(old.token_id, now + overlap)
        else:
            self.rt.tokens.revoke(old.token_id)
        return apb.RotateAccessTokenResponse(access_token=self._token_out(record), secret=secret)

    @rpc
    async def ListAuditEntries(self, request: apb.ListAuditEntriesRequest, context: Any) -> Any:
        since = request.since.ToNanoseconds() / 1e9 if request.HasField("since") else None
        until = request.until.ToNanoseconds() / 1e9 if request.HasField("until") else None
        if request.token_id:
            v.ident("token_id", request.token_id)
        if len(request.method) > 200:
            raise InvalidArgument("method", "at most 200 characters")
        method, size = request.method, convert.page_limit("page_size", request.page_size)
        after = convert.cursor_in("page_token", request.page_token) or 0
        chunk: list[audit.AuditEntry] = []
        for e in self.rt.audit.after(after):
            if (
                (not request.token_id or e.token_id == request.token_id)
                and (not method or e.method == method or e.method.rsplit("/", 1)[-1] == method)
                and (since is None or e.time >= since)
                and (until is None or e.time < until)
            ):
                if len(chunk) == size:
                    return apb.ListAuditEntriesResponse(
                        entries=[audit.entry_out(x) for x in chunk],
                        next_page_token=convert.cursor_out(chunk[-1].seq),
                    )
                chunk.append(e)
        return apb.ListAuditEntriesResponse(entries=[audit.entry_out(x) for x in chunk])

    @rpc(audited=True)
    async def RevokeAccessToken(self, request: apb.RevokeAccessTokenRequest, context: Any) -> Any:
        if not self.rt.tokens.revoke(v.ident("token_id", request.token_id)):
            raise NotFound("access token", request.token_id)
        return apb.RevokeAccessTokenResponse()

    # ------------------------------------------------------------- service channels

    @rpc(audited=True)
    async def DefineChannels(self, request: apb.DefineChannelsRequest, context: Any) -> Any:
        names = self.rt.command(self.engine.define_channels, list(request.channels)).value
        return apb.DefineChannelsResponse(channels=names)

    @rpc
    async def ListChannels(self, request: apb.ListChannelsRequest, context: Any) -> Any:
        return apb.ListChannelsResponse(channels=self.engine.channels())

    @rpc
    async def ListAccessTokens(self, request: apb.ListAccessTokensRequest, context: Any) -> Any:
        chunk, token = convert.page(
            "", self.rt.tokens.records(), request.page_size, request.page_token
        )
        return apb.ListAccessTokensResponse(
            access_tokens=[self._token_out(r) for r in chunk], next_page_token=token
        )
