"""fleet.toml validation: each mistake names the field, exits 2 and writes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from conftest import synfleet
from helpers import CONFIGS, native_context
from synfleet.bench.sizing import initial_sync_pool, load_costs, size_fleet
from synfleet.layout import COMPOSE
from synfleet.model.fleet import Role, Stream
from synfleet.model.load import load_spec
from synfleet.model.profiles import PROFILES, profile_spec
from synfleet.model.schema import parse_fleet, parse_fleet_file
from synfleet.render.deploy import render_kubernetes_deployment
from synfleet.render.fleet_file import fleet_file_text, fleet_toml
from synfleet.render.services import Context, service_table

BAD_FLEETS = sorted(p.name for p in (CONFIGS / "bad_fleets").iterdir())


@pytest.mark.parametrize("case", BAD_FLEETS)
def test_bad_fleet_file_names_the_field_and_writes_nothing(tmp_path: Path, case: str) -> None:
    shutil.copy(CONFIGS / "bad_fleets" / case / "fleet.toml", tmp_path / "fleet.toml")
    message = (CONFIGS / "bad_fleets" / case / "error.txt").read_text().rstrip("\n")
    for command in ("render", "check"):
        result = synfleet(command, "--dir", str(tmp_path))
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.startswith(f"synfleet: error: {tmp_path}/{message}"), result.stderr
        assert result.stderr.count("\n") == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet.toml"]


def test_route_reports_a_bad_fleet_file_too(tmp_path: Path) -> None:
    shutil.copy(CONFIGS / "bad_fleets" / "negative_count" / "fleet.toml", tmp_path / "fleet.toml")
    result = synfleet("route", "--dir", str(tmp_path), "GET", "/")
    assert result.returncode == 2 and "workers.rooms" in result.stderr


def senders_fleet(workers: str = "sender", placement: str = "sender", resources: str = "sender") -> str:
    """A fleet on two hosts whose federation senders are counted, placed on host b and limited
    under the given names."""
    return (
        f'server_name = "example.org"\n[workers]\n{workers} = 3\n'
        '[hosts.a]\naddress = "10.0.0.1"\n[hosts.b]\naddress = "10.0.0.2"\n'
        f'[placement]\ndefault = "a"\n{placement} = "b"\n'
        f'[resources.{resources}]\nmemory = "256m"\ncpus = 0.5\n'
    )


@pytest.mark.parametrize(
    "old_in", [("workers",), ("placement",), ("resources",), ("workers", "placement", "resources")], ids="+".join
)
def test_the_sender_group_has_one_name_and_takes_the_old_one_with_a_warning(
    tmp_path: Path, old_in: tuple[str, ...]
) -> None:
    """[workers], [placement] and [resources] name the federation senders `sender`, the role's name;
    `senders` gives the same fleet and one warning line that says what to write instead."""
    new, old = tmp_path / "new", tmp_path / "old"
    for directory, names in ((new, {}), (old, dict.fromkeys(old_in, "senders"))):
        directory.mkdir()
        (directory / "fleet.toml").write_text(senders_fleet(**names))
    spec = parse_fleet(senders_fleet())
    assert [w.name for w in spec.fleet.workers if w.role is Role.SENDER] == ["sender1", "sender2", "sender3"]
    assert spec.fleet.processes_on("b") == ["sender1", "sender2", "sender3"]
    assert spec.resources_for("sender").memory == "256m"
    keys = ", ".join(f"{table}.senders" for table in old_in)
    warning = f"{keys}: senders is the old name of the sender group; write sender instead"
    assert parse_fleet_file(senders_fleet(**dict.fromkeys(old_in, "senders")), "f.toml") == (
        spec,
        [f"f.toml: {warning}"],
    )
    rendered = {directory: synfleet("render", "--dir", str(directory)) for directory in (new, old)}
    assert rendered[new].returncode == 0 and rendered[new].stderr == "", rendered[new].stderr
    assert rendered[old].returncode == 0, rendered[old].stderr
    assert rendered[old].stderr == f"synfleet: warning: {old}/fleet.toml: {warning}\n"
    assert rendered[old].stdout == rendered[new].stdout.replace(str(new), str(old))
    compose = "deploy/hosts/b/docker-compose.yml"
    assert (old / compose).read_text() == (new / compose).read_text()
    assert 'deploy: {"resources": {"limits": {"memory": "256m", "cpus": "0.5"}}}' in (new / compose).read_text()


def test_a_process_named_senders_is_placed_by_its_name() -> None:
    """A dedicated stream writer may be named senders: [placement] then places that process."""
    text = (
        senders_fleet().replace("[placement]\n", '[placement]\nsenders = "b"\n')
        + '[stream_writers]\ntyping = ["senders"]\n'
    )
    spec, warnings = parse_fleet_file(text)
    assert warnings == [] and spec.fleet.worker("senders").role is Role.STREAM_WRITER
    assert spec.fleet.processes_on("b") == ["sender1", "sender2", "sender3", "senders"]


@pytest.mark.parametrize("profile", PROFILES)
def test_profiles_are_valid_and_documented(profile: str) -> None:
    text = fleet_file_text("example.org", profile)
    spec = parse_fleet(text)
    assert spec.server_name == "example.org"
    counts = profile_spec("example.org", profile).workers.model_dump()
    assert all(f"{key} = {value}" in text for key, value in counts.items())
    assert spec.workers.model_dump() == counts


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


@pytest.mark.parametrize("profile", PROFILES)
def test_init_file_shows_the_models_values(profile: str) -> None:
    # Every value init writes comes from the model, so the file and the defaults cannot drift apart.
    written = parse_fleet(fleet_file_text("example.org", profile))
    expected = profile_spec("example.org", profile)
    assert written.model_dump(exclude={"resources"}) == expected.model_dump(exclude={"resources"})
    assert written.resources_for("default") == expected.resources_for("default")


def test_init_cores_sizes_the_fleet_from_the_measurements(tmp_path: Path) -> None:
    """--cores takes the best shape measured on 2 cores for small machines, grows the modelled
    roles with the cores, writes its reasons into the file, and refuses --profile with it."""
    data = load_costs()
    best = max(data["shapes"], key=lambda name: data["capacity_on_2_cores"][name]["median"])
    counts = {}
    for cores in (1, 2, 4, 16):
        directory = tmp_path / str(cores)
        result = synfleet("init", "--dir", str(directory), "--server-name", "example.org", "--cores", str(cores))
        assert result.returncode == 0, result.stderr
        text = (directory / "fleet.toml").read_text()
        spec = parse_fleet(text)
        sizing = size_fleet(cores)
        assert spec.workers.model_dump() == {key: sizing.workers.get(key, 0) for key in spec.workers.model_dump()}
        assert f"sized for {cores} cores" in text and all(f"#   - {reason}" in text for reason in sizing.reasons)
        counts[cores] = spec.workers.model_dump()
    pool, why = initial_sync_pool(data)
    assert all(counts[cores]["initial_sync"] == pool for cores in counts) and why.startswith(f"initial_sync = {pool}")
    shape = {k: v for k, v in counts[2].items() if v and k != "initial_sync"}
    assert shape == {k: v for k, v in data["shapes"][best]["workers"].items() if v and k != "initial_sync"}
    assert counts[1] == counts[2]
    for role in ("client_sync", "rooms", "tasks"):
        assert 1 <= counts[4][role] <= counts[16][role]
    assert sum(counts[16].values()) > sum(counts[4].values())
    both = synfleet("init", "--dir", str(tmp_path / "x"), "--server-name", "a.org", "--cores", "4", "--profile", "seed")
    assert both.returncode == 2 and "--cores or --profile" in both.stderr and not (tmp_path / "x").exists()


def test_initial_sync_pool_follows_the_measurement() -> None:
    """A pool when a burst of initial syncs outlasts the delivery service level and the pool measured
    the faster live delivery; none when the burst fits, or sharing measured faster."""
    measured = {
        "rooms": 50,
        "initial_sync_cpu_s": 0.2,
        "incremental_sync_cpu_s": 0.004,
        "delivery_p99_ms": {"shared": 3000.0, "pool": 900.0},
    }
    assert initial_sync_pool({"initial_sync": measured})[0] == 1
    assert initial_sync_pool({"initial_sync": {**measured, "initial_sync_cpu_s": 0.05}})[0] == 0
    slower = {**measured, "delivery_p99_ms": {"shared": 900.0, "pool": 3000.0}}
    assert initial_sync_pool({"initial_sync": slower})[0] == 0
    assert initial_sync_pool({}) == (0, "initial_sync = 0: costs.json has no initial-sync measurement")


def test_postgres_settings_reach_the_fleets_own_server_and_survive_a_rewrite() -> None:
    """[database] settings are given to the fleet's own PostgreSQL as -c NAME=VALUE (booleans as
    on/off, a dotted name as one key), natively, in compose and on Kubernetes; writing the fleet
    file out again keeps them."""
    text = (
        'server_name = "example.org"\n[database.settings]\nshared_buffers = "256MB"\n'
        '"pg_stat_statements.track" = "all"\njit = false\nmax_connections = 300\n'
    )
    spec = parse_fleet(text)
    expected = {"shared_buffers": "256MB", "pg_stat_statements.track": "all", "jit": "off", "max_connections": "300"}
    assert spec.database.server_settings() == expected
    assert parse_fleet(fleet_toml(spec)) == spec
    native = native_context(spec)
    compose = Context(spec, COMPOSE)
    for context in (native, compose):
        command = service_table(context, front=True)["postgres"].command
        given = dict(command[i + 1].split("=", 1) for i, argument in enumerate(command) if argument == "-c")
        assert expected.items() <= given.items(), command
    assert parse_fleet(fleet_file_text("example.org", "seed")).database.settings == {}


def test_a_postgres_setting_reaches_the_server_as_written_on_every_target(tmp_path: Path) -> None:
    """A "$" in a setting is the server's own (an archive_command's): natively as written, and
    escaped where compose and Kubernetes would expand it."""
    value = "test ! -f /archive/%f && cp %p /archive/%f # $HOME $(POD_NAME)"
    spec = parse_fleet(f'server_name = "example.org"\n[database.settings]\narchive_command = "{value}"\n')
    native = native_context(spec)
    assert f"archive_command={value}" in service_table(native, front=True)["postgres"].command
    (tmp_path / "fleet.toml").write_text(fleet_toml(spec))
    render_kubernetes_deployment(load_spec(tmp_path), tmp_path, trial_services=True)
    assert synfleet("render", "--dir", str(tmp_path)).returncode == 0
    escaped = f"archive_command={value.replace('$', '$$')}"
    compose = yaml.safe_load((tmp_path / "deploy" / "docker-compose.yml").read_text())
    assert escaped in compose["services"]["postgres"]["command"]
    manifests = yaml.safe_load_all((tmp_path / "deploy" / "kubernetes" / "trial-postgres.yaml").read_text())
    pod = next(m for m in manifests if m["kind"] in ("Deployment", "StatefulSet"))
    assert escaped in pod["spec"]["template"]["spec"]["containers"][0]["args"]
