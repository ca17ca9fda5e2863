"""Intake: sessions entering queues by each origin (DESIGN.md section 1), session keys
and the guard against guessing them, and cancellation by the customer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import capacity, queue_order, routing
from . import validation as v
from .errors import (
    FailedPrecondition,
    NotFound,
    shown,
)
from .model import (
    GENERAL_QUEUE,
    Channel,
    Customer,
    EndReason,
    IssueType,
    Origin,
    QueueRef,
    Session,
    SessionKey,
    SessionState,
    personal_queue,
    team_queue,
)
from .queue_order import rule4_key
from .timers import TimerKind

if TYPE_CHECKING:
    from .state import State

KEY_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read out over the phone


def on_key_expiry(st: State, key: str) -> None:
    st.keys.pop(key, None)


def check_customer(customer: Any, c: v.Checks) -> None:
    if not isinstance(customer, Customer):
        c.violations.append(("customer", "required"))
        return
    c(v.text, "customer.name", customer.name, required=True)
    c(v.text, "customer.company", customer.company)
    c(v.text, "customer.details", customer.details, max_len=v.MAX_TEXT_LEN)


def intake_checks(
    st: State,
    customer: Any,
    portal: Any,
    *ids: tuple[str, Any],
    service_channel: Any = "",
    preferred_rep: Any = "",
) -> None:
    """Every field of an intake command, before anything is looked up; then the
    routing hints' lookups (a declared channel; a preferred rep need not exist yet:
    its step is skipped when nobody matches)."""
    c = v.Checks()
    for field_name, value in ids:
        c(v.ident, field_name, value)
    check_customer(customer, c)
    if portal != "":
        c(v.ident, "portal", portal)
    if preferred_rep != "":
        c(v.ident, "preferred_rep_id", preferred_rep)
    if service_channel is not None and service_channel != "":
        c(v.ident, "service_channel", service_channel)
    c.done()
    if service_channel:
        capacity.check_channel(st, "service_channel", service_channel)


def new_session(
    st: State,
    queue: QueueRef,
    origin: Origin,
    customer: Customer,
    portal: str,
    channel: Channel = Channel.FULL_CLIENT,
    issue_type: IssueType | None = None,
    service_channel: str | None = None,
    preferred_rep: str = "",
) -> Session:
    seq = st.next_seq()
    required = issue_type.required_skills if issue_type else ()
    priority = issue_type.priority if issue_type else 0
    # seq grows with creation time (the clock never goes back), so the table can
    # keep rule-4 order by seq alone.
    slot = st.sessions_table.alloc(
        priority,
        seq,
        [st.skills[name] for name, _ in required],
        [level for _, level in required],
    )
    s = Session(
        st.next_id("session"),
        seq,
        slot,
        customer,
        channel,
        origin,
        issue_type.id if issue_type else "",
        required,
        priority,
        st.now,
        st.now,
        portal=portal,
        key=rule4_key(priority, seq, slot),
        service_channel=(issue_type.channel if issue_type else "")
        if service_channel is None
        else service_channel,
        preferred_rep=preferred_rep,
    )
    if s.service_channel:  # (alloc wrote the default channel's bit)
        st.sessions_table.chan_v[slot] = 1 << st.channels[s.service_channel]
    st.sessions[s.id] = s
    if slot == len(st.session_by_slot):
        st.session_by_slot.append(s)
    else:
        st.session_by_slot[slot] = s
    queue_order.enqueue(st, s, queue, origin)
    return s


def start_with_key(
    st: State,
    key: str,
    customer: Customer,
    portal: str = "",
    address: str = "",
    service_channel: str | None = None,
) -> Session:
    """A customer entered a session key a rep generated: the rep's personal queue.
    Unknown, used and expired keys are refused alike. Failures are counted per
    customer `address` behind the `portal`, and per portal."""
    c = v.Checks()
    if not isinstance(key, str) or len(key) > v.MAX_SESSION_KEY_LEN:
        c.violations.append(
            ("key", f"must be a string of at most {v.MAX_SESSION_KEY_LEN} characters")
        )
    check_customer(customer, c)
    if portal != "":
        c(v.ident, "portal", portal)
    c(v.text, "address", address, max_len=v.MAX_ADDRESS_LEN)
    if service_channel:
        c(v.ident, "service_channel", service_channel)
    c.done()
    if service_channel:
        capacity.check_channel(st, "service_channel", service_channel)
    st.key_guard.check(portal, address, st.now)
    normalized = key.replace("-", "").replace(" ", "").upper()
    sk = st.keys.get(normalized)
    if sk is None or sk.expires_at <= st.now:
        st.key_guard.fail(portal, address, st.now)
        raise NotFound("session key", "", "session key is not valid")
    del st.keys[normalized]
    st.timers.cancel(sk.timer)
    return new_session(
        st,
        personal_queue(sk.rep_id),
        Origin.SESSION_KEY,
        customer,
        portal,
        service_channel=service_channel,
    )


def start_with_rep(
    st: State,
    rep_id: str,
    customer: Customer,
    portal: str = "",
    service_channel: str | None = None,
) -> Session:
    """The customer picked a rep on the public site."""
    intake_checks(st, customer, portal, ("rep_id", rep_id), service_channel=service_channel)
    rep = st.rep(rep_id)
    if not rep.permissions.shown_on_public_site:
        raise NotFound("rep", rep_id)
    return new_session(
        st,
        personal_queue(rep.id),
        Origin.PUBLIC_SITE,
        customer,
        portal,
        service_channel=service_channel,
    )


def start_from_button(
    st: State,
    button_id: str,
    customer: Customer,
    portal: str = "",
    service_channel: str | None = None,
    preferred_rep: str = "",
) -> Session:
    intake_checks(
        st,
        customer,
        portal,
        ("button_id", button_id),
        service_channel=service_channel,
        preferred_rep=preferred_rep,
    )
    button = st.buttons.get(button_id)
    if button is None:
        raise NotFound("support button", button_id)
    return new_session(
        st,
        button.target.queue,
        Origin.SUPPORT_BUTTON,
        customer,
        portal,
        service_channel=service_channel,
        preferred_rep=preferred_rep,
    )


def start_from_issue(
    st: State,
    issue_type_id: str,
    customer: Customer,
    portal: str = "",
    service_channel: str | None = None,
    preferred_rep: str = "",
) -> Session:
    """`service_channel` None: the issue type's channel."""
    intake_checks(
        st,
        customer,
        portal,
        ("issue_type_id", issue_type_id),
        service_channel=service_channel,
        preferred_rep=preferred_rep,
    )
    it = st.issue_types.get(issue_type_id)
    if it is None:
        raise NotFound("issue type", issue_type_id)
    return new_session(
        st,
        team_queue(it.team_id),
        Origin.ISSUE_FORM,
        customer,
        portal,
        issue_type=it,
        service_channel=service_channel,
        preferred_rep=preferred_rep,
    )


def start_from_help_link(
    st: State,
    link_id: str,
    customer: Customer,
    portal: str = "",
    service_channel: str | None = None,
    preferred_rep: str = "",
) -> Session:
    intake_checks(
        st,
        customer,
        portal,
        ("link_id", link_id),
        service_channel=service_channel,
        preferred_rep=preferred_rep,
    )
    link = st.links.get(link_id)
    if link is None:
        raise NotFound("help link", link_id)
    return new_session(
        st,
        link.target.queue,
        Origin.HELP_LINK,
        customer,
        portal,
        channel=Channel.BROWSER_SHARING,
        service_channel=service_channel,
        preferred_rep=preferred_rep,
    )


def start_undesignated(
    st: State, customer: Customer, portal: str = "", service_channel: str | None = None
) -> Session:
    """A request meant for no particular team or rep: the general queue."""
    intake_checks(st, customer, portal, service_channel=service_channel)
    if not st.config.general_queue_enabled:
        raise FailedPrecondition("the general queue is disabled on this desk")
    return new_session(
        st, GENERAL_QUEUE, Origin.UNDESIGNATED, customer, portal, service_channel=service_channel
    )


def cancel_session(st: State, session_id: str) -> None:
    """The customer left before or during support."""
    s = st.session(session_id)
    if s.state is SessionState.ENDED:
        raise FailedPrecondition(f"session {shown(session_id)} has already ended")
    routing.end(st, s, EndReason.ABANDONED)


def generate_session_key(st: State, rep_id: str, ttl: float | None = None) -> str:
    rep = st.rep(rep_id)
    ttl = st.config.session_key_ttl if ttl is None else v.seconds("ttl", ttl, 60.0)
    length = st.config.session_key_length
    while True:
        bits = st.entropy.bits(5 * length)  # 5 bits per character of a 32-letter alphabet
        key = "".join(KEY_ALPHABET[(bits >> (5 * i)) & 31] for i in range(length))
        if key not in st.keys:
            break
    sk = SessionKey(key, rep.id, st.now + ttl)
    sk.timer = st.timers.schedule(sk.expires_at, TimerKind.KEY_EXPIRY, key)
    st.keys[key] = sk
    return key
