"""Fan-out of engine events to rep console streams.

Every rep has a feed: a sequence number that grows by one per event, and a buffer of
the last N events so a console that reconnects with `resume_after` gets what it missed.
A feed is created when the rep first subscribes and outlives the stream (that is what
lets a reconnecting console resume).

A console stream attached to a feed has an outbox: the events not yet written to it.
The outbox is bounded. A console that stops reading (its HTTP/2 window stays shut, so
the handler cannot write) fills it; the stream is then detached at once, the rep goes
through the connection-lost path, and the stream ends with RESOURCE_EXHAUSTED as soon as
its handler can run, telling the console to resume from the feed buffer (which holds
what the outbox did). Revoking the token a stream was opened with ends it the same way,
with UNAUTHENTICATED."""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any

import grpc

from assigncore import events as ev
from assigncore.engine import Engine
from assigncore.model import QueueKind, QueueRef, RescindReason, Session
from assigncore.v1 import common_pb2 as pb
from assigncore.v1 import console_service_pb2 as cpb

from ..api import convert, wire
from ..api.errors import info_status, not_leader_status, plain_status


class StreamEnd(Enum):
    """Why a console stream was ended from outside its handler."""

    REPLACED = "REPLACED"  # a newer stream for the same rep took over
    SIGNED_OUT = "SIGNED_OUT"
    DRAINING = "DRAINING"  # the server is shutting down
    REVOKED = "REVOKED"  # its token was revoked, or the rep deleted
    OVERFLOW = "OVERFLOW"  # the console stopped reading and its outbox filled
    UNAVAILABLE = "UNAVAILABLE"  # the journal cannot be written: the desk is rebuilt
    DEPOSED = "DEPOSED"  # this process no longer leads the desk (hub.not_leader says who)
    MALFORMED = "MALFORMED"  # Connect: the console sent bytes that are not a request
    CLOSED = "CLOSED"  # Intake: the portal sent its last call (half-closed)
    FAILED = "FAILED"  # Intake: its reader failed (a bug): INTERNAL, applied calls answered


class IntakeStream:
    """One open Intake stream: the results of the calls applied, in order, each with
    what it must wait for to be durable; once ended, why. The reader stops reading while
    `limit` results wait (`room`)."""

    __slots__ = ("token_id", "results", "wake", "room", "ended", "limit")

    def __init__(self, token_id: str, limit: int) -> None:
        self.token_id = token_id
        self.results: deque[Any] = deque()
        self.wake = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.ended: StreamEnd | None = None
        self.limit = limit

    def push(self, result: Any) -> None:
        self.results.append(result)
        if len(self.results) >= self.limit:
            self.room.clear()
        self.wake.set()

    def take(self) -> Any:
        result = self.results.popleft()
        if len(self.results) < self.limit:
            self.room.set()
        return result

    def end(self, why: StreamEnd) -> None:
        """No call read from now on is applied; the results already pushed still go."""
        if self.ended is None:
            self.ended = why
        self.wake.set()
        self.room.set()


class ConsoleStream:
    """One open Subscribe stream: its outbox and, once ended, why."""

    __slots__ = ("rep_id", "token_id", "outbox", "wake", "ended")

    def __init__(self, rep_id: str, token_id: str) -> None:
        self.rep_id, self.token_id = rep_id, token_id
        self.outbox: deque[Any] = deque()  # events; on Connect, action results too
        self.wake = asyncio.Event()
        self.ended: StreamEnd | None = None

    def end(self, why: StreamEnd) -> None:
        if self.ended is None:
            self.ended = why
            self.outbox.clear()
        self.wake.set()

    async def next(self) -> Any:
        """The next event to write, or why the stream ends (which wins over events)."""
        while True:
            if self.ended is not None:
                return self.ended
            if self.outbox:
                return self.outbox.popleft()
            self.wake.clear()
            await self.wake.wait()


def stream_end_status(
    why: StreamEnd, feed: Feed | None, not_leader: dict[str, str] | None = None
) -> grpc.Status:
    """The status a stream ended from outside ends with (not SIGNED_OUT or DRAINING);
    an Intake stream has no feed (and never overflows)."""
    if why is StreamEnd.REPLACED:
        return plain_status(
            grpc.StatusCode.ABORTED, "replaced by a newer console stream for this rep"
        )
    if why is StreamEnd.REVOKED:
        return plain_status(grpc.StatusCode.UNAUTHENTICATED, "the access token was revoked")
    if why is StreamEnd.DEPOSED:
        return not_leader_status(not_leader or {})
    if why is StreamEnd.UNAVAILABLE:
        return plain_status(
            grpc.StatusCode.UNAVAILABLE,
            "the server cannot write its journal and is recovering; reconnect with "
            "resume_after = the last sequence you processed",
        )
    assert feed is not None
    oldest = feed.buffer[0].sequence if feed.buffer else feed.seq + 1
    return info_status(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "this console stopped reading and too many events were waiting for it; reconnect "
        f"with resume_after = the last sequence you processed (events from {oldest} on "
        "are held), or reload queues if that is older",
        reason="CONSOLE_OUTBOX_OVERFLOW",
        metadata={"oldest_held": str(oldest), "latest": str(feed.seq)},
    )


class Numbered:
    """One event of a rep's feed as it goes on the wire: its sequence number and the
    encoded SubscribeResponse."""

    __slots__ = ("sequence", "data")

    def __init__(self, sequence: int, data: bytes) -> None:
        self.sequence, self.data = sequence, data


class Feed:
    """A rep's numbered events. `seq` counts every event; `released` is the last one
    whose journal record is durable: only those leave the process."""

    __slots__ = ("seq", "released", "buffer", "stream")

    def __init__(self, size: int) -> None:
        self.seq = 0
        self.released = 0
        self.buffer: deque[Numbered] = deque(maxlen=size)
        self.stream: ConsoleStream | None = None

    def since(self, resume_after: int) -> list[Numbered] | None:
        """Released events after `resume_after`, or None if some of them are no longer
        held (or `resume_after` is ahead of this feed: the console talks of another
        desk). Events not yet released follow on the stream when they are."""
        if resume_after == self.released:
            return []
        if resume_after > self.released:
            return None
        oldest = self.buffer[0].sequence if self.buffer else self.seq + 1
        if resume_after + 1 < oldest:
            return None
        return [m for m in self.buffer if resume_after < m.sequence <= self.released]


# How a queue item changed within one command (see Hub.settle).
ADDED, CHANGED, REMOVED = "added", "changed", "removed"


class _Item:
    """A queue item's change in this command, merged with its other changes in it."""

    __slots__ = ("kind", "queue", "item_id", "time", "recipients", "invitation")

    def __init__(
        self,
        kind: str,
        queue: QueueRef,
        item_id: str,
        time: float,
        recipients: list[str],
        invitation: pb.Invitation | None,
    ) -> None:
        self.kind, self.queue, self.item_id, self.time = kind, queue, item_id, time
        self.recipients, self.invitation = recipients, invitation


class _Out:
    """Any other event of this command: who gets it, and its message (or how to build
    it from the state the command left)."""

    __slots__ = ("recipients", "time", "field", "message")

    def __init__(
        self, recipients: list[str], time: float, field: str, message: Any | Callable[[], Any]
    ) -> None:
        self.recipients, self.time, self.field, self.message = recipients, time, field, message


class Hub:
    def __init__(self, engine: Engine, buffer_size: int, outbox_limit: int | None = None) -> None:
        self.engine = engine
        self.buffer_size = buffer_size
        self.outbox_limit = outbox_limit or buffer_size
        self.feeds: dict[str, Feed] = {}
        self.intakes: set[IntakeStream] = set()  # open Intake streams (portals)
        self.draining = False
        # Who leads the desk, for streams ended because this process no longer does.
        self.not_leader: dict[str, str] = {}
        # With a journal, events wait here until their record is durable (release()).
        self.holding = False
        self.woke = False  # a stream was woken since the last reply (Runtime.durable)
        self.held: list[tuple[Feed, Numbered]] = []
        # Told when a rep's feed is created (the journal's input; a replay creates it
        # again at the same point, so every event gets the same number).
        self.on_feed: Callable[[str], None] | None = None
        # Called (outside any engine command) when a rep's stream ended from outside its
        # handler and the rep must go through the connection-lost path.
        self.on_lost: Callable[[str], None] = lambda rep_id: None
        # What the running command told consoles so far, sent when it is over (settle).
        self._plan: list[_Item | _Out | None] = []
        self._items: dict[tuple[QueueRef, str], int] = {}  # queue item -> its plan entry
        self._offers: dict[str, int] = {}  # offer made in this command -> its plan entry
        self._changes: set[tuple[str, str]] = set()  # (rep, session) told of a change
        # Session messages built since the last command: every event and reply that
        # shows a session shares one (the state only changes in commands).
        self._sessions: dict[str, pb.Session] = {}
        self._stamp_time, self._stamp_bytes = math.nan, b""
        # Statistics watchers wait on one future, resolved when a command caused events
        # (or a stream must end: revocation, draining).
        self.generation = 0  # events so far
        self._watch: asyncio.Future[None] | None = None
        self._watch_generation = 0

    def changed(self) -> asyncio.Future[None]:
        """Resolved once events happened after this call (see WatchStatistics)."""
        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_future()
            self._watch_generation = self.generation
        return self._watch

    def wake_watchers(self) -> None:
        if self._watch is not None:
            if not self._watch.done():
                self._watch.set_result(None)
            self._watch = None

    def feed(self, rep_id: str) -> Feed:
        f = self.feeds.get(rep_id)
        if f is None:
            f = self.feeds[rep_id] = Feed(self.buffer_size)
            if self.on_feed is not None:
                self.on_feed(rep_id)
        return f

    # ------------------------------------------------------------- streams

    def attach(self, rep_id: str, token_id: str) -> ConsoleStream:
        """A new stream becomes the rep's; the one it replaces ends (ABORTED)."""
        f = self.feed(rep_id)
        if f.stream is not None:
            f.stream.end(StreamEnd.REPLACED)
        stream = f.stream = ConsoleStream(rep_id, token_id)
        return stream

    def detach(self, stream: ConsoleStream) -> bool:
        """Stops feeding `stream`; True if it was still the rep's current stream."""
        f = self.feeds.get(stream.rep_id)
        if f is None or f.stream is not stream:
            return False
        f.stream = None
        return True

    def end(self, stream: ConsoleStream, why: StreamEnd, lost: bool) -> None:
        """Ends a stream from outside its handler; with `lost`, the rep goes through the
        connection-lost path now, not when the handler gets to run (a console that does
        not read may block it for long)."""
        current = self.detach(stream)
        stream.end(why)
        if lost and current and not self.draining:
            self.on_lost(stream.rep_id)

    def end_token(self, token_id: str) -> None:
        self.wake_watchers()
        for f in list(self.feeds.values()):
            if f.stream is not None and f.stream.token_id == token_id:
                self.end(f.stream, StreamEnd.REVOKED, lost=True)
        for intake in self.intakes:
            if intake.token_id == token_id:
                intake.end(StreamEnd.REVOKED)

    def stream_of(self, rep_id: str) -> ConsoleStream | None:
        f = self.feeds.get(rep_id)
        return None if f is None else f.stream

    def _send(self, rep_ids: Iterable[str], time: float, field: str, message: Any) -> None:
        """Append an event to each rep's feed: its body is encoded once, for all of
        them. Reps that never opened a console have no feed and get nothing: their first
        Subscribe starts fresh anyway."""
        feeds = self.feeds
        body = stamp = b""
        for rep_id in rep_ids:
            f = feeds.get(rep_id)
            if f is None:
                continue
            if not body:
                body = wire.body(**{field: message})
                stamp = self._stamp(time)
            f.seq += 1
            out = Numbered(f.seq, wire.numbered(f.seq, stamp, body))
            f.buffer.append(out)
            if self.holding:
                self.held.append((f, out))
            else:
                self._deliver(f, out)

    def _stamp(self, time: float) -> bytes:
        if time != self._stamp_time:
            self._stamp_time, self._stamp_bytes = time, wire.stamp(convert.timestamp(time))
        return self._stamp_bytes

    def push(self, stream: ConsoleStream, item: Any) -> None:
        """Into a stream's outbox: a released event, or something for that stream alone
        (an action's result on Connect, in order with its events)."""
        if stream.ended is not None:
            return
        if len(stream.outbox) >= self.outbox_limit:
            self._overflow(stream)
        else:
            stream.outbox.append(item)
            stream.wake.set()
            self.woke = True

    def take_held(self) -> list[tuple[Feed, Numbered]]:
        held, self.held = self.held, []
        return held

    def release(self, held: list[tuple[Feed, Numbered]]) -> None:
        """The records of these events are durable: they go out."""
        for f, msg in held:
            self._deliver(f, msg)

    def _deliver(self, f: Feed, msg: Numbered) -> None:
        f.released = msg.sequence
        if f.stream is not None:
            self.push(f.stream, msg)

    def _overflow(self, stream: ConsoleStream) -> None:
        # Called as an engine command ends (settle) or as a journal entry is released,
        # so the disconnect it leads to (itself a command) runs next, on the loop.
        self.end(stream, StreamEnd.OVERFLOW, lost=False)
        if not self.draining:
            asyncio.get_running_loop().call_soon(self.on_lost, stream.rep_id)

    def drain(self, why: StreamEnd = StreamEnd.DRAINING) -> None:
        """Ends every stream (the server stops, or this desk is being rebuilt)."""
        self.draining = True
        self.wake_watchers()
        for f in self.feeds.values():
            if f.stream is not None:
                f.stream.end(why)
        for intake in self.intakes:
            intake.end(why)

    # ------------------------------------------------------------- audiences

    def audience(self, queue: QueueRef) -> list[str]:
        """The subscribed reps who can see a queue: only they get events. For the general
        queue this walks the feeds, not every rep of the desk."""
        if not self.feeds:
            return []
        if queue.kind is QueueKind.GENERAL:
            reps = (self.engine.find_rep(r) for r in self.feeds)
            return [r.id for r in reps if r is not None and self.engine.can_see(r, queue)]
        return self.engine.queue_audience(queue, self.feeds)

    # ------------------------------------------------------------- messages

    def session_message(self, s: Session) -> pb.Session:
        """The session as the state is now, built once between two commands."""
        msg = self._sessions.get(s.id)
        if msg is None:
            msg = self._sessions[s.id] = convert.session_out(s)
        return msg

    # ------------------------------------------------------------- engine listener

    def on_event(self, e: ev.Event) -> None:
        """Told of each event while its command runs: what it means for consoles joins
        the command's plan (audiences are taken now, messages built at the end)."""
        self.generation += 1
        kind = type(e)
        handler = _HANDLERS.get(kind)
        if handler is None:
            handler = _HANDLERS[kind] = getattr(Hub, "_on_" + kind.__name__, _ignore)
        handler(self, e)

    def settle(self) -> None:
        """The command is over: its plan goes out, each message built once from the
        state it left. Changes to one queue item within the command arrive merged, as
        one event (added and then changed: added as it is now; added and then removed:
        nothing), and an offer made and withdrawn within it is not sent at all."""
        self._sessions.clear()  # the state may have changed
        if self._watch is not None and self.generation != self._watch_generation:
            self.wake_watchers()
        plan = self._plan
        if not plan:
            return
        self._plan, self._items, self._offers = [], {}, {}
        self._changes.clear()
        for entry in plan:
            if entry is None:
                continue
            if isinstance(entry, _Out):
                message = entry.message() if callable(entry.message) else entry.message
                if message is not None:
                    self._send(entry.recipients, entry.time, entry.field, message)
                continue
            field, message = self._item_message(entry)
            if message is not None:
                self._send(entry.recipients, entry.time, field, message)

    def _item_message(self, item: _Item) -> tuple[str, Any]:
        queue = convert.queue_out(item.queue)
        if item.kind == REMOVED:
            return "queue_item_removed", cpb.QueueItemRemoved(queue=queue, item_id=item.item_id)
        if item.invitation is not None:
            content = pb.QueueItem(invitation=item.invitation)
        else:
            s = self.engine.find_session(item.item_id)
            if s is None or s.queue != item.queue:
                return "", None  # no longer there (its removal is another entry)
            content = pb.QueueItem(session=self.session_message(s))
        if item.kind == ADDED:
            return "queue_item_added", cpb.QueueItemAdded(queue=queue, item=content)
        return "queue_item_changed", cpb.QueueItemChanged(queue=queue, item=content)

    def _out(self, rep_ids: list[str], time: float, field: str, message: Any) -> int:
        self._plan.append(_Out(rep_ids, time, field, message))
        return len(self._plan) - 1

    def _item(
        self,
        kind: str,
        queue: QueueRef,
        item_id: str,
        time: float,
        recipients: list[str],
        invitation: pb.Invitation | None = None,
    ) -> None:
        if not recipients:
            return
        key = (queue, item_id)
        at = self._items.get(key)
        entry = None if at is None else self._plan[at]
        if not isinstance(entry, _Item) or entry.kind == REMOVED:
            self._items[key] = len(self._plan)
            self._plan.append(_Item(kind, queue, item_id, time, recipients, invitation))
            return
        if kind == REMOVED and entry.kind == ADDED:  # never seen: nothing to tell
            self._plan[at] = None  # type: ignore[index]
            del self._items[key]
            return
        if kind == REMOVED:
            entry.kind = REMOVED
        known = set(entry.recipients)
        entry.recipients = [*entry.recipients, *(r for r in recipients if r not in known)]
        entry.time = time

    def _on_SessionQueued(self, e: ev.SessionQueued) -> None:
        self._item(ADDED, e.queue, e.session_id, e.time, self.audience(e.queue))

    def _on_SessionDequeued(self, e: ev.SessionDequeued) -> None:
        self._item(REMOVED, e.queue, e.session_id, e.time, self.audience(e.queue))

    def _changed(self, session_id: str, time: float, skip: str = "") -> None:
        s = self.engine.find_session(session_id)
        if s is None or s.queue is None:
            return
        at = self._items.get((s.queue, session_id))
        added = None if at is None else self._plan[at]
        if isinstance(added, _Item) and added.kind == ADDED:
            added.time = time  # its whole audience hears of it already, as it ends up
            return
        audience = [r for r in self.audience(s.queue) if r != skip]
        self._item(CHANGED, s.queue, session_id, time, audience)

    def _on_StepChanged(self, e: ev.StepChanged) -> None:
        self._changed(e.session_id, e.time)  # the item shows its routing step

    def _on_OfferMade(self, e: ev.OfferMade) -> None:
        if e.rep_id not in self.feeds:  # only a connected rep is offered anything
            return

        def build() -> cpb.OfferMade | None:
            s = self.engine.find_session(e.session_id)
            if s is None:
                return None
            return cpb.OfferMade(
                offer_id=e.offer_id,
                session=self.session_message(s),
                deadline_time=convert.timestamp(e.deadline),
                audible=e.audible,
            )

        self._offers[e.offer_id] = self._out([e.rep_id], e.time, "offer_made", build)
        # The offered rep learns it from offer_made; the rest of the queue's audience
        # sees the item change state.
        self._changed(e.session_id, e.time, skip=e.rep_id)

    def _rescinded(self, e: ev.OfferRescinded | ev.OfferDeclined, reason: RescindReason) -> None:
        made = self._offers.pop(e.offer_id, None)
        if made is not None:  # made and withdrawn in one command: never seen
            self._plan[made] = None
            return
        self._out(
            [e.rep_id],
            e.time,
            "offer_rescinded",
            cpb.OfferRescinded(
                offer_id=e.offer_id,
                session_id=e.session_id,
                reason=convert.enum_out(cpb.RescindReason, "RESCIND_REASON_", reason),
            ),
        )

    def _on_OfferRescinded(self, e: ev.OfferRescinded) -> None:
        self._rescinded(e, e.reason)
        self._changed(e.session_id, e.time)

    def _on_OfferDeclined(self, e: ev.OfferDeclined) -> None:
        if e.timed_out:  # the rep did not answer: tell it the offer is gone, and why
            self._rescinded(e, RescindReason.TIMED_OUT)
        self._changed(e.session_id, e.time)

    def _on_SessionOverdue(self, e: ev.SessionOverdue) -> None:
        audience = self.audience(e.queue)
        if audience:
            self._out(
                audience,
                e.time,
                "session_overdue",
                cpb.SessionOverdue(
                    session_id=e.session_id,
                    queue=convert.queue_out(e.queue),
                    rule_moves_exhausted=e.rule_moves_exhausted,
                ),
            )

    def _on_InvitationCreated(self, e: ev.InvitationCreated) -> None:
        audience = self.audience(e.queue)
        if not audience:
            return
        inv = convert.invitation_out(self.engine.invitation(e.invitation_id))
        self._out(audience, e.time, "invitation_received", cpb.InvitationReceived(invitation=inv))
        self._item(ADDED, e.queue, e.invitation_id, e.time, audience, invitation=inv)

    def _on_InvitationRemoved(self, e: ev.InvitationRemoved) -> None:
        self._item(REMOVED, e.queue, e.invitation_id, e.time, self.audience(e.queue))

    def _on_ChatMessagePosted(self, e: ev.ChatMessagePosted) -> None:
        audience = self.audience(QueueRef(QueueKind.TEAM, e.team_id))
        if audience:
            self._out(
                audience,
                e.time,
                "chat_message",
                convert.chat_out(e.team_id, e.seq, e.rep_id, e.text, e.time),
            )

    def _on_EligibilityChanged(self, e: ev.EligibilityChanged) -> None:
        reasons = sorted(
            convert.enum_out(cpb.IneligibleReason, "INELIGIBLE_REASON_", r) for r in e.reasons
        )
        self._out(
            [e.rep_id],
            e.time,
            "eligibility_changed",
            cpb.EligibilityChanged(eligible=e.eligible, reasons=reasons),
        )

    def _on_OwnershipChanged(self, e: ev.OwnershipChanged) -> None:
        def build() -> cpb.SessionHandedOver | None:
            s = self.engine.find_session(e.session_id)
            if s is None:
                return None
            return cpb.SessionHandedOver(
                session=self.session_message(s),
                from_rep_id=e.from_rep,
                by_fallback=e.by_fallback,
            )

        self._out([e.to_rep], e.time, "session_handed_over", build)
        self._tell_changed(e.from_rep, e.session_id, e.time)

    # A session's members hear of its changes (one message per rep and session and
    # command): the session as the command left it.

    def _tell_changed(self, rep_id: str | None, session_id: str, time: float) -> None:
        if rep_id is None or (rep_id, session_id) in self._changes:
            return
        self._changes.add((rep_id, session_id))

        def build() -> cpb.SessionChanged | None:
            s = self.engine.find_session(session_id)
            return None if s is None else cpb.SessionChanged(session=self.session_message(s))

        self._out([rep_id], time, "session_changed", build)

    def _owner_now(self, session_id: str) -> str | None:
        s = self.engine.find_session(session_id)
        return None if s is None else s.owner

    def _on_OwnerReleased(self, e: ev.OwnerReleased) -> None:
        self._tell_changed(e.rep_id, e.session_id, e.time)

    def _on_ParticipantLeft(self, e: ev.ParticipantLeft) -> None:
        self._tell_changed(e.rep_id, e.session_id, e.time)
        self._tell_changed(self._owner_now(e.session_id), e.session_id, e.time)

    def _on_ParticipantJoined(self, e: ev.ParticipantJoined) -> None:
        self._tell_changed(self._owner_now(e.session_id), e.session_id, e.time)

    def _on_SessionAccepted(self, e: ev.SessionAccepted) -> None:
        if not e.via_offer:  # taken from a queue, or given by a supervisor
            self._tell_changed(e.rep_id, e.session_id, e.time)

    def _on_RepSettingsChanged(self, e: ev.RepSettingsChanged) -> None:
        self._out(
            [e.rep_id],
            e.time,
            "settings_changed",
            cpb.SettingsChanged(auto_assign=e.auto_assign, audible_alerts=e.audible_alerts),
        )


def _ignore(hub: Hub, e: ev.Event) -> None:
    """Events no console hears of."""


# Each event class's handler, looked up once.
_HANDLERS: dict[type, Callable[[Hub, Any], None]] = {}
