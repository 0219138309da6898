"""The fleet's CA (D/secrets/tls): made once and kept, a certificate per host naming its address,
reissued when the fleet file moves a host, private files only; the CA replaced in three steps that
never leave a certificate untrusted; `synfleet check` and `certs` say what is wrong; a host whose
D/secrets has no CA refuses to start with a CA of its own. No servers: a second each."""

from __future__ import annotations

import datetime
import os
import re
from pathlib import Path

import pytest
from cryptography import x509

from conftest import synfleet
from synfleet.errors import UsageError
from synfleet.model.load import load_spec
from synfleet.model.schema import FleetSpec
from synfleet.pki.certificates import CLIENT, SERVER, authority, certificate_pem, issue, key_pem, new_key
from synfleet.pki.fleet import (
    AUTHORITY,
    FleetAuthority,
    Installed,
    Role,
    host_files,
    new_authority,
    problems,
    retire,
    rotate,
    subject,
)
from synfleet.render.fleet_file import fleet_toml
from synfleet.render.secrets import ensure_secrets
from test_render import THREE_HOSTS, make_fleet


def three_hosts(directory: Path) -> FleetSpec:
    make_fleet(directory, "small")
    (directory / "fleet.toml").write_text((directory / "fleet.toml").read_text() + THREE_HOSTS)
    return load_spec(directory)


def test_the_ca_is_made_once_and_each_host_is_named_by_its_address(tmp_path: Path) -> None:
    spec = three_hosts(tmp_path)
    ensure_secrets(tmp_path, spec)
    fleet = FleetAuthority(tmp_path)
    files = sorted(p.name for p in fleet.folder.iterdir())
    assert files == [
        "authority.pem",
        "database.pem",
        "front.pem",
        "host-a.pem",
        "host-b.pem",
        "host-c.pem",
        "trust.pem",
    ]
    assert all(os.stat(p).st_mode & 0o777 == 0o600 for p in fleet.folder.iterdir())
    assert os.stat(fleet.folder).st_mode & 0o777 == 0o700
    before = {p.name: p.read_bytes() for p in fleet.folder.iterdir()}
    b = fleet.identity("host-b")
    assert sorted(b.names) == ["10.9.0.3", "b"] and b.certificate.subject == subject(spec, Role.HOST, "b")
    usages = b.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {SERVER, CLIENT}
    assert fleet.identity("database").certificate.subject == subject(spec, Role.DATABASE, spec.database.user)
    ensure_secrets(tmp_path, spec)
    assert {p.name: p.read_bytes() for p in fleet.folder.iterdir()} == before
    assert not problems(tmp_path, spec)

    # host b moves: only its certificate is issued again
    data = spec.model_dump(mode="json")
    data["hosts"]["b"]["address"] = "10.9.0.33"
    (tmp_path / "fleet.toml").write_text(fleet_toml(FleetSpec.model_validate(data)))
    moved = load_spec(tmp_path)
    assert problems(tmp_path, moved) == ["host-b.pem names b, 10.9.0.3, not b, 10.9.0.33"]
    ensure_secrets(tmp_path, moved)
    changed = {p.name for p in fleet.folder.iterdir() if p.read_bytes() != before[p.name]}
    assert changed == {"host-b.pem"} and "10.9.0.33" in fleet.identity("host-b").names


def test_each_host_is_given_its_own_files_only(tmp_path: Path) -> None:
    spec = three_hosts(tmp_path)
    ensure_secrets(tmp_path, spec)
    fleet = FleetAuthority(tmp_path)
    a, b = host_files(tmp_path, spec, "a"), host_files(tmp_path, spec, "b")
    assert sorted(a) == sorted(
        [Installed.TRUST.certificate]
        + [
            f(i)
            for i in (Installed.HOST, Installed.FRONT, Installed.DATABASE)
            for f in (lambda i: i.certificate, lambda i: i.key)
        ]
    )
    assert Installed.FRONT.key not in b  # the front's key stays on the front's host
    assert b[Installed.HOST.key] == fleet.identity("host-b").key_pem
    assert fleet.identity("host-a").key_pem not in "".join(b.values())


def test_replacing_the_ca_never_leaves_a_certificate_untrusted(tmp_path: Path) -> None:
    spec = three_hosts(tmp_path)
    ensure_secrets(tmp_path, spec)
    fleet = FleetAuthority(tmp_path)
    old = fleet.authority.certificate
    new = new_authority(tmp_path, spec)
    assert fleet.trusted() == [new, old] and fleet.authority.certificate == new
    assert not problems(tmp_path, spec)  # everything still the old CA's, which is trusted
    with pytest.raises(UsageError, match="issued by an older CA"):
        retire(tmp_path, spec)
    rotate(tmp_path, spec)
    assert all(identity.certificate.issuer == new.subject for _, identity in fleet.identities(spec))
    assert retire(tmp_path, spec) == [old] and fleet.trusted() == [new]
    assert not problems(tmp_path, spec)


def test_check_names_a_certificate_of_another_ca_or_ending_soon(tmp_path: Path) -> None:
    spec = three_hosts(tmp_path)
    ensure_secrets(tmp_path, spec)
    fleet = FleetAuthority(tmp_path)
    other_key, key = new_key(), new_key()
    other = authority(subject(spec, Role.AUTHORITY, "another CA"), other_key, datetime.timedelta(days=5))
    made = issue(
        other,
        other_key,
        subject(spec, Role.HOST, "c"),
        key,
        ["c", "10.9.0.4"],
        [SERVER, CLIENT],
        other.not_valid_after_utc - other.not_valid_before_utc,
    )
    fleet.path("host-c").write_bytes(key_pem(key) + certificate_pem(made))
    assert problems(tmp_path, spec) == [
        "host-c.pem is not issued by a trusted CA",
        f"host-c.pem ends {made.not_valid_after_utc:%Y-%m-%d}: synfleet certs rotate",
    ]
    listing = synfleet("certs", "--dir", str(tmp_path))
    assert listing.returncode == 0, listing.stderr
    assert re.search(r"ending within 30 days: host-c", listing.stdout), listing.stdout
    fleet.path(AUTHORITY).write_text("not a key\n")
    refused = synfleet("certs", "rotate", "--dir", str(tmp_path))
    assert refused.returncode == 2 and "authority.pem: not a key and certificate" in refused.stderr


def test_certs_commands_say_what_is_wrong(tmp_path: Path) -> None:
    make_fleet(tmp_path, "small")
    one = synfleet("certs", "--dir", str(tmp_path))
    assert one.returncode == 2 and "runs on one host" in one.stderr, one.stderr
    three_hosts(tmp_path / "three")
    both = synfleet("certs", "rotate", "--new-ca", "--retire", "--dir", str(tmp_path / "three"))
    assert both.returncode == 2 and "one at a time" in both.stderr
    assert not (tmp_path / "three" / "secrets").exists()
    nohost = synfleet("certs", "install", "--dir", str(tmp_path / "three"))
    assert nohost.returncode == 2 and "--host NAME" in nohost.stderr


def test_a_host_without_the_fleets_ca_refuses_to_make_its_own(tmp_path: Path) -> None:
    """`up --host b` on a copy of D without D/secrets/tls: one line saying to copy D/secrets from
    main's host, and nothing written (it would make a CA no other host trusts)."""
    three_hosts(tmp_path)
    up = synfleet("up", "--host", "b", "--dir", str(tmp_path))
    assert up.returncode == 2, up.stdout + up.stderr
    assert "no fleet CA" in up.stderr and "copy its D/secrets to every host" in up.stderr
    assert not (tmp_path / "secrets").exists() and not (tmp_path / "run-b").exists()
