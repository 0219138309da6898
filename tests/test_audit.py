"""synfleet audit: the seed's config shows every known defect, ours shows none, and each broken
variant of ours shows exactly its defect. Every analysis is confirmed by real nginx."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import synfleet
from helpers import CONFIGS, copy_fleet_case
from seed_config import extract_seed
from synfleet.audit import audit
from synfleet.audit.findings import AuditReport, Finding
from synfleet.audit.trust import body_size, forwarded_for, nginx_size, request_uris
from synfleet.model.schema import read_fleet
from synfleet.nginx.binary.command import world_readable_tempdir
from synfleet.nginx.config import NginxModel

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


def test_seed_lets_clients_choose_their_address_and_body_size(seed_report: AuditReport) -> None:
    # 12. no X-Forwarded-For of nginx's; 13. client_max_body_size 1g for every request.
    assert find(seed_report, "client_forwarded_for").severity == "warning"
    body = find(seed_report, "body_size")
    assert body.where.startswith("nginx.conf:") and body.count == 19 and "1g" in body.message


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
    spec = read_fleet(CONFIGS / "fleets" / "seven_rooms" / "fleet.toml")
    report = audit(conf, spec.fleet, max_upload_bytes=spec.media.max_upload_bytes)
    assert kinds(report) == set(case["expect"]), [(f.kind, f.message) for f in report.findings]
    for kind, severity in case.get("severity", {}).items():
        assert {f.severity for f in report.findings if f.kind == kind} == {severity}, report.findings
    if report.nginx_passes:
        assert report.confirmed == report.requests
    if variant == "http2_on_old_nginx":
        assert "1.25.1" in report.findings[0].message


def _text(text: str) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        (tmp_path / "given").write_text(text)
        return tmp_path / "given"

    return make


def _bytes(data: bytes) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        (tmp_path / "given").write_bytes(data)
        return tmp_path / "given"

    return make


def _fifo(tmp_path: Path) -> Path:
    os.mkfifo(tmp_path / "given")
    return tmp_path / "given"


def _empty_directory(tmp_path: Path) -> Path:
    (tmp_path / "given").mkdir()
    return tmp_path / "given"


def _unreadable(tmp_path: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root reads files without read permission")
    path = _text("events {}\nhttp {}\n")(tmp_path)
    path.chmod(0)
    return path


def _binary_include(tmp_path: Path) -> Path:
    (tmp_path / "given").mkdir()
    (tmp_path / "given" / "nginx.conf").write_text("events {}\nhttp {\n    include synapse.conf;\n}\n")
    (tmp_path / "given" / "synapse.conf").write_bytes(b"\x7fELF\x02\x01\x00\x00")
    return tmp_path / "given"


BAD_INPUT: dict[str, tuple[Callable[[Path], Path], str]] = {
    "not_nginx": (_text("vm\n"), "not an nginx config synfleet can parse: line 2: unexpected end of file"),
    "no_http_block": (_text("events {}\n"), "no http block"),
    "empty": (_text(""), "empty file"),
    "dev_null": (lambda _: Path("/dev/null"), "a character device"),
    "fifo": (_fifo, "a named pipe"),
    "directory_without_nginx_conf": (_empty_directory, "no nginx.conf in this directory"),
    "missing": (lambda tmp_path: tmp_path / "missing", "no such file or directory"),
    "unreadable": (_unreadable, "permission denied"),
    "not_utf8": (_bytes("server_name café;\n".encode("latin-1")), "not UTF-8 text (byte 0xe9 on line 1)"),
    "binary": (_bytes(bytes(range(256))), "binary data"),
    "binary_include": (_binary_include, "synapse.conf: binary data"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_input_that_is_no_nginx_config_is_one_error_line(tmp_path: Path, case: str) -> None:
    make, reason = BAD_INPUT[case]
    given = make(tmp_path)
    result = synfleet("audit", str(given), "--no-confirm")
    assert result.returncode == 2, result
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"synfleet: error: {given}"), result.stderr
    assert reason in result.stderr and "synfleet-audit-" not in result.stderr, result.stderr


def _config(tmp_path: Path, http: str = "", server: str = "", location: str = "") -> NginxModel:
    """A one-location config proxying to Synapse, with extra directives at each level."""
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        "events {}\nhttp {\n"
        f"    {http}\n"
        "    upstream synapse_main { server 127.0.0.1:8008; }\n"
        f"    server {{\n        {server}\n"
        f"        location / {{\n            proxy_pass http://synapse_main;\n            {location}\n        }}\n"
        "    }\n}\n"
    )
    return NginxModel.load(conf)


REMOTE = "proxy_set_header X-Forwarded-For $remote_addr;"
HOST = "proxy_set_header Host $host;"


@pytest.mark.parametrize(
    ("http", "location", "severity"),
    [
        (REMOTE, "", None),
        ("", REMOTE, None),
        ("proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;", "", "error"),
        ("", "proxy_set_header x-forwarded-for ${http_x_forwarded_for};", "error"),
        ("", "proxy_set_header X-Forwarded-For $http_x_forwarded_for,$remote_addr;", "error"),
        ("", "", "warning"),
        # A level with a proxy_set_header of its own inherits none: the http one never applies.
        (REMOTE, HOST, "warning"),
        ("proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;", f"{HOST} {REMOTE}", None),
    ],
)
def test_forwarded_for_follows_nginx_inheritance(
    tmp_path: Path, http: str, location: str, severity: str | None
) -> None:
    findings = forwarded_for(_config(tmp_path, http=http, location=location))
    assert [f.severity for f in findings] == ([severity] if severity else []), findings
    if severity == "error":
        assert findings[0].where == ("nginx.conf:3" if "X-Forwarded" in http else "nginx.conf:9")
        assert findings[0].fix.startswith(REMOTE)


def test_findings_name_the_file_a_directive_is_in(tmp_path: Path) -> None:
    # crossplane names directives after an include in the same block after the included file.
    (tmp_path / "headers.conf").write_text("proxy_set_header Host $host;\n")
    model = _config(
        tmp_path, location="include headers.conf; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"
    )
    assert [f.where for f in forwarded_for(model)] == ["nginx.conf:9"]


@pytest.mark.parametrize(
    ("value", "size"),
    [("100", 100), ("12800k", 13107200), ("50M", 52428800), ("1g", 1 << 30), ("0", 0), ("1.5m", None), ("", None)],
)
def test_nginx_sizes(value: str, size: int | None) -> None:
    assert nginx_size(value) == size


URIS = request_uris(["/_matrix/client/v3/sync", "/_matrix/media/v3/upload?filename=a", "/_matrix/media/v3/download/x"])


@pytest.mark.parametrize(
    ("http", "server", "location", "max_upload", "flagged"),
    [
        ("", "", "", 50 << 20, False),  # nginx's default, 1m
        ("client_max_body_size 50M;", "", "", 50 << 20, False),  # what Synapse's docs recommend
        ("client_max_body_size 1g;", "", "", 50 << 20, True),  # the seed's
        ("client_max_body_size 1g;", "", "", 1 << 30, False),  # a fleet that takes 1 GiB uploads
        ("client_max_body_size 0;", "", "", 50 << 20, True),  # unlimited
        ("client_max_body_size 52428801;", "", "", 50 << 20, True),
        ("client_max_body_size 1g;", "client_max_body_size 12800k;", "", 50 << 20, False),
        ("", "client_max_body_size 1G;", "client_max_body_size 50m;", 50 << 20, False),
        ("", "client_max_body_size 20m;", "", 10 << 20, True),  # small uploads: 12.5 MiB is the most
    ],
)
def test_body_size_follows_nginx_inheritance(
    tmp_path: Path, http: str, server: str, location: str, max_upload: int, flagged: bool
) -> None:
    findings = body_size(_config(tmp_path, http, server, location), URIS, max_upload)
    assert [f.kind for f in findings] == (["body_size"] if flagged else []), findings


def test_media_upload_locations_may_take_the_upload_size(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        "events {}\nhttp {\n    client_max_body_size 12800k;\n"
        "    server {\n"
        "        location ^~ /_matrix/media/v3/upload { client_max_body_size 1g; proxy_pass http://127.0.0.1:8008; }\n"
        "        location ^~ /_matrix/media/ { client_max_body_size 1g; proxy_pass http://127.0.0.1:8008; }\n"
        "        location / { proxy_pass http://127.0.0.1:8008; }\n"
        "    }\n}\n"
    )
    [finding] = body_size(NginxModel.load(conf), URIS, 50 << 20)
    assert finding.count == 1 and "location ^~ /_matrix/media/ " in finding.message, finding


@pytest.fixture
def searchable_dir() -> Iterator[Path]:
    """A directory every account can search (pytest's tmp_path lies under a 0700 directory)."""
    with world_readable_tempdir("sfa-test-") as directory:
        yield directory


def _socket_config(directory: Path, socket_path: Path) -> Path:
    conf = directory / "nginx.conf"
    conf.write_text(
        "events {}\nhttp {\n"
        f"    upstream synapse_main {{ server unix:{socket_path}; keepalive 32; }}\n"
        "    server {\n        listen 127.0.0.1:8008;\n        location / {\n"
        "            proxy_pass http://synapse_main;\n            proxy_http_version 1.1;\n"
        '            proxy_set_header Connection "";\n            proxy_set_header X-Forwarded-For $remote_addr;\n'
        "        }\n    }\n}\n"
    )
    return conf


def _listening(path: Path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    path.chmod(0o777)
    return server


@pytest.mark.parametrize(("directory_mode", "reachable"), [(0o755, True), (0o700, False)])
def test_socket_reachable_by_every_local_account(searchable_dir: Path, directory_mode: int, reachable: bool) -> None:
    sockets = searchable_dir / "sockets"
    sockets.mkdir(mode=directory_mode)
    sockets.chmod(directory_mode)
    path = sockets / "main.sock"
    with _listening(path):
        report = audit(_socket_config(searchable_dir, path), corpus_size=50, confirm=False)
    found = [f for f in report.findings if f.kind == "socket_reachable"]
    if reachable:
        assert [(f.severity, f.where) for f in found] == [("error", str(path))]
        assert "mode 0777" in found[0].message and "upstream synapse_main" in found[0].message
    else:
        assert found == []


def test_socket_reachable_in_the_fleet_run_directory(searchable_dir: Path) -> None:
    sockets = searchable_dir / "fleet" / "run" / "sockets"
    sockets.mkdir(parents=True)
    for directory in (sockets, *sockets.parents[:2]):
        directory.chmod(0o755)
    path = sockets / "synapse_inbound_client_reader1.sock"
    with _listening(path):
        result = synfleet(
            "audit",
            str(_socket_config(searchable_dir, Path("/nonexistent/main.sock"))),
            "--fleet",
            str(searchable_dir / "fleet"),
            "--no-confirm",
            "--json",
        )
    [finding] = [f for f in json.loads(result.stdout)["findings"] if f["kind"] == "socket_reachable"]
    assert finding["where"] == str(path), finding


def test_findings_exit_1_with_a_table(tmp_path: Path) -> None:
    result = synfleet("audit", str(extract_seed(tmp_path / "seed")), "--no-confirm")
    assert result.returncode == 1
    assert "affinity_broken" in result.stdout and "findings" in result.stdout
