"""TURN for voice and video calls ([turn]): what is rendered for Synapse, coturn natively and in
compose, where the shared secret goes (never a command line, never a file others may read), what
`synfleet check` proves, and a running native fleet whose Synapse hands a real user credentials that
coturn's own test client allocates relays with, while wrong and expired ones are refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

import helpers
from conftest import RunningFleet, fleet_under_test, synfleet
from synfleet.check.deployment import Project, turn_listens
from synfleet.errors import FleetError
from synfleet.layout import COMPOSE, SECRETS_DIR, SHARED_CONFIG
from synfleet.model.schema import FleetSpec, read_fleet
from synfleet.render.compose import render_compose
from synfleet.render.deploy import DEPLOY_DIR, render_deployment
from synfleet.render.files import GROUP_PRIVATE, Rendered
from synfleet.render.kubernetes import kubernetes_spec
from synfleet.render.secrets import Secret, ensure_secrets
from synfleet.render.services import TURN_CONFIG, Context, Health, HealthKind, service_table
from synfleet.render.synapse import render_synapse
from synfleet.run.accounts import FLEET_ACCOUNT
from synfleet.run.paths import RunPaths
from synfleet.run.register import register_user
from synfleet.system import free_port

SECRETS = {str(name): f"value-of-{name}" for name in Secret}
TURN_SECRET = SECRETS[Secret.TURN_SHARED_SECRET]
PASSWORD = "long enough to be a password"


def with_turn(**turn: object) -> FleetSpec:
    return helpers.profile_with("small", turn={"enabled": True, **turn})


def on_two_hosts(spec: FleetSpec, turn_host: str) -> FleetSpec:
    data = spec.model_dump(mode="json")
    data["hosts"] = {"a": {"address": "10.1.0.2"}, "b": {"address": "10.1.0.3"}}
    data["placement"] = {"default": "a", "turn": turn_host}
    return FleetSpec.model_validate(data)


# -- rendering --------------------------------------------------------------------------------------


def test_synapse_hands_out_coturns_uris_with_the_secret_read_from_its_file() -> None:
    spec = with_turn(bind="0.0.0.0", public_address="2001:db8::7", port=3479, user_lifetime="30m")
    text = render_synapse(spec, COMPOSE, SECRETS)[SHARED_CONFIG]
    config = yaml.safe_load(text)
    assert config["turn_uris"] == ["turn:[2001:db8::7]:3479?transport=udp", "turn:[2001:db8::7]:3479?transport=tcp"]
    assert config["turn_shared_secret_path"] == f"{COMPOSE.secrets_dir}/{Secret.TURN_SHARED_SECRET}"
    assert (config["turn_user_lifetime"], config["turn_allow_guests"]) == ("30m", False)
    assert TURN_SECRET not in text
    without = yaml.safe_load(render_synapse(helpers.profile_with("small"), COMPOSE, SECRETS)[SHARED_CONFIG])
    assert not [key for key in without if key.startswith("turn_")]


def test_the_shared_secret_is_made_only_with_turn_kept_and_private(tmp_path: Path) -> None:
    (tmp_path / "off").mkdir()
    (tmp_path / "on").mkdir()
    ensure_secrets(tmp_path / "off", helpers.profile_with("small"))
    assert not (tmp_path / "off" / SECRETS_DIR / Secret.TURN_SHARED_SECRET).exists()
    first = ensure_secrets(tmp_path / "on", with_turn())[Secret.TURN_SHARED_SECRET]
    path = tmp_path / "on" / SECRETS_DIR / Secret.TURN_SHARED_SECRET
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first) >= 32
    assert ensure_secrets(tmp_path / "on", with_turn())[Secret.TURN_SHARED_SECRET] == first


def native_turn(spec: FleetSpec) -> tuple[Context, Rendered]:
    context = helpers.native_context(spec, SECRETS)
    row = service_table(context, front=True)["turn"]
    return context, Rendered(dict(row.files), SECRETS)


def test_native_coturn_reads_its_secret_from_a_file_only_the_fleets_account_reads() -> None:
    spec = with_turn(relay_min_port=50000, relay_max_port=50010)
    context, files = native_turn(spec)
    row = service_table(context, front=True)["turn"]
    settings = f"{SECRETS_DIR}/{TURN_CONFIG}"
    assert row.command[:3] == ("/usr/bin/turnserver", "-c", f"/srv/fleet/run/{settings}")
    assert {"--listening-port=3478", "--listening-ip=127.0.0.1", "--min-port=50000", "--max-port=50010"} <= set(
        row.command
    )
    assert "--realm=localhost" in row.command and "--no-cli" in row.command
    assert not any(TURN_SECRET in argument for argument in row.command)
    assert files.files == {settings: f"use-auth-secret\nstatic-auth-secret={TURN_SECRET}\n"}
    # Written 0640 root:<the fleet's group> when run as root (0600 otherwise), like Redis's settings.
    assert files.private(settings) and files.mode(settings, group=1000) == GROUP_PRIVATE
    assert row.health == Health(HealthKind.LISTENER, "127.0.0.1", 3478)
    everywhere = service_table(native_turn(with_turn(bind="0.0.0.0", public_address="203.0.113.7"))[0], True)
    assert everywhere["turn"].health == Health(HealthKind.LISTENER, "127.0.0.1", 3478)
    assert "--external-ip=203.0.113.7" in everywhere["turn"].command
    assert not any(a.startswith("--listening-ip") for a in everywhere["turn"].command)
    without = native_turn(with_turn())[0]
    assert "turn" not in service_table(
        Context(helpers.profile_with("small"), without.layout, native=without.native), True
    )


def test_compose_publishes_coturns_ports_on_one_host_and_uses_the_hosts_network_on_several() -> None:
    spec = with_turn(public_address="203.0.113.7")
    services = yaml.safe_load(render_compose(spec, SECRETS)["docker-compose.yml"])["services"]
    turn = services["turn"]
    assert turn["ports"] == [
        "127.0.0.1:3478:3478/udp",
        "127.0.0.1:3478:3478/tcp",
        "127.0.0.1:49160-49200:49160-49200/udp",
    ]
    assert "--external-ip=203.0.113.7" in turn["command"] and "network_mode" not in turn
    # The secret: mounted read-only, read by the shell as root into a settings file in memory.
    assert f"../secrets/{Secret.TURN_SHARED_SECRET}:/synfleet/secrets/{Secret.TURN_SHARED_SECRET}:ro" in turn["volumes"]
    assert turn["tmpfs"] == [COMPOSE.secrets_dir] and turn["user"] == "0:0"
    assert "--proc-user=nobody" in turn["entrypoint"][2] and TURN_SECRET not in str(turn)
    assert turn["healthcheck"]["test"] == ["CMD", "turnutils_stunclient", "-p", "3478", "127.0.0.1"]
    # Synapse's containers copy the secret its config names; without TURN there is none to copy.
    assert f"/synfleet/secrets/{Secret.TURN_SHARED_SECRET}" in services["synapse"]["entrypoint"][2]
    plain = yaml.safe_load(render_compose(helpers.profile_with("small"), SECRETS)["docker-compose.yml"])["services"]
    assert "turn" not in plain and Secret.TURN_SHARED_SECRET not in str(plain["synapse"])

    several = on_two_hosts(with_turn(bind="0.0.0.0", public_address="203.0.113.7"), "b")
    assert "turn" not in yaml.safe_load(render_compose(several, SECRETS, "a")["docker-compose.yml"])["services"]
    on_b = yaml.safe_load(render_compose(several, SECRETS, "b")["docker-compose.yml"])["services"]["turn"]
    assert on_b["network_mode"] == "host" and "ports" not in on_b


def test_kubernetes_refuses_turn_naming_the_key() -> None:
    with pytest.raises(FleetError, match=r"^turn\.enabled: Kubernetes manifests carry no TURN server"):
        kubernetes_spec(with_turn(), trial_services=True)


def test_check_proves_coturns_ports_and_synapses_uris(tmp_path: Path) -> None:
    spec = with_turn(public_address="203.0.113.7")
    deploy = render_deployment(spec, tmp_path)
    projects = [Project("", deploy, tuple(w.name for w in spec.fleet.workers), front=True)]
    assert turn_listens(spec, projects).ok, turn_listens(spec, projects).detail
    compose = deploy / "docker-compose.yml"
    compose.write_text(compose.read_text().replace('"127.0.0.1:49160-49200:49160-49200/udp"', '"127.0.0.1:1:1/udp"'))
    result = turn_listens(spec, projects)
    assert not result.ok and result.detail == "coturn does not publish 127.0.0.1:49160-49200:49160-49200/udp"


@pytest.mark.integration
def test_synfleet_check_has_a_turn_line(tmp_path: Path) -> None:
    helpers.require(helpers.synapse_reason())
    (tmp_path / "fleet.toml").write_text(
        'server_name = "localhost"\n[turn]\nenabled = true\npublic_address = "203.0.113.7"\n'
    )
    assert synfleet("render", "--dir", str(tmp_path)).returncode == 0
    done = synfleet("check", "--dir", str(tmp_path), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"TURN: coturn listens on turn\.port", done.stdout), done.stdout
    assert (tmp_path / DEPLOY_DIR / "docker-compose.yml").exists()


# -- a running fleet ----------------------------------------------------------------------------------


def uclient_missing() -> str | None:
    if shutil.which("turnutils_uclient") is None or shutil.which("turnserver") is None:
        return "coturn is not installed (scripts/setup.sh installs it)"
    return helpers.synapse_reason()


def turn_ports(profile: str) -> dict[str, object]:
    """A free port for coturn, and a hundred relay ports below the kernel's ephemeral ones (a
    client's own ports are taken there), none of them coturn's. Each run of coturn's test client
    leaves three allocations behind until their lifetime ends, and coturn picks relay ports at
    random: ten ports ran out within the test."""
    port = free_port()
    first = 20000 + port % 10000
    if first <= port < first + 100:
        first += 100
    return {"enabled": True, "port": port, "relay_min_port": first, "relay_max_port": first + 99}


@dataclass
class TurnFleet(RunningFleet):
    token: str = ""

    def after_up(self) -> None:
        self.token = register_user(RunPaths(self.directory), "alice", PASSWORD, admin=False)["access_token"]


fleet = fleet_under_test(TurnFleet, "small", turn=turn_ports)


def allocate(port: int, username: str, password: str, *transport: str) -> subprocess.CompletedProcess[str]:
    """coturn's test client: two clients allocate relays on 127.0.0.1:``port`` and send each other
    messages through them (``-y``), verbose; ``-t``: to coturn over TCP."""
    command = ["turnutils_uclient", "-v", "-y", "-c", "-n", "3", "-m", "1", *transport]
    command += ["-p", str(port), "-u", username, "-w", password, "127.0.0.1"]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def signed(secret: str, username: str) -> str:
    """The TURN REST API's password: base64 of HMAC-SHA1 of the username, keyed with the secret."""
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


@pytest.mark.integration
@pytest.mark.prerequisite(uclient_missing())
def test_synapse_hands_out_credentials_coturn_relays_with_and_refuses_wrong_or_expired_ones(fleet: TurnFleet) -> None:
    port = read_fleet(fleet.directory / "fleet.toml").turn.port
    with httpx.Client(base_url=fleet.url, timeout=30) as client:
        answer = client.get("/_matrix/client/v3/voip/turnServer", headers={"Authorization": f"Bearer {fleet.token}"})
    assert answer.status_code == 200, answer.text
    credentials = answer.json()
    assert credentials["uris"] == [f"turn:127.0.0.1:{port}?transport=udp", f"turn:127.0.0.1:{port}?transport=tcp"]
    expiry, user = credentials["username"].split(":", 1)
    assert user == "@alice:localhost" and 3500 < int(expiry) - time.time() <= 3600 and credentials["ttl"] == 3600
    secret = (fleet.directory / SECRETS_DIR / Secret.TURN_SHARED_SECRET).read_text().strip()
    assert credentials["password"] == signed(secret, credentials["username"])

    for transport in ((), ("-t",)):
        done = allocate(port, credentials["username"], credentials["password"], *transport)
        output = done.stdout + done.stderr
        assert done.returncode == 0 and "Received relay addr: 127.0.0.1:" in output, output
        assert "tot_recv_msgs=6" in output and "ERROR" not in output, output

    wrong = allocate(port, credentials["username"], signed("not the secret", credentials["username"]))
    expired_name = f"{int(time.time()) - 60}:@alice:localhost"
    expired = allocate(port, expired_name, signed(secret, expired_name))
    for refused in (wrong, expired):
        assert refused.returncode != 0 and "Cannot complete Allocation" in refused.stdout + refused.stderr

    status = fleet.synfleet("status", "--json", timeout=60)
    rows = {row["name"]: row for row in json.loads(status.stdout)["processes"]}
    assert rows["turn"]["healthy"] and rows["turn"]["state"] == "running", status.stdout
    # Run as root, coturn runs as the fleet's account, which alone (by group) reads its settings.
    settings = fleet.directory / "run" / SECRETS_DIR / TURN_CONFIG
    root = os.geteuid() == 0
    assert stat.S_IMODE(settings.stat().st_mode) == (0o640 if root else 0o600)
    if root:
        account = pwd.getpwnam(FLEET_ACCOUNT)
        assert settings.stat().st_gid == account.pw_gid and settings.stat().st_uid == 0
        assert Path(f"/proc/{rows['turn']['pid']}").stat().st_uid == account.pw_uid
