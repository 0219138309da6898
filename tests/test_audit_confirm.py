"""synfleet audit's confirmation by real nginx: every proxy target runs on a stub (Synapse's docker
worker mode sends main's requests to localhost:8080, with no upstream block), requests nginx cannot
be asked about are counted apart, and nginx disagreeing with the evaluation is the first finding."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import synfleet
from helpers import CONFIGS
from synfleet.audit import audit, live, repair
from synfleet.audit.findings import AuditReport
from synfleet.nginx.binary import command
from synfleet.nginx.config import Outcome, parse_config, proxy_target, walk

pytestmark = pytest.mark.integration

CONFIRM = CONFIGS / "confirm"


def kinds(report: AuditReport) -> list[str]:
    return [f.kind for f in report.findings]


def test_every_literal_proxy_target_gets_a_stub_with_its_uri(tmp_path: Path) -> None:
    conf = CONFIRM / "targets_everywhere" / "nginx.conf"
    copy = live.runnable_copy(repair.TestedConfig(conf.parent, conf, [], False), tmp_path, 8008)
    # Each address is named as written, wherever its proxy_pass is: an if block, a nested location.
    uris = {}
    for directive in walk(parse_config(copy.conf)):
        if directive["directive"] == "proxy_pass":
            address, uri = proxy_target(directive["args"][0])
            uris[copy.stubs.get(address.removeprefix("unix:"), address)] = uri
    assert uris == {
        "synapse:8008": "",
        "[::1]:8448": "/elsewhere/",
        "127.0.0.1:8008": "/",
        "localhost:8080": "",
        "$backend": "",  # a variable stays: it names the upstream block, or an address with no stub
    }
    assert set(copy.stubs.values()) == {*uris} - {"$backend"} | {"127.0.0.1:18020"}
    # `synapse` does not resolve here; in the copy nothing is left to resolve.
    result = command.test_config(tmp_path, copy.conf, tmp_path / "test.log", tmp_path / "pid")
    assert result.returncode == 0, result.stderr


def test_docker_worker_mode_is_confirmed_to_its_main_process() -> None:
    report = audit(CONFIRM / "docker_workers" / "nginx.conf")
    assert not report.nginx_passes  # `synapse` and `media-repository` do not resolve here
    assert report.requests >= 1000
    assert report.confirmed is not None and report.confirmed >= 0.99 * report.requests
    assert report.not_asked == 0
    assert "model_mismatch" not in kinds(report)


def test_requests_to_an_address_a_variable_names_are_not_asked() -> None:
    conf = CONFIRM / "targets_everywhere" / "nginx.conf"
    report = audit(conf)
    assert report.not_asked and report.confirmed is not None
    assert report.confirmed + report.not_asked == report.requests
    assert "model_mismatch" not in kinds(report)
    result = synfleet("audit", str(conf))
    assert f"{report.confirmed} of {report.requests} requests answered as analysed; {report.not_asked} not asked" in (
        " ".join(result.stdout.split())
    )


def _disagree(monkeypatch: pytest.MonkeyPatch, wrong: Callable[[int], bool]) -> None:
    """The confirmation's evaluation answers 418 (which nginx never does) for the n-th request where
    ``wrong(n)``; the audit's own evaluation is left alone."""
    runnable_copy = live.runnable_copy

    def disagreeing(*args: Any) -> live.RunnableCopy:
        copy = runnable_copy(*args)
        evaluate, calls = copy.model.evaluate, itertools.count()

        def wrong_evaluate(*args: Any, **kwargs: Any) -> Outcome:
            outcome = evaluate(*args, **kwargs)
            return dataclasses.replace(outcome, status=418) if wrong(next(calls)) else outcome

        copy.model.evaluate = wrong_evaluate  # type: ignore[method-assign]
        return copy

    monkeypatch.setattr(live, "runnable_copy", disagreeing)


def test_a_model_nginx_disagrees_with_is_the_first_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _disagree(monkeypatch, lambda n: n % 10 == 0)
    report = audit(CONFIRM / "docker_workers" / "nginx.conf", corpus_size=300)
    mismatch = report.findings[0]
    assert (mismatch.kind, mismatch.severity) == ("model_mismatch", "error")
    assert any(f.severity == "error" for f in report.findings[1:])  # first, ahead of other errors
    assert report.confirmed is not None and mismatch.count + report.confirmed == report.requests
    assert mismatch.count > 0.01 * report.requests
    assert "may be wrong where nginx disagreed" in mismatch.message
    assert f"{mismatch.method} {mismatch.url} with 200 from " in mismatch.message
    assert mismatch.want == "evaluated: 418"


def test_a_rare_disagreement_is_a_warning_and_still_first(monkeypatch: pytest.MonkeyPatch) -> None:
    _disagree(monkeypatch, lambda n: n == 0)
    report = audit(CONFIRM / "docker_workers" / "nginx.conf", corpus_size=300)
    mismatch = report.findings[0]
    assert (mismatch.kind, mismatch.severity, mismatch.count) == ("model_mismatch", "warning", 1)
    assert report.findings[1].severity == "error"
