"""Loads a desk described in TOML into the engine, through the engine's own commands,
so a config file is validated exactly like an admin's API calls."""

from __future__ import annotations

from typing import Any

from assigncore.engine import Engine
from assigncore.errors import DomainError
from assigncore.model import (
    GENERAL_QUEUE,
    Algorithm,
    CapacityProfile,
    HelpLink,
    IssueType,
    Permissions,
    QueueRef,
    QueueSettings,
    RoutingStep,
    RuleAction,
    StepKind,
    SupportButton,
    Target,
    TeamKind,
    WaitingRule,
    team_queue,
)

from ..config import ConfigError
from .tokens import Principal, PrincipalKind, TokenStore


def _enum(cls: Any, value: Any, where: str) -> Any:
    try:
        return cls[str(value).upper()]
    except KeyError:
        raise ConfigError(f"{where}: unknown value {value!r}") from None


def _queue(value: str, where: str) -> QueueRef:
    if value == "general":
        return GENERAL_QUEUE
    kind, _, owner = value.partition(":")
    if kind != "team" or not owner:
        raise ConfigError(f"{where}: a queue is 'general' or 'team:<id>', not {value!r}")
    return team_queue(owner)


def _target(entry: dict[str, Any], where: str) -> Target:
    return Target(rep_id=entry.get("rep", ""), team_id=entry.get("team", ""))


def routing_steps(entry: dict[str, Any], where: str) -> tuple[RoutingStep, ...]:
    """`steps = [{ kind = "SKILLS", skills = [["french", 5]], duration = 60 }, ...]`"""
    steps = entry.get("steps", [])
    if not isinstance(steps, list) or not all(isinstance(x, dict) for x in steps):
        raise ConfigError(f"{where}: steps is a list of tables")
    out = []
    for i, step in enumerate(steps):
        unknown = set(step) - {"kind", "skills", "duration"}
        if unknown:
            raise ConfigError(f"{where}: steps[{i}]: unknown keys {sorted(unknown)}")
        out.append(
            RoutingStep(
                _enum(StepKind, step.get("kind", "ANY"), f"{where}: steps[{i}]"),
                tuple(tuple(x) for x in step.get("skills", [])),
                step.get("duration", 0.0),
            )
        )
    return tuple(out)


def capacity_profile(perms: dict[str, Any], where: str) -> dict[str, Any]:
    """`capacity = { total = 3, cost = { chat = 1, voice = 2 }, limit = { voice = 1 } }`
    in a rep's permissions becomes a CapacityProfile."""
    c = perms.get("capacity")
    if c is None:
        return perms
    if not isinstance(c, dict) or set(c) - {"total", "cost", "limit"}:
        raise ConfigError(f"{where}: capacity has total, cost and limit")
    cost, limit = c.get("cost", {}), c.get("limit", {})
    if not isinstance(cost, dict) or not isinstance(limit, dict):
        raise ConfigError(f"{where}: capacity cost and limit are tables of channel = number")
    profile = CapacityProfile(c.get("total", 0), tuple(cost.items()), tuple(limit.items()))
    return {**perms, "capacity": profile}


def queue_settings(entry: dict[str, Any], where: str) -> QueueSettings:
    rule = None
    if "waiting_rule" in entry:
        r = entry["waiting_rule"]
        rule = WaitingRule(
            r.get("overdue_after", 0),
            _enum(RuleAction, r.get("action"), where),
            _queue(r["overflow"], where) if "overflow" in r else None,
        )
    return QueueSettings(
        algorithm=_enum(Algorithm, entry.get("algorithm", "LEAST_BUSY"), where),
        offer_timeout=entry.get("offer_timeout", 30.0),
        waiting_rule=rule,
        wrap_up=entry.get("wrap_up", 0.0),
        max_missed_offers=entry.get("max_missed_offers", 0),
        service_level_threshold=entry.get("service_level_threshold", 20.0),
        steps=routing_steps(entry, where),
    )


def load_desk(engine: Engine, tokens: TokenStore, desk: dict[str, Any]) -> None:
    """Create everything the desk lists. Teams first without waiting rules (they may
    point at each other), then rules, reps, issue types, buttons, links, tokens."""

    def apply(where: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except DomainError as exc:
            raise ConfigError(f"{where}: {exc.message}") from None
        except (TypeError, KeyError) as exc:
            raise ConfigError(f"{where}: {exc}") from None

    channels = desk.get("channels", [])
    if channels:
        if not isinstance(channels, list):
            raise ConfigError("channels: a list of service channel names")
        apply("channels", engine.define_channels, channels)
    teams = desk.get("teams", [])
    for i, t in enumerate(teams):
        where = f"teams[{i}] ({t.get('id', '?')})"
        settings = queue_settings(t, where)
        no_rule = QueueSettings(
            settings.algorithm,
            settings.offer_timeout,
            None,
            settings.wrap_up,
            settings.max_missed_offers,
            settings.service_level_threshold,
            settings.steps,
        )
        apply(
            where,
            engine.create_team,
            t.get("id"),
            t.get("name", t.get("id")),
            _enum(TeamKind, t.get("kind", "STANDARD"), where),
            no_rule,
        )
    for i, t in enumerate(teams):
        if "waiting_rule" in t:
            where = f"teams[{i}] ({t.get('id')})"
            apply(where, engine.update_team, t["id"], settings=queue_settings(t, where))
    for i, r in enumerate(desk.get("reps", [])):
        where = f"reps[{i}] ({r.get('id', '?')})"
        perms = r.get("permissions", {})
        unknown = set(perms) - set(Permissions.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"{where}: unknown permissions {sorted(unknown)}")
        apply(
            where,
            engine.create_rep,
            r.get("id"),
            r.get("name", r.get("id")),
            skills=r.get("skills", {}),
            permissions=Permissions(**capacity_profile(perms, where)),
            teams=r.get("teams", []),
        )
    for i, it in enumerate(desk.get("issue_types", [])):
        where = f"issue_types[{i}] ({it.get('id', '?')})"
        skills = tuple(tuple(x) for x in it.get("required_skills", []))
        apply(
            where,
            engine.create_issue_type,
            IssueType(
                it.get("id"),
                it.get("name", it.get("id")),
                it.get("team"),
                skills,
                it.get("priority", 0),
                routing_steps(it, where),
                it.get("channel", ""),
            ),
        )
    entries = (
        ("support_buttons", SupportButton, engine.create_support_button),
        ("help_links", HelpLink, engine.create_help_link),
    )
    for section, cls, create in entries:
        for i, x in enumerate(desk.get(section, [])):
            where = f"{section}[{i}] ({x.get('id', '?')})"
            apply(where, create, cls(x.get("id"), x.get("name", x.get("id")), _target(x, where)))
    for i, tok in enumerate(desk.get("tokens", [])):
        where = f"tokens[{i}]"
        kind = _enum(PrincipalKind, tok.get("kind"), where)
        rep_id = tok.get("rep", "")
        if kind is PrincipalKind.REP or (kind is PrincipalKind.SUPERVISOR and rep_id):
            apply(where, engine.rep, rep_id)
        teams = tok.get("teams", [])
        if kind is PrincipalKind.SUPERVISOR:
            if not isinstance(teams, list) or not teams:
                raise ConfigError(f"{where}: a supervisor token lists its teams")
            for team_id in teams:
                apply(where, engine.team, team_id)
        elif teams:
            raise ConfigError(f"{where}: only supervisor tokens list teams")
        secret = tok.get("secret")
        if not isinstance(secret, str) or len(secret) < 16:
            raise ConfigError(f"{where}: secret must be a string of at least 16 characters")
        tokens.add(
            secret,
            Principal(kind, rep_id, teams=frozenset(teams)),
            tok.get("description", "from config"),
        )
