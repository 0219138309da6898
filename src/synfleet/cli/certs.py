"""``synfleet certs``: the fleet's CA and the certificates of the links between its hosts."""

from __future__ import annotations

import datetime
from pathlib import Path

import click
from cryptography.x509.oid import NameOID
from rich.markup import escape
from rich.table import Table

from synfleet.cli.options import DIR_OPTION, HOST_OPTION
from synfleet.cli.output import output_console, reporter
from synfleet.errors import UsageError
from synfleet.model.load import load_spec
from synfleet.model.schema import FleetSpec
from synfleet.pki.fleet import RENEW_BEFORE, FleetAuthority, new_authority, retire, rotate
from synfleet.render.secrets import ensure_secrets
from synfleet.run.certs import install
from synfleet.run.paths import RunPaths

NEXT_STEP = "next, on each host: synfleet certs install --host NAME (compose: synfleet render, then restart nginx)"


def _several_hosts(directory: Path) -> FleetSpec:
    spec = load_spec(directory)
    if not spec.hosts:
        raise UsageError(
            "this fleet runs on one host: its processes talk over UNIX sockets, and no link between hosts "
            "needs a certificate (add [hosts] to fleet.toml for a fleet on several)"
        )
    return spec


@click.group("certs", invoke_without_command=True)
@DIR_OPTION
@click.pass_context
def certs_group(context: click.Context, directory: Path) -> None:
    """The fleet's CA and the certificates of the links between hosts (DIR/secrets/tls): without a
    subcommand, each certificate, who issued it and when it ends."""
    if context.invoked_subcommand is not None:
        return
    spec = _several_hosts(directory)
    ensure_secrets(directory, spec)
    fleet = FleetAuthority(directory)
    console = output_console()
    now = datetime.datetime.now(datetime.UTC)
    trusted = fleet.trusted()
    console.print(f"trusted CAs ({fleet.folder / 'trust.pem'}):")
    for ca in trusted:
        issuing = " (issues)" if ca == fleet.authority.certificate else ""
        console.print(f"  {escape(ca.subject.rfc4514_string())}, until {ca.not_valid_after_utc:%Y-%m-%d}{issuing}")
    table = Table("file", "subject", "names", "issuer", "ends", "days left", box=None, pad_edge=False)
    soon = []
    for want, identity in fleet.identities(spec):
        certificate = identity.certificate
        issuer = certificate.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
        table.add_row(
            f"{want.stem}.pem",
            certificate.subject.rfc4514_string(),
            ", ".join(identity.names),
            str(issuer[0].value) if issuer else "",
            f"{identity.expires:%Y-%m-%d}",
            str((identity.expires - now).days),
        )
        if identity.expires - now < RENEW_BEFORE:
            soon.append(want.stem)
    console.print(table)
    if soon:
        console.print(
            f"[yellow]ending within {RENEW_BEFORE.days} days: {', '.join(soon)}: synfleet certs rotate[/yellow]"
        )


@certs_group.command("rotate")
@DIR_OPTION
@click.option(
    "--new-ca", is_flag=True, help="Make a new CA, trusted beside the old one; it issues from the next rotate."
)
@click.option(
    "--retire",
    "retire_old",
    is_flag=True,
    help="Trust only the newest CA (refused while a certificate is an older one's).",
)
def rotate_command(directory: Path, new_ca: bool, retire_old: bool) -> None:
    """Issue every certificate of the links anew, from the newest CA. Replacing the CA takes three
    steps, each installed on every host before the next: --new-ca, a plain rotate, --retire."""
    if new_ca and retire_old:
        raise UsageError("--new-ca and --retire are two steps of replacing the CA: one at a time")
    spec = _several_hosts(directory)
    ensure_secrets(directory, spec)
    if new_ca:
        made = new_authority(directory, spec)
        click.echo(
            f"new CA {made.subject.rfc4514_string()}: trusted beside the old one; it issues from the next rotate"
        )
    elif retire_old:
        dropped = retire(directory, spec)
        click.echo(f"no longer trusted: {len(dropped)} older CA(s)" if dropped else "only one CA was trusted")
    else:
        files = rotate(directory, spec)
        click.echo(f"issued anew: {', '.join(files)}")
    click.echo(NEXT_STEP)


@certs_group.command("install")
@DIR_OPTION
@HOST_OPTION
def install_command(directory: Path, host: str) -> None:
    """Give this host's running share the fleet's current certificates, and have nginx, PostgreSQL
    and Redis read them again (no restart; open connections stay)."""
    spec = _several_hosts(directory)
    if not host:
        raise UsageError(f"give the host whose share runs here (--host NAME); hosts: {', '.join(spec.hosts)}")
    console = output_console()
    if install(RunPaths(directory, host), spec, reporter(console)):
        console.print(f"host {escape(host)} now presents and trusts the fleet's current certificates")
