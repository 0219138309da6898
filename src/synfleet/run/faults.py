"""A test seam: ``SYNFLEET_FAULT=<step>`` makes synfleet kill itself with SIGKILL, as a crash or a
power cut would end it, when it reaches that step of ``restore`` (see :mod:`synfleet.run.swap`) or
of ``up`` loading a restored dump. Tests use it to show that every step leaves a fleet whole;
nothing else sets it."""

from __future__ import annotations

import os
import signal

FAULT_VARIABLE = "SYNFLEET_FAULT"


def crash_point(step: str) -> None:
    """Die here, without cleaning up, if ``SYNFLEET_FAULT`` names ``step``."""
    if os.environ.get(FAULT_VARIABLE) == step:
        os.kill(os.getpid(), signal.SIGKILL)
