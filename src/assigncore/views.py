"""Read views: what consoles, portals and admins read. Nothing here changes state."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, fields, is_dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from . import validation as v
from .errors import (
    NotFound,
)
from .model import (
    GENERAL_QUEUE,
    HelpLink,
    Invitation,
    IssueType,
    Offer,
    QueueKind,
    QueueRef,
    Rep,
    Session,
    SupportButton,
    Team,
    TeamKind,
    personal_queue,
    team_queue,
)
from .queue_order import INVITATION, SLOT_MASK
from .timers import Timer

if TYPE_CHECKING:
    from .state import State


@dataclass(frozen=True, slots=True)
class QueueSummary:
    queue: QueueRef
    name: str
    sessions: int
    invitations: int
    favourite: bool = False
    unread_chat: bool = False


@dataclass(frozen=True, slots=True)
class QueueItem:
    """A session or an invitation as it is listed in a queue."""

    id: str
    session: Session
    invitation: Invitation | None = None


def rep(st: State, rep_id: str) -> Rep:
    return st.rep(rep_id)


def team(st: State, team_id: str) -> Team:
    return st.team(team_id)


def session(st: State, session_id: str) -> Session:
    return st.session(session_id)


def offer(st: State, offer_id: str) -> Offer:
    o = st.offers.get(v.ident("offer_id", offer_id))
    if o is None:
        raise NotFound("offer", offer_id)
    return o


def find_rep(st: State, rep_id: str) -> Rep | None:
    return st.reps.get(rep_id)


def find_offer(st: State, offer_id: str) -> Offer | None:
    return st.offers.get(offer_id)


def session_key_expiry(st: State, key: str) -> float:
    sk = st.keys.get(key)
    if sk is None:
        raise NotFound("session key", "", "session key is not valid")
    return sk.expires_at


def find_session(st: State, session_id: str) -> Session | None:
    return st.sessions.get(session_id)


def invitation(st: State, invitation_id: str) -> Invitation:
    inv = st.invitations.get(v.ident("invitation_id", invitation_id))
    if inv is None:
        raise NotFound("invitation", invitation_id)
    return inv


def invitations(st: State) -> list[Invitation]:
    return list(st.invitations.values())


def offers(st: State) -> list[Offer]:
    return list(st.offers.values())


def queue_audience(st: State, queue: QueueRef, among: Collection[str] | None = None) -> list[str]:
    """The reps who can see a queue (whose consoles list it); with `among`, only those
    in it, walking whichever of the two is smaller (a team of a thousand reps with three
    consoles open costs three lookups). The order is deterministic either way."""
    if among is not None and not among:
        return []
    if queue.kind is QueueKind.PERSONAL:
        found = queue.owner in st.reps and (among is None or queue.owner in among)
        return [queue.owner] if found else []
    if queue.kind is QueueKind.TEAM:
        team = st.teams.get(queue.owner)
        if team is None:
            return []
        if among is None:
            return sorted(team.members)
        if len(among) < len(team.members):
            return [r for r in among if r in team.members]
        return [r for r in sorted(team.members) if r in among]
    return [r.id for r in reps(st) if st.can_see(r, queue) and (among is None or r.id in among)]


def can_see_session(st: State, rep_id: str, session: Session) -> bool:
    """A rep sees a session in one of its queues, one it is in, or one it is invited to."""
    rep = st.rep(rep_id)
    if session.owner == rep.id or rep.id in session.participants:
        return True
    if session.queue is not None and st.can_see(rep, session.queue):
        return True
    return any(st.can_see(rep, st.invitations[i].queue) for i in session.invitations)


def reps(st: State) -> list[Rep]:
    return sorted(st.reps.values(), key=lambda r: r.id)


def teams(st: State) -> list[Team]:
    return sorted(st.teams.values(), key=lambda t: t.id)


def issue_type(st: State, issue_type_id: str) -> IssueType:
    it = st.issue_types.get(v.ident("issue_type_id", issue_type_id))
    if it is None:
        raise NotFound("issue type", issue_type_id)
    return it


def support_button(st: State, button_id: str) -> SupportButton:
    button = st.buttons.get(v.ident("support_button_id", button_id))
    if button is None:
        raise NotFound("support button", button_id)
    return button


def help_link(st: State, link_id: str) -> HelpLink:
    link = st.links.get(v.ident("help_link_id", link_id))
    if link is None:
        raise NotFound("help link", link_id)
    return link


def issue_types(st: State) -> list[IssueType]:
    return sorted(st.issue_types.values(), key=lambda i: i.id)


def support_buttons(st: State) -> list[SupportButton]:
    return sorted(st.buttons.values(), key=lambda b: b.id)


def help_links(st: State) -> list[HelpLink]:
    return sorted(st.links.values(), key=lambda x: x.id)


def sessions(st: State) -> list[Session]:
    return list(st.sessions.values())


def eligible(st: State, rep_id: str) -> bool:
    return st.reps_table.eligible(st.rep(rep_id).ordinal)


def item(st: State, key: int) -> QueueItem:
    if key & SLOT_MASK == INVITATION:
        inv = st.invitations[st.inv_by_key[key]]
        return QueueItem(inv.id, st.sessions[inv.session_id], inv)
    s = st.session_by_slot[key & SLOT_MASK]
    assert s is not None
    return QueueItem(s.id, s)


def queue_items(st: State, queue: QueueRef) -> list[QueueItem]:
    """A queue's sessions and invitations in rule-4 order (all of them)."""
    index = st.queues[st.queue_ref("queue", queue)]
    keys = sorted([*index.sessions, *index.invitations])
    return [item(st, key) for key in keys]


def queue_page(
    st: State, queue: QueueRef, after: int | None, limit: int
) -> tuple[list[QueueItem], int | None]:
    """Up to `limit` items of a queue in rule-4 order after the cursor `after` (None:
    from the head), and the cursor of the next page (None on the last page).
    O(log n + limit): cursors are order keys, so a page never moves when items
    ahead of it come and go."""
    index = st.queues[st.queue_ref("queue", queue)]
    if after is not None:
        v.integer("after", after, 0, 2**128)
    v.integer("limit", limit, 1, 1000)
    keys, cursor = index.page(after, limit)
    return [item(st, key) for key in keys], cursor


def queue_position(st: State, session_id: str) -> int:
    """1-based place of a waiting session among its queue's sessions in rule-4
    order (0 if not waiting): O(log n)."""
    s = st.session(session_id)
    if s.queue is None:
        return 0
    return st.queues[s.queue].position(s.key)


def rep_teams(st: State, rep_id: str) -> list[Team]:
    """A rep's teams as its console lists them: starred first, then by name."""
    rep = st.rep(rep_id)
    return sorted(
        (st.teams[t] for t in rep.teams),
        key=lambda t: (t.id not in rep.favourites, t.name.lower(), t.id),
    )


def rep_queues(st: State, rep_id: str) -> list[QueueSummary]:
    """The queues a rep's console lists: personal, favourite teams, other teams (by
    name), then the general queue if permitted."""
    rep = st.rep(rep_id)

    def summary(q: QueueRef, name: str, team: Team | None = None) -> QueueSummary:
        index = st.queues[q]
        return QueueSummary(
            q,
            name,
            len(index.sessions),
            len(index.invitations),
            team is not None and team.id in rep.favourites,
            team is not None and team.chat_seq > rep.chat_read.get(team.id, 0),
        )

    teams = rep_teams(st, rep_id)
    out = [summary(personal_queue(rep.id), rep.name)]
    out += [summary(team_queue(t.id), t.name, t) for t in teams]
    if st.can_see(rep, GENERAL_QUEUE):
        out.append(summary(GENERAL_QUEUE, "General"))
    return out


def search_teams(st: State, query: str = "", kind: TeamKind | None = None) -> list[Team]:
    q = v.text("query", query).lower()
    return [
        t
        for t in teams(st)
        if (kind is None or t.kind is kind) and (q in t.name.lower() or q in t.id.lower())
    ]


def search_reps(st: State, query: str = "") -> list[Rep]:
    q = v.text("query", query).lower()
    return [r for r in reps(st) if q in r.name.lower() or q in r.id.lower()]


def snapshot(st: State) -> dict[str, Any]:
    """All routing state as plain data, for tests and (later) the journal's
    snapshots. Two equal snapshots mean equal routing state."""

    def plain(x: Any) -> Any:
        if isinstance(x, Timer):  # a pending timer, by what it would do and when
            return ("timer", x.deadline, x.kind.value, plain(x.payload), x.alive)
        if isinstance(x, Enum):
            return x.value
        if isinstance(x, QueueRef):
            return str(x)
        if is_dataclass(x) and not isinstance(x, type):
            return {f.name: plain(getattr(x, f.name)) for f in fields(x)}
        if isinstance(x, dict):
            return {str(plain(k)): plain(val) for k, val in x.items()}
        if isinstance(x, set | frozenset):
            return sorted(plain(i) for i in x)
        if isinstance(x, list | tuple):
            return [plain(i) for i in x]
        return x

    rt, table = st.reps_table, st.sessions_table
    return {
        "now": st.now,
        "reps": plain(st.reps),
        "teams": plain(st.teams),
        "skills": dict(st.skills),
        "issue_types": plain(st.issue_types),
        "buttons": plain(st.buttons),
        "links": plain(st.links),
        "keys": plain(st.keys),
        "sessions": plain(st.sessions),
        "offers": plain(st.offers),
        "invitations": plain(st.invitations),
        "queues": {str(q): [i.id for i in queue_items(st, q)] for q in st.queues},
        "ready": {
            str(q): {
                repr(key): [list(pool.ready), sorted(pool.parked)]
                for key, pool in sorted(index.pools.items(), key=lambda kv: repr(kv[0]))
            }
            for q, index in st.queues.items()
            if index.pools is not None
        },
        "steps": {
            repr(key): list(fifo.entries.items())
            for key, fifo in sorted(st.step_fifos.items(), key=lambda kv: repr(kv[0]))
        },
        "channels": dict(st.channels),
        "dirty": sorted(map(repr, st.dirty)),
        "team_eligible": list(st.team_eligible),
        "reported": plain(st.reported),
        "counters": dict(st.counters),
        "entropy": [st.entropy.secret.hex(), st.entropy.counter],
        "timers": plain(st.timers.pending()),
        "rep_columns": [
            col[: rt.n].tolist() for col in (rt.load, rt.cap, rt.flags, rt.avail, rt.rank_key)
        ]
        + [rt.skills[: rt.n].tolist()],
        "session_columns": [
            table.team[: table.n].tolist(),
            table.decl_cnt[: table.n].tolist(),
            sorted(table.free),
        ],
        "team_columns": [
            st.teams_table.alg[: st.teams_table.n].tolist(),
            [sorted(st.teams_table.members(t).tolist()) for t in range(st.teams_table.n)],
        ],
    }
