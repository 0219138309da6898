"""``synfleet audit``: what an existing nginx config for Synapse workers gets wrong."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from synfleet.audit import audit
from synfleet.audit.findings import ERROR, AuditReport, Finding
from synfleet.audit.synapse_config import read_synapse_config
from synfleet.cli.options import print_fleet_warnings
from synfleet.cli.output import output_console
from synfleet.model.load import load_spec
from synfleet.nginx.binary.command import version_text
from synfleet.run.paths import RunPaths


@click.command("audit")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help='Print {"findings": [...]} as JSON.')
@click.option(
    "--fleet",
    "fleet_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Deployment directory whose fleet.toml says which worker does what and the media upload size "
    "(default: roles guessed from names, the default upload size); its run/sockets are checked too.",
)
@click.option(
    "--synapse-config",
    "synapse_files",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The deployment's homeserver.yaml (worker files beside it or in workers/ are read too), or it and "
    "each worker file: who writes which stream and which process listens where. Repeatable.",
)
@click.option("--no-confirm", is_flag=True, help="Do not run the config in a real nginx to confirm the analysis.")
def audit_command(
    config: Path, as_json: bool, fleet_dir: Path | None, synapse_files: tuple[Path, ...], no_confirm: bool
) -> None:
    """Audit CONFIG, a directory with nginx.conf (and its includes) or one file.

    Exits 0 without findings, 1 with findings, 2 when the config cannot be read.
    """
    report = _audit(config, fleet_dir, synapse_files, confirm=not no_confirm)
    if as_json:
        _print_json(report)
    else:
        _print_report(output_console(), config, report)
    sys.exit(1 if report.findings else 0)


def _audit(config: Path, fleet_dir: Path | None, synapse_files: tuple[Path, ...], confirm: bool) -> AuditReport:
    """Audit with what the deployment says about itself: its Synapse config, and its fleet file
    (roles, upload size, sockets) when given."""
    synapse = read_synapse_config(synapse_files) if synapse_files else None
    if not fleet_dir:
        return audit(config, confirm=confirm, synapse=synapse)
    spec = load_spec(fleet_dir)
    print_fleet_warnings(fleet_dir)
    return audit(
        config,
        spec.fleet,
        confirm=confirm,
        max_upload_bytes=spec.media.max_upload_bytes,
        socket_dir=RunPaths(fleet_dir).sockets,
        synapse=synapse,
    )


def _print_json(report: AuditReport) -> None:
    click.echo(
        json.dumps(
            {
                "findings": [f.as_json() for f in report.findings],
                "requests": report.requests,
                "confirmed_by_nginx": report.confirmed,
                "not_asked_by_nginx": report.not_asked,
                "assumptions": report.assumptions,
            },
            indent=2,
        )
    )


def _print_report(console: Console, config: Path, report: AuditReport) -> None:
    for assumption in report.assumptions:
        console.print(f"[dim]assumed: {escape(assumption)}[/dim]")
    if report.findings:
        console.print(_findings_table(report.findings))
    errors = sum(f.severity == ERROR for f in report.findings)
    console.print(f"{len(report.findings)} findings ({errors} errors) in {config}; {report.requests} requests analysed")
    if report.confirmed is not None:
        not_asked = f"; {report.not_asked} not asked (no stub for their proxy target)" if report.not_asked else ""
        console.print(
            f"confirmed with nginx {version_text()}: {report.confirmed} of {report.requests} requests answered "
            f"as analysed{not_asked}"
        )


def _findings_table(findings: list[Finding]) -> Table:
    """One row a finding; under its message, an example request (or, without one, where in the config)."""
    table = Table(show_lines=True)
    for column in ("severity", "finding", "what", "fix"):
        table.add_column(column)
    for finding in findings:
        example = (
            f"\n[dim]{escape(finding.method or '')} {escape(finding.url or '')} -> {escape(finding.got or '')}[/dim]"
            if finding.url
            else ""
        )
        where = f"\n[dim]{escape(finding.where)}[/dim]" if finding.where and not finding.url else ""
        severity = "[red]error[/red]" if finding.severity == ERROR else "[yellow]warning[/yellow]"
        count = f" (x{finding.count})" if finding.count > 1 else ""
        table.add_row(severity, finding.kind + count, escape(finding.message) + example + where, escape(finding.fix))
    return table
