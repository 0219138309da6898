"""The fleet file's TLS and federation keys: what they render, and one clear error (exit 2, nothing
started) for each file that cannot serve: a missing certificate, a CA bundle that is not PEM, a
certificate for another host, a key that is not the certificate's."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import synfleet
from synfleet.lab import CertificateAuthority
from synfleet.nginx.binary.command import world_readable_tempdir


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create(root / "ca")
    certificate, key = ca.issue(["matrix.example.org"], root / "right")
    other_certificate, other_key = ca.issue(["elsewhere.example.net"], root / "other")
    not_pem = root / "not-a-bundle.pem"
    not_pem.write_text("just some text\n")
    return {
        "ca": ca.certificate_path,
        "certificate": certificate,
        "key": key,
        "other_certificate": other_certificate,
        "other_key": other_key,
        "not_pem": not_pem,
    }


def fleet(directory: Path, certificate: Path | str, key: Path | str, trusted_ca: Path | str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "fleet.toml").write_text(
        'server_name = "example.org"\npublic_baseurl = "https://matrix.example.org/"\n'
        f'[tls]\nenabled = true\ncertificate = "{certificate}"\nkey = "{key}"\n'
        f'[federation]\ntrusted_ca = "{trusted_ca}"\nip_range_whitelist = ["10.0.0.0/8"]\ntrusted_key_servers = []\n'
    )
    return directory


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_certificate", "tls.certificate: /nonexistent/fullchain.pem: cannot read: No such file or directory"),
        ("not_pem_ca", "federation.trusted_ca: {not_pem}: not a PEM bundle of certificates"),
        ("wrong_host", "tls.certificate: {other_certificate} is for elsewhere.example.net, not for matrix.example.org"),
        ("wrong_key", "tls.key: {other_key} is not the key of tls.certificate {certificate}"),
    ],
)
@pytest.mark.parametrize("command", ["render", "check", "up"])
def test_each_bad_file_is_one_error(
    tmp_path: Path, pki: dict[str, Path], case: str, message: str, command: str
) -> None:
    certificate, key, trusted_ca = pki["certificate"], pki["key"], pki["ca"]
    if case == "missing_certificate":
        certificate = Path("/nonexistent/fullchain.pem")
    elif case == "not_pem_ca":
        trusted_ca = pki["not_pem"]
    elif case == "wrong_host":
        certificate, key = pki["other_certificate"], pki["other_key"]
    elif case == "wrong_key":
        key = pki["other_key"]
    with world_readable_tempdir("synfleet-pem-") as scratch:  # `up` needs a directory its accounts reach
        directory = fleet(scratch / "fleet", certificate, key, trusted_ca)
        if command == "check":  # check needs a rendered deployment; render it with good files first
            good = fleet(scratch / "good", pki["certificate"], pki["key"], pki["ca"])
            assert synfleet("render", "--dir", str(good)).returncode == 0
            (good / "fleet.toml").write_text((directory / "fleet.toml").read_text())
            directory = good
        result = synfleet(command, "--dir", str(directory), timeout=120)
        ran = (directory / "run").exists()
    expected = message.format(**{name: str(path) for name, path in pki.items()})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"synfleet: error: {expected}"), result.stderr
    assert result.stderr.count("\n") == 1
    assert not ran


def test_federation_keys_reach_synapse_and_nginx(tmp_path: Path, pki: dict[str, Path]) -> None:
    directory = fleet(tmp_path, pki["certificate"], pki["key"], pki["ca"])
    assert synfleet("render", "--dir", str(directory)).returncode == 0
    synapse = directory / "deploy" / "synapse"
    config = yaml.safe_load((synapse / "homeserver.yaml").read_text())
    assert config["federation_custom_ca_list"] == ["/config/federation_ca.pem"]
    assert (synapse / "federation_ca.pem").read_text() == pki["ca"].read_text()
    assert config["ip_range_whitelist"] == ["10.0.0.0/8"]
    assert config["trusted_key_servers"] == []
    assert "federation_domain_whitelist" not in config  # not set: federate with every server
    check = synfleet("check", "--dir", str(directory), timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
