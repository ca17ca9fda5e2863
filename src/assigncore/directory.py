"""Directory: teams and their queue settings, reps and their memberships, skills,
issue types, support buttons and help links."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from . import capacity, presence, queue_order, routing, steps, waiting_rules
from . import validation as v
from .columns import (
    FLAG_REMOVED,
)
from .errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    shown,
)
from .events import (
    DirectoryChanged,
)
from .model import (
    Algorithm,
    HelpLink,
    IssueType,
    Permissions,
    QueueKind,
    QueueRef,
    QueueSettings,
    Rep,
    RescindReason,
    RoutingStep,
    RuleAction,
    StepKind,
    SupportButton,
    Target,
    Team,
    TeamKind,
    WaitingRule,
    personal_queue,
    team_queue,
)
from .queue_order import QueueIndex

if TYPE_CHECKING:
    from .state import State


def skill_ordinal(st: State, name: str) -> int:
    o = st.skills.get(name)
    if o is None:
        o = st.skills[name] = st.reps_table.add_skill_column()
    return o


def write_skills(st: State, rep: Rep) -> None:
    # Every column first: a new skill name may widen the table, replacing its array, so
    # no row of it is held across add_skill_column().
    levels = [(skill_ordinal(st, name), level) for name, level in rep.skills.items()]
    row = st.reps_table.skills[rep.ordinal]
    row[:] = 0
    for ordinal, level in levels:
        row[ordinal] = level
    # Skills decide who may take a session in a SKILLS step (rule 13): what steps could
    # match is asked again, and an eligible rep's pools may hold sessions it now fits.
    teams = [st.teams[t].ordinal for t in sorted(rep.teams)]
    steps.touch(st, teams)
    if rep.eligible:
        for t in teams:
            queue_order.gained(st, t, rep.ordinal, st.reps_table.room_v[rep.ordinal])


def settings_fields(team_id: str, settings: Any, c: v.Checks) -> None:
    """Queue settings' own fields (no lookups)."""
    if not isinstance(settings, QueueSettings):
        c.add("settings", "must be queue settings")
        return
    if not isinstance(settings.algorithm, Algorithm):
        c.add("settings.algorithm", "unknown algorithm")
    c(v.seconds, "settings.offer_timeout", settings.offer_timeout, 1.0, 3600.0)
    c(v.seconds, "settings.wrap_up", settings.wrap_up, 0.0, 3600.0)
    c(
        v.seconds,
        "settings.service_level_threshold",
        settings.service_level_threshold,
        1.0,
        86400.0,
    )
    c(
        v.integer,
        "settings.max_missed_offers",
        settings.max_missed_offers,
        0,
        v.MAX_MISSED_OFFERS,
    )
    step_fields("settings.steps", settings.steps, c)
    rule = settings.waiting_rule
    if rule is None:
        return
    if not isinstance(rule, WaitingRule) or not isinstance(rule.action, RuleAction):
        c.add("settings.waiting_rule", "must be ALERT or TRANSFER")
        return
    c(v.seconds, "settings.waiting_rule.overdue_after", rule.overdue_after, 1.0)
    overflow = rule.overflow
    if rule.action is RuleAction.TRANSFER:
        if overflow is None:
            c.add("settings.waiting_rule.overflow", "required for a TRANSFER rule")
        elif not isinstance(overflow, QueueRef) or not isinstance(overflow.kind, QueueKind):
            c.add("settings.waiting_rule.overflow", "must be a queue reference")
        elif overflow.kind is QueueKind.PERSONAL:
            c.add("settings.waiting_rule.overflow", "must be a team queue or the general queue")
        elif overflow == team_queue(team_id):
            c.add("settings.waiting_rule.overflow", "must be another queue")
        elif overflow.kind is QueueKind.TEAM:
            c(v.ident, "settings.waiting_rule.overflow.team_id", overflow.owner)
    elif overflow is not None:
        c.add("settings.waiting_rule.overflow", "only a TRANSFER rule has an overflow queue")


MAX_STEPS = 8


def step_fields(field_name: str, steps: Any, c: v.Checks) -> None:
    """A routing step list's own fields (rules 13-15)."""
    if not isinstance(steps, tuple):
        c.add(field_name, "must be a list of routing steps")
        return
    if len(steps) > MAX_STEPS:
        c.add(field_name, f"at most {MAX_STEPS} steps")
    for i, step in enumerate(steps):
        where = f"{field_name}[{i}]"
        if not isinstance(step, RoutingStep) or not isinstance(step.kind, StepKind):
            c.add(where, "must be an ANY, SKILLS or PREFERRED_REP step")
            continue
        last = i == len(steps) - 1
        if step.kind is StepKind.SKILLS:
            if not step.skills:
                c.add(f"{where}.skills", "a SKILLS step requires at least one skill")
            else:
                c(v.required_skills, f"{where}.skills", step.skills)
        elif step.skills:
            c.add(f"{where}.skills", f"only a SKILLS step lists skills, not {step.kind.value}")
        if last:
            if step.kind is StepKind.PREFERRED_REP:
                c.add(where, "the last step never expires, so it cannot wait for one rep")
            if step.duration != 0:
                c.add(f"{where}.duration", "the last step never expires: must be 0")
        else:
            c(v.seconds, f"{where}.duration", step.duration, 1.0)


def step_skills(st: State, steps: tuple[RoutingStep, ...]) -> None:
    """Registers the skills a (checked) step list names."""
    for step in steps:
        for name, _ in step.skills:
            skill_ordinal(st, name)


def settings_lookups(st: State, settings: QueueSettings) -> QueueSettings:
    """What queue settings refer to exists (after their fields are known good)."""
    rule = settings.waiting_rule
    if rule is not None and rule.overflow is not None:
        target = st.queue_ref("settings.waiting_rule.overflow", rule.overflow)
        if target.kind is QueueKind.GENERAL and not st.config.general_queue_enabled:
            raise InvalidArgument("settings.waiting_rule.overflow", "the general queue is disabled")
    step_skills(st, settings.steps)
    return settings


def create_team(
    st: State,
    team_id: str,
    name: str,
    kind: TeamKind = TeamKind.STANDARD,
    settings: QueueSettings | None = None,
) -> Team:
    settings = QueueSettings() if settings is None else settings
    c = v.Checks()
    c(v.ident, "team_id", team_id)
    c(v.text, "name", name, required=True)
    if not isinstance(kind, TeamKind):
        c.add("kind", "must be STANDARD or EMBASSY")
    settings_fields(team_id, settings, c)
    c.done()
    settings_lookups(st, settings)
    if team_id in st.teams:
        raise AlreadyExists("team", team_id)
    team = Team(team_id, name, kind, st.teams_table.add(int(settings.algorithm)), settings)
    st.teams[team_id] = team
    st.team_by_ord.append(team)
    ref = team_queue(team_id)
    index = st.queues[ref] = QueueIndex(ref)
    st.team_index.append(index)
    st.team_eligible.append(0)
    st.team_version.append(0)
    st.emit(DirectoryChanged(st.now, "team", team_id, "created"))
    return team


def update_team(
    st: State,
    team_id: str,
    name: str | None = None,
    kind: TeamKind | None = None,
    settings: QueueSettings | None = None,
) -> Team:
    c = v.Checks()
    c(v.ident, "team_id", team_id)
    if name is not None:
        c(v.text, "name", name, required=True)
    if kind is not None and not isinstance(kind, TeamKind):
        c.add("kind", "must be STANDARD or EMBASSY")
    if settings is not None:
        settings_fields(team_id, settings, c)
    c.done()
    team = st.team(team_id)
    if settings is not None:
        settings_lookups(st, settings)
    team.name = team.name if name is None else name
    team.kind = team.kind if kind is None else kind
    if settings is not None:
        old_rule = team.settings.waiting_rule
        team.settings = settings
        st.teams_table.set_algorithm(team.ordinal, int(settings.algorithm))
        queue_order.mark_team(st, team.ordinal)
        if settings.waiting_rule != old_rule:
            waiting_rules.rearm_waiting_rules(st, team)
    st.emit(DirectoryChanged(st.now, "team", team_id, "updated"))
    return team


def delete_team(st: State, team_id: str) -> None:
    team = st.team(team_id)
    queue = team_queue(team_id)
    if len(st.queues[queue]):
        raise FailedPrecondition(f"team {shown(team_id)} still has items in its queue")
    users = [f"issue type {shown(i.id)}" for i in st.issue_types.values() if i.team_id == team_id]
    users += [f"button {shown(b.id)}" for b in st.buttons.values() if b.target.team_id == team_id]
    users += [f"help link {shown(x.id)}" for x in st.links.values() if x.target.team_id == team_id]
    users += [
        f"team {shown(t.id)}"
        for t in st.teams.values()
        if t.settings.waiting_rule and t.settings.waiting_rule.overflow == queue
    ]
    if users:
        raise FailedPrecondition(f"team {shown(team_id)} is still used by " + ", ".join(users))
    for rep_id in sorted(team.members):
        leave_team(st, team, st.reps[rep_id])
    del st.queues[queue]
    st.stats.forget_queue(queue)
    del st.teams[team_id]
    st.team_by_ord[team.ordinal] = None
    st.team_index[team.ordinal] = None
    st.teams_table.set_algorithm(team.ordinal, int(Algorithm.NONE))
    st.emit(DirectoryChanged(st.now, "team", team_id, "deleted"))


def permission_fields(p: Any, c: v.Checks) -> None:
    if not isinstance(p, Permissions):
        c.add("permissions", "must be a permission profile")
        return
    c(
        v.integer,
        "permissions.max_concurrent_sessions",
        p.max_concurrent_sessions,
        0,
        v.MAX_CONCURRENT_SESSIONS,
    )
    c(v.seconds, "permissions.idle_timeout", p.idle_timeout, 0.0)
    if p.capacity is not None and p.max_concurrent_sessions:
        c.add(
            "permissions.capacity",
            "a capacity profile replaces max_concurrent_sessions: set one of them",
        )
    for name in (
        "may_get_next",
        "may_opt_out",
        "may_transfer",
        "may_use_general_queue",
        "shown_on_public_site",
    ):
        c(v.flag, f"permissions.{name}", getattr(p, name))


def teams_exist(st: State, team_ids: list[str]) -> None:
    for i, t in enumerate(team_ids):
        st.team(t, f"teams[{i}]")


def create_rep(
    st: State,
    rep_id: str,
    name: str,
    skills: Mapping[str, int] | None = None,
    permissions: Permissions | None = None,
    teams: Iterable[str] = (),
    auto_assign: bool = True,
    audible_alerts: bool = True,
) -> Rep:
    perms = Permissions() if permissions is None else permissions
    c = v.Checks()
    c(v.ident, "rep_id", rep_id)
    c(v.text, "name", name, required=True)
    skill_map = c(v.skill_levels, "skills", {} if skills is None else skills)
    permission_fields(perms, c)
    team_ids = c(v.id_list, "teams", teams, v.MAX_TEAMS_PER_REP)
    c(v.flag, "auto_assign", auto_assign)
    c(v.flag, "audible_alerts", audible_alerts)
    c.done()
    if perms.capacity is not None:
        capacity.check_profile(st, "permissions.capacity", perms.capacity)
    teams_exist(st, team_ids)
    if not auto_assign and not perms.may_opt_out:
        raise PermissionDenied("auto_assign can only be off for reps who may opt out")
    if rep_id in st.reps:
        raise AlreadyExists("rep", rep_id)
    rep = Rep(rep_id, name, st.reps_table.add(), skill_map, perms, auto_assign, audible_alerts)
    st.reps[rep_id] = rep
    st.rep_by_ord.append(rep)
    ref = personal_queue(rep_id)
    st.queues[ref] = QueueIndex(ref)
    write_skills(st, rep)
    for t in team_ids:
        join_team(st, st.teams[t], rep)
    presence.sync_rep(st, rep)
    st.emit(DirectoryChanged(st.now, "rep", rep_id, "created"))
    return rep


def join_team(st: State, team: Team, rep: Rep) -> None:
    team.members.add(rep.id)
    rep.teams.add(team.id)
    rep.chat_read.setdefault(team.id, team.chat_seq)
    st.teams_table.add_member(team.ordinal, rep.ordinal)
    steps.touch(st, [team.ordinal])
    if rep.eligible:
        st.team_eligible[team.ordinal] += 1
        queue_order.gained(st, team.ordinal, rep.ordinal, st.reps_table.room_v[rep.ordinal])


def leave_team(st: State, team: Team, rep: Rep) -> None:
    if rep.offer is not None:
        s = st.sessions[st.offers[rep.offer].session_id]
        if s.queue == team_queue(team.id):
            routing.rescind(st, s, RescindReason.LEFT_TEAM)
    team.members.discard(rep.id)
    rep.teams.discard(team.id)
    rep.favourites = rep.favourites - {team.id}
    rep.chat_read.pop(team.id, None)
    st.teams_table.remove_member(team.ordinal, rep.ordinal)
    steps.touch(st, [team.ordinal])
    if rep.eligible:
        st.team_eligible[team.ordinal] -= 1


def update_rep(
    st: State,
    rep_id: str,
    name: str | None = None,
    skills: Mapping[str, int] | None = None,
    permissions: Permissions | None = None,
    teams: Iterable[str] | None = None,
) -> Rep:
    """Replace the given fields; takes effect on the next assignment pass."""
    c = v.Checks()
    c(v.ident, "rep_id", rep_id)
    if name is not None:
        c(v.text, "name", name, required=True)
    skill_map = None if skills is None else c(v.skill_levels, "skills", skills)
    perms = permissions
    if perms is not None:
        permission_fields(perms, c)
    team_ids = None if teams is None else c(v.id_list, "teams", teams, v.MAX_TEAMS_PER_REP)
    c.done()
    if perms is not None and perms.capacity is not None:
        capacity.check_profile(st, "permissions.capacity", perms.capacity)
    rep = st.rep(rep_id)
    if team_ids is not None:
        teams_exist(st, team_ids)
    rep.name = rep.name if name is None else name
    if skill_map is not None:
        rep.skills = skill_map
        write_skills(st, rep)
    if team_ids is not None:
        for t in sorted(rep.teams - set(team_ids)):
            leave_team(st, st.teams[t], rep)
        for t in team_ids:
            if t not in rep.teams:
                join_team(st, st.teams[t], rep)
    if perms is not None:
        idle_changed = perms.idle_timeout != rep.permissions.idle_timeout
        rep.permissions = perms
        if idle_changed:
            rep.idle = False
            presence.schedule_idle(st, rep)
    presence.sync_rep(st, rep)
    st.emit(DirectoryChanged(st.now, "rep", rep_id, "updated"))
    return rep


def add_team_member(st: State, team_id: str, rep_id: str) -> None:
    team, rep = st.team(team_id), st.rep(rep_id)
    if rep.id in team.members:
        raise AlreadyExists("team membership", f"{team_id}/{rep_id}")
    if len(rep.teams) >= v.MAX_TEAMS_PER_REP:
        raise InvalidArgument("team_id", f"a rep is in at most {v.MAX_TEAMS_PER_REP} teams")
    join_team(st, team, rep)
    st.emit(DirectoryChanged(st.now, "rep", rep_id, "updated"))


def remove_team_member(st: State, team_id: str, rep_id: str) -> None:
    team, rep = st.team(team_id), st.rep(rep_id)
    if rep.id not in team.members:
        raise NotFound("team membership", f"{team_id}/{rep_id}")
    leave_team(st, team, rep)
    st.emit(DirectoryChanged(st.now, "rep", rep_id, "updated"))


def delete_rep(st: State, rep_id: str) -> None:
    rep = st.rep(rep_id)
    if rep.load or rep.grace_timer is not None or len(st.queues[personal_queue(rep_id)]):
        raise FailedPrecondition(f"rep {shown(rep_id)} still has sessions or queue items")
    users = [f"button {shown(b.id)}" for b in st.buttons.values() if b.target.rep_id == rep_id]
    users += [f"help link {shown(x.id)}" for x in st.links.values() if x.target.rep_id == rep_id]
    if users:
        raise FailedPrecondition(f"rep {shown(rep_id)} is still used by " + ", ".join(users))
    if rep.connected:  # signed off first: nothing is left for it to own
        presence.go_offline(st, rep, RescindReason.SIGNED_OUT)
    for team_id in sorted(rep.teams):
        leave_team(st, st.teams[team_id], rep)
    for key in [k for k, sk in st.keys.items() if sk.rep_id == rep_id]:
        st.timers.cancel(st.keys.pop(key).timer)
    for timer in (rep.idle_timer, rep.wrap_up_timer):
        st.timers.cancel(timer)
    del st.queues[personal_queue(rep_id)]
    st.stats.forget_queue(personal_queue(rep_id))
    del st.reps[rep_id]
    st.reported.pop(rep_id, None)
    st.rep_by_ord[rep.ordinal] = None
    st.reps_table.set_flag(rep.ordinal, FLAG_REMOVED, True)
    st.emit(DirectoryChanged(st.now, "rep", rep_id, "deleted"))


def check_issue_type(st: State, it: Any) -> IssueType:
    if not isinstance(it, IssueType):
        raise InvalidArgument("issue_type", "must be an issue type")
    c = v.Checks()
    c(v.ident, "issue_type.id", it.id)
    c(v.text, "issue_type.name", it.name, required=True)
    c(v.ident, "issue_type.team_id", it.team_id)
    c(v.required_skills, "issue_type.required_skills", it.required_skills)
    c(v.integer, "issue_type.priority", it.priority, v.MIN_PRIORITY, v.MAX_PRIORITY)
    step_fields("issue_type.steps", it.steps, c)
    c.done()
    st.team(it.team_id, "issue_type.team_id")
    capacity.check_channel(st, "issue_type.channel", it.channel)
    return it


def create_issue_type(st: State, issue_type: IssueType) -> IssueType:
    it = check_issue_type(st, issue_type)
    if it.id in st.issue_types:
        raise AlreadyExists("issue type", it.id)
    return put_issue_type(st, it, "created")


def update_issue_type(st: State, issue_type: IssueType) -> IssueType:
    it = check_issue_type(st, issue_type)
    if it.id not in st.issue_types:
        raise NotFound("issue type", it.id)
    return put_issue_type(st, it, "updated")


def put_issue_type(st: State, it: IssueType, change: str) -> IssueType:
    skills = tuple((str(name), int(level)) for name, level in it.required_skills)
    steps = tuple(
        RoutingStep(step.kind, tuple((str(n), int(lv)) for n, lv in step.skills), step.duration)
        for step in it.steps
    )
    it = IssueType(it.id, it.name, it.team_id, skills, it.priority, steps, it.channel)
    for skill, _ in it.required_skills:
        skill_ordinal(st, skill)
    step_skills(st, steps)
    st.issue_types[it.id] = it
    st.emit(DirectoryChanged(st.now, "issue_type", it.id, change))
    return it


def delete_issue_type(st: State, issue_type_id: str) -> None:
    if st.issue_types.pop(v.ident("issue_type_id", issue_type_id), None) is None:
        raise NotFound("issue type", issue_type_id)
    st.emit(DirectoryChanged(st.now, "issue_type", issue_type_id, "deleted"))


def target_fields(field_name: str, target: Any) -> None:
    if not isinstance(target, Target) or bool(target.rep_id) == bool(target.team_id):
        raise InvalidArgument(field_name, "must name exactly one of a rep or a team")
    if target.rep_id:
        v.ident(f"{field_name}.rep_id", target.rep_id)
    else:
        v.ident(f"{field_name}.team_id", target.team_id)


def check_target(st: State, field_name: str, target: Any) -> Target:
    target_fields(field_name, target)
    if target.rep_id:
        st.rep(target.rep_id, f"{field_name}.rep_id")
    else:
        st.team(target.team_id, f"{field_name}.team_id")
    return target


def entry_table(st: State, kind: str) -> dict[str, Any]:
    return st.buttons if kind == "support_button" else st.links


def put_entry(st: State, kind: str, entry: Any, create: bool) -> Any:
    cls = SupportButton if kind == "support_button" else HelpLink
    if not isinstance(entry, cls):
        raise InvalidArgument(kind, f"must be a {kind.replace('_', ' ')}")
    c = v.Checks()
    c(v.ident, f"{kind}.id", entry.id)
    c(v.text, f"{kind}.name", entry.name, required=True)
    c(target_fields, f"{kind}.target", entry.target)
    c.done()
    check_target(st, f"{kind}.target", entry.target)
    table = entry_table(st, kind)
    if create and entry.id in table:
        raise AlreadyExists(kind.replace("_", " "), entry.id)
    if not create and entry.id not in table:
        raise NotFound(kind.replace("_", " "), entry.id)
    table[entry.id] = entry
    st.emit(DirectoryChanged(st.now, kind, entry.id, "created" if create else "updated"))
    return entry


def delete_entry(st: State, kind: str, entry_id: str) -> None:
    if entry_table(st, kind).pop(v.ident(f"{kind}_id", entry_id), None) is None:
        raise NotFound(kind.replace("_", " "), entry_id)
    st.emit(DirectoryChanged(st.now, kind, entry_id, "deleted"))


def create_support_button(st: State, button: SupportButton) -> SupportButton:
    return put_entry(st, "support_button", button, create=True)


def update_support_button(st: State, button: SupportButton) -> SupportButton:
    return put_entry(st, "support_button", button, create=False)


def delete_support_button(st: State, button_id: str) -> None:
    delete_entry(st, "support_button", button_id)


def create_help_link(st: State, link: HelpLink) -> HelpLink:
    return put_entry(st, "help_link", link, create=True)


def update_help_link(st: State, link: HelpLink) -> HelpLink:
    return put_entry(st, "help_link", link, create=False)


def delete_help_link(st: State, link_id: str) -> None:
    delete_entry(st, "help_link", link_id)
