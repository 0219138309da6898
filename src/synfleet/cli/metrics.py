"""``synfleet top``: a live view of every process, from its metrics."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from synfleet.cli.options import DIR_OPTION, HOST_OPTION
from synfleet.cli.output import output_console, stdout_is_terminal
from synfleet.errors import UsageError
from synfleet.metrics.top import Row, Sample, nginx_rate, rows, sample
from synfleet.model.load import load_spec
from synfleet.model.schema import FleetSpec
from synfleet.run.paths import RunPaths
from synfleet.run.plan import check_host, running_spec


def _view(spec: FleetSpec, before: Sample, after: Sample) -> Group:
    table = Table(title=f"{spec.server_name}: every {after.at - before.at:.1f}s")
    for column in ("process", "job", "CPU", "RSS", "requests/s", "events behind"):
        table.add_column(column, justify="left" if column in ("process", "job") else "right")
    found: list[Row] = rows(spec, before, after)
    for row in found:
        if not row.up:
            table.add_row(row.process, row.job, "[red]no answer[/red]", "", "", "")
            continue
        behind = f"[yellow]{row.events_behind}[/yellow]" if row.events_behind else "0"
        table.add_row(
            row.process,
            row.job,
            f"{row.cpu_percent:.0f}%",
            f"{row.rss_mib:.0f} MiB",
            f"{row.requests_per_s:.1f}",
            behind,
        )
    cpu = sum(r.cpu_percent for r in found)
    rss = sum(r.rss_mib for r in found)
    summary = f"Synapse: {cpu:.0f}% CPU, {rss:.0f} MiB RSS"
    if (nginx := nginx_rate(before, after)) is not None:
        summary += f"; nginx: {nginx[0]} connections, {nginx[1]:.1f} requests/s"
    return Group(table, Text(summary))


@click.command("top")
@DIR_OPTION
@HOST_OPTION
@click.option(
    "--interval", type=click.FloatRange(0.5, 3600), default=2.0, show_default=True, help="Seconds per refresh."
)
@click.option(
    "--count",
    type=click.IntRange(1),
    default=None,
    help="Refresh this many times, then exit [default: until Ctrl-C on a terminal, else once].",
)
def top_command(directory: Path, host: str, interval: float, count: int | None) -> None:
    """Every running process's CPU, RSS, requests/s and replication lag (events behind the furthest
    process), from its metrics listener (with --host, that host's processes). Needs `[metrics]
    enabled = true`."""
    paths = RunPaths(directory, host)
    check_host(paths, load_spec(directory))
    if not paths.supervisor_conf.exists():
        start = f"synfleet up --dir {directory}" + (f" --host {host}" if host else "")
        raise UsageError(f"no fleet was started in {directory} (start it with: {start})")
    spec = running_spec(paths)
    if not spec.metrics.enabled:
        raise UsageError(
            "the running fleet has no metrics listeners: set `enabled = true` under [metrics] in "
            f"{directory}/fleet.toml and run `synfleet apply --dir {directory}`"
        )
    console = output_console()
    terminal = stdout_is_terminal()
    before = sample(spec, host)
    if not any(before.processes.values()):
        raise UsageError(
            f"no process of the fleet answers on its metrics port: is it running? (synfleet status --dir {directory})"
        )
    remaining = count if count is not None else (None if terminal else 1)
    live = Live(console=console, auto_refresh=False) if terminal else None
    try:
        if live:
            live.start()
        while remaining is None or remaining > 0:
            time.sleep(interval)
            after = sample(spec, host)
            view = _view(spec, before, after)
            if live:
                live.update(view, refresh=True)
            else:
                console.print(view)
            before = after
            remaining = None if remaining is None else remaining - 1
    except KeyboardInterrupt:
        pass
    finally:
        if live:
            live.stop()
