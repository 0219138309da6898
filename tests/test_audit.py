"""synfleet audit: the seed's config shows every known defect, ours shows none, and each broken
variant of ours shows exactly its defect. Every analysis is confirmed by real nginx."""

from __future__ import annotations

import json
import shutil
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import CONFIGS, copy_fleet_case, fleet_case, synfleet
from seed_config import extract_seed
from synfleet.audit import audit
from synfleet.audit.findings import AuditReport, Finding

pytestmark = pytest.mark.integration


def kinds(report: AuditReport) -> set[str]:
    return {f.kind for f in report.findings}


def find(report: AuditReport, kind: str, predicate: Callable[[Finding], bool] = lambda f: True) -> Finding:
    matching = [f for f in report.findings if f.kind == kind and predicate(f)]
    assert matching, f"no {kind} finding matching; findings: {[(f.kind, f.message) for f in report.findings]}"
    return matching[0]


@pytest.fixture(scope="module")
def seed_report(tmp_path_factory: pytest.TempPathFactory) -> AuditReport:
    return audit(extract_seed(tmp_path_factory.mktemp("seed")))


def test_seed_as_printed_fails_nginx_t_twice(seed_report: AuditReport) -> None:
    # 1. a comment line lost its '#'; 2. $accesstoken_from_urlparam is never defined.
    stray = find(seed_report, "nginx_error", lambda f: "'otherwise'" in f.message)
    assert stray.where.startswith("locations.conf:")
    find(seed_report, "nginx_error", lambda f: "$accesstoken_from_urlparam" in f.message and "maps.conf:" in f.where)
    assert seed_report.nginx_passes  # the repaired copy passes, so the analysis went on


def test_seed_never_proxies(seed_report: AuditReport) -> None:
    # 3. proxy.conf has no proxy_pass: every location answers by itself.
    assert find(seed_report, "missing_proxy_pass").count == 19


def test_seed_sends_stream_endpoints_to_room_workers(seed_report: AuditReport) -> None:
    # 4. the "Federation rooms" location catches typing, receipts, read markers and room tags.
    for rule in ("stream_typing", "stream_receipts", "stream_account_data"):
        finding = find(seed_report, "wrong_process", lambda f, r=rule: f.message.startswith(r))
        assert "room_workers" in (finding.got or ""), finding


def test_seed_misroutes_media(seed_report: AuditReport) -> None:
    # 5. legacy media paths fall through to main; federation media is caught by federation readers.
    legacy = find(seed_report, "wrong_process", lambda f: f.message.startswith("media ") and "main" in (f.got or ""))
    assert legacy.severity == "error"
    find(
        seed_report, "wrong_process", lambda f: f.message.startswith("media ") and "federation_readers" in (f.got or "")
    )


def test_seed_breaks_room_affinity_and_never_shards_v12_rooms(seed_report: AuditReport) -> None:
    # 6. the greedy $room_name over $request_uri; 7. regexes that require ':server'.
    assert find(seed_report, "affinity_broken").count >= 12
    v12 = find(seed_report, "rooms_not_sharded", lambda f: "room version 12" in f.message)
    assert v12.severity == "error"


def test_seed_never_uses_its_client_readers(seed_report: AuditReport) -> None:
    # 8. the "Client: Reader" location proxies to main.
    find(seed_report, "unused_upstream", lambda f: "synapse_inbound_client_readers" in f.message)


def test_seed_sends_user_admin_to_the_media_worker(seed_report: AuditReport) -> None:
    # 9. the media admin regex's alternation bug.
    finding = find(seed_report, "wrong_process", lambda f: f.message.startswith("main_admin"))
    assert "media" in (finding.got or "") and "/_synapse/admin/v1/users/" in (finding.url or "")


def test_seed_disables_upstream_keepalive(seed_report: AuditReport) -> None:
    # 10. Connection $connection_upgrade sends "close" for plain requests.
    assert "Connection: close" in (find(seed_report, "keepalive_disabled").got or "")


def test_seed_exposes_the_admin_api_behind_a_docker_proxy(seed_report: AuditReport) -> None:
    # 11. private.conf trusts 172.16/12, where a reverse proxy on a Docker network lives.
    assert "Docker network" in find(seed_report, "admin_exposed").message


def test_seed_analysis_agrees_with_real_nginx(seed_report: AuditReport) -> None:
    assert seed_report.requests >= 1000
    assert seed_report.confirmed == seed_report.requests
    assert "model_mismatch" not in kinds(seed_report)


@pytest.fixture(scope="module", params=["seed", "small", "seven_rooms"])
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp(f"rendered-{request.param}")
    if request.param == "seven_rooms":
        copy_fleet_case("seven_rooms", directory)
    else:
        init = synfleet("init", "--dir", str(directory), "--server-name", "example.org", "--profile", request.param)
        assert init.returncode == 0
    assert synfleet("render", "--dir", str(directory)).returncode == 0
    return directory


def test_our_rendered_configs_have_no_findings(rendered: Path) -> None:
    result = synfleet("audit", str(rendered / "deploy" / "nginx" / "config"), "--json", "--fleet", str(rendered))
    data = json.loads(result.stdout)
    assert data["findings"] == [], data["findings"]
    assert result.returncode == 0
    assert data["confirmed_by_nginx"] == data["requests"] >= 1000


BROKEN = sorted(p.name for p in (CONFIGS / "broken_nginx").iterdir())


@pytest.mark.parametrize("variant", BROKEN)
def test_each_broken_variant_shows_exactly_its_defect(tmp_path: Path, variant: str) -> None:
    directory = copy_fleet_case("seven_rooms", tmp_path / "fleet")
    assert synfleet("render", "--dir", str(directory)).returncode == 0
    conf = tmp_path / "conf"
    shutil.copytree(directory / "deploy" / "nginx" / "config", conf)
    case = tomllib.loads((CONFIGS / "broken_nginx" / variant / "breaks.toml").read_text())
    for edit in case["edit"]:
        text = (conf / edit["file"]).read_text()
        assert edit["old"] in text, f"{edit['old']!r} not in {edit['file']}"
        (conf / edit["file"]).write_text(text.replace(edit["old"], edit["new"], 1))
    report = audit(conf, fleet_case("seven_rooms"))
    assert kinds(report) == set(case["expect"]), [(f.kind, f.message) for f in report.findings]
    if report.nginx_passes:
        assert report.confirmed == report.requests
    if variant == "http2_on_old_nginx":
        assert "1.25.1" in report.findings[0].message


def test_unreadable_input_exits_2(tmp_path: Path) -> None:
    result = synfleet("audit", str(tmp_path / "missing"))
    assert result.returncode == 2 and result.stderr.startswith("synfleet: error:")
    (tmp_path / "empty").mkdir()
    result = synfleet("audit", str(tmp_path / "empty"))
    assert result.returncode == 2 and "no nginx.conf" in result.stderr


def test_findings_exit_1_with_a_table(tmp_path: Path) -> None:
    result = synfleet("audit", str(extract_seed(tmp_path / "seed")), "--no-confirm")
    assert result.returncode == 1
    assert "affinity_broken" in result.stdout and "findings" in result.stdout
