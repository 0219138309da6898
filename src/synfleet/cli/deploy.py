"""``synfleet init``, ``render`` and ``check``: write the fleet file, the deployment, and prove it."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from click.core import ParameterSource
from rich.markup import escape

from synfleet.bench.sizing import size_fleet
from synfleet.check.deployment import check_deployment
from synfleet.cli.options import DIR_OPTION, make_directory, target_option
from synfleet.cli.output import output_console
from synfleet.errors import FleetError, UsageError
from synfleet.layout import SECRETS_DIR
from synfleet.model.load import FLEET_FILE, load_spec
from synfleet.model.profiles import PROFILES
from synfleet.model.schema.values import check_server_name
from synfleet.render.deploy import HOSTS_DIR, render_deployment, render_kubernetes_deployment
from synfleet.render.files import write_file
from synfleet.render.fleet_file import fleet_file_text
from synfleet.render.kubernetes import namespace_name


@click.command("init")
@DIR_OPTION
@click.option("--server-name", required=True, help="The homeserver's name, e.g. example.org.")
@click.option(
    "--profile",
    type=click.Choice(list(PROFILES)),
    default="seed",
    show_default=True,
    help="seed: the seed's topology; small: fits a 2-core machine; monolith: main only.",
)
@click.option(
    "--cores",
    type=click.IntRange(1, 1024),
    help="Size the workers for a machine of this many cores, from the capacity bench's measurements "
    "(other settings as the small profile); the reasons are written into the file.",
)
@click.option("--force", is_flag=True, help="Replace an existing fleet.toml.")
@click.pass_context
def init_command(
    context: click.Context, directory: Path, server_name: str, profile: str, cores: int | None, force: bool
) -> None:
    """Write a commented fleet.toml for a profile, or sized for a number of cores."""
    try:
        check_server_name(server_name)
    except ValueError as exc:
        raise FleetError(f"--server-name: {exc}") from None
    if cores is not None and context.get_parameter_source("profile") is not ParameterSource.DEFAULT:
        raise UsageError("--cores sizes the workers itself: give --cores or --profile, not both")
    path = directory / FLEET_FILE
    if path.exists() and not force:
        raise UsageError(f"{path} exists; edit it, or pass --force to replace it")
    sizing = size_fleet(cores) if cores is not None else None
    if sizing is not None:
        profile = "small"
    sized = (sizing.cores, sizing.workers, sizing.reasons) if sizing else None
    text = fleet_file_text(server_name, profile, sized)
    make_directory(directory)
    try:
        write_file(path, text)
    except OSError as exc:
        raise UsageError(f"{directory}: cannot write {FLEET_FILE} there: {exc.strerror}") from None
    if sizing is not None:
        click.echo(f"sized for {cores} cores:")
        for reason in sizing.reasons:
            click.echo(f"  - {reason}")
        shape = ", ".join(f"{role} = {count}" for role, count in sizing.workers.items() if count)
        click.echo(f"wrote {path} (workers: {shape or 'main only'}); next: synfleet render --dir {directory}")
    else:
        click.echo(f"wrote {path} ({profile} profile); next: synfleet render --dir {directory}")


@click.command("render")
@DIR_OPTION
@target_option(
    {
        "compose": "DIR/deploy for docker compose",
        "kubernetes": "manifests in DIR/deploy/kubernetes (for kubectl apply -k), with an external PostgreSQL "
        "and Redis (database.host, redis.host).",
    }
)
@click.option(
    "--trial-services",
    is_flag=True,
    help="With --target kubernetes, for trials only: run PostgreSQL and Redis as single pods in the "
    "cluster (no backups, no replicas) instead of the external ones of fleet.toml.",
)
def render_command(directory: Path, target: str, trial_services: bool) -> None:
    """Write the deployment (nginx, Synapse, docker compose) into DIR/deploy, or Kubernetes
    manifests into DIR/deploy/kubernetes."""
    if trial_services and target != "kubernetes":
        raise UsageError("--trial-services renders PostgreSQL and Redis pods: it needs --target kubernetes")
    spec = load_spec(directory)
    fleet = spec.fleet
    if target == "kubernetes":
        written = render_kubernetes_deployment(spec, directory, trial_services)
        click.echo(f"rendered {len(fleet.workers)} Synapse processes for {spec.server_name} into {written}")
        click.echo(f"  namespace: {namespace_name(spec.server_name)}; secrets: {directory / SECRETS_DIR}")
        if trial_services:
            click.echo("  PostgreSQL and Redis: single trial pods in the namespace (not for production)")
        click.echo(f"  apply with: kubectl apply -k {written}")
        return
    written = render_deployment(spec, directory)
    click.echo(f"rendered {len(fleet.workers)} Synapse processes for {spec.server_name} into {written}")
    click.echo(f"  secrets: {directory / SECRETS_DIR} (kept across renders)")
    if not spec.hosts:
        click.echo(f"  start with docker compose: cd {written} && docker compose up -d")
        return
    click.echo(f"  one compose project per host; copy {directory} to each host, then on each:")
    for host in spec.hosts:
        names = ", ".join(spec.fleet.processes_on(host)) or "nothing"
        address = spec.fleet.host(host).address
        click.echo(f"    {host} ({address}: {names}): cd {written / HOSTS_DIR / host} && docker compose up -d")


@click.command("check")
@DIR_OPTION
def check_command(directory: Path) -> None:
    """Validate DIR/deploy with nginx -t, Synapse's own config loader and synfleet's consistency checks."""
    console = output_console()
    failures = 0
    for result in check_deployment(directory):
        mark = "[green]ok[/green]  " if result.ok else "[red]FAIL[/red]"
        console.print(f"{mark} {escape(result.name)}" + (f": {escape(result.detail)}" if result.detail else ""))
        failures += not result.ok
    if failures:
        console.print(f"[red]{failures} check(s) failed[/red]")
        sys.exit(1)
    console.print("all checks passed")
