"""fleet.toml validation: each mistake names the field, exits 2 and writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from synfleet.spec.file import parse_fleet
from synfleet.spec.fleet import Role, Stream
from synfleet.spec.load import PROFILES, fleet_file_text
from test_cli_route import synfleet

BAD_FLEETS = {
    "unknown_top_key": (
        'server_name = "example.org"\nflavour = "x"\n',
        "fleet.toml: flavour: unknown key; allowed: server_name, public_baseurl, listen, tls, access,",
    ),
    "unknown_worker_key": (
        'server_name = "example.org"\n[workers]\nroom = 2\n',
        "fleet.toml: workers.room: unknown key; allowed: client_sync, rooms, client_reader,",
    ),
    "negative_count": (
        'server_name = "example.org"\n[workers]\nrooms = -1\n',
        "fleet.toml: workers.rooms: Input should be greater than or equal to 0 (got -1)",
    ),
    "zero_pool": (
        'server_name = "example.org"\n[database]\npool_max = 0\n',
        "fleet.toml: database.pool_max: Input should be greater than or equal to 1 (got 0)",
    ),
    "empty_writer_list": (
        'server_name = "example.org"\n[stream_writers]\nreceipts = []\n',
        "fleet.toml: stream_writers.receipts: needs at least one worker name (or remove the key)",
    ),
    "two_typing_writers": (
        'server_name = "example.org"\n[stream_writers]\ntyping = ["t1", "t2"]\n',
        "fleet.toml: stream_writers.typing: Synapse allows a single writer for this stream, got 2 (t1, t2); "
        "streams with several writers: device_lists, events, quarantined_media_changes, receipts,",
    ),
    "bad_worker_name": (
        'server_name = "example.org"\n[stream_writers]\nevents = ["Persister-1"]\n',
        "fleet.toml: stream_writers.events: worker name 'Persister-1' may only use a-z, 0-9 and _",
    ),
    "unknown_stream": (
        'server_name = "example.org"\n[stream_writers]\ntypo = ["t1"]\n',
        "fleet.toml: stream_writers.typo: unknown value 'typo'; allowed: 'events', 'typing',",
    ),
    "writer_without_http": (
        'server_name = "example.org"\n[stream_writers]\ntyping = ["sender1"]\n',
        "fleet.toml: stream_writers.typing: sender1 is a sender worker, which serves no HTTP requests",
    ),
    "bad_server_name": (
        'server_name = "exa mple.org"\n',
        "fleet.toml: server_name: must be a host name such as example.org (optionally :port), got 'exa mple",
    ),
    "missing_server_name": ("[workers]\nrooms = 2\n", "fleet.toml: server_name: required key is missing"),
    "bad_cidr": (
        'server_name = "example.org"\n[access]\nadmin_allow = ["10.0.0.0/33"]\n',
        "fleet.toml: access.admin_allow: '10.0.0.0/33' is not an IP address or CIDR network",
    ),
    "tls_without_files": (
        'server_name = "example.org"\n[tls]\nenabled = true\n',
        "fleet.toml: tls: certificate and key (PEM file paths) are required when enabled = true",
    ),
    "same_ports": (
        'server_name = "example.org"\n[listen]\nhttp_port = 8448\n',
        "fleet.toml: listen: http_port and https_port must differ (both 8448)",
    ),
    "bad_port": (
        'server_name = "example.org"\n[listen]\nhttp_port = 70000\n',
        "fleet.toml: listen.http_port: Input should be less than or equal to 65535 (got 70000)",
    ),
    "not_toml": ('server_name = "example.org"\n[workers\n', "fleet.toml: not valid TOML:"),
    "unknown_resource_group": (
        'server_name = "example.org"\n[resources.gpu]\nmemory = "1g"\n',
        "fleet.toml: resources: unknown group 'gpu'; allowed: default, main, postgres, redis, nginx,",
    ),
}


@pytest.mark.parametrize("case", BAD_FLEETS)
def test_bad_fleet_file_names_the_field_and_writes_nothing(tmp_path: Path, case: str) -> None:
    text, message = BAD_FLEETS[case]
    (tmp_path / "fleet.toml").write_text(text)
    for command in ("render", "check"):
        result = synfleet(command, "--dir", str(tmp_path))
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.startswith(f"synfleet: error: {tmp_path}/{message}"), result.stderr
        assert result.stderr.count("\n") == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet.toml"]


def test_route_reports_a_bad_fleet_file_too(tmp_path: Path) -> None:
    (tmp_path / "fleet.toml").write_text(BAD_FLEETS["negative_count"][0])
    result = synfleet("route", "--dir", str(tmp_path), "GET", "/")
    assert result.returncode == 2 and "workers.rooms" in result.stderr


@pytest.mark.parametrize("profile", PROFILES)
def test_profiles_are_valid_and_documented(profile: str) -> None:
    text = fleet_file_text("example.org", profile)
    spec = parse_fleet(text)
    assert spec.server_name == "example.org"
    assert all(f"{key} = {value}" in text for key, value in PROFILES[profile].items())


def test_small_profile_fits_a_laptop() -> None:
    fleet = parse_fleet(fleet_file_text("example.org", "small")).fleet
    assert [w.name for w in fleet.workers] == [
        "main",
        "client_sync1",
        "media1",
        "rooms1",
        "rooms2",
        "tasks1",
        "sender1",
    ]


def test_dedicated_and_shared_writers() -> None:
    text = (
        'server_name = "example.org"\n[stream_writers]\ntyping = ["typing1"]\n'
        'receipts = ["client_sync1", "receipts2"]\nevents = ["tasks1", "persister2"]\n'
    )
    fleet = parse_fleet(text).fleet
    assert [w.name for w in fleet.writers(Stream.TYPING)] == ["typing1"]
    assert [w.name for w in fleet.writers(Stream.RECEIPTS)] == ["client_sync1", "receipts2"]
    assert [w.name for w in fleet.writers(Stream.EVENTS)] == ["tasks1", "persister2"]
    assert fleet.worker("typing1").role is Role.STREAM_WRITER
    # client_sync1 keeps the other default streams but not typing.
    assert Stream.TYPING not in fleet.worker("client_sync1").streams
    assert Stream.PRESENCE in fleet.worker("client_sync1").streams


def test_init_refuses_to_overwrite_and_validates_the_name(tmp_path: Path) -> None:
    assert synfleet("init", "--dir", str(tmp_path), "--server-name", "example.org").returncode == 0
    again = synfleet("init", "--dir", str(tmp_path), "--server-name", "example.org")
    assert again.returncode == 2 and "--force" in again.stderr
    bad = synfleet("init", "--dir", str(tmp_path / "new"), "--server-name", "no spaces")
    assert bad.returncode == 2 and "--server-name" in bad.stderr
    assert not (tmp_path / "new").exists()
