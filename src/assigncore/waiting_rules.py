"""Waiting rules (rule 8): overdue alerts and moves to an overflow queue, bounded
against ping-pong."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import queue_order, routing
from .events import (
    SessionOverdue,
)
from .model import (
    Origin,
    QueueKind,
    RescindReason,
    RuleAction,
    Team,
    team_queue,
)
from .queue_order import SLOT_MASK
from .timers import TimerKind

if TYPE_CHECKING:
    from .state import State


def on_waiting_rule(st: State, payload: tuple[str, int]) -> None:
    session_id, entry_seq = payload
    s = st.sessions.get(session_id)
    if s is None or s.entry_seq != entry_seq or s.queue is None:
        return
    s.rule_timer = None
    assert s.queue.kind is QueueKind.TEAM
    rule = st.teams[s.queue.owner].settings.waiting_rule
    if rule is None:
        return
    exhausted = s.rule_moves >= st.config.max_rule_moves
    if rule.action is RuleAction.ALERT or exhausted or rule.overflow is None:
        if not s.overdue_alerted:
            s.overdue_alerted = True
            st.emit(
                SessionOverdue(
                    st.now, s.id, s.queue, rule.action is RuleAction.TRANSFER and exhausted
                )
            )
        return
    routing.rescind(st, s, RescindReason.SESSION_MOVED)
    queue_order.dequeue(st, s)
    s.rule_moves += 1
    queue_order.enqueue(st, s, rule.overflow, Origin.WAITING_RULE)


def rearm_waiting_rules(st: State, team: Team) -> None:
    rule = team.settings.waiting_rule
    for key in st.queues[team_queue(team.id)].sessions:
        s = st.session_by_slot[key & SLOT_MASK]
        assert s is not None
        st.timers.cancel(s.rule_timer)
        s.rule_timer = None
        if rule is not None:
            s.rule_timer = st.timers.schedule(
                max(st.now, s.queued_time + rule.overdue_after),
                TimerKind.WAITING_RULE,
                (s.id, s.entry_seq),
            )
