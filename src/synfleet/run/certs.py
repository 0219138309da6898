"""`synfleet certs install --host NAME`: give one host's running share the fleet's current
certificates (``D/secrets/tls``) and have every server that presents or checks them read them
again, without a restart: nginx reloads gracefully (open links stay on the certificates they
began with), PostgreSQL on SIGHUP, Redis when its TLS settings are set again. Connections already
open stay; new ones use the new certificates."""

from __future__ import annotations

import socket
from collections.abc import Callable

from synfleet.errors import SynfleetError, UsageError
from synfleet.layout import SECRETS_DIR
from synfleet.model.fleet import Service
from synfleet.model.schema import FleetSpec
from synfleet.pki.fleet import TLS_DIR, Installed
from synfleet.render.files import Rendered, update_tree
from synfleet.render.secrets import Secret, ensure_secrets
from synfleet.run.accounts import as_root, ensure_accounts
from synfleet.run.paths import RunPaths
from synfleet.run.plan import plan_for, run_files
from synfleet.run.supervisor import Supervisor

Report = Callable[[str], None]


def install(paths: RunPaths, spec: FleetSpec, report: Report) -> bool:
    """Write this host's certificates into its run directory and reload what reads them; False
    when they were already there (nothing reloads)."""
    supervisor = Supervisor(paths)
    if not supervisor.running():
        raise UsageError(f"the share of host {paths.host} is not running: `synfleet up --host {paths.host}` starts it")
    secrets = ensure_secrets(paths.directory, spec)
    plan = plan_for(paths, spec)
    prefix = f"{SECRETS_DIR}/{TLS_DIR}/"
    files = {name: text for name, text in run_files(plan, secrets).files.items() if name.startswith(prefix)}
    accounts = ensure_accounts(report) if as_root() else None
    if not update_tree(paths.run, Rendered(files, secrets), group=accounts.fleet.gid if accounts else None):
        report(f"host {paths.host} already has the fleet's current certificates")
        return False
    here = {p.name for p in plan.processes}
    if Service.NGINX in here:
        report("reloading nginx gracefully")
        supervisor.signal(Service.NGINX.value, "HUP")
    if Service.POSTGRES in here:
        report("reloading PostgreSQL's configuration (its certificates with it)")
        supervisor.signal(Service.POSTGRES.value, "HUP")
    if Service.REDIS in here:
        report("setting Redis's TLS files again (it reads them anew)")
        layout = paths.layout
        _reload_redis(layout.redis_socket, secrets[Secret.REDIS_PASSWORD], layout.secret)
    return True


def _command(*words: str) -> bytes:
    encoded = [word.encode() for word in words]
    return f"*{len(encoded)}\r\n".encode() + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in encoded)


def _reload_redis(path: str, password: str, secret: Callable[[str], str]) -> None:
    """Set each TLS file of Redis again: Redis reads the files anew whenever one is set."""
    settings = (
        ("tls-cert-file", secret(Installed.HOST.certificate)),
        ("tls-key-file", secret(Installed.HOST.key)),
        ("tls-ca-cert-file", secret(Installed.TRUST.certificate)),
    )
    commands = [_command("AUTH", password), _command("CONFIG", "SET", *(w for pair in settings for w in pair))]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(path)
        for command in commands:
            conn.sendall(command)
            answer = conn.recv(1024)
            if not answer.startswith(b"+OK"):
                raise SynfleetError(f"Redis refused to read its certificates again: {answer.decode(errors='replace')}")
