"""Every file synfleet writes that holds a secret is readable by its owner only (in the native run
directory, also by the fleet's group), in every output and from the moment it exists: the compose
deployment on one host and on three, with metrics; the Kubernetes manifests; the run directory's
files; the copies `synfleet check` loads; backup archives and their staging files.

A secret is a value of ``D/secrets``, as is or base64-encoded (as Kubernetes keeps it), or the TLS
key: files are found by what they hold, not by their names. Renders are watched by scanning the
whole directory before every file-system call that creates, writes, changes or renames a file."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any

import pytest

from conftest import synfleet
from helpers import profile_with
from synfleet.check.deployment import check_deployment
from synfleet.lab import CertificateAuthority
from synfleet.model.load import load_spec
from synfleet.model.schema import FleetSpec
from synfleet.render.deploy import render_deployment, render_kubernetes_deployment
from synfleet.render.files import Rendered, update_tree
from synfleet.render.fleet_file import fleet_toml
from synfleet.render.secrets import Secret, ensure_secrets
from synfleet.render.services import SYNAPSE_IMAGE_GID, SYNAPSE_IMAGE_UID
from synfleet.run import backup as backups
from three_hosts import HOSTS, PLACEMENT, WORKERS

#: The file-system calls before which (and, for writes, at which) the watch looks.
WATCHED = ("open", "write", "chmod", "fchmod", "chown", "fchown", "fsync", "replace", "rename", "mkdir", "close")
EXTERNAL = {"database": {"host": "postgres.db.svc.cluster.local"}, "redis": {"host": "redis.db.svc.cluster.local"}}


def fleet(directory: Path, profile: str = "small", hosts: bool = False, **sections: Any) -> FleetSpec:
    """``directory/fleet.toml`` for ``profile`` with ``sections``; with ``hosts``, placed on three
    hosts as tests/three_hosts.py places them."""
    spec = profile_with(profile, **({"workers": WORKERS} if hosts else {}), **sections)
    if hosts:
        data = spec.model_dump(mode="json")
        data["hosts"] = {name: {"address": f"10.0.0.{2 + i}"} for i, name in enumerate(HOSTS)}
        data["placement"] = PLACEMENT
        spec = FleetSpec.model_validate(data)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "fleet.toml").write_text(fleet_toml(spec))
    return spec


def tls(directory: Path) -> dict[str, Any]:
    certificate, key = CertificateAuthority.create(directory / "ca").issue(["localhost"], directory)
    return {"enabled": True, "certificate": str(certificate), "key": str(key)}


def secret_values(directory: Path, *others: Path) -> list[bytes]:
    """Every secret of ``D/secrets`` and the files ``others``, as is and base64-encoded."""
    folder = directory / "secrets"
    paths = [*sorted(folder.iterdir()), *others] if folder.is_dir() else list(others)
    values = [path.read_bytes().strip() for path in paths if path.is_file()]
    encoded = [base64.b64encode(value + end) for value in values for end in (b"", b"\n")]
    return [value for value in values + encoded if value]


def holds_secret(data: bytes, secrets: list[bytes]) -> bool:
    return any(secret in data for secret in secrets)


def readable_beyond_owner(st: os.stat_result, group: int | None) -> bool:
    """Readable (or writable) by others, or by a group other than ``group``."""
    mode = stat.S_IMODE(st.st_mode)
    return bool(mode & 0o007) or bool(mode & 0o070 and (st.st_gid != group or mode & 0o020))


def exposures(top: Path, secrets: list[bytes], group: int | None = None) -> tuple[list[str], list[str]]:
    """The files under ``top`` that hold a secret or are in a secrets directory (and those
    directories), and of them the ones readable beyond their owner (and ``group``)."""
    checked, exposed = [], []
    for root, directories, files in os.walk(top):
        for name in directories + files:
            path = Path(root, name)
            st = path.lstat()
            relative = str(path.relative_to(top))
            if stat.S_ISDIR(st.st_mode):
                private = name == "secrets"
            else:
                in_secrets = "secrets" in path.relative_to(top).parts[:-1]
                private = stat.S_ISREG(st.st_mode) and (in_secrets or holds_secret(path.read_bytes(), secrets))
            if private:
                checked.append(relative)
                if readable_beyond_owner(st, group):
                    exposed.append(f"{relative} (mode {stat.S_IMODE(st.st_mode):04o}, group {st.st_gid})")
    return checked, exposed


@contextmanager
def watching(
    monkeypatch: pytest.MonkeyPatch,
    exposed: Callable[[], list[str]],
    secrets: Callable[[], list[bytes]],
    group: int | None = None,
) -> Iterator[list[str]]:
    """What ``exposed`` finds before each watched call, and each secret that ``os.write`` writes to a
    file readable beyond its owner (and ``group``), until the block ends and once more after it."""
    found: list[str] = []

    def watch(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(call)
        def watched(*args: Any, **kwargs: Any) -> Any:
            found.extend(f"{entry} before os.{name}" for entry in exposed())
            if name == "write" and holds_secret(bytes(args[1]), secrets()):
                st = os.fstat(args[0])
                if stat.S_ISREG(st.st_mode) and readable_beyond_owner(st, group):
                    found.append(f"a secret written to a file of mode {stat.S_IMODE(st.st_mode):04o}")
            return call(*args, **kwargs)

        return watched

    with monkeypatch.context() as patch:
        for name in WATCHED:
            patch.setattr(os, name, watch(name, getattr(os, name)))
        yield found
    found.extend(f"{entry} at the end" for entry in exposed())


def watching_tree(
    monkeypatch: pytest.MonkeyPatch, top: Path, secrets: Callable[[], list[bytes]], group: int | None = None
) -> Any:
    """:func:`watching` every file under ``top``."""
    return watching(monkeypatch, lambda: exposures(top, secrets(), group)[1], secrets, group)


def kept_secrets(directory: Path, *others: Path) -> Callable[[], list[bytes]]:
    """The secrets of ``directory`` (which a first render makes) and ``others``: read once all are there."""
    cache: list[bytes] = []

    def current() -> list[bytes]:
        if cache:
            return cache
        values = secret_values(directory, *others)
        if len(values) >= 3 * (len(Secret) + len(others)):
            cache.extend(values)
        return values

    return current


# -- every output, after the fact -------------------------------------------------------------------


@pytest.mark.parametrize("hosts", [False, True], ids=["one host", "three hosts"])
def test_every_rendered_file_holding_a_secret_is_private(tmp_path: Path, hosts: bool) -> None:
    fleet(tmp_path, hosts=hosts, metrics={"enabled": True})
    for _ in range(2):  # the first render, and one replacing its tree
        synfleet("render", directory=tmp_path, check=True)
    checked, exposed = exposures(tmp_path, secret_values(tmp_path))
    assert not exposed, exposed
    expected = ["secrets", "secrets/signing.key"]
    if hosts:
        expected += [f"deploy/hosts/{host}/synapse/homeserver.yaml" for host in HOSTS]
        expected.append("deploy/hosts/a/env/postgres.env")
    else:
        expected += ["deploy/synapse/homeserver.yaml", "deploy/env/postgres.env", "deploy/env/grafana.env"]
    assert set(expected) <= set(checked), checked
    # Nothing belongs to another account than the one that rendered.
    assert {path.lstat().st_uid for path in tmp_path.rglob("*")} == {os.geteuid()}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: an older synfleet, run as root, gave D/secrets away")
def test_render_takes_back_the_secrets_an_older_synfleet_gave_to_synapses_image_account(tmp_path: Path) -> None:
    fleet(tmp_path)
    folder = tmp_path / "secrets"
    ensure_secrets(tmp_path)
    for path in (folder, *folder.iterdir()):
        os.chown(path, SYNAPSE_IMAGE_UID, SYNAPSE_IMAGE_GID)
    synfleet("render", directory=tmp_path, check=True)
    assert {(path.lstat().st_uid, path.lstat().st_gid) for path in (folder, *folder.iterdir())} == {(0, 0)}


def test_kubernetes_secrets_are_private_beside_the_compose_files(tmp_path: Path) -> None:
    spec = fleet(tmp_path / "d", "seed", **EXTERNAL, tls=tls(tmp_path), metrics={"enabled": True})
    directory = tmp_path / "d"
    for target in (["--target", "kubernetes", "--trial-services"], [], ["--target", "kubernetes"]):
        synfleet("render", *target, directory=directory, check=True)
    checked, exposed = exposures(directory, secret_values(directory, Path(spec.tls.key)))
    assert not exposed, exposed
    assert {"deploy/kubernetes/secrets.yaml", "deploy/kubernetes/nginx-tls.yaml"} <= set(checked), checked


# -- at every moment ---------------------------------------------------------------------------------


@pytest.mark.parametrize("hosts", [False, True], ids=["one host", "three hosts"])
def test_no_secret_is_ever_readable_by_others_while_rendering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hosts: bool
) -> None:
    directory = tmp_path / "d"
    spec = fleet(directory, hosts=hosts, tls=tls(tmp_path), metrics={"enabled": True})
    with watching_tree(monkeypatch, directory, kept_secrets(directory, Path(spec.tls.key))) as found:
        for _ in range(2):
            render_deployment(load_spec(directory), directory)
    assert not found, found[:10]


def test_no_secret_is_ever_readable_by_others_while_rendering_kubernetes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = fleet(tmp_path / "d", "seed", **EXTERNAL, tls=tls(tmp_path))
    directory = tmp_path / "d"
    with watching_tree(monkeypatch, directory, kept_secrets(directory, Path(spec.tls.key))) as found:
        for _ in range(2):
            render_kubernetes_deployment(load_spec(directory), directory, trial_services=True)
    assert not found, found[:10]
    assert exposures(directory, secret_values(directory, Path(spec.tls.key)))[0]


def test_update_tree_gives_private_files_to_a_group_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The native run directory's way: private files 0640 in the fleet's group, from creation; a
    file left with another mode or group is replaced (and that alone is no change)."""
    group = 65534 if os.geteuid() == 0 else os.getgid()
    secrets = {"a": "first-secret-0123456789", "b": "second-secret-0123456789"}
    files = {
        "synapse/homeserver.yaml": "database:\n  password: first-secret-0123456789\n",
        "secrets/a": "first-secret-0123456789\n",
        "secrets/redis.conf": "requirepass second-secret-0123456789\n",
        "nginx/nginx.conf": "events {}\n",
    }
    target = tmp_path / "run"
    (target / "synapse").mkdir(parents=True)
    # As an older synfleet left it: the same text, its owner's only.
    old = target / "synapse" / "homeserver.yaml"
    old.write_text(files["synapse/homeserver.yaml"])
    old.chmod(0o600)
    values = [value.encode() for value in secrets.values()]
    with watching_tree(monkeypatch, target, lambda: values, group) as found:
        assert update_tree(target, Rendered(files, secrets), group=group)
        assert not update_tree(target, Rendered(files, secrets), group=group)
        (target / "secrets" / "a").chmod(0o600)
        assert not update_tree(target, Rendered(files, secrets), group=group)
    assert not found, found
    for relative in ("synapse/homeserver.yaml", "secrets/a", "secrets/redis.conf"):
        st = (target / relative).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, group), relative
    assert stat.S_IMODE((target / "nginx/nginx.conf").stat().st_mode) == 0o644
    assert stat.S_IMODE((target / "secrets").stat().st_mode) & 0o007 == 0
    assert not [p.name for p in target.rglob(".*")], "a temp file was left behind"


# -- what else synfleet writes -------------------------------------------------------------------


def test_check_loads_private_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`synfleet check` gives Synapse's loader copies of the configs (the database password
    inline) in a temp directory nginx's workers can traverse: the copies are private."""
    fleet(tmp_path, hosts=True)
    render_deployment(load_spec(tmp_path), tmp_path)
    run = subprocess.run
    found: list[str] = []

    def loader(command: list[str], *args: Any, **kwargs: Any) -> Any:
        if "synfleet.check.synapse_loader" in command:
            copies = Path(command[3]).parent
            checked, exposed = exposures(copies, secret_values(tmp_path))
            assert checked, "the copies hold no secret: nothing was checked"
            found.extend(exposed)
            return subprocess.CompletedProcess(command, 0, "", "")
        return run(command, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", loader)
    list(check_deployment(tmp_path))
    assert not found, found


class RunningSupervisor:
    def __init__(self, *args: Any) -> None:
        pass

    def running(self) -> bool:
        return True


def test_backup_archive_and_staging_files_are_private_from_creation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The archive (secrets in it) and the database dump are written 0600 from creation; pg_dump
    (here a stand-in writing the secrets, as a dump holds tokens) opens its --file as pg_dump does."""
    directory = tmp_path / "fleet"
    fleet(directory)
    secrets = ensure_secrets(directory)
    (tmp_path / "backups").mkdir()
    out = tmp_path / "backups" / "fleet.backup"

    def pg_dump(program: str, paths: Any, database: Any, *args: str, **kwargs: Any) -> str:
        dump = next(arg.removeprefix("--file=") for arg in args if arg.startswith("--file="))
        with open(dump, "wb") as stream:  # fopen(path, "wb"), as pg_dump does
            stream.write("\n".join(secrets.values()).encode())
        return ""

    monkeypatch.setattr(backups, "Supervisor", RunningSupervisor)
    monkeypatch.setattr(backups, "client", pg_dump)

    folder = tmp_path / "backups"
    secrets_of = kept_secrets(directory)

    def exposed() -> list[str]:  # every staging file of the backup is private, whatever it holds
        modes = {p.name: stat.S_IMODE(p.lstat().st_mode) for p in folder.glob(".synfleet-backup-*/*")}
        staging = [f"{name} (mode {mode:04o})" for name, mode in modes.items() if mode != 0o600]
        return exposures(folder, secrets_of())[1] + staging

    with watching(monkeypatch, exposed, secrets_of) as found:
        backups.backup(directory, out, lambda line: None)
    assert not found, found
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert holds_secret(out.read_bytes(), secret_values(directory))
