"""`synfleet upgrade`: move a fleet to another Synapse release.

Native run: the release installed in synfleet's environment (``pip install -U matrix-synapse``)
replaces the one running. Workers stop, main starts alone and migrates the schema, then the
workers start and nginx reloads. A database that a newer Synapse has migrated beyond what the
installed one reads (its schema compat version above the installed schema version) is refused
before anything stops: Synapse would not start on it.

docker compose: ``--synapse VERSION`` sets ``synapse.version`` in fleet.toml, renders, and prints
the same order as commands.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from collections.abc import Callable
from pathlib import Path

import httpx

from synfleet.errors import SynfleetError, UsageError
from synfleet.model.load import FLEET_FILE, load_spec
from synfleet.model.schema import FleetSpec, parse_fleet
from synfleet.model.schema.synapse import VERSION_PATTERN
from synfleet.render.deploy import render_deployment
from synfleet.render.services import MAIN_SERVICE
from synfleet.run.apply import restart
from synfleet.run.paths import RunPaths
from synfleet.run.plan import plan_for, running_spec
from synfleet.run.postgres import query
from synfleet.run.supervised import Tier
from synfleet.run.supervisor import Supervisor

Report = Callable[[str], None]


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def running_version(paths: RunPaths) -> str:
    """The Synapse release main runs, as it tells other servers (without the git branch and commit
    Synapse adds when its package lies in a git checkout)."""
    transport = httpx.HTTPTransport(uds=paths.layout.inbound_socket("main"))
    try:
        with httpx.Client(transport=transport, base_url="http://localhost", timeout=10) as client:
            return str(client.get("/_matrix/federation/v1/version").json()["server"]["version"]).split(" ", 1)[0]
    except (httpx.HTTPError, KeyError, ValueError):
        raise SynfleetError("main does not say which Synapse it runs: is it healthy (`synfleet status`)?") from None


def _schema(paths: RunPaths, spec: FleetSpec) -> tuple[int, int]:
    """The database's (schema version, schema compat version)."""
    sql = "SELECT (SELECT version FROM schema_version), (SELECT compat_version FROM schema_compat_version)"
    [row] = query(paths, spec.database, sql, "cannot read the database's schema version")
    version, _, compat = row.partition("|")
    return int(version), int(compat or version)


def upgrade_native(paths: RunPaths, force: bool, report: Report) -> None:
    supervisor = Supervisor(paths)
    if not supervisor.running():
        raise UsageError(
            f"the fleet in {paths.directory} is not running: `synfleet up` starts it on the installed Synapse"
        )
    # The installed release's schema; imported here, as only this command needs Synapse itself.
    from synapse.storage.schema import SCHEMA_VERSION

    installed = importlib.metadata.version("matrix-synapse")
    running = running_version(paths)
    spec = running_spec(paths)
    schema, compat = _schema(paths, spec)
    if compat > SCHEMA_VERSION:
        raise UsageError(
            f"the database is at schema {schema} and needs a Synapse that reads schema {compat} or later; the "
            f"installed Synapse {installed} reads up to {SCHEMA_VERSION}: that is a downgrade across a schema "
            "change, which Synapse refuses. Install the release the fleet runs, or a newer one"
        )
    if installed == running and not force:
        report(f"the fleet already runs Synapse {installed}; nothing to upgrade (--force restarts it anyway)")
        return
    direction = "to" if _release(installed) >= _release(running) else "back to"
    report(f"moving from Synapse {running} {direction} {installed} (database schema {schema})")
    plan = plan_for(paths, spec)
    main = [p for p in plan.processes if p.tier is Tier.MAIN]
    workers = [p for p in plan.processes if p.tier is Tier.WORKERS]
    for process in reversed(workers):
        report(f"stopping {process.name}")
        supervisor.stop(process.name)
    report("main migrates the schema alone")
    restart(supervisor, main, report)
    restart(supervisor, workers, report)
    report("reloading nginx")
    supervisor.signal("nginx", "HUP")
    report(f"the fleet runs Synapse {running_version(paths)}")


def upgrade_compose(directory: Path, version: str, force: bool, report: Report) -> list[str]:
    """Set synapse.version in fleet.toml, render, and return the commands that move the compose
    deployment in order."""
    if not VERSION_PATTERN.fullmatch(version):
        raise UsageError(f"--synapse: must be a release such as 1.163.2, got {version!r}")
    spec = load_spec(directory)
    current = spec.synapse.version
    if spec.images.synapse:
        raise UsageError(
            f"images.synapse names the image ({spec.images.synapse}): change its tag there, then `synfleet render`"
        )
    if _release(version) < _release(current) and not force:
        raise UsageError(
            f"--synapse {version} is older than the fleet's {current}: a database migrated by {current} may be too "
            "new for it, and Synapse would refuse to start (--force if you know the schema allows it)"
        )
    path = directory / FLEET_FILE
    text = path.read_text()
    section = re.search(r"(?ms)^\[synapse\]\n(.*?)(?=^\[|\Z)", text)
    if section and re.search(r'(?m)^version\s*=\s*"[^"]*"', section[1]):
        body = re.sub(r'(?m)^version\s*=\s*"[^"]*"', f'version = "{version}"', section[1], count=1)
        new_text = text[: section.start(1)] + body + text[section.end(1) :]
    elif section:
        new_text = text[: section.start(1)] + f'version = "{version}"\n' + text[section.start(1) :]
    else:
        new_text = text.rstrip("\n") + f'\n\n[synapse]\nversion = "{version}"\n'
    parse_fleet(new_text, str(path))  # the edit keeps the file valid before it is written
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(new_text)
    partial.replace(path)
    render_deployment(load_spec(directory), directory)
    report(f"fleet.toml: synapse.version {current} -> {version}; rendered {directory / 'deploy'}")
    workers = [w.name for w in spec.fleet.workers if w.name != spec.fleet.main.name]
    commands = [f"cd {directory / 'deploy'}", f"docker compose pull {MAIN_SERVICE}"]
    if workers:
        commands.append(f"docker compose stop {' '.join(workers)}")
    return [
        *commands,
        f"docker compose up -d --no-deps {MAIN_SERVICE}   # main migrates the schema alone",
        f"docker compose ps {MAIN_SERVICE}   # again until it shows (healthy)",
        "docker compose up -d   # the workers, then nginx",
    ]
