"""The native run's runtime model: each process synfleet supervises, its start tier, its health
check (from the service table, :mod:`synfleet.render.services`) and its log."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from enum import IntEnum

from synfleet.render.services import Health


class Tier(IntEnum):
    """Start order: infrastructure, then main (it migrates the schema), then workers, then nginx.
    Stopping goes the other way."""

    INFRASTRUCTURE = 0
    MAIN = 1
    WORKERS = 2
    FRONT = 3

    @property
    def timeout(self) -> float:
        """Seconds this tier may take to become healthy; main migrates the schema on its first start."""
        return {Tier.INFRASTRUCTURE: 60.0, Tier.MAIN: 300.0, Tier.WORKERS: 300.0, Tier.FRONT: 30.0}[self]


@dataclass(frozen=True)
class NativeProcess:
    name: str
    tier: Tier
    command: list[str]
    health: Health
    log: str
    socket: str
    user: str | None = None
    stop_signal: str = "TERM"
    stop_wait: int = 20
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def command_line(self) -> str:
        return shlex.join(self.command)
