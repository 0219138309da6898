"""``synfleet media``: media kept in a bucket (``media.store = "s3"``)."""

from __future__ import annotations

import re
from pathlib import Path

import click

from synfleet.cli.options import DIR_OPTION, HOST_OPTION
from synfleet.cli.output import output_console, reporter
from synfleet.errors import UsageError
from synfleet.model.load import load_spec
from synfleet.model.schema.values import parse_size
from synfleet.run.media import offload
from synfleet.run.paths import RunPaths
from synfleet.run.plan import check_host

_UNITS = {"m": 60, "h": 3600, "d": 86400}


def _age(value: str | None) -> float | None:
    if value is None:
        return None
    found = re.fullmatch(r"([0-9]+)([mhd])", value)
    if not found:
        raise UsageError(f"--older-than: an age such as 30d, 12h or 90m, got {value!r}")
    return int(found[1]) * _UNITS[found[2]]


def _size(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise UsageError(f"--keep: {exc}") from None


@click.group("media")
def media_group() -> None:
    """Media kept in a bucket: move files from the media store's disk to it."""


@media_group.command("offload")
@DIR_OPTION
@HOST_OPTION
@click.option("--older-than", metavar="AGE", help="Move the files last changed more than AGE ago (30d, 12h, 90m).")
@click.option("--keep", metavar="SIZE", help="Then move the least recently used until the disk holds at most SIZE.")
@click.option("--all", "everything", is_flag=True, help="Move every file.")
def offload_command(directory: Path, host: str, older_than: str | None, keep: str | None, everything: bool) -> None:
    """Move media files from this host's media store to the bucket. Each is removed from the disk
    only once the bucket holds it whole; Synapse reads it back from the bucket when asked for it.
    Without options, the least recently used move until the disk holds at most media.cache_size."""
    spec = load_spec(directory)
    paths = RunPaths(directory, host)
    check_host(paths, spec)
    if everything and (older_than or keep):
        raise UsageError("--all moves every file: it takes no --older-than or --keep")
    age, bound = (0.0, None) if everything else (_age(older_than), _size(keep))
    if age is None and bound is None:
        bound = parse_size(spec.media.cache_size)
    console = output_console()
    done = offload(paths, spec, age, bound, reporter(console))
    console.print(done.line())
