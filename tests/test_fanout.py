"""Event fan-out: each command's changes reach consoles merged (one event per queue
item), every message is built once and shared, and nothing a console needs is lost."""

from __future__ import annotations

import asyncio

from assigncore import events as ev
from assigncore.model import Algorithm, RescindReason, team_queue
from assigncore.v1 import common_pb2 as pb
from assigncore.v1 import console_service_pb2 as cpb
from assigncore_server.api.wire import body, connect_event, numbered, stamp, varint
from assigncore_server.desk.hub import Hub

from .conftest import Desk
from .server_harness import live_server
from .test_rules import start_team_session

OFFERED = pb.SESSION_STATE_OFFERED


async def events_until_chat(console, text: str) -> list[cpb.SubscribeResponse]:
    """Everything the console gets up to a chat message with this text (the feed is
    ordered, so it marks the end of what came before)."""
    got = []
    while True:
        msg = await asyncio.wait_for(console.events.get(), 10)
        kind = msg.WhichOneof("event")
        if kind == "chat_message" and msg.chat_message.text == text:
            return got
        if kind != "eligibility_changed":  # the rep's own (connecting, loads)
            got.append(msg)


async def mark(live, console, text: str) -> None:
    await console.rpc(
        "SendTeamChatMessage", cpb.SendTeamChatMessageRequest(team_id="support", text=text)
    )


async def test_a_session_queued_and_offered_in_one_command_is_one_event_per_console():
    live = await live_server()
    try:
        ann, bob = await live.console("ann"), await live.console("bob")
        session = await live.start(issue_type_id="general-help")
        await mark(live, ann, "after start")
        seen = {"ann": await events_until_chat(ann, "after start")}
        seen["bob"] = await events_until_chat(bob, "after start")
        offered = next(r for r, got in seen.items() if any(m.HasField("offer_made") for m in got))
        other = "bob" if offered == "ann" else "ann"

        # The rep not offered it sees it once, already offered: no added-then-changed.
        [added] = seen[other]
        assert added.WhichOneof("event") == "queue_item_added"
        assert added.queue_item_added.item.session.state == OFFERED
        assert added.queue_item_added.item.session.id == session.id

        # The offered rep sees the item and its offer; every copy of the session is the
        # one the intake call was answered with.
        kinds = [m.WhichOneof("event") for m in seen[offered]]
        assert kinds == ["queue_item_added", "offer_made"]
        item, offer = seen[offered][0].queue_item_added.item, seen[offered][1].offer_made
        assert item.session == offer.session == session == added.queue_item_added.item.session
        assert session.state == OFFERED
    finally:
        await live.close()


async def test_a_rejection_and_the_next_offer_reach_consoles_as_one_change():
    live = await live_server()
    try:
        ann, bob = await live.console("ann"), await live.console("bob")
        session = await live.start(issue_type_id="general-help")
        offer = None
        await mark(live, ann, "started")
        for console in (ann, bob):
            for m in await events_until_chat(console, "started"):
                if m.HasField("offer_made"):
                    offer, first = m.offer_made, console
        assert offer is not None
        second = bob if first is ann else ann
        await first.rpc(
            "AnswerOffer", cpb.AnswerOfferRequest(offer_id=offer.offer_id, accept=False)
        )
        await mark(live, first, "after reject")
        got_first = await events_until_chat(first, "after reject")
        got_second = await events_until_chat(second, "after reject")
        # The rejecting rep: one change, showing the session offered to the other now.
        [changed] = got_first
        item = changed.queue_item_changed.item.session
        assert item.id == session.id and item.state == OFFERED
        assert list(item.declined_by_rep_ids) == [first.rep]
        # The other: the same change, then its offer (of the session in that state).
        assert [m.WhichOneof("event") for m in got_second] == [
            "queue_item_changed",
            "offer_made",
        ]
        assert got_second[0].queue_item_changed == changed.queue_item_changed
        assert got_second[1].offer_made.session == item
    finally:
        await live.close()


def hub_desk() -> tuple[Desk, Hub]:
    desk = Desk()
    hub = Hub(desk.engine, 100)
    desk.engine.state.listener = hub.on_event
    desk.engine.on_settled = hub.settle
    desk.team("web", Algorithm.NONE)
    desk.rep("ann", ["web"])
    desk.rep("bob", ["web"])
    hub.feed("ann"), hub.feed("bob")
    return desk, hub


def decoded(hub: Hub, rep: str) -> list[cpb.SubscribeResponse]:
    return [cpb.SubscribeResponse.FromString(m.data) for m in hub.feed(rep).buffer]


def test_an_item_added_and_removed_in_one_command_is_not_sent():
    desk, hub = hub_desk()
    s = start_team_session(desk, "web")
    assert [m.WhichOneof("event") for m in decoded(hub, "ann")] == ["queue_item_added"]
    queue = team_queue("web")
    hub.on_event(ev.SessionDequeued(1.0, s.id, queue))
    hub.on_event(ev.SessionQueued(1.0, s.id, queue, s.origin))
    hub.on_event(ev.SessionDequeued(1.0, s.id, queue))
    hub.settle()  # removed, then added and removed again: only the removal is news
    assert [m.WhichOneof("event") for m in decoded(hub, "ann")] == [
        "queue_item_added",
        "queue_item_removed",
    ]
    other = start_team_session(desk, "web", name="two")
    before = len(hub.feed("bob").buffer)
    hub.on_event(ev.SessionDequeued(2.0, other.id, queue))
    hub.settle()
    hub.on_event(ev.SessionQueued(3.0, other.id, queue, other.origin))
    hub.on_event(ev.SessionDequeued(3.0, other.id, queue))
    hub.settle()  # came and went within one command: nobody hears of it
    assert len(hub.feed("bob").buffer) == before + 1


def test_an_offer_made_and_withdrawn_in_one_command_is_not_sent():
    desk, hub = hub_desk()
    s = start_team_session(desk, "web")
    before = len(hub.feed("ann").buffer)
    queue = team_queue("web")
    hub.on_event(ev.OfferMade(1.0, "off-1", s.id, "ann", queue, 31.0, False))
    hub.on_event(ev.OfferRescinded(1.0, "off-1", s.id, "ann", RescindReason.CONNECTION_LOST))
    hub.settle()
    kinds = [m.WhichOneof("event") for m in decoded(hub, "ann")[before:]]
    assert "offer_made" not in kinds and "offer_rescinded" not in kinds
    # Withdrawn in a later command, it is told.
    hub.on_event(ev.OfferMade(2.0, "off-2", s.id, "ann", queue, 32.0, False))
    hub.settle()
    hub.on_event(ev.OfferRescinded(3.0, "off-2", s.id, "ann", RescindReason.CONNECTION_LOST))
    hub.settle()
    kinds = [m.WhichOneof("event") for m in decoded(hub, "ann")[before:]]
    assert kinds.count("offer_made") == 1 and kinds.count("offer_rescinded") == 1


def test_one_body_is_shared_by_every_recipient_and_only_numbers_differ():
    desk, hub = hub_desk()
    hub.feed("bob").seq = 41  # feeds at different numbers
    start_team_session(desk, "web")
    ann, bob = hub.feed("ann").buffer[-1], hub.feed("bob").buffer[-1]
    assert (ann.sequence, bob.sequence) == (1, 42)
    a, b = cpb.SubscribeResponse.FromString(ann.data), cpb.SubscribeResponse.FromString(bob.data)
    assert a.queue_item_added == b.queue_item_added and a.time == b.time
    shared = body(queue_item_added=a.queue_item_added)
    assert ann.data.endswith(shared) and bob.data.endswith(shared)
    # The hand-made encoding is what protobuf makes of the same message.
    assert ann.data == a.SerializeToString(deterministic=True)
    assert numbered(42, stamp(a.time), shared) == bob.data
    wrapped = cpb.ConnectResponse.FromString(connect_event(bob.data))
    assert wrapped.event == b


def test_varint():
    for n in (0, 1, 127, 128, 300, 2**32, 2**63):
        encoded = varint(n)
        assert cpb.SubscribeResponse.FromString(b"\x08" + encoded).sequence == n % 2**64
