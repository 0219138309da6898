"""The ``synfleet`` command line. Each command lives in its own module; errors a user can cause end
in one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import sys

import click

from synfleet import __version__
from synfleet.cli.audit import audit_command
from synfleet.cli.bench import bench_command
from synfleet.cli.certs import certs_group
from synfleet.cli.deploy import check_command, init_command, render_command
from synfleet.cli.media import media_group
from synfleet.cli.metrics import top_command
from synfleet.cli.route import ring_command, route_command
from synfleet.cli.run import (
    apply_command,
    backup_command,
    down_command,
    logs_command,
    restore_command,
    service_group,
    status_command,
    up_command,
    upgrade_command,
    user_group,
)
from synfleet.errors import SynfleetError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="synfleet")
def cli() -> None:
    """Run a Synapse homeserver split into workers behind nginx, from one fleet file."""


for command in (
    init_command,
    render_command,
    check_command,
    up_command,
    apply_command,
    upgrade_command,
    down_command,
    status_command,
    top_command,
    logs_command,
    user_group,
    backup_command,
    restore_command,
    service_group,
    certs_group,
    media_group,
    route_command,
    ring_command,
    audit_command,
    bench_command,
):
    cli.add_command(command)


def main() -> None:
    try:
        status = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("synfleet: aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "synfleet"
        click.echo(f"synfleet: error: {exc.format_message()} (see `{command} --help`)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SynfleetError as exc:
        click.echo(f"synfleet: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(status if isinstance(status, int) else 0)
