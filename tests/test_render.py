"""init + render + check for several fleets: real nginx -t, Synapse's config loader, compose."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import synfleet
from helpers import copy_fleet_case, fleet_case, profile_with, prometheus_tool
from synfleet.lab import CertificateAuthority
from synfleet.layout import COMPOSE, native_layout, worker_of_server
from synfleet.model.load import load_spec
from synfleet.model.schema import FleetSpec
from synfleet.nginx.config import NginxModel
from synfleet.render.compose import render_compose
from synfleet.render.secrets import BUCKET_SECRETS, SYNAPSE_FILES, TURN_SECRETS, Secret
from synfleet.render.services import MAIN_SERVICE, SYNAPSE_IMAGE_GID, SYNAPSE_IMAGE_UID
from synfleet.render.synapse import database_config, render_synapse


def rendered_files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def make_fleet(directory: Path, fleet: str) -> None:
    if fleet in ("seed", "small", "monolith"):
        result = synfleet("init", "--dir", str(directory), "--server-name", "example.org", "--profile", fleet)
        assert result.returncode == 0, result.stderr
    else:
        copy_fleet_case(fleet, directory)


@pytest.mark.integration
@pytest.mark.parametrize("fleet", ["seed", "small", "monolith", "seven_rooms_dedicated_writers"])
def test_render_check_and_rerender(tmp_path: Path, fleet: str) -> None:
    make_fleet(tmp_path, fleet)
    result = synfleet("render", "--dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    deploy = tmp_path / "deploy"

    check = synfleet("check", "--dir", str(tmp_path))
    print(check.stdout)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "ok   nginx -t" in check.stdout
    workers = sorted(p.stem for p in (deploy / "synapse" / "workers").glob("*.yaml"))
    for process in ["main", *workers]:
        assert f"ok   synapse config: {process}\n" in check.stdout

    compose = yaml.safe_load((deploy / "docker-compose.yml").read_text())
    services = compose["services"]
    for process in ["synapse", *workers]:
        assert "healthcheck" in services[process], process
        assert "/health" in " ".join(services[process]["healthcheck"]["test"])
    for worker in workers:
        assert services[worker]["depends_on"]["synapse"]["condition"] == "service_healthy"
    assert services["synapse"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # No one-shot service: podman would restart nothing that depends on one after it exited.
    assert not [name for name, service in services.items() if service.get("restart") == "no"]
    assert "--lc-collate=C" in (deploy / "env" / "postgres.env").read_text()
    # Synapse never runs as root: each container starts as root only to copy its config and the
    # secrets into its memory for the image's account (main's also gives it the data volume), then
    # becomes that account. What they read stays the renderer's own: no account here is given it.
    image_user = f"{SYNAPSE_IMAGE_UID}:{SYNAPSE_IMAGE_GID}"
    for process in ["synapse", *workers]:
        entrypoint = " ".join(services[process]["entrypoint"])
        assert f"chown -R {image_user} /config /secrets" in entrypoint, process
        assert entrypoint.endswith(f'exec gosu {image_user} python -m "$$@" {process}'), process
        assert "./synapse:/synfleet/config:ro" in services[process]["volumes"], process
        assert services[process]["tmpfs"] == ["/config", "/secrets"], process
    assert f"chown {image_user} /data" in " ".join(services["synapse"]["entrypoint"])
    for path in (deploy / "synapse" / "homeserver.yaml", tmp_path / "secrets" / "signing.key"):
        assert (path.stat().st_uid, stat.S_IMODE(path.stat().st_mode)) == (os.geteuid(), 0o600), path

    secrets_before = rendered_files(tmp_path / "secrets")
    before = rendered_files(deploy)
    assert synfleet("render", "--dir", str(tmp_path)).returncode == 0
    assert rendered_files(deploy) == before, "re-rendering the same fleet changed files"
    assert rendered_files(tmp_path / "secrets") == secrets_before, "re-rendering changed secrets"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy", "fleet.toml", "secrets"]


def test_secrets_are_private_and_distinct(tmp_path: Path) -> None:
    make_fleet(tmp_path, "small")
    assert synfleet("render", "--dir", str(tmp_path)).returncode == 0
    folder = tmp_path / "secrets"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    values = []
    for name in (name for name in Secret if name not in (*BUCKET_SECRETS, *TURN_SECRETS)):  # fleets using them only
        path = folder / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
        values.append(path.read_text())
    assert len(set(values)) == len(values)
    assert values[-1].startswith("ed25519 a_")
    assert stat.S_IMODE((tmp_path / "deploy" / "synapse" / "homeserver.yaml").stat().st_mode) == 0o600


def test_worker_configs_follow_facts(tmp_path: Path) -> None:
    copy_fleet_case("seven_rooms_dedicated_writers", tmp_path)
    assert synfleet("render", "--dir", str(tmp_path)).returncode == 0
    synapse_dir = tmp_path / "deploy" / "synapse"
    shared = yaml.safe_load((synapse_dir / "homeserver.yaml").read_text())
    assert shared["enable_media_repo"] is False
    assert shared["media_instance_running_background_jobs"] == "media1"
    assert shared["stream_writers"]["events"] == ["tasks1", "tasks2", "persister3"]
    assert shared["stream_writers"]["typing"] == ["typing1"]
    assert shared["instance_map"]["main"] == {"path": "/sockets/synapse_replication_main.sock"}
    assert set(shared["instance_map"]) >= {
        "typing1",
        "receipts1",
        "receipts2",
        "tasks2",
        "persister3",
        "client_sync1",
    }
    assert shared["run_background_tasks_on"] == "tasks1"
    assert shared["federation_sender_instances"] == ["sender1", "sender2", "sender3", "sender4"]
    media = yaml.safe_load((synapse_dir / "workers" / "media1.yaml").read_text())
    assert media["enable_media_repo"] is True
    assert media["worker_listeners"][0]["resources"][0]["names"] == ["media", "client", "federation"]
    rooms = yaml.safe_load((synapse_dir / "workers" / "rooms7.yaml").read_text())
    assert rooms["enable_media_repo"] is False
    assert rooms["worker_listeners"] == [
        {
            "path": "/sockets/synapse_inbound_rooms7.sock",
            "mode": 0o666,
            "type": "http",
            "x_forwarded": True,
            "resources": [{"names": ["client", "federation"], "compress": False}],
        }
    ]
    upstreams = (tmp_path / "deploy" / "nginx" / "config" / "upstreams.conf").read_text()
    assert upstreams.count("synapse_inbound_rooms") == 7
    assert "server unix:/sockets/synapse_inbound_typing1.sock" in upstreams


@pytest.mark.integration
def test_tls_variant_passes_nginx_t(tmp_path: Path) -> None:
    cert, key = CertificateAuthority.create(tmp_path / "ca").issue(["example.org"], tmp_path)
    (tmp_path / "fleet.toml").write_text(
        f'server_name = "example.org"\n[tls]\nenabled = true\ncertificate = "{cert}"\nkey = "{key}"\n'
    )
    assert synfleet("render", "--dir", str(tmp_path)).returncode == 0
    nginx_conf = (tmp_path / "deploy" / "nginx" / "config" / "nginx.conf").read_text()
    assert "listen 8448 ssl" in nginx_conf and "return 301 https://$host$request_uri" not in nginx_conf
    assert "return 301 https://$host:8448$request_uri" in nginx_conf
    check = synfleet("check", "--dir", str(tmp_path))
    assert check.returncode == 0, check.stdout
    compose = yaml.safe_load((tmp_path / "deploy" / "docker-compose.yml").read_text())
    assert "127.0.0.1:8448:8448" in compose["services"]["nginx"]["ports"]


def test_socket_names_read_back_as_their_workers() -> None:
    fleet = fleet_case("seven_rooms_dedicated_writers")
    for layout in (COMPOSE, native_layout("/srv/fleet/run")):
        servers = [f"unix:{layout.inbound_socket(w.name)}" for w in fleet.workers]
        assert [worker_of_server(s) for s in servers] == [w.name for w in fleet.workers]
    assert worker_of_server("10.0.0.5:8083") == "10.0.0.5:8083"


def test_a_delegated_server_says_where_it_is(tmp_path: Path) -> None:
    (tmp_path / "fleet.toml").write_text(
        'server_name = "example.org"\npublic_baseurl = "https://matrix.example.org/"\n[listen]\nhttps_port = 443\n'
    )
    assert synfleet("render", "--dir", str(tmp_path)).returncode == 0
    model = NginxModel.load(tmp_path / "deploy" / "nginx" / "config" / "nginx.conf")
    server = model.evaluate("GET", "/.well-known/matrix/server", {}, "203.0.113.9")
    client = model.evaluate("GET", "/.well-known/matrix/client", {}, "203.0.113.9")
    assert server.status == 200 and json.loads(server.answer or "") == {"m.server": "matrix.example.org:443"}
    assert json.loads(client.answer or "") == {"m.homeserver": {"base_url": "https://matrix.example.org"}}
    # Not delegated (the server is its own host, on 8448): Synapse's defaults find it; nothing served.
    (tmp_path / "fleet.toml").write_text('server_name = "example.org"\n')
    assert synfleet("render", "--dir", str(tmp_path)).returncode == 0
    assert "well-known" not in (tmp_path / "deploy" / "nginx" / "config" / "locations.conf").read_text()


def test_compose_images_publishing_and_entrypoints(tmp_path: Path) -> None:
    """Images come from [images] (Synapse's from its version by default), nginx's port is published
    on listen.bind only, and each Synapse container clears what a crash left of its own sockets."""

    def services(**sections: dict[str, object]) -> dict[str, dict[str, object]]:
        spec = profile_with("small", "example.org", **sections)
        compose: dict[str, dict[str, dict[str, object]]] = yaml.safe_load(
            render_compose(spec, dict.fromkeys(Secret, "x"))["docker-compose.yml"]
        )
        return compose["services"]

    default = services()
    spec = profile_with("small", "Matrix.Example.org")
    compose = yaml.safe_load(render_compose(spec, dict.fromkeys(Secret, "x"))["docker-compose.yml"])
    assert compose["name"] == "synfleet-matrix-example-org"  # one project (and volumes) per fleet
    assert default[MAIN_SERVICE]["image"] == "matrixdotorg/synapse:v1.163.2"
    assert services(synapse={"version": "1.160.0"})["rooms1"]["image"] == "matrixdotorg/synapse:v1.160.0"
    assert (default["postgres"]["image"], default["redis"]["image"]) == ("postgres:15-alpine", "redis:7-alpine")
    mirrored = services(images={"synapse": "mirror.example.org:5000/synapse:v1.163.2", "nginx": "mirror/nginx:1"})
    assert mirrored["tasks1"]["image"] == "mirror.example.org:5000/synapse:v1.163.2"
    assert mirrored["nginx"]["image"] == "mirror/nginx:1"

    assert default["nginx"]["ports"] == ["127.0.0.1:8008:8008"]
    everywhere = services(listen={"bind": "::", "http_port": 80})
    assert everywhere["nginx"]["ports"] == ["[::]:80:8008"]

    rooms = default["rooms1"]["entrypoint"]
    assert rooms == [
        "sh",
        "-c",
        "rm -f /sockets/synapse_inbound_rooms1.sock /sockets/synapse_inbound_rooms1.sock.lock"
        " && chmod 700 /config /secrets && cp -R /synfleet/config/. /config && cp "
        + " ".join(f"/synfleet/secrets/{name}" for name in SYNAPSE_FILES if name not in TURN_SECRETS)
        + " /secrets/"
        ' && chown -R 991:991 /config /secrets && exec gosu 991:991 python -m "$$@"',
        "rooms1",
    ]
    main = default[MAIN_SERVICE]
    assert main["user"] == "0:0" and "/sockets/synapse_replication_main.sock.lock" in str(main["entrypoint"])
    # Nothing depends on a one-shot service (podman would not restart its dependents).
    assert all(service.get("restart") == "unless-stopped" for service in default.values())


@pytest.mark.integration
def test_metrics_render_a_scrape_config_a_dashboard_and_compose_profile(tmp_path: Path) -> None:
    """With [metrics] on: every Synapse process listens for Prometheus (on the compose network in
    containers), nginx has a status server, the scrape config targets each service, and the
    metrics profile's Prometheus and Grafana are provisioned with that config and the dashboard;
    `synfleet check` (nginx -t, Synapse's loader) passes. Without it, none of that is rendered."""
    make_fleet(tmp_path, "small")
    text = (tmp_path / "fleet.toml").read_text()
    (tmp_path / "fleet.toml").write_text(re.sub(r"(\[metrics\][^\[]*?)enabled = false", r"\1enabled = true", text))
    assert synfleet("render", "--dir", str(tmp_path)).returncode == 0
    check = synfleet("check", "--dir", str(tmp_path))
    assert check.returncode == 0, check.stdout + check.stderr
    deploy = tmp_path / "deploy"
    services = yaml.safe_load((deploy / "docker-compose.yml").read_text())["services"]
    assert services["prometheus"]["profiles"] == ["metrics"] and services["grafana"]["profiles"] == ["metrics"]
    assert services["grafana"]["ports"] == ["127.0.0.1:3000:3000"]
    assert not [
        name for name, s in services.items() if "prometheus" in str(s.get("depends_on", "")) and name != "grafana"
    ]
    mounts = " ".join(services["prometheus"]["volumes"] + services["grafana"]["volumes"])
    for path in ("metrics/prometheus.yml", "metrics/grafana/provisioning", "metrics/grafana/dashboards"):
        assert f"./{path}:" in mounts and (deploy / path).exists(), path
    password = (tmp_path / "secrets" / "grafana_admin_password").read_text().strip()
    assert f"GF_SECURITY_ADMIN_PASSWORD={password}\n" in (deploy / "env" / "grafana.env").read_text()
    datasource = yaml.safe_load((deploy / "metrics/grafana/provisioning/datasources/prometheus.yml").read_text())
    board = json.loads((deploy / "metrics/grafana/dashboards/synfleet.json").read_text())
    targets = [t["datasource"]["uid"] for p in board["panels"] for t in p.get("targets", [])]
    assert targets and set(targets) == {datasource["datasources"][0]["uid"]}

    checked = subprocess.run(
        [prometheus_tool("promtool"), "check", "config", str(deploy / "metrics/prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    scrape = yaml.safe_load((deploy / "metrics" / "prometheus.yml").read_text())["scrape_configs"][0]
    by_instance = {e["labels"]["instance"]: e["targets"] for e in scrape["static_configs"]}
    workers = [w.name for w in load_spec(tmp_path).fleet.workers]
    assert by_instance == {
        name: [f"{'synapse' if name == 'main' else name}:{19100 + index}"] for index, name in enumerate(workers)
    }
    listeners = yaml.safe_load((deploy / "synapse" / "workers" / "rooms2.yaml").read_text())["worker_listeners"]
    rooms2 = 19100 + workers.index("rooms2")
    assert {"type": "metrics", "port": rooms2, "bind_addresses": ["0.0.0.0"]} in listeners
    nginx = (deploy / "nginx" / "config" / "nginx.conf").read_text()
    assert "listen 19099;" in nginx and "stub_status;" in nginx

    # Off: no metrics listener, no status server, no monitoring services or files.
    off = tmp_path / "off"
    make_fleet(off, "small")
    assert synfleet("render", "--dir", str(off)).returncode == 0
    assert "prometheus" not in (off / "deploy" / "docker-compose.yml").read_text()
    assert "stub_status" not in (off / "deploy" / "nginx" / "config" / "nginx.conf").read_text()
    assert not (off / "deploy" / "metrics").exists()


THREE_HOSTS = """
[hosts.a]
address = "10.9.0.2"
[hosts.b]
address = "10.9.0.3"
[hosts.c]
address = "10.9.0.4"
[placement]
default = "a"
rooms = ["b", "c"]
client_sync = "b"
tasks = "c"
"""


@pytest.mark.integration
def test_a_fleet_on_several_hosts_renders_a_compose_project_per_host(tmp_path: Path) -> None:
    """`render` writes deploy/hosts/<name>/ per host: that host's processes only, every container on
    the host's network, PostgreSQL and Redis on its private address (pg_hba.conf for the fleet's
    hosts, the Redis password read from the secrets, never written into the project), each host's
    Prometheus scraping its own processes; `check` proves every project and follows each link
    between hosts to the socket it reaches, and says so when one is broken."""
    make_fleet(tmp_path, "small")
    text = (tmp_path / "fleet.toml").read_text()
    text = re.sub(r"(\[metrics\][^\[]*?)enabled = false", r"\1enabled = true", text)
    (tmp_path / "fleet.toml").write_text(text + THREE_HOSTS)
    rendered = synfleet("render", "--dir", str(tmp_path))
    assert rendered.returncode == 0, rendered.stderr
    deploy = tmp_path / "deploy"
    assert sorted(p.name for p in deploy.iterdir()) == ["hosts"]
    for host in ("a", "b", "c"):
        assert f"cd {deploy / 'hosts' / host} && docker compose up -d" in rendered.stdout
    check = synfleet("check", "--dir", str(tmp_path))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "c: synapse config: rooms2" in check.stdout and "b: nginx -t" in check.stdout
    assert "ok   the links' certificates" in check.stdout

    spec = load_spec(tmp_path)
    redis_password = (tmp_path / "secrets" / Secret.REDIS_PASSWORD).read_text().strip()
    projects = {host: deploy / "hosts" / host for host in ("a", "b", "c")}
    composes = {host: yaml.safe_load((path / "docker-compose.yml").read_text()) for host, path in projects.items()}
    expected = {
        "a": {"postgres", "redis", MAIN_SERVICE, "media1", "sender1", "nginx", "prometheus"},
        "b": {"client_sync1", "rooms1", "nginx", "prometheus"},
        "c": {"rooms2", "tasks1", "nginx", "prometheus"},
    }
    for host, compose in composes.items():
        assert set(compose["services"]) == expected[host], host
        assert compose["name"] == f"synfleet-example-org-{host}"
        assert all(s.get("network_mode") == "host" for s in compose["services"].values()), host
        assert not any(s.get("ports") for s in compose["services"].values()), host
        assert redis_password not in "".join(p.read_text() for p in projects[host].rglob("*") if p.is_file())
    a = composes["a"]["services"]
    assert "listen_addresses=10.9.0.2" in a["postgres"]["command"]
    assert "./postgres/pg_hba.conf:/etc/synfleet/pg_hba.conf:ro" in a["postgres"]["volumes"]
    hba = (projects["a"] / "postgres" / "pg_hba.conf").read_text()
    assert [line.split()[3] for line in hba.splitlines() if line.startswith("hostssl ")] == [
        "10.9.0.2/32",
        "10.9.0.3/32",
        "10.9.0.4/32",
    ]
    assert a["redis"]["command"][:5] == ["--port", "0", "--bind", "10.9.0.2", "--tls-port"]
    assert "/secrets/redis_password" in str(a["redis"]) and "--tls-auth-clients" in a["redis"]["command"]

    # each host's Synapse reaches the others through its nginx's relays (TLS), PostgreSQL with TLS
    b_config = yaml.safe_load((projects["b"] / "synapse" / "homeserver.yaml").read_text())
    assert b_config["instance_map"]["main"] == {"path": "/sockets/replication_main.sock"}
    assert b_config["redis"]["path"] == "/sockets/redis.sock"
    database = b_config["database"]["args"]
    assert database["host"] == "10.9.0.2" and database["sslmode"] == "verify-full"
    b_nginx = (projects["b"] / "nginx" / "config" / "nginx.conf").read_text()
    assert "listen unix:/sockets/replication_main.sock;" in b_nginx and "proxy_pass 10.9.0.2:" in b_nginx
    assert sorted(p.name for p in (projects["b"] / "secrets" / "tls").iterdir()) == [
        "database.key",
        "database.pem",
        "host.key",
        "host.pem",
        "trust.pem",
    ]
    assert all(p.stat().st_mode & 0o077 == 0 for p in (projects["b"] / "secrets" / "tls").iterdir())
    assert sorted(p.stem for p in (projects["b"] / "synapse" / "workers").iterdir()) == ["client_sync1", "rooms1"]
    scrape = yaml.safe_load((projects["c"] / "metrics" / "prometheus.yml").read_text())["scrape_configs"][0]
    assert {e["labels"]["instance"]: e["targets"][0].split(":")[0] for e in scrape["static_configs"]} == {
        "rooms2": "127.0.0.1",
        "tasks1": "127.0.0.1",
    }

    # a link between hosts that leads nowhere
    conf = projects["b"] / "nginx" / "config" / "nginx.conf"
    link = f"10.9.0.3:{spec.fleet.worker('client_sync1').inbound_port}"
    conf.write_text(conf.read_text().replace(f"listen {link} ssl;", "listen 10.9.0.3:1 ssl;"))
    broken = synfleet("check", "--dir", str(tmp_path))
    assert broken.returncode == 1
    assert f"(relayed to {link})" in broken.stdout.replace("\n", "")


def test_compose_postgresql_keeps_its_superuser_to_its_own_account() -> None:
    """The official image's superuser is postgres, on the socket only, as the image's account (the
    password the image wants is a secret of its own, for nothing else); its first start creates
    Synapse's role, which owns Synapse's database and logs in with Synapse's password only."""
    spec = profile_with("small")
    secrets = {name.value: f"secret-{name.value}" for name in Secret}
    files = render_compose(spec, secrets)
    postgres = yaml.safe_load(files["docker-compose.yml"])["services"]["postgres"]
    assert "hba_file=/etc/synfleet/pg_hba.conf" in postgres["command"]
    assert "unix_socket_directories=/sockets,/var/run/postgresql" in postgres["command"]
    assert "./postgres/pg_hba.conf:/etc/synfleet/pg_hba.conf:ro" in postgres["volumes"]
    script = "./postgres/synfleet-initdb.sql:/docker-entrypoint-initdb.d/synfleet-initdb.sql:ro"
    assert script in postgres["volumes"]
    environment = dict(line.split("=", 1) for line in files["env/postgres.env"].splitlines())
    assert environment["POSTGRES_USER"] == "postgres" and "POSTGRES_DB" not in environment
    assert environment["POSTGRES_PASSWORD"] == secrets[Secret.POSTGRES_SUPERUSER_PASSWORD]
    assert environment["SYNFLEET_DATABASE_PASSWORD"] == secrets[Secret.POSTGRES_PASSWORD]
    rules = [line.split() for line in files["postgres/pg_hba.conf"].splitlines() if not line.startswith("#")]
    assert rules == [["local", "all", "postgres", "peer"], ["local", "synapse", "synapse", "scram-sha-256"]]
    sql = files["postgres/synfleet-initdb.sql"]
    assert "\\getenv synapse_password SYNFLEET_DATABASE_PASSWORD\n" in sql
    assert 'CREATE ROLE "synapse" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS' in sql
    assert 'CREATE DATABASE "synapse" OWNER "synapse"' in sql
    assert not any(value in sql for value in secrets.values())
    # Synapse logs in as its own role only.
    database = database_config(spec, COMPOSE, secrets)["args"]
    assert (database["user"], database["password"]) == ("synapse", secrets[Secret.POSTGRES_PASSWORD])


@pytest.mark.parametrize("several_hosts", [False, True])
def test_synapse_is_given_as_files_exactly_the_secrets_its_config_names(several_hosts: bool) -> None:
    """The native run and the containers copy only :data:`SYNAPSE_FILES` for Synapse: every secret
    file its config names must be among them (else Synapse cannot start), and nothing else is."""
    spec = profile_with("small")
    if several_hosts:
        data = spec.model_dump(mode="json")
        data["hosts"] = {"a": {"address": "10.1.0.2"}, "b": {"address": "10.1.0.3"}}
        data["placement"] = {"default": "a", "rooms": "b"}
        spec = FleetSpec.model_validate(data)
    layout = native_layout("/srv/fleet/run", gateway=several_hosts)
    secrets = {str(name): f"value-of-{name}" for name in Secret}
    named = {
        Path(value).name
        for text in render_synapse(spec, layout, secrets).values()
        for value in re.findall(r"\S+", text)
        if value.startswith(f"{layout.secrets_dir}/")
    }
    assert named <= set(SYNAPSE_FILES)
    assert Secret.SIGNING_KEY in named and (Secret.REDIS_PASSWORD in named) == several_hosts
