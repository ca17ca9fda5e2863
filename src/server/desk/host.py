"""The desks one process serves (`[[desks]]`): leading some, standing by for others.

Each desk has its own runtime (engine, hub, journal, lease) and its own tokens; a token
belongs to one desk, so a call finds its desk by its token, and no request names one.
Tokens are random secrets, so looking one up in each desk in turn tells nothing about
the others, and two desks never share a token.
"""

from __future__ import annotations

from collections.abc import Sequence

from .runtime import Runtime
from .tokens import Principal


class Host:
    def __init__(self, runtimes: Sequence[Runtime]) -> None:
        ids = [rt.desk_id for rt in runtimes]
        if len(set(ids)) != len(ids):
            raise ValueError(f"desk ids must differ: {ids}")
        self.runtimes = list(runtimes)

    def find(self, secret: str) -> tuple[Runtime, Principal] | None:
        """The desk whose token `secret` is, and its principal (None: no desk has it)."""
        for rt in self.runtimes:
            principal = rt.principal(secret)
            if principal is not None:
                return rt, principal
        return None

    def loaded(self) -> bool:
        """Every desk is in memory (leading or standing by): an unknown token is unknown."""
        return all(rt.loaded for rt in self.runtimes)

    def leads_any(self) -> bool:
        return any(rt.serving for rt in self.runtimes)
