"""`synfleet render`: the whole deployment directory, written atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from synfleet.errors import SynfleetError
from synfleet.render.compose import render_compose
from synfleet.render.layout import COMPOSE, Layout
from synfleet.render.nginx import NginxLayout, NginxTls, http2_directive_supported, render_nginx
from synfleet.render.secrets import ensure_secrets
from synfleet.render.synapse import render_synapse
from synfleet.routing.plan import RoutingPlan
from synfleet.spec.file import FleetSpec
from synfleet.system import nginx_version

DEPLOY_DIR = "deploy"
PRIVATE = 0o600
PUBLIC = 0o644

#: Files holding secrets (database password) are readable by the owner only.
PRIVATE_FILES = frozenset({"synapse/homeserver.yaml", "env/postgres.env"})


@dataclass(frozen=True)
class Rendered:
    """Files by path relative to the deployment directory, and empty directories to create."""

    files: dict[str, str]
    directories: tuple[str, ...] = ()


def compose_nginx_layout(spec: FleetSpec) -> NginxLayout:
    tls = None
    if spec.tls.enabled:
        tls = NginxTls(
            listen=("8448",),
            certificate="/etc/ssl/synfleet/fullchain.pem",
            key="/etc/ssl/synfleet/privkey.pem",
            public_port=spec.listen.https_port,
            http2_on=http2_directive_supported(nginx_version()),
        )
    return NginxLayout(socket_dir=COMPOSE.socket_dir, log_dir="/var/log/nginx", listen=("8008",), tls=tls)


def render_files(spec: FleetSpec, layout: Layout, nginx_layout: NginxLayout, secrets: dict[str, str]) -> dict[str, str]:
    """nginx and Synapse files for one layout, by path relative to the deployment directory."""
    plan = RoutingPlan(spec.fleet, socket_dir=layout.socket_dir)
    files = {f"nginx/config/{name}": text for name, text in render_nginx(plan, nginx_layout).items()}
    files.update({f"synapse/{name}": text for name, text in render_synapse(spec, layout, secrets).items()})
    return files


def render_compose_deployment(spec: FleetSpec, secrets: dict[str, str]) -> Rendered:
    files = render_files(spec, COMPOSE, compose_nginx_layout(spec), secrets)
    files.update(render_compose(spec, secrets))
    return Rendered(files, directories=("nginx/logs",))


def write_tree(target: Path, rendered: Rendered) -> None:
    """Write ``rendered`` to ``target``: build it in a temp dir beside it, then swap it in."""
    parent = target.parent
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=parent))
    old: Path | None = None
    try:
        staging.chmod(0o755)
        for directory in rendered.directories:
            (staging / directory).mkdir(parents=True, exist_ok=True)
        for relative, text in sorted(rendered.files.items()):
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(PRIVATE if relative in PRIVATE_FILES else PUBLIC)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=parent))
            os.replace(target, old / target.name)
        os.replace(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and not target.exists():
            os.replace(old / target.name, target)
        raise SynfleetError(f"{target}: cannot write the deployment: {exc.strerror}") from None
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def render_deployment(spec: FleetSpec, directory: Path) -> Path:
    """Render ``directory/deploy`` for docker compose; secrets are created once and kept."""
    secrets = ensure_secrets(directory)
    target = directory / DEPLOY_DIR
    write_tree(target, render_compose_deployment(spec, secrets))
    return target
