"""`assigncore simulate`: the production engine under a traffic model, on a manual
clock. Against queueing theory (Erlang C and A), with fixed seeds; its traffic model's
validation; schedules, breaks and behaviour; staffing; the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from assigncore_server import config
from assigncore_server.tools import check, erlang, staffing
from assigncore_server.tools.simulate import Simulation
from assigncore_server.tools.traffic import TrafficError, parse
from assigncore_server.tools.traffic import load as load_traffic

ROOT = Path(__file__).resolve().parent.parent


def test_erlang_formulas_against_known_values() -> None:
    # Erlang C, 10 agents, 8 Erlangs: 40.918% (published tables)
    assert erlang.erlang_c(10, 8) == pytest.approx(0.409180, abs=1e-6)
    mmc = erlang.mmc(lam=8 / 60, mu=1 / 60, c=10, threshold=20)
    assert mmc.asa == pytest.approx(0.409180 / (10 / 60 - 8 / 60), rel=1e-6)
    # Erlang A tends to Erlang C as patience grows without bound ...
    assert erlang.erlang_a(8 / 60, 1 / 60, 10, 1e-9).p_wait == pytest.approx(0.409180, abs=1e-4)
    # ... and with patience equal to the handle time it is M/M/infinity: nobody waits
    # longer than they would be served, P(all busy) is the Poisson tail.
    a = erlang.erlang_a(8 / 60, 1 / 60, 10, 1 / 60)
    import math

    poisson_tail = 1 - sum(math.exp(-8) * 8**k / math.factorial(k) for k in range(10))
    assert a.p_wait == pytest.approx(poisson_tail, abs=1e-9)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("scenario", check.SCENARIOS, ids=lambda s: s.name)
def test_the_engine_behaves_as_queueing_theory_says(scenario) -> None:
    """40,000 customers with a fixed seed: every figure within 1 point of theory, or
    within two of its confidence intervals' half widths where those are wider (the
    full check, `simulate --check`, runs far more customers and holds 1 point)."""
    rows, customers, _ = check.run_scenario(scenario, 40_000, seed=7)
    assert customers >= 38_000
    for row in rows:
        allowed = max(row.tolerance, 2 * row.half_width)
        assert abs(row.simulated - row.theory) <= allowed, row


DESK = """
[[teams]]
id = "support"
algorithm = "LEAST_BUSY"
offer_timeout = 20

[[issue_types]]
id = "help"
team = "support"
""" + "".join(
    f'[[reps]]\nid = "r{i}"\nteams = ["support"]\npermissions = {{ max_concurrent_sessions = 1 }}\n'
    for i in range(4)
)


def traffic(**over: object) -> dict:
    base: dict = {
        "interval": 900,
        "start": "08:00",
        "arrivals": [
            {
                "issue_type": "help",
                "per_interval": [20, 40, 20, 0],
                "handle_time": {"distribution": "exponential", "mean": 200},
            }
        ],
    }
    base.update(over)
    return base


def run(model: dict, seed: int = 1, desk: str = DESK):
    return Simulation(config.parse(desk, "desk"), parse(model), seed=seed).run()


def test_the_same_seed_gives_the_same_day_and_another_seed_another() -> None:
    a, b, c = run(traffic(), 3), run(traffic(), 3), run(traffic(), 4)
    assert a.as_dict() == b.as_dict()
    assert a.as_dict() != c.as_dict()
    per = a.queues["team/support"]
    assert [p.arrived for p in per][3] == 0  # nobody arrives in an empty interval
    assert sum(p.arrived for p in per) == pytest.approx(80, abs=30)


def test_rejections_timeouts_and_offers_per_session_follow_the_behaviour() -> None:
    behaved = run(traffic(behaviour={"accept": 0.5, "reject": 0.25, "think_time": 2}))
    total = behaved.totals("team/support")
    assert total.rejected > 0 and total.timed_out > 0
    assert total.offers / total.answered > 1.5  # about 2 offers per answered session
    eager = run(traffic()).totals("team/support")
    assert eager.rejected == eager.timed_out == 0 and eager.offers == eager.answered


def test_patience_abandons_and_a_break_leaves_nobody_to_answer() -> None:
    all_on_break = [
        {"rep": f"r{i}", "shifts": [["08:00", "09:00"]], "breaks": [["08:00", "09:00"]]}
        for i in range(4)
    ]
    model = traffic(schedules=all_on_break)
    model["arrivals"][0]["patience"] = {"distribution": "constant", "value": 30}
    report = run(model)
    total = report.totals("team/support")
    assert total.answered == 0 and total.abandoned > 0
    assert total.longest == pytest.approx(30.0)  # each gave up after 30 s
    assert all(s == 0 for s in report.staffed["support"])  # breaks are not staffed time


def test_shifts_set_staffed_time_and_occupancy() -> None:
    half = [{"rep": f"r{i}", "shifts": [["08:30", "09:00"]]} for i in range(4)]
    report = run(traffic(schedules=half))
    staffed = report.staffed["support"]
    assert staffed[0] == staffed[1] == 0  # nobody before 08:30
    assert staffed[2] == pytest.approx(4 * 900) and staffed[3] == pytest.approx(4 * 900)
    assert report.occupancy("support", 0) is None
    occupancy = report.occupancy("support", 2)
    assert occupancy is not None and 0.5 < occupancy <= 1  # the morning's backlog
    early = report.queues["team/support"][0]
    assert early.answered == 0 and early.arrived > 0  # they waited for 08:30


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"interval": 0}, "interval is 1 to 86400"),
        ({"arrivals": []}, "no [[arrivals]]"),
        ({"behaviour": {"accept": 0.9, "reject": 0.2}}, "accept + reject is at most 1"),
        ({"start": "25:00"}, "not a time of day"),
        ({"schedules": [{"rep": "r0", "shifts": [["10:00", "09:00"]]}]}, "ends before it starts"),
        ({"surprise": 1}, "unknown keys"),
    ],
)
def test_a_bad_traffic_model_is_refused_with_where(change: dict, message: str) -> None:
    with pytest.raises(TrafficError, match=message.replace("[", r"\[").replace("+", r"\+")):
        parse(traffic(**change))


def test_bad_distributions_are_refused() -> None:
    for bad in (
        {"distribution": "weibull", "mean": 3},
        {"distribution": "exponential"},
        {"distribution": "lognormal", "mean": 10, "sd": -1},
        {"distribution": "uniform", "low": 5, "high": 1},
        -4,
    ):
        model = traffic()
        model["arrivals"][0]["handle_time"] = bad
        with pytest.raises(TrafficError, match="handle_time"):
            parse(model)


@pytest.mark.timeout(300)
def test_staffing_finds_the_fewest_reps_that_meet_the_target() -> None:
    model = parse(traffic())
    settings = config.parse(DESK, "desk")
    needs = staffing.staff(settings, model, target=0.8, customers=3000, seed=2)["support"]
    assert needs[3] == 0  # no traffic, nobody needed
    assert needs[1] > needs[0] >= 1  # the peak needs more
    # The answer is the fewest: one rep fewer misses the target, and it meets it.
    streams = list(model.arrivals)
    for i in (0, 1):
        level = staffing.service_level(settings, streams, model, i, needs[i], 3000, 2)
        fewer = staffing.service_level(settings, streams, model, i, needs[i] - 1, 3000, 2)
        assert level >= 0.8 > fewer


def test_the_command_line_writes_a_table_json_and_a_plot(tmp_path) -> None:
    desk, model = tmp_path / "desk.toml", tmp_path / "traffic.toml"
    desk.write_text(DESK)
    model.write_text(
        'interval = 900\nstart = "08:00"\n[[arrivals]]\nissue_type = "help"\n'
        "per_interval = [20, 40]\nhandle_time = 200\n"
    )
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    done = subprocess.run(
        [sys.executable, "-m", "assigncore_server.cli", "simulate", str(desk), str(model),
         "--json", str(out_json), "--plot", str(out_png), "--seed", "5"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "team/support" in done.stdout and "customers/s" in done.stdout
    report = json.loads(out_json.read_text())
    assert report["intervals"] == ["08:00", "08:15"]
    assert report["queues"]["team/support"]["total"]["arrived"] > 0
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run(
        [sys.executable, "-m", "assigncore_server.cli", "simulate", str(desk), str(desk)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "unknown keys" in bad.stderr


def test_get_next_serves_a_queue_without_automatic_assignment() -> None:
    desk = DESK.replace('algorithm = "LEAST_BUSY"', 'algorithm = "NONE"')
    never = run(traffic(), desk=desk).totals("team/support")
    assert never.answered == 0 and never.offers == 0  # nobody offers, nobody takes
    quiet = traffic(behaviour={"get_next_every": 20})
    quiet["arrivals"][0]["per_interval"] = [4, 4, 4, 0]  # reps are mostly free
    polled = run(quiet, desk=desk).totals("team/support")
    assert polled.answered > 0 and polled.offers == 0
    assert polled.longest <= 20 + 1e-9  # a free rep takes it at its next poll
    with pytest.raises(TrafficError, match="get_next_every"):
        parse(traffic(behaviour={"get_next_every": -1}))


def examples(name: str) -> Path:
    return ROOT / "examples" / "routing" / name


def run_desk(desk: str, model: str, seed: int = 1):
    settings = config.load(examples(desk))
    traffic_model = load_traffic(examples(model))
    return Simulation(settings, traffic_model, seed=seed).run()


def test_desks_compared_meet_the_very_same_customers() -> None:
    """Common random numbers: arrivals, handle times and patience come from each
    stream's own generator, so what two desks do differently cannot change who comes."""
    a = run_desk("one-step.toml", "specialists-traffic.toml")
    b = run_desk("three-steps.toml", "specialists-traffic.toml")
    for name in ("database", "question"):
        assert [c.arrived for c in a.issue_types[name]] == [c.arrived for c in b.issue_types[name]]
    arrivals = sorted(r.arrived for r in a.customers)
    assert arrivals == sorted(r.arrived for r in b.customers)
    total = a.issue_totals("database")
    assert total.arrived == total.answered + total.abandoned + sum(
        1
        for r in a.customers
        if r.issue_type == "database" and r.answered is None and not r.abandoned
    )


def test_widening_steps_serve_a_short_staffed_specialty_better() -> None:
    """The README's first table: three steps against one, the same customers."""
    one = run_desk("one-step.toml", "specialists-traffic.toml").issue_totals("database")
    three = run_desk("three-steps.toml", "specialists-traffic.toml").issue_totals("database")
    assert three.service_level > one.service_level
    assert three.asa < one.asa and three.abandon_rate < one.abandon_rate


def test_capacity_by_channel_lets_chats_share_a_rep() -> None:
    """The README's second table: chats wait far less when a rep holds several."""
    single = run_desk("max-sessions.toml", "channels-traffic.toml")
    blended = run_desk("capacity-blended.toml", "channels-traffic.toml")
    assert blended.issue_totals("chat").asa < single.issue_totals("chat").asa
    assert blended.concurrency("contact") > 1 >= single.concurrency("contact")
    # reps never held more than their profile allows: one call and a chat, or three chats
    assert single.concurrency("contact") <= 1


def test_the_command_line_compares_desks(tmp_path) -> None:
    out_json = tmp_path / "compare.json"
    done = subprocess.run(
        [sys.executable, "-m", "assigncore_server.cli", "simulate",
         str(examples("max-sessions.toml")), str(examples("channels-traffic.toml")),
         "--compare", str(examples("capacity.toml")),
         "--compare", str(examples("capacity-blended.toml")), "--json", str(out_json)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    head = done.stdout.splitlines()[2].split()
    assert head == ["max-sessions", "capacity", "capacity-blended"]
    assert "issue type chat" in done.stdout and "sessions in hand" in done.stdout
    assert len(json.loads(out_json.read_text())) == 3
    missing = subprocess.run(
        [sys.executable, "-m", "assigncore_server.cli", "simulate",
         str(examples("max-sessions.toml")), str(examples("channels-traffic.toml")),
         "--compare", str(tmp_path / "nope.toml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert missing.returncode == 2 and "nope.toml" in missing.stderr
