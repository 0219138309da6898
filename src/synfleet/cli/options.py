"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from synfleet.errors import UsageError
from synfleet.model.load import fleet_file_warnings

Decorated = TypeVar("Decorated", bound=Callable[..., Any])


def print_fleet_warnings(directory: Path) -> None:
    """Say on stderr, once per command, what the deployment's fleet file should write otherwise."""
    for warning in fleet_file_warnings(directory):
        click.echo(f"synfleet: warning: {warning}", err=True)


def _directory(context: click.Context, parameter: click.Parameter, value: Path) -> Path:
    if value.exists() and not value.is_dir():
        raise click.BadParameter(f"{value} is not a directory", context, parameter)
    print_fleet_warnings(value)
    return value


DIR_OPTION = click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    callback=_directory,
    default=Path("."),
    show_default=True,
    help="Deployment directory holding fleet.toml (without one: the seed's fleet for localhost).",
)


HOST_OPTION = click.option(
    "--host",
    default="",
    metavar="NAME",
    help="In a fleet on several hosts ([hosts] in fleet.toml): the host whose share runs here.",
)


def target_option(targets: dict[str, str]) -> Callable[[Decorated], Decorated]:
    """``--target``, one of ``targets`` (name: what it is), the first by default; the help
    describes each."""
    return click.option(
        "--target",
        type=click.Choice(list(targets)),
        default=next(iter(targets)),
        show_default=True,
        help="; ".join(f"{name}: {text}" for name, text in targets.items()),
    )


def make_directory(directory: Path) -> None:
    """Create a deployment directory (and its parents) if it does not exist."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{directory}: cannot create the directory: {exc.strerror}") from None
