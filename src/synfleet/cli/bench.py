"""``synfleet bench``: the fleet against a monolith, at one load or at its capacity; or where one
mode's CPU goes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from synfleet.bench.capacity import Settings, capacity
from synfleet.bench.compare import bench
from synfleet.bench.plots import plot, plot_capacity
from synfleet.bench.profile import CATEGORY_NAMES, ProfileSettings, profile
from synfleet.bench.startup import StartupSettings, startup_bench
from synfleet.cli.options import DIR_OPTION, Decorated
from synfleet.cli.output import output_console


def _spread(values: dict[str, float]) -> str:
    return f"{values['median']} ({values['min']}-{values['max']})" if values else "-"


def _print_capacity(console: Console, results: dict[str, Any]) -> None:
    table = Table(title="capacity at the service level, msgs/s (median, min-max)")
    for column in ("mode", "capacity", "delivery p99 at capacity, ms", "first failure (last run)"):
        table.add_column(column)
    for mode, values in results["summary"]["capacity_per_s"].items():
        mine = [r for r in results["runs"] if r["mode"] == mode]
        p99 = [r["delivery_p99_ms_at_capacity"] for r in mine if r["delivery_p99_ms_at_capacity"] is not None]
        table.add_row(mode, _spread(values), ", ".join(f"{v:.0f}" for v in p99) or "-", str(mine[-1]["first_failure"]))
    console.print(table)
    if ratio := results["summary"]["fleet/monolith"]:
        console.print(f"fleet/monolith capacity: {_spread(ratio)}")
    for mode, model in results["model"].items():
        here = model["here"]
        console.print(
            f"model, {mode}: {here['cores']:.0f} cores here predict {here['predicted']['capacity_per_s']} msgs/s "
            f"({here['predicted']['first_saturated']} saturates first); measured {here['measured_median_per_s']} "
            f"(x{here['measured/predicted']})"
        )
        grid = Table(title=f"model, {mode}: by cores (load generator elsewhere)")
        for column in ("cores", "this shape", "first saturated", "calibrated", "sized shape", "sized first saturated"):
            grid.add_column(column)
        for row in model["cores"]:
            sized = row["sized_shape"]
            shape = " ".join(f"{k}={v}" for k, v in sized["processes"].items())
            grid.add_row(
                str(row["cores"]),
                str(row["this_shape"]["capacity_per_s"]),
                row["this_shape"]["first_saturated"],
                str(row["this_shape"]["calibrated_per_s"]),
                f"{sized['calibrated_per_s']} ({shape})",
                sized["first_saturated"],
            )
        console.print(grid)


#: The characters of a statement the profile's table shows.
STATEMENT_WIDTH = 160


def _print_profile(console: Console, results: dict[str, Any], out: Path) -> None:
    step = results["step"]
    table = Table(
        title=f"CPU ms per acknowledged message ({step['acknowledged']} of {step['offered']} at "
        f"{step['offered_per_s']:g} msgs/s), by group and by what the samples show"
    )
    for column in ("group", "CPU ms/msg", "samples", "waiting", *CATEGORY_NAMES):
        table.add_column(column, justify="left" if column == "group" else "right")
    for group, figures in results["groups"].items():
        categories = figures["categories"]
        split = [
            f"{categories[name]['cpu_ms_per_message']:.1f} ({categories[name]['share']:.0%})" if categories else "-"
            for name in CATEGORY_NAMES
        ]
        samples = [str(figures[k]) if figures[k] is not None else "-" for k in ("samples", "waiting_samples")]
        table.add_row(group, f"{figures['cpu_ms_per_message']:.1f}", *samples, *split)
    console.print(table)
    database = results["postgres_per_message"]
    statements = (
        f"{database['statements']} statements taking {database['statement_exec_ms']} ms to execute"
        if database["statements"] is not None
        else "statements not counted (the database is not the fleet's own)"
    )
    console.print(
        f"PostgreSQL per acknowledged message: {database['transactions']} transactions; rows "
        f"{database['tup_returned']} returned, {database['tup_fetched']} fetched, {database['tup_inserted']} "
        f"inserted, {database['tup_updated']} updated, {database['tup_deleted']} deleted; {statements}"
    )
    if database["top_statements"]:
        top = Table(title="the statements that took the most execution time, per acknowledged message")
        for column in ("calls", "exec ms", "rows", "statement"):
            top.add_column(column, justify="left" if column == "statement" else "right")
        for statement in database["top_statements"]:
            query = statement["query"]
            shown = query if len(query) <= STATEMENT_WIDTH else query[: STATEMENT_WIDTH - 1] + "…"
            top.add_row(f"{statement['calls']:g}", f"{statement['exec_ms']:.3f}", f"{statement['rows']:g}", shown)
        console.print(top)
    console.print(f"py-spy's own CPU: {results['profiler_cpu_seconds']} s; flame graphs and stacks in {out}")


def _print_startup(console: Console, results: dict[str, Any]) -> None:
    settings = results["settings"]
    table = Table(title=f"synapse.start, {settings['runs']} starts each (median, min-max)")
    for column in ("profile/start", "healthy s", "fleet PSS MiB", "Synapse PSS MiB", "PSS after load", "CPU ms/msg"):
        table.add_column(column, justify="left" if column == "profile/start" else "right")
    for name, figures in results["summary"].items():
        table.add_row(
            name,
            _spread(figures["healthy_seconds"]),
            _spread(figures["total_pss_mib"]),
            _spread(figures["synapse_pss_mib"]),
            str(figures["total_pss_mib_after_load"] or "-"),
            str(figures["cpu_ms_per_message"] or "-"),
        )
    console.print(table)


def _print_comparison(console: Console, results: dict[str, Any]) -> None:
    settings = results["settings"]
    table = Table(
        title=f"{settings['users']} users, {settings['rooms']} rooms, {settings['duration_s']:.0f}s x "
        f"{settings['repeat']} (median, min-max)"
    )
    for column in ("mode", "msgs/s", "send p50 ms", "send p99 ms", "delivery p50 ms", "CPU s"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for mode, figures in results["summary"]["modes"].items():
        table.add_row(mode, *(_spread(v) for v in figures.values()))
    console.print(table)
    for name, values in results["summary"]["ratios"].items():
        console.print(f"{name}: median {values['median']} (min {values['min']}, max {values['max']})")


def _options_of(
    flag: str, *options: tuple[str, float | str, click.ParamType[Any] | None, str]
) -> Callable[[Decorated], Decorated]:
    """Options only the bench ``flag`` chooses reads, each (name, default, type, help), listed in
    this order; each help starts with ``flag``."""

    def decorate(function: Decorated) -> Decorated:
        for name, default, kind, text in reversed(options):
            function = click.option(name, default=default, show_default=True, type=kind, help=f"{flag}: {text}")(
                function
            )
        return function

    return decorate


@click.command("bench")
@DIR_OPTION
@click.option(
    "--compare",
    default=None,
    help="Modes to run, comma-separated: monolith, fleet, fleet-roundrobin "
    "[default: all three; monolith,fleet with --capacity; fleet with --profile].",
)
@click.option(
    "--capacity",
    "find_capacity",
    is_flag=True,
    help="Step an open-loop message rate up until the service level breaks, and fit the cost model.",
)
@click.option(
    "--start-up",
    "start_up",
    is_flag=True,
    help="Compare synapse.start = fork and exec: time to healthy and memory (PSS) of each profile, "
    "--repeat starts each, then CPU per message and memory after --load-minutes of load.",
)
@_options_of(
    "--start-up",
    ("--profiles", "small,seed", None, "the profiles to start, comma-separated."),
    ("--load-minutes", 10.0, click.FloatRange(0, 600), "minutes of load per profile and start (0: none)."),
)
@click.option(
    "--profile",
    "profile_out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Sample every Synapse process of one mode (--compare, default fleet) with py-spy at --rate for "
    "--step-seconds; write a flame graph per group and where its CPU per message goes into this directory.",
)
@_options_of("--start-up, --profile", ("--rate", 8.0, click.FloatRange(0.1, 100000), "offered msgs/s during the load."))
@click.option(
    "--users", default=None, type=click.IntRange(2, 1000), help="[default: 20; 40 with --capacity, --profile]"
)
@click.option(
    "--rooms", default=None, type=click.IntRange(1, 1000), help="[default: 20; 40 with --capacity, --profile]"
)
@click.option("--duration", default=60.0, show_default=True, type=click.FloatRange(1, 3600), help="Seconds of load.")
@click.option("--warmup", default=10.0, show_default=True, type=click.FloatRange(0, 600))
@_options_of(
    "--capacity",
    ("--start-rate", 10.0, click.FloatRange(0.1, 100000), "first offered msgs/s."),
    ("--factor", 1.5, click.FloatRange(1.05, 10), "rate growth per step."),
)
@_options_of("--capacity, --profile", ("--step-seconds", 20.0, click.FloatRange(1, 3600), "seconds per step."))
@_options_of(
    "--capacity",
    ("--refine", 2, click.IntRange(0, 6), "steps after the first failure, each halving the gap to the last pass."),
    ("--max-steps", 12, click.IntRange(1, 100), "steps at most."),
)
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(1, 20), help="Alternating repetitions.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="Write the results as JSON.")
@click.option("--png", type=click.Path(path_type=Path, dir_okay=False), help="Draw the results as a PNG.")
def bench_command(
    directory: Path,
    compare: str | None,
    find_capacity: bool,
    start_up: bool,
    profile_out: Path | None,
    profiles: str,
    load_minutes: float,
    rate: float,
    users: int | None,
    rooms: int | None,
    duration: float,
    warmup: float,
    start_rate: float,
    factor: float,
    step_seconds: float,
    max_steps: int,
    refine: int,
    repeat: int,
    out: Path | None,
    png: Path | None,
) -> None:
    """Measure the fleet against a monolith (and room-blind balancing) on this machine: at one
    closed-loop load, or with --capacity the highest rate each sustains; or with --start-up how
    each way of starting Synapse does; or with --profile where one mode's CPU goes."""
    console = output_console()
    benches = (("--start-up", start_up), ("--capacity", find_capacity), ("--profile", profile_out))
    chosen = [flag for flag, on in benches if on]
    if len(chosen) > 1:
        raise click.UsageError(f"{' and '.join(chosen)} are separate benches: choose one")
    if (start_up or profile_out) and png:
        raise click.UsageError(f"--png draws the comparison and --capacity, not {chosen[0]}")
    default_modes = "fleet" if profile_out else "monolith,fleet" if find_capacity else "monolith,fleet,fleet-roundrobin"
    modes = [m.strip() for m in (compare or default_modes).split(",") if m.strip()]
    if profile_out:
        if len(modes) != 1:
            raise click.UsageError("--profile runs one mode: give --compare one of monolith, fleet, fleet-roundrobin")
        sampled = ProfileSettings(
            mode=modes[0],
            rate=rate,
            step_seconds=step_seconds,
            warmup_seconds=min(warmup, step_seconds),
            users=users or 40,
            rooms=rooms or 40,
        )
        results = profile(directory, sampled, profile_out, console.print)
        _print_profile(console, results, profile_out)
    elif start_up:
        startup = _startup_settings(profiles, repeat, load_minutes, rate, users, rooms)
        results = startup_bench(directory, startup, console.print)
        _print_startup(console, results)
    elif find_capacity:
        settings = Settings(
            users=users or 40,
            rooms=rooms or 40,
            start_rate=start_rate,
            factor=factor,
            max_steps=max_steps,
            step_seconds=step_seconds,
            warmup_seconds=min(warmup, step_seconds),
            refine=refine,
        )
        results = capacity(directory, modes, settings, repeat, console.print)
        _print_capacity(console, results)
    else:
        results = bench(directory, modes, users or 20, rooms or 20, duration, warmup, repeat, console.print)
        _print_comparison(console, results)
    _write_results(console, results, out, png, plot_capacity if find_capacity else plot)


def _startup_settings(
    profiles: str, repeat: int, load_minutes: float, rate: float, users: int | None, rooms: int | None
) -> StartupSettings:
    return StartupSettings(
        profiles=tuple(p.strip() for p in profiles.split(",") if p.strip()),
        runs=repeat,
        load_seconds=load_minutes * 60,
        rate=rate,
        users=users or 40,
        rooms=rooms or 40,
    )


def _write_results(
    console: Console,
    results: dict[str, Any],
    out: Path | None,
    png: Path | None,
    draw: Callable[[dict[str, Any], Path], None],
) -> None:
    """Write the results as JSON to ``out`` and draw them with ``draw`` into ``png``, where given."""
    if out:
        out.write_text(json.dumps(results, indent=2) + "\n")
        console.print(f"wrote {out}")
    if png:
        draw(results, png)
        console.print(f"wrote {png}")
