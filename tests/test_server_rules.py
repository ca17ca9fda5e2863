"""Routing rules and intake origins driven through the services over a real channel,
exactly as consoles and a portal would."""

from __future__ import annotations

import grpc
import pytest

from assigncore.v1 import common_pb2 as pb
from assigncore.v1 import console_service_pb2 as cpb
from assigncore.v1 import intake_service_pb2 as ipb

from .server_harness import ADMIN, INTAKE, auth, live_server


@pytest.fixture
async def live():
    server = await live_server()
    yield server
    await server.close()


def team(team_id: str) -> pb.QueueRef:
    return pb.QueueRef(kind=pb.QUEUE_KIND_TEAM, owner_id=team_id)


def personal(rep_id: str) -> pb.QueueRef:
    return pb.QueueRef(kind=pb.QUEUE_KIND_PERSONAL, owner_id=rep_id)


async def test_origins_land_where_the_design_says(live):
    ann = await live.console("ann")
    key = (await ann.rpc("GenerateSessionKey", cpb.GenerateSessionKeyRequest())).session_key
    cases = [
        ({"session_key": key}, personal("ann"), pb.ORIGIN_SESSION_KEY, pb.CHANNEL_FULL_CLIENT),
        ({"public_rep_id": "ann"}, personal("ann"), pb.ORIGIN_PUBLIC_SITE, pb.CHANNEL_FULL_CLIENT),
        (
            {"support_button_id": "btn-ann"},
            personal("ann"),
            pb.ORIGIN_SUPPORT_BUTTON,
            pb.CHANNEL_FULL_CLIENT,
        ),
        (
            {"support_button_id": "btn-support"},
            team("support"),
            pb.ORIGIN_SUPPORT_BUTTON,
            pb.CHANNEL_FULL_CLIENT,
        ),
        (
            {"issue_type_id": "manual-help"},
            team("manual"),
            pb.ORIGIN_ISSUE_FORM,
            pb.CHANNEL_FULL_CLIENT,
        ),
        (
            {"help_link_id": "link-support"},
            team("support"),
            pb.ORIGIN_HELP_LINK,
            pb.CHANNEL_BROWSER_SHARING,
        ),
        (
            {"undesignated": ipb.Undesignated()},
            pb.QueueRef(kind=pb.QUEUE_KIND_GENERAL),
            pb.ORIGIN_UNDESIGNATED,
            pb.CHANNEL_FULL_CLIENT,
        ),
    ]
    for via, queue, origin, channel in cases:
        s = await live.start(**via)
        assert (s.queue, s.origin, s.channel) == (queue, origin, channel), via


async def test_offer_reject_timeout_and_stays_queued(live):
    ann = await live.console("ann")
    bob = await live.console("bob")
    s = await live.start(issue_type_id="general-help")
    offer = await ann.next("offer_made")  # tie on load and availability: lower ordinal
    assert offer.session.id == s.id and offer.audible
    assert offer.deadline_time.seconds == int(live.clock.t + 30)
    await ann.rpc("AnswerOffer", cpb.AnswerOfferRequest(offer_id=offer.offer_id, accept=False))
    offer_b = await bob.next("offer_made")
    await live.advance(30)  # bob lets it time out, and is told so
    expired = await bob.next("offer_rescinded", offer_id=offer_b.offer_id)
    assert expired.reason == cpb.RESCIND_REASON_TIMED_OUT and expired.session_id == s.id
    status = await live.intake.GetSessionStatus(
        ipb.GetSessionStatusRequest(session_id=s.id), metadata=auth(INTAKE)
    )
    assert status.state == pb.SESSION_STATE_WAITING and status.position == 1
    got = await ann.rpc("GetSession", cpb.GetSessionRequest(session_id=s.id))
    assert list(got.session.declined_by_rep_ids) == ["ann", "bob"]  # in the order declined
    with pytest.raises(Exception) as stale:
        await bob.rpc("AnswerOffer", cpb.AnswerOfferRequest(offer_id=offer_b.offer_id, accept=True))
    assert stale.value.code().name == "FAILED_PRECONDITION"


async def test_accept_skills_match_and_end(live):
    ann = await live.console("ann")
    bob = await live.console("bob")
    s = await live.start(issue_type_id="win")  # windows >= 5: only bob qualifies
    offer = await bob.next("offer_made")
    r = await bob.rpc("AnswerOffer", cpb.AnswerOfferRequest(offer_id=offer.offer_id, accept=True))
    assert r.session.state == pb.SESSION_STATE_ACTIVE and r.session.owner_rep_id == "bob"
    await bob.rpc("EndSession", cpb.EndSessionRequest(session_id=s.id))
    assert ann.seen and not any(m.WhichOneof("event") == "offer_made" for m in ann.seen)


async def test_manual_accept_rescinds_and_get_next_and_permissions(live):
    ann = await live.console("ann")
    bob = await live.console("bob")
    cat = await live.console("cat")
    s = await live.start(issue_type_id="general-help")
    offer = await ann.next("offer_made")
    await bob.rpc("AcceptSession", cpb.AcceptSessionRequest(session_id=s.id))
    rescinded = await ann.next("offer_rescinded")
    assert rescinded.offer_id == offer.offer_id
    assert rescinded.reason == cpb.RESCIND_REASON_ACCEPTED_BY_OTHER
    waiting = await live.start(issue_type_id="manual-help")
    with pytest.raises(Exception) as denied:
        await cat.rpc("GetNextSession", cpb.GetNextSessionRequest())
    assert denied.value.code().name == "PERMISSION_DENIED"
    taken = await bob.rpc("GetNextSession", cpb.GetNextSessionRequest())
    assert taken.session.id == waiting.id
    empty = await bob.rpc("GetNextSession", cpb.GetNextSessionRequest())
    assert not empty.HasField("session")


async def test_waiting_rules_alert_and_transfer(live):
    bob = await live.console("bob")
    ann = await live.console("ann")
    await ann.rpc("UpdateMySettings", cpb.UpdateMySettingsRequest(auto_assign=False))
    alert_me = await live.start(issue_type_id="manual-help")
    moved = await live.start(issue_type_id="front-help")
    await live.advance(60)
    overdue = await bob.next("session_overdue")
    assert overdue.session_id == alert_me.id and overdue.queue == team("manual")
    await live.advance(40)
    offer = await bob.next("offer_made")  # moved to support, offered there
    assert offer.session.id == moved.id and offer.session.origin == pb.ORIGIN_WAITING_RULE


async def test_transfer_invite_share_and_leave(live):
    ann = await live.console("ann")
    bob = await live.console("bob")
    gil = await live.console("gil")
    s = await live.start(issue_type_id="general-help")
    offer = await ann.next("offer_made")
    await ann.rpc("AnswerOffer", cpb.AnswerOfferRequest(offer_id=offer.offer_id, accept=True))
    inv = await ann.rpc(
        "InviteToSession",
        cpb.InviteToSessionRequest(session_id=s.id, target=pb.Target(rep_id="bob")),
    )
    received = await bob.next("invitation_received")
    assert received.invitation.id == inv.invitation.id
    await bob.rpc("AcceptInvitation", cpb.AcceptInvitationRequest(invitation_id=inv.invitation.id))
    await ann.rpc("LeaveSession", cpb.LeaveSessionRequest(session_id=s.id))
    handed = await bob.next("session_handed_over")
    assert handed.session.owner_rep_id == "bob" and not handed.by_fallback
    await bob.rpc(
        "TransferSession",
        cpb.TransferSessionRequest(session_id=s.id, target=pb.Target(team_id="partner")),
    )
    added = await gil.next("queue_item_added")
    assert added.item.session.id == s.id and added.queue == team("partner")
    targets = await gil.rpc("SearchTransferTargets", cpb.SearchTransferTargetsRequest(query=""))
    assert [t.id for t in targets.embassies] == ["partner"]


async def test_presence_lock_and_eligibility_reasons(live):
    ann = await live.console("ann")
    await ann.rpc("ReportPresence", cpb.ReportPresenceRequest(action=cpb.PRESENCE_ACTION_LOCK))
    changed = await ann.next("eligibility_changed", eligible=False)
    assert list(changed.reasons) == [cpb.INELIGIBLE_REASON_LOCKED]
    s = await live.start(issue_type_id="general-help")
    await ann.rpc("ReportPresence", cpb.ReportPresenceRequest(action=cpb.PRESENCE_ACTION_UNLOCK))
    offer = await ann.next("offer_made")  # unlocking is a re-run trigger
    assert offer.session.id == s.id


async def test_queues_chat_and_favourites(live):
    ann = await live.console("ann")
    bob = await live.console("bob")
    await ann.rpc("SetFavoriteTeam", cpb.SetFavoriteTeamRequest(team_id="skills", favorite=True))
    await bob.rpc(
        "SendTeamChatMessage",
        cpb.SendTeamChatMessageRequest(team_id="support", text="anyone free?"),
    )
    chat = await ann.next("chat_message")
    assert chat.text == "anyone free?" and chat.rep_id == "bob"
    queues = (await ann.rpc("ListMyQueues", cpb.ListMyQueuesRequest())).queues
    assert [q.queue.owner_id for q in queues] == ["ann", "skills", "front", "support"]
    assert {q.queue.owner_id: q.unread_chat for q in queues}["support"] is True
    assert queues[1].favorite
    await ann.rpc("MarkTeamChatRead", cpb.MarkTeamChatReadRequest(team_id="support"))
    queues = (await ann.rpc("ListMyQueues", cpb.ListMyQueuesRequest())).queues
    assert not any(q.unread_chat for q in queues)
    for i in range(3):
        await live.start(issue_type_id="manual-help", customer=pb.Customer(name=f"c{i}"))
    first = await bob.rpc(
        "ListQueueItems", cpb.ListQueueItemsRequest(queue=team("manual"), page_size=2)
    )
    rest = await bob.rpc(
        "ListQueueItems",
        cpb.ListQueueItemsRequest(
            queue=team("manual"), page_size=2, page_token=first.next_page_token
        ),
    )
    names = [i.session.customer.name for i in [*first.items, *rest.items]]
    assert names == ["c0", "c1", "c2"] and rest.next_page_token == ""


async def test_lost_connection_hands_sessions_on_after_grace(live):
    ann = await live.console("ann")
    bob = await live.console("bob")
    s = await live.start(issue_type_id="general-help")
    offer = await ann.next("offer_made")
    await ann.rpc("AnswerOffer", cpb.AnswerOfferRequest(offer_id=offer.offer_id, accept=True))
    second = await live.start(issue_type_id="general-help")
    await bob.next("offer_made")  # bob holds the second one's offer
    bob_offer = await bob.rpc("GetSession", cpb.GetSessionRequest(session_id=second.id))
    assert bob_offer.session.state == pb.SESSION_STATE_OFFERED
    await bob.drop()  # bob's offer is withdrawn at once and re-routed to ann
    rerouted = await ann.next("offer_made")
    assert rerouted.session.id == second.id
    await ann.drop()
    await live.advance(29)
    engine = live.server.runtime.engine
    assert engine.session(s.id).owner == "ann"
    await live.advance(1)
    back = engine.session(s.id)
    assert back.owner is None and str(back.queue) == "team/support"
    assert back.origin.value == "CONNECTION_LOST"


async def test_general_queue_events_reach_only_subscribed_reps_who_may_see_it(live):
    ann = await live.console("ann")  # no general-queue permission
    gil = await live.console("gil")  # may use the general queue
    s = await live.start(undesignated=ipb.Undesignated())
    added = await gil.next("queue_item_added")
    assert added.item.session.id == s.id
    assert added.queue == pb.QueueRef(kind=pb.QUEUE_KIND_GENERAL)
    await ann.rpc("ListMyQueues", cpb.ListMyQueuesRequest())
    assert not any(m.WhichOneof("event") == "queue_item_added" for m in ann.seen)
    status = await live.intake.GetSessionStatus(
        ipb.GetSessionStatusRequest(session_id=s.id), metadata=auth(INTAKE)
    )
    assert status.position == 1


async def test_update_mask_takes_nested_paths_and_leaves_the_rest(live):
    from google.protobuf import duration_pb2

    from assigncore.v1 import admin_service_pb2 as apb

    before = (
        await live.admin.GetTeam(apb.GetTeamRequest(team_id="front"), metadata=auth(ADMIN))
    ).team
    assert before.queue_settings.HasField("waiting_rule")
    changed = await live.admin.UpdateTeam(
        apb.UpdateTeamRequest(
            team=apb.Team(
                id="front",
                display_name="ignored: not in the mask",
                queue_settings=apb.QueueSettings(offer_timeout=duration_pb2.Duration(seconds=77)),
            ),
            update_mask={"paths": ["queue_settings.offer_timeout"]},
        ),
        metadata=auth(ADMIN),
    )
    after = changed.team
    assert after.queue_settings.offer_timeout.seconds == 77
    assert after.display_name == before.display_name
    assert after.queue_settings.algorithm == before.queue_settings.algorithm
    assert after.queue_settings.waiting_rule == before.queue_settings.waiting_rule
    assert live.server.runtime.engine.team("front").settings.offer_timeout == 77

    rep = (await live.admin.GetRep(apb.GetRepRequest(rep_id="cat"), metadata=auth(ADMIN))).rep
    assert not rep.permissions.may_transfer
    updated = await live.admin.UpdateRep(
        apb.UpdateRepRequest(
            rep=apb.Rep(id="cat", permissions=pb.PermissionProfile(may_transfer=True)),
            update_mask={"paths": ["permissions.may_transfer"]},
        ),
        metadata=auth(ADMIN),
    )
    assert updated.rep.permissions.may_transfer
    assert not updated.rep.permissions.may_get_next  # untouched
    assert list(updated.rep.team_ids) == list(rep.team_ids)

    for paths in (["queue_settings.no_such_field"], ["member_rep_ids"], ["id.x"]):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await live.admin.UpdateTeam(
                apb.UpdateTeamRequest(team=apb.Team(id="front"), update_mask={"paths": paths}),
                metadata=auth(ADMIN),
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, paths
    assert live.server.runtime.engine.team("front").settings.offer_timeout == 77


async def test_a_rep_can_ask_who_it_is(live):
    ann = await live.console("ann")
    await ann.rpc("SetFavoriteTeam", cpb.SetFavoriteTeamRequest(team_id="skills", favorite=True))
    profile = (await ann.rpc("GetMyProfile", cpb.GetMyProfileRequest())).profile
    assert profile.rep_id == "ann" and profile.display_name == "Ann"
    assert [t.team_id for t in profile.teams] == ["skills", "front", "support"]  # starred first
    assert [t.favorite for t in profile.teams] == [True, False, False]
    assert dict(profile.skills) == {"windows": 3}
    assert profile.auto_assign and profile.audible_alerts
    assert profile.permissions.may_opt_out and profile.permissions.shown_on_public_site
    assert not profile.permissions.may_use_general_queue


async def test_reads_carry_the_feed_sequence_they_reflect(live):
    ann = await live.console("ann")
    bob = await live.console("bob")
    s = await live.start(issue_type_id="general-help")
    await ann.next("offer_made", session=s)
    queues = await ann.rpc("ListMyQueues", cpb.ListMyQueuesRequest())
    seq = queues.feed_sequence
    assert seq == ann.seen[-1].sequence  # every event so far, and the read, line up
    items = await ann.rpc(
        "ListQueueItems",
        cpb.ListQueueItemsRequest(queue=pb.QueueRef(kind=pb.QUEUE_KIND_TEAM, owner_id="support")),
    )
    session = await ann.rpc("GetSession", cpb.GetSessionRequest(session_id=s.id))
    chat = await ann.rpc("ListTeamChatMessages", cpb.ListTeamChatMessagesRequest(team_id="support"))
    assert items.feed_sequence == session.feed_sequence == chat.feed_sequence == seq
    # The next event continues right after what the reads reflect.
    await bob.rpc(
        "SendTeamChatMessage", cpb.SendTeamChatMessageRequest(team_id="support", text="hi")
    )
    await ann.next("chat_message")
    assert ann.seen[-1].sequence == seq + 1
    assert (await ann.rpc("ListMyQueues", cpb.ListMyQueuesRequest())).feed_sequence == seq + 1


async def test_queue_pages_follow_a_cursor_that_survives_changes_ahead(live):
    cat = await live.console("cat")
    started = [await live.start(issue_type_id="manual-help") for _ in range(5)]
    queue = pb.QueueRef(kind=pb.QUEUE_KIND_TEAM, owner_id="manual")
    first = await cat.rpc("ListQueueItems", cpb.ListQueueItemsRequest(queue=queue, page_size=2))
    assert [i.session.id for i in first.items] == [s.id for s in started[:2]]
    # The head is taken before the next page is read: the next page still starts right
    # after the last item seen, skipping nothing and repeating nothing.
    await cat.rpc("AcceptSession", cpb.AcceptSessionRequest(session_id=started[0].id))
    rest, token = [], first.next_page_token
    while token:
        page = await cat.rpc(
            "ListQueueItems",
            cpb.ListQueueItemsRequest(queue=queue, page_size=2, page_token=token),
        )
        rest += [i.session.id for i in page.items]
        token = page.next_page_token
    assert rest == [s.id for s in started[2:]]
    import base64

    beyond = base64.urlsafe_b64encode(f"k:{2**200}".encode()).decode()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cat.rpc("ListQueueItems", cpb.ListQueueItemsRequest(queue=queue, page_token=beyond))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in err.value.details()
