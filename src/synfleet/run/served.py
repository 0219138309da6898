"""Whether a fleet's signing key has served, so that `up` never starts it on an empty database.

Once `up` has brought main up healthy, ``D/secrets/signing.key.served`` records the SHA-256 of the
signing key and when it first served. The record travels with the secrets into backups and out of
them again. Other servers know a key that has served, and the database holds what was signed with
it: `up` refuses to create a new PostgreSQL cluster, or Synapse's database in an existing one, for
such a key unless a restored dump is waiting to be loaded. Restoring a backup brings the database
back; removing the signing key (`up` makes a new one) starts a new homeserver.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from synfleet.errors import UsageError
from synfleet.layout import SECRETS_DIR
from synfleet.model.schema import FleetSpec
from synfleet.render.files import PRIVATE, sync, write_file
from synfleet.render.secrets import Secret
from synfleet.run.backup import holds_synapse, pending_dump
from synfleet.run.paths import RunPaths
from synfleet.run.plan import Plan
from synfleet.run.supervised import Tier

SERVED = f"{Secret.SIGNING_KEY}.served"
#: initdb writes it first: a data directory without it holds no cluster.
CLUSTER_MARK = "PG_VERSION"


def _key_digest(directory: Path) -> str | None:
    try:
        return hashlib.sha256((directory / SECRETS_DIR / Secret.SIGNING_KEY).read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def served_since(directory: Path) -> str | None:
    """When the signing key of the fleet in ``directory`` first served (as recorded for this key),
    or None."""
    try:
        fields = (directory / SECRETS_DIR / SERVED).read_text().split()
    except FileNotFoundError:
        return None
    key = _key_digest(directory)
    if key is None or not fields or fields[0] != key:
        return None
    return fields[1] if len(fields) > 1 else "an earlier start"


def record_served(plan: Plan) -> None:
    """After `up` brought main up healthy here: its signing key has served (recorded once, written
    whole and flushed to disk)."""
    directory = plan.paths.directory
    key = _key_digest(directory)
    if key is None or served_since(directory) or not any(p.tier is Tier.MAIN for p in plan.processes):
        return
    record = directory / SECRETS_DIR / SERVED
    write_file(record, f"{key} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n", PRIVATE)
    sync(record.parent)


def forget_served(directory: Path) -> None:
    """Let the fleet in ``directory`` start on a new database with its key (throwaway fleets,
    such as the benchmarks', do)."""
    (directory / SECRETS_DIR / SERVED).unlink(missing_ok=True)


def refuse_new_cluster(paths: RunPaths) -> None:
    """Before `up` creates the fleet's PostgreSQL cluster: refused if the key has served and no
    restored dump waits."""
    if not (paths.postgres_data / CLUSTER_MARK).exists() and not pending_dump(paths).exists():
        _refuse(paths, f"its PostgreSQL cluster ({paths.postgres_data}) is gone")


def refuse_empty_database(paths: RunPaths, spec: FleetSpec) -> None:
    """Before `up` makes sure Synapse's database exists (PostgreSQL runs): refused if it does not,
    or holds no Synapse schema, while the key has served and no restored dump waits."""
    if pending_dump(paths).exists() or served_since(paths.directory) is None:
        return
    if holds_synapse(paths, spec.database) is False:
        _refuse(paths, f"Synapse's database {spec.database.name!r} is missing or empty in {paths.postgres_data}")


def _refuse(paths: RunPaths, what: str) -> None:
    directory = paths.directory
    since = served_since(directory)
    if since is None:
        return
    key = directory / SECRETS_DIR / Secret.SIGNING_KEY
    raise UsageError(
        f"the fleet in {directory} has served with its signing key since {since}, but {what}: "
        f"`synfleet restore BACKUP --dir {directory} --force` brings its database back; "
        f"to start a new, empty homeserver instead, remove {key}"
    )
