"""What a running server holds: the engine, the event hub, the tokens, the intake
idempotency cache, and the task that fires the engine's timers on the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import secrets
from collections import OrderedDict
from typing import Any

from assigncore.engine import Engine, Outcome
from assigncore.errors import InvalidArgument

from .auth import Gate, Principal, PrincipalKind, TokenStore
from .config import Settings
from .desk import load_desk
from .hub import Hub

log = logging.getLogger("assigncore.server")

IDEMPOTENCY_CAPACITY = 100_000


class Idempotency:
    """request_id -> (fingerprint of the request, result), for retried intake calls."""

    def __init__(self, ttl: float, clock: Any) -> None:
        self.ttl, self.clock = ttl, clock
        self.entries: OrderedDict[tuple[str, str], tuple[bytes, float, Any]] = OrderedDict()

    def _expire(self) -> None:
        now = self.clock()
        while self.entries and (
            len(self.entries) > IDEMPOTENCY_CAPACITY
            or next(iter(self.entries.values()))[1] + self.ttl < now
        ):
            self.entries.popitem(last=False)

    def lookup(self, key: tuple[str, str], request: Any) -> Any:
        """The stored result of an earlier call with this (portal, request_id), or None."""
        request_id = key[1]
        if not request_id or len(request_id) > 64:
            raise InvalidArgument("request_id", "required, at most 64 characters")
        self._expire()
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry[0] != self._fingerprint(request):
            raise InvalidArgument("request_id", "already used for a different request")
        return entry[2]

    def store(self, key: tuple[str, str], request: Any, result: Any) -> None:
        self.entries[key] = (self._fingerprint(request), self.clock(), result)

    @staticmethod
    def _fingerprint(request: Any) -> bytes:
        return hashlib.sha256(request.SerializeToString(deterministic=True)).digest()


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.clock = settings.clock
        self.hub: Hub
        self.engine = Engine(self.clock, settings.engine, listener=self._on_event)
        self.hub = Hub(self.engine, settings.event_buffer, settings.outbox_limit)
        self.hub.on_lost = self.lost
        self.tokens = TokenStore(self.clock)
        self.tokens.on_revoke = lambda record: self.hub.end_token(record.token_id)
        self.gate: Gate | None = None  # the interceptor's call budgets, once serving
        self.idempotency = Idempotency(settings.idempotency_ttl, self.clock)
        load_desk(self.engine, self.tokens, settings.desk)
        admin = settings.admin_token or os.environ.get("ASSIGNCORE_ADMIN_TOKEN")
        self.generated_admin_token = None
        has_admin = any(r.principal.kind is PrincipalKind.ADMIN for r in self.tokens.records())
        if not admin and not has_admin:
            admin = self.generated_admin_token = secrets.token_urlsafe(24)
        if admin:
            self.tokens.add(admin, Principal(PrincipalKind.ADMIN), "first admin token")
        self._wake = asyncio.Event()
        self._sleeping_until = math.inf  # the deadline the timer task sleeps until
        self._task: asyncio.Task[None] | None = None

    def _on_event(self, event: Any) -> None:
        self.hub.on_event(event)

    def lost(self, rep_id: str) -> None:
        """A rep's console stream is gone without a sign-out: the connection-lost path
        (rule 11), unless the server is draining (a restart is not the rep's fault)."""
        rep = self.engine.find_rep(rep_id)
        if rep is not None and rep.connected and not self.hub.draining:
            self.command(self.engine.disconnect, rep_id)

    # ------------------------------------------------------------- timers

    def command(self, fn: Any, *args: Any, **kwargs: Any) -> Outcome:
        """Run an engine command and let the timer task re-plan (it may have scheduled
        an earlier deadline)."""
        outcome: Outcome = fn(*args, **kwargs)
        deadline = self.engine.next_deadline()
        if deadline is not None and deadline < self._sleeping_until:
            self._wake.set()  # the timer task sleeps past a new, earlier deadline
        return outcome

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run_timers())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run_timers(self) -> None:
        while True:
            deadline = self.engine.next_deadline()
            self._sleeping_until = math.inf if deadline is None else deadline
            timeout = None
            if deadline is not None and not self.settings.manual_clock:
                timeout = max(0.0, deadline - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            try:
                self.engine.advance()
            except Exception:  # pragma: no cover - a bug; keep serving
                log.exception("timer processing failed")

    def tick(self) -> None:
        """With a manual clock: the time moved; fire what is due now."""
        self.engine.advance()
        self._wake.set()
