"""Messages <-> domain objects. Reading a request checks what the wire can get wrong
(unknown enum numbers, missing messages, malformed page tokens); the engine checks the
rest. Enums map by name, so proto numbering and engine numbering stay independent."""

from __future__ import annotations

import base64
import functools
import math
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from assigncore import model
from assigncore.errors import InvalidArgument
from assigncore.model import QueueKind, QueueRef
from assigncore.v1 import admin_service_pb2 as admin_pb
from assigncore.v1 import common_pb2 as pb
from assigncore.v1 import console_service_pb2 as cpb

MAX_PAGE_SIZE = 500
MAX_TOKEN_NUMBER = 2**128  # above any offset or order key this server hands out


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    whole = math.floor(seconds)
    return timestamp_pb2.Timestamp(
        seconds=int(whole), nanos=int(round((seconds - whole) * 1e9)) % 1_000_000_000
    )


def _time_fields(seconds: float) -> Any:
    """A Timestamp's fields, for a message built around it (cheaper than a message)."""
    whole = math.floor(seconds)
    return {"seconds": int(whole), "nanos": int(round((seconds - whole) * 1e9)) % 1_000_000_000}


def seconds_of(d: duration_pb2.Duration, default: float | None = None) -> float:
    """A Duration as seconds, unchecked: the engine checks every range, so a request
    learns all that is wrong with it at once (a negative duration is out of range)."""
    if d.seconds == 0 and d.nanos == 0 and default is not None:
        return default
    return d.seconds + d.nanos / 1e9


def duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(round(seconds * 1e9)))
    return d


def enum_in(
    field: str, wrapper: Any, prefix: str, model_cls: Any, value: int, default: Any = None
) -> Any:
    """A proto enum number as the model enum; unknown numbers and UNSPECIFIED (unless a
    default is given) are INVALID_ARGUMENT."""
    try:
        name = wrapper.Name(value)
    except ValueError:
        raise InvalidArgument(field, f"unknown value {value}") from None
    if name == prefix + "UNSPECIFIED":
        if default is not None:
            return default
        raise InvalidArgument(field, "required")
    try:
        return model_cls[name[len(prefix) :]]
    except KeyError:
        raise InvalidArgument(field, f"unsupported value {name}") from None


def enum_or_none(wrapper: Any, prefix: str, model_cls: Any, value: int, default: Any = None) -> Any:
    """Like enum_in, but an unknown or unset value becomes None (or `default` if unset),
    for the engine to report together with the request's other violations."""
    try:
        name = wrapper.Name(value)
    except ValueError:
        return None
    if name == prefix + "UNSPECIFIED":
        return default
    return model_cls.__members__.get(name[len(prefix) :])


@functools.cache
def _enum_number(wrapper: Any, name: str) -> int:
    return int(wrapper.Value(name))


_ENUM_NUMBERS: dict[tuple[str, Any], int] = {}


def enum_out(wrapper: Any, prefix: str, value: Any) -> Any:
    if value is None:
        return 0
    key = (prefix, value)
    number = _ENUM_NUMBERS.get(key)
    if number is None:
        number = _ENUM_NUMBERS[key] = _enum_number(wrapper, prefix + value.name)
    return number


# ----------------------------------------------------------------- queues, sessions


def queue_in(field: str, q: pb.QueueRef) -> QueueRef:
    kind = enum_in(f"{field}.kind", pb.QueueKind, "QUEUE_KIND_", QueueKind, q.kind)
    if kind is QueueKind.GENERAL:
        return model.GENERAL_QUEUE
    if not q.owner_id:
        raise InvalidArgument(f"{field}.owner_id", "required")
    return QueueRef(kind, q.owner_id)


def queue_out(q: QueueRef | None) -> pb.QueueRef | None:
    if q is None:
        return None
    return pb.QueueRef(kind=enum_out(pb.QueueKind, "QUEUE_KIND_", q.kind), owner_id=q.owner)


def target_queue(field: str, t: pb.Target) -> QueueRef:
    which = t.WhichOneof("target")
    if which == "team_id":
        return model.team_queue(t.team_id)
    if which == "rep_id":
        return model.personal_queue(t.rep_id)
    raise InvalidArgument(field, "name a team_id or a rep_id")


def target_in(t: pb.Target) -> model.Target:
    """Unchecked: the engine says if it names neither or both."""
    return model.Target(rep_id=t.rep_id, team_id=t.team_id)


def target_out(t: model.Target) -> pb.Target:
    return pb.Target(rep_id=t.rep_id) if t.rep_id else pb.Target(team_id=t.team_id)


def customer_in(c: pb.Customer, present: bool) -> model.Customer | None:
    """None when missing: the engine reports it with the request's other violations."""
    return model.Customer(c.name, c.company, c.details) if present else None


def session_out(s: model.Session) -> pb.Session:
    return pb.Session(
        id=s.id,
        customer=pb.Customer(
            name=s.customer.name, company=s.customer.company, details=s.customer.details
        ),
        channel=enum_out(pb.Channel, "CHANNEL_", s.channel),
        origin=enum_out(pb.Origin, "ORIGIN_", s.origin),
        issue_type_id=s.issue_type_id,
        required_skills=[pb.RequiredSkill(skill=k, min_level=lv) for k, lv in s.required_skills],
        priority=s.priority,
        create_time=_time_fields(s.created_time),
        queued_time=_time_fields(s.queued_time),
        state=enum_out(pb.SessionState, "SESSION_STATE_", s.state),
        end_reason=enum_out(pb.EndReason, "END_REASON_", s.end_reason),
        queue=queue_out(s.queue),
        owner_rep_id=s.owner or "",
        participant_rep_ids=list(s.participants),
        declined_by_rep_ids=list(s.declined_by),
        history=[
            pb.Move(
                queue=queue_out(m.queue),
                time=_time_fields(m.time),
                cause=enum_out(pb.Origin, "ORIGIN_", m.cause),
            )
            for m in s.history
        ],
        service_channel=s.service_channel,
        preferred_rep_id=s.preferred_rep,
        routing_step=step_state_out(s),
    )


def step_state_out(s: model.Session) -> pb.RoutingStepState | None:
    if not s.steps or s.queue is None or s.queue.kind is not model.QueueKind.TEAM:
        return None
    return pb.RoutingStepState(
        step=s.step,
        step_count=len(s.steps),
        kind=enum_out(pb.StepKind, "STEP_KIND_", s.steps[s.step].kind),
        changes=[
            pb.StepChange(time=timestamp(c.time), step=c.step, skipped=c.skipped)
            for c in s.step_changes
        ],
    )


def steps_in(steps: Any) -> tuple[model.RoutingStep, ...]:
    """Unchecked, like settings_in: an unknown kind becomes None for the engine to
    refuse with the rest."""
    return tuple(
        model.RoutingStep(
            enum_or_none(pb.StepKind, "STEP_KIND_", model.StepKind, step.kind),
            tuple((r.skill, r.min_level) for r in step.skills),
            seconds_of(step.duration),
        )
        for step in steps
    )


def steps_out(steps: tuple[model.RoutingStep, ...]) -> list[pb.RoutingStep]:
    return [
        pb.RoutingStep(
            kind=enum_out(pb.StepKind, "STEP_KIND_", step.kind),
            skills=[pb.RequiredSkill(skill=k, min_level=lv) for k, lv in step.skills],
            duration=duration(step.duration) if step.duration else None,
        )
        for step in steps
    ]


def capacity_in(p: pb.PermissionProfile) -> model.CapacityProfile | None:
    if not p.HasField("capacity"):
        return None
    c = p.capacity
    return model.CapacityProfile(
        c.total_units,
        tuple((ch.channel, ch.units) for ch in c.channels),
        tuple((ch.channel, ch.max_sessions) for ch in c.channels if ch.max_sessions),
    )


def capacity_out(p: model.CapacityProfile | None) -> pb.CapacityProfile | None:
    if p is None:
        return None
    limits = dict(p.limit)
    return pb.CapacityProfile(
        total_units=p.total,
        channels=[
            pb.ChannelCapacity(channel=ch, units=units, max_sessions=limits.get(ch, 0))
            for ch, units in p.cost
        ],
    )


def invitation_out(inv: model.Invitation) -> pb.Invitation:
    return pb.Invitation(
        id=inv.id,
        session_id=inv.session_id,
        inviter_rep_id=inv.inviter,
        queue=queue_out(inv.queue),
        create_time=timestamp(inv.created_time),
    )


def item_out(item: Any) -> pb.QueueItem:
    if item.invitation is not None:
        return pb.QueueItem(invitation=invitation_out(item.invitation))
    return pb.QueueItem(session=session_out(item.session))


# ----------------------------------------------------------------- pagination


def page(
    field_prefix: str, items: list[Any], page_size: int, page_token: str, default: int = 50
) -> tuple[list[Any], str]:
    size = page_limit(f"{field_prefix}page_size", page_size, default)
    start = _token_in(f"{field_prefix}page_token", page_token, "o") if page_token else 0
    chunk = items[start : start + size]
    more = start + size < len(items)
    token = _token_out("o", start + size) if more else ""
    return chunk, token


def page_limit(field: str, page_size: int, default: int = 50) -> int:
    if page_size < 0 or page_size > MAX_PAGE_SIZE:
        raise InvalidArgument(field, f"must be between 0 and {MAX_PAGE_SIZE}")
    return page_size or default


def _token_in(field: str, page_token: str, kind: str) -> int:
    """The number in a page token of this kind ("o": an offset, "k": an order key)."""
    try:
        got, _, number = base64.urlsafe_b64decode(page_token.encode()).decode().partition(":")
        value = int(number)
        if got != kind or not 0 <= value < MAX_TOKEN_NUMBER:
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(field, "not a token this server issued") from None
    return value


def _token_out(kind: str, value: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{value}".encode()).decode()


def cursor_in(field: str, page_token: str) -> int | None:
    """A queue page token: the order key of the last item of the previous page."""
    return _token_in(field, page_token, "k") if page_token else None


def cursor_out(cursor: int | None) -> str:
    return "" if cursor is None else _token_out("k", cursor)


# ----------------------------------------------------------------- directory (admin)


def permissions_in(p: pb.PermissionProfile) -> model.Permissions:
    return model.Permissions(
        max_concurrent_sessions=p.max_concurrent_sessions,
        idle_timeout=seconds_of(p.idle_timeout),
        may_get_next=p.may_get_next,
        may_opt_out=p.may_opt_out,
        may_transfer=p.may_transfer,
        may_use_general_queue=p.may_use_general_queue,
        shown_on_public_site=p.shown_on_public_site,
        capacity=capacity_in(p),
    )


def permissions_out(p: model.Permissions) -> pb.PermissionProfile:
    return pb.PermissionProfile(
        max_concurrent_sessions=p.max_concurrent_sessions,
        idle_timeout=duration(p.idle_timeout),
        may_get_next=p.may_get_next,
        may_opt_out=p.may_opt_out,
        may_transfer=p.may_transfer,
        may_use_general_queue=p.may_use_general_queue,
        shown_on_public_site=p.shown_on_public_site,
        capacity=capacity_out(p.capacity),
    )


def rep_out(r: model.Rep) -> admin_pb.Rep:
    return admin_pb.Rep(
        id=r.id,
        display_name=r.name,
        skills=dict(r.skills),
        permissions=permissions_out(r.permissions),
        team_ids=sorted(r.teams),
        auto_assign=r.auto_assign,
        connected=r.connected,
        load=r.load,
    )


def settings_in(s: admin_pb.QueueSettings) -> model.QueueSettings:
    """Unchecked (the engine checks every field); malformed parts become values the
    engine refuses, so every violation is reported at once."""
    rule = None
    if s.HasField("waiting_rule"):
        w = s.waiting_rule
        overflow = None
        if w.HasField("overflow_queue"):
            try:
                overflow = queue_in("overflow_queue", w.overflow_queue)
            except InvalidArgument:
                overflow = QueueRef(None, "")  # type: ignore[arg-type]  # refused by the engine
        rule = model.WaitingRule(
            seconds_of(w.overdue_after),
            enum_or_none(admin_pb.RuleAction, "RULE_ACTION_", model.RuleAction, w.action),
            overflow,
        )
    return model.QueueSettings(
        algorithm=enum_or_none(admin_pb.Algorithm, "ALGORITHM_", model.Algorithm, s.algorithm),
        offer_timeout=seconds_of(s.offer_timeout, 30.0),
        waiting_rule=rule,
        wrap_up=seconds_of(s.wrap_up),
        max_missed_offers=s.max_missed_offers,
        service_level_threshold=seconds_of(s.service_level_threshold, 20.0),
        steps=steps_in(s.steps),
    )


def settings_out(s: model.QueueSettings) -> admin_pb.QueueSettings:
    out = admin_pb.QueueSettings(
        algorithm=enum_out(admin_pb.Algorithm, "ALGORITHM_", s.algorithm),
        offer_timeout=duration(s.offer_timeout),
        wrap_up=duration(s.wrap_up),
        max_missed_offers=s.max_missed_offers,
        service_level_threshold=duration(s.service_level_threshold),
        steps=steps_out(s.steps),
    )
    if s.waiting_rule is not None:
        w = s.waiting_rule
        out.waiting_rule.CopyFrom(
            admin_pb.WaitingRule(
                overdue_after=duration(w.overdue_after),
                action=enum_out(admin_pb.RuleAction, "RULE_ACTION_", w.action),
                overflow_queue=queue_out(w.overflow),
            )
        )
    return out


def team_out(t: model.Team) -> admin_pb.Team:
    return admin_pb.Team(
        id=t.id,
        display_name=t.name,
        kind=enum_out(admin_pb.TeamKind, "TEAM_KIND_", t.kind),
        queue_settings=settings_out(t.settings),
        member_rep_ids=sorted(t.members),
    )


def team_kind_in(value: int) -> model.TeamKind | None:
    return enum_or_none(
        admin_pb.TeamKind, "TEAM_KIND_", model.TeamKind, value, default=model.TeamKind.STANDARD
    )


def issue_type_in(it: admin_pb.IssueType) -> model.IssueType:
    return model.IssueType(
        it.id,
        it.display_name,
        it.team_id,
        tuple((r.skill, r.min_level) for r in it.required_skills),
        it.priority,
        steps_in(it.steps),
        it.service_channel,
    )


def issue_type_out(it: model.IssueType) -> admin_pb.IssueType:
    return admin_pb.IssueType(
        id=it.id,
        display_name=it.name,
        team_id=it.team_id,
        priority=it.priority,
        required_skills=[pb.RequiredSkill(skill=k, min_level=lv) for k, lv in it.required_skills],
        steps=steps_out(it.steps),
        service_channel=it.channel,
    )


def chat_out(team_id: str, seq: int, rep_id: str, text: str, time: float) -> cpb.ChatMessage:
    return cpb.ChatMessage(
        team_id=team_id, sequence=seq, rep_id=rep_id, text=text, time=timestamp(time)
    )


# ----------------------------------------------------------------- well-known types

# The ranges google/protobuf/duration.proto and timestamp.proto define. A value outside
# them is not a Duration or Timestamp at all: it is refused before anything runs (the
# protobuf runtime would otherwise normalise it silently, or fail to print it later).
MAX_DURATION_SECONDS = 315_576_000_000
MIN_TIMESTAMP_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
MAX_TIMESTAMP_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
MAX_NANOS = 999_999_999

_DURATION = "google.protobuf.Duration"
_TIMESTAMP = "google.protobuf.Timestamp"
# Per message type: its fields that are, or may hold, a Duration or a Timestamp, as
# (name, is_repeated, kind) with kind a type name above or a nested message type.
_PLANS: dict[str, list[tuple[str, bool, Any]]] = {}


def _plan(desc: Any, visiting: frozenset[str] = frozenset()) -> list[tuple[str, bool, Any]]:
    plan = _PLANS.get(desc.full_name)
    if plan is not None:
        return plan
    plan = []
    for f in desc.fields:
        m = f.message_type
        if m is None:
            continue
        if m.full_name in (_DURATION, _TIMESTAMP):
            plan.append((f.name, f.is_repeated, m.full_name))
        elif m.full_name not in visiting and _plan(m, visiting | {desc.full_name}):
            plan.append((f.name, f.is_repeated, m))
    if desc.full_name not in visiting:
        _PLANS[desc.full_name] = plan
    return plan


def _time_value(field: str, kind: str, seconds: int, nanos: int) -> list[tuple[str, str]]:
    out = []
    if not -MAX_NANOS <= nanos <= MAX_NANOS or (kind == _TIMESTAMP and nanos < 0):
        low = 0 if kind == _TIMESTAMP else -MAX_NANOS
        out.append((f"{field}.nanos", f"must be from {low} to {MAX_NANOS}"))
    if kind == _DURATION:
        if not -MAX_DURATION_SECONDS <= seconds <= MAX_DURATION_SECONDS:
            out.append((f"{field}.seconds", "out of the range of a google.protobuf.Duration"))
        elif (seconds < 0 < nanos) or (nanos < 0 < seconds):
            out.append((f"{field}.nanos", "must have the sign of seconds"))
    elif not MIN_TIMESTAMP_SECONDS <= seconds <= MAX_TIMESTAMP_SECONDS:
        out.append((f"{field}.seconds", "out of the range of a google.protobuf.Timestamp"))
    return out


def time_violations(msg: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Every Duration and Timestamp in `msg` (at any depth) outside its type's range,
    as (field path, why); [] at the cost of one lookup for a message that has none."""
    out: list[tuple[str, str]] = []
    for name, repeated, kind in _plan(msg.DESCRIPTOR):
        if repeated:
            values = getattr(msg, name)
            if not values:
                continue
            items = (
                values.items()
                if hasattr(values, "items")
                else ((str(i), v) for i, v in enumerate(values))
            )
            found = [(f"{prefix}{name}[{key}]", value) for key, value in items]
        elif msg.HasField(name):
            found = [(prefix + name, getattr(msg, name))]
        else:
            continue
        for path, value in found:
            if not hasattr(value, "DESCRIPTOR"):
                continue  # a map of scalars
            if isinstance(kind, str):
                out += _time_value(path, kind, value.seconds, value.nanos)
            else:
                out += time_violations(value, path + ".")
    return out


def check_times(msg: Any) -> None:
    """INVALID_ARGUMENT listing every out-of-range Duration and Timestamp in `msg`."""
    found = time_violations(msg)
    if found:
        raise InvalidArgument.of(found)
