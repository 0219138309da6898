"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path

import click

DIR_OPTION = click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("."),
    show_default=True,
    help="Deployment directory holding fleet.toml (without one: the seed's fleet for localhost).",
)
