"""What `synfleet audit` reports: findings, each one kind of mistake with an example and a fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

ERROR, WARNING = "error", "warning"


@dataclass
class Finding:
    kind: str
    severity: str
    message: str
    fix: str
    method: str | None = None
    url: str | None = None
    got: str | None = None
    want: str | None = None
    count: int = 1
    where: str = ""

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v != ""}


@dataclass
class AuditReport:
    source: str
    findings: list[Finding] = field(default_factory=list)
    requests: int = 0
    confirmed: int | None = None  # requests real nginx answered as predicted, when it ran
    not_asked: int | None = None  # requests real nginx could not be asked about (no stub for their target)
    nginx_passes: bool = False
    assumptions: list[str] = field(default_factory=list)  # what the audit took as given
