"""``synfleet route`` and ``synfleet ring``: where requests go, and how rooms spread over workers."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import BinaryIO

import click
from rich.console import Console
from rich.table import Table

from synfleet.cli.options import DIR_OPTION, target_option
from synfleet.cli.output import output_console
from synfleet.errors import BadRequest, UsageError
from synfleet.model.fleet import Role
from synfleet.model.load import load_spec
from synfleet.nginx.ketama import moved, spread
from synfleet.nginx.upstream import Upstream
from synfleet.render.kubernetes import routing_plan
from synfleet.routing.corpus import room_keys
from synfleet.routing.evaluate import Decision, evaluate
from synfleet.routing.plan import GROWABLE, RoutingPlan, upstream_name
from synfleet.run.paths import RunPaths, deployed_plan

TARGET_OPTION = target_option(
    {
        "deployed": "the native run if `synfleet up` ran in DIR, else compose",
        "kubernetes": "the manifests of `render --target kubernetes` (workers at their Services).",
    }
)


def _plan(directory: Path, target: str) -> RoutingPlan:
    """The plan whose upstream texts nginx hashes on ``target``."""
    spec = load_spec(directory)
    if target == "kubernetes":
        return routing_plan(spec.fleet)
    return deployed_plan(RunPaths(directory), spec)


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or " " in name.strip():
        raise BadRequest(f"invalid header {text!r}: use 'Name: value'")
    return name.strip(), value.strip()


def _table(decision: Decision) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("request", f"{decision.method} {decision.url}"),
        ("uri", decision.uri),
        ("access", decision.access.value),
    ]
    if decision.status is not None:
        rows.append(("answer", f"nginx answers {decision.status} itself"))
    else:
        rows += [
            ("rule", decision.rule or ""),
            ("target", decision.target or ""),
            ("upstream", decision.upstream or ""),
            ("worker", decision.worker or "any (round robin: no balancing key)"),
            ("key", decision.key or "-"),
        ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def _batch(plan: RoutingPlan, source: BinaryIO, headers: dict[str, str], remote_addr: str) -> int:
    """One JSON object per input line, in order; bad lines give an ``error`` object."""
    status = 0
    for number, raw in enumerate(source, 1):
        line = raw.decode("utf-8", errors="replace")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        try:
            if line.encode() != raw:
                raise BadRequest(f"not UTF-8 text: {raw.strip()!r}")
            if len(parts) != 2:
                raise BadRequest(f"expected 'METHOD URL', got {line.strip()!r}")
            result: dict[str, object] = evaluate(plan, parts[0].upper(), parts[1], headers, remote_addr).as_json()
        except BadRequest as exc:
            click.echo(f"synfleet: error: line {number}: {exc}", err=True)
            result = {"line": number, "error": str(exc)}
            status = 2
        click.echo(json.dumps(result, sort_keys=True))
    return status


@click.command("route")
@DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--batch", type=click.File("rb"), help="Read 'METHOD URL' lines from FILE ('-': stdin).")
@click.option("-H", "--header", "header_lines", multiple=True, metavar="'NAME: VALUE'", help="Request header.")
@click.option("--from", "remote_addr", default="127.0.0.1", show_default=True, help="Client address.")
@TARGET_OPTION
@click.argument("method", required=False)
@click.argument("url", required=False)
def route_command(
    directory: Path,
    as_json: bool,
    batch: BinaryIO | None,
    header_lines: tuple[str, ...],
    remote_addr: str,
    target: str,
    method: str | None,
    url: str | None,
) -> None:
    """Show the rule, upstream and worker nginx picks for a request.

    \b
    synfleet route GET '/_matrix/client/v3/rooms/!abc:example.org/messages'
    synfleet route PUT /_matrix/client/v3/sendToDevice/m.test/1 -H 'Authorization: Bearer syt_...'
    synfleet route --json --batch requests.txt
    """
    headers = dict(parse_header(h) for h in header_lines)
    plan = _plan(directory, target)
    if batch is not None:
        if method or url:
            raise UsageError("give either --batch FILE or METHOD URL, not both")
        if not as_json:
            raise UsageError("--batch prints JSON lines: add --json")
        sys.exit(_batch(plan, batch, headers, remote_addr))
    if not method or not url:
        raise UsageError("missing METHOD and URL (or --batch FILE)")
    decision = evaluate(plan, method.upper(), url, headers, remote_addr)
    if as_json:
        click.echo(json.dumps(decision.as_json(), sort_keys=True))
    else:
        output_console().print(_table(decision))


@click.command("ring")
@DIR_OPTION
@click.option(
    "--group",
    default="rooms",
    show_default=True,
    type=click.Choice(sorted(r.value for r in GROWABLE)),
)
@click.option(
    "--keys",
    "key_count",
    default=100_000,
    show_default=True,
    type=click.IntRange(1, 10_000_000),
    help="Random room IDs to place.",
)
@click.option(
    "--grow",
    default=1,
    show_default=True,
    type=click.IntRange(0, 100),
    help="Also show what moves when the group gets this many more workers.",
)
@TARGET_OPTION
def ring_command(directory: Path, group: str, key_count: int, grow: int, target: str) -> None:
    """Show how nginx's consistent hash spreads keys over a group, and how many move when it grows."""
    role = Role(group)
    plan = _plan(directory, target)
    before = plan.upstreams.get(upstream_name(role))
    if before is None:
        raise UsageError(f"the fleet has no {group} workers")
    keys = room_keys(key_count)
    console = output_console()
    _print_spread(console, before, keys, f"{len(before.workers)} {group} workers")
    if grow:
        # On Kubernetes a new worker is reached at its pod's Service, like the others.
        grown = routing_plan(plan.fleet.grown(role, grow)) if target == "kubernetes" else plan.grown(role, grow)
        after = grown.upstreams[upstream_name(role)]
        _print_spread(console, after, keys, f"{len(after.workers)} {group} workers")
        changed, total = moved(before.ring, after.ring, keys)
        ideal = grow / len(after.workers)
        console.print(
            f"growing {len(before.workers)} -> {len(after.workers)} moves {changed} of {total} keys "
            f"({changed / total:.1%}; the minimum possible is {ideal:.1%})"
        )


def _print_spread(console: Console, upstream: Upstream, keys: list[str], title: str) -> None:
    counts = spread(upstream.ring, keys)
    mean = len(keys) / len(upstream.servers)
    table = Table(title=title, title_justify="left")
    for column in ("worker", "keys", "share", "vs mean"):
        table.add_column(column, justify="left" if column == "worker" else "right")
    for worker, server in zip(upstream.workers, upstream.servers, strict=True):
        n = counts[server]
        table.add_row(worker, str(n), f"{n / len(keys):.1%}", f"{n / mean - 1:+.1%}")
    console.print(table)
