"""Running a module of :mod:`synfleet.check` in a child Python: Synapse's imports and global state
stay out of synfleet, and the child answers with one JSON object per line."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any


def json_lines(module: str, *arguments: str) -> tuple[list[dict[str, Any]], str]:
    """What ``python -m module arguments`` printed as JSON lines, and the last line of its errors
    (to say why when it printed none)."""
    result = subprocess.run(
        [sys.executable, "-m", module, *arguments], capture_output=True, text=True, check=False, timeout=600
    )
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return lines, (result.stderr.strip().splitlines() or ["no output"])[-1]
