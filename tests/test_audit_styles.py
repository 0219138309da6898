"""synfleet audit on the configs people run, one per style (tests/configs/styles/<style>/): each
gives the findings its defects call for and no false ones, and real nginx confirms at least 99% of
the requests analysed. A style with its Synapse config is audited with and without it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from conftest import synfleet
from helpers import CONFIGS
from synfleet.audit import audit
from synfleet.audit.findings import AuditReport, Finding
from synfleet.audit.synapse_config import read_synapse_config

pytestmark = pytest.mark.integration

STYLES = CONFIGS / "styles"
CASES = [
    (style.name, with_synapse)
    for style in sorted(STYLES.iterdir())
    for with_synapse in ((False, True) if (style / "synapse" / "homeserver.yaml").exists() else (False,))
]


def _matches(finding: Finding, pattern: str) -> bool:
    """``kind`` or ``kind:start of the message``."""
    kind, _, start = pattern.partition(":")
    return finding.kind == kind and finding.message.startswith(start)


def _audit(style: str, with_synapse: bool) -> AuditReport:
    synapse = read_synapse_config([STYLES / style / "synapse" / "homeserver.yaml"]) if with_synapse else None
    return audit(STYLES / style, synapse=synapse)


@pytest.mark.parametrize(("style", "with_synapse"), CASES, ids=[f"{s}{'+synapse' if w else ''}" for s, w in CASES])
def test_style_gets_its_findings_and_no_false_ones(style: str, with_synapse: bool) -> None:
    expected = tomllib.loads((STYLES / style / "expect.toml").read_text())
    report = _audit(style, with_synapse)
    found = [(f.severity, f.kind, f.message[:100]) for f in report.findings]
    variant = "with_synapse" if with_synapse else "without_synapse"
    for pattern in [*expected["must"], *expected.get(f"{variant}_must", [])]:
        assert any(_matches(f, pattern) for f in report.findings), f"{pattern} missing; found {found}"
    for pattern in [*expected["must_not"], *expected.get(f"{variant}_must_not", [])]:
        assert not [f for f in report.findings if _matches(f, pattern)], f"{pattern} found: {found}"
    assert report.requests >= 1200
    assert report.confirmed is not None and report.confirmed >= 0.99 * report.requests, (
        f"nginx confirmed {report.confirmed} of {report.requests}"
    )
    if with_synapse:
        assert not [a for a in report.assumptions if "roles from names" in a or "written by" in a]
    else:
        assert report.assumptions, "an audit without the Synapse config must say what it assumed"


def test_a_config_that_names_its_writer_is_not_reported_on_the_default_one() -> None:
    report = _audit("docker_worker_mode", with_synapse=False)
    said = "\n".join(report.assumptions)
    assert "typing is written by localhost:18015: the upstream typing is named after it" in said
    assert not [f for f in report.findings if f.kind == "wrong_process" and f.message.startswith("stream_")]


def test_bad_synapse_configs_are_one_clear_error(tmp_path: Path) -> None:
    not_yaml = tmp_path / "homeserver.yaml"
    not_yaml.write_text("server_name: [unclosed\n")
    not_synapse = tmp_path / "other.yaml"
    not_synapse.write_text("colour: blue\n")
    config = STYLES / "docker_worker_mode"
    for path, message in ((not_yaml, "not YAML"), (not_synapse, "not a Synapse config")):
        result = synfleet("audit", str(config), "--synapse-config", str(path), "--no-confirm")
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.startswith(f"synfleet: error: {path}: {message}") and result.stderr.count("\n") == 1


def test_a_fragment_that_includes_a_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    fragment = tmp_path / "matrix.conf"
    fragment.write_text(
        "upstream a { server 127.0.0.1:1; }\ninclude missing.conf;\nserver { location / { proxy_pass http://a; } }\n"
    )
    result = synfleet("audit", str(fragment), "--no-confirm")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"synfleet: error: {fragment}: ") and result.stderr.count("\n") == 1
    assert "missing.conf" in result.stderr
