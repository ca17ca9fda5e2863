"""Every bad command gets its typed error and leaves the engine exactly as it was."""

from __future__ import annotations

import math

import pytest

from assigncore.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from assigncore.model import (
    GENERAL_QUEUE,
    Algorithm,
    Customer,
    HelpLink,
    IssueType,
    Permissions,
    QueueKind,
    QueueRef,
    QueueSettings,
    RuleAction,
    SupportButton,
    Target,
    WaitingRule,
    personal_queue,
    team_queue,
)

from .conftest import Desk, customer


@pytest.fixture
def busy_desk() -> Desk:
    d = Desk()
    d.team("support", offer_timeout=30)
    d.team("manual", Algorithm.NONE)
    d.rep("ann", ["support"])
    d.rep("bob", ["manual"], permissions=Permissions(may_transfer=False, may_get_next=False))
    d.engine.create_issue_type(IssueType("it", "Issue", "support", (("win", 3),)))
    s = d.engine.start_from_issue("it", customer()).value
    d.session_id = s.id
    d.offer_id = s.offer
    return d


HUGE = "x" * 100_000

CASES = [
    # unknown ids
    ("answer_offer", ("ann", "off-12345", True), NotFound),
    ("answer_offer", ("nobody", "off-1", True), NotFound),
    ("accept_session", ("ann", "ses-404"), NotFound),
    ("start_from_issue", ("missing", customer()), NotFound),
    ("start_from_button", ("missing", customer()), NotFound),
    ("start_from_help_link", ("missing", customer()), NotFound),
    ("start_with_rep", ("ghost", customer()), NotFound),
    ("remove_team_member", ("support", "bob"), NotFound),
    ("delete_issue_type", ("nope",), NotFound),
    ("accept_invitation", ("ann", "inv-9"), NotFound),
    ("transfer_session", ("ann", "$SESSION", team_queue("ghosts")), NotFound),
    ("update_team", ("ghosts",), NotFound),
    # wrong states
    ("end_session", ("ann", "$SESSION"), FailedPrecondition),
    ("leave_session", ("ann", "$SESSION"), FailedPrecondition),
    ("connect", ("ann",), FailedPrecondition),
    ("cancel_session", ("$SESSION",), None),  # valid: shown not to be refused
    ("delete_team", ("support",), FailedPrecondition),
    ("delete_rep", ("ann",), None),  # valid: signed in, only an offer pending
    ("invite", ("ann", "$SESSION", personal_queue("bob")), FailedPrecondition),
    # permission
    ("answer_offer", ("bob", "$OFFER", True), PermissionDenied),
    ("accept_session", ("bob", "$SESSION"), PermissionDenied),
    ("get_next", ("bob",), PermissionDenied),
    ("transfer_session", ("bob", "$SESSION", team_queue("manual")), PermissionDenied),
    ("update_settings", ("ann",), PermissionDenied, {"auto_assign": False}),
    ("post_chat", ("bob", "support", "hi"), PermissionDenied),
    ("set_favourite", ("bob", "support", True), PermissionDenied),
    # duplicates
    ("create_rep", ("ann", "Ann again"), AlreadyExists),
    ("create_team", ("support", "Again"), AlreadyExists),
    ("add_team_member", ("support", "ann"), AlreadyExists),
    ("create_issue_type", (IssueType("it", "Dup", "support"),), AlreadyExists),
    # out of range and malformed
    ("create_rep", ("zed", "Zed"), InvalidArgument, {"skills": {"win": 11}}),
    ("create_rep", ("zed", "Zed"), InvalidArgument, {"skills": {"win": 0}}),
    ("create_rep", ("zed", "Zed"), InvalidArgument, {"skills": {"win": True}}),
    ("create_rep", ("", "Zed"), InvalidArgument),
    ("create_rep", ("bad id!", "Zed"), InvalidArgument),
    ("create_rep", ("zed", "   "), InvalidArgument),
    ("create_rep", ("zed", "Zed"), InvalidArgument, {"teams": ["support", "support"]}),
    (
        "create_rep",
        ("zed", "Zed"),
        InvalidArgument,
        {"permissions": Permissions(max_concurrent_sessions=-1)},
    ),
    (
        "create_rep",
        ("zed", "Zed"),
        InvalidArgument,
        {"permissions": Permissions(idle_timeout=math.nan)},
    ),
    ("create_team", ("t2", "T2"), InvalidArgument, {"settings": QueueSettings(offer_timeout=0)}),
    ("create_team", ("t2", "T2"), InvalidArgument, {"settings": QueueSettings(algorithm=7)}),
    (
        "create_team",
        ("t2", "T2"),
        InvalidArgument,
        {"settings": QueueSettings(waiting_rule=WaitingRule(60, RuleAction.TRANSFER))},
    ),
    (
        "create_team",
        ("t2", "T2"),
        InvalidArgument,
        {
            "settings": QueueSettings(
                waiting_rule=WaitingRule(60, RuleAction.TRANSFER, personal_queue("ann"))
            )
        },
    ),
    (
        "create_team",
        ("t2", "T2"),
        InvalidArgument,
        {
            "settings": QueueSettings(
                waiting_rule=WaitingRule(60, RuleAction.TRANSFER, team_queue("t2"))
            )
        },
    ),
    (
        "create_team",
        ("t2", "T2"),
        InvalidArgument,
        {"settings": QueueSettings(waiting_rule=WaitingRule(-1, RuleAction.ALERT))},
    ),
    ("create_issue_type", (IssueType("i2", "I2", "support", priority=1000),), InvalidArgument),
    (
        "create_issue_type",
        (IssueType("i2", "I2", "support", tuple((f"s{i}", 1) for i in range(9))),),
        InvalidArgument,
    ),
    (
        "create_issue_type",
        (IssueType("i2", "I2", "support", (("a", 1), ("a", 2))),),
        InvalidArgument,
    ),
    ("create_support_button", (SupportButton("b", "B", Target()),), InvalidArgument),
    (
        "create_support_button",
        (SupportButton("b", "B", Target("ann", "support")),),
        InvalidArgument,
    ),
    ("create_help_link", (HelpLink("l", "L", Target(team_id="ghosts")),), NotFound),
    ("start_undesignated", (Customer(HUGE),), InvalidArgument),
    ("start_undesignated", (Customer(""),), InvalidArgument),
    ("start_undesignated", (Customer("a\x00b"),), InvalidArgument),
    ("start_undesignated", (None,), InvalidArgument),
    ("start_with_key", (HUGE, customer()), InvalidArgument),
    ("post_chat", ("ann", "support", HUGE), InvalidArgument),
    ("post_chat", ("ann", "support", ""), InvalidArgument),
    ("set_locked", ("ann", "yes"), InvalidArgument),
    ("answer_offer", ("ann", "$OFFER", 1), InvalidArgument),
    ("transfer_session", ("ann", "$SESSION", GENERAL_QUEUE), InvalidArgument),
    ("transfer_session", ("ann", "$SESSION", "team/manual"), InvalidArgument),
    ("transfer_session", ("ann", "$SESSION", QueueRef("TEAM", "manual")), InvalidArgument),
    ("generate_session_key", ("ann",), InvalidArgument, {"ttl": 10**12}),
    ("create_rep", ("zed", "Zed"), InvalidArgument, {"skills": {f"s{i}": 1 for i in range(1000)}}),
    ("create_rep", ("zed", "Zed"), InvalidArgument, {"teams": [f"t{i}" for i in range(10_000)]}),
    ("create_rep", ("z" * 65, "Zed"), InvalidArgument),
    ("chat_messages", ("ann", "support"), InvalidArgument, {"limit": 10**9}),
]


def _fill(args, d):
    return tuple(
        d.session_id if a == "$SESSION" else d.offer_id if a == "$OFFER" else a for a in args
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[2].__name__ if c[2] else 'ok'}")
def test_bad_command_is_refused_with_its_type_and_changes_nothing(busy_desk, case):
    name, args, error, *kw = case
    d = busy_desk
    fn = getattr(d.engine, name)
    before = d.engine.snapshot()
    if error is None:
        fn(*_fill(args, d), **(kw[0] if kw else {}))
        assert d.engine.snapshot() != before
        return
    with pytest.raises(error) as exc:
        fn(*_fill(args, d), **(kw[0] if kw else {}))
    assert d.engine.snapshot() == before
    assert exc.value.message and "Traceback" not in exc.value.message
    if isinstance(exc.value, InvalidArgument):
        field, description = exc.value.violations[0]
        assert field and description


def test_invalid_argument_names_the_offending_field(busy_desk):
    with pytest.raises(InvalidArgument) as exc:
        busy_desk.engine.create_rep("zed", "Zed", skills={"win": 3, "mac": 42})
    assert exc.value.violations == [("skills['mac']", "must be between 1 and 10")]


def test_queue_kind_must_be_a_real_kind(busy_desk):
    with pytest.raises(InvalidArgument):
        busy_desk.engine.queue_items(QueueRef("NOPE"))
    assert busy_desk.engine.queue_items(QueueRef(QueueKind.GENERAL)) == []


def test_reentrant_command_from_a_listener_is_refused():
    from assigncore.engine import Engine

    from .conftest import ManualClock

    calls = []

    def listener(event):
        try:
            engine.create_team("x", "X")
        except RuntimeError as exc:
            calls.append(str(exc))

    engine = Engine(ManualClock(), listener=listener)
    engine.create_team("t", "T")
    assert calls and "single writer" in calls[0]
    assert [t.id for t in engine.teams()] == ["t"]
