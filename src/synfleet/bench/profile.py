"""`synfleet bench --profile`: where a fleet's CPU goes, per process group and per kind of work.

One mode's fleet starts on a fresh database, gets the users and rooms of ``bench --capacity``, and
carries its open-loop load at one offered rate: a warm-up, then one step during which py-spy
samples every Synapse process (``--nonblocking``: the processes are never paused). nginx,
PostgreSQL and Redis are not Python: their CPU comes from ``/proc`` only, and PostgreSQL's work
from ``pg_stat_database`` (transactions and rows per message) and, for the fleet's own server,
``pg_stat_statements``: the profiled fleet's PostgreSQL loads it (``[database] settings``), and its
superuser creates the extension in Synapse's database, so each statement's calls, execution time
and rows per message are counted over the step.

For each group (``rooms1`` and ``rooms2`` are ``rooms``) the samples of its processes are merged
into one flame graph. Each sample is put in a :data:`CATEGORIES` category by its innermost frame
that matches one (frames of no category, such as JSON encoding or Deferred plumbing, count for the
work that called them); a sample with no such frame is ``other``. py-spy leaves out threads that
wait, so the samples share out the CPU the group used, which ``/proc`` gives: the CPU per
acknowledged message of each category is the group's times the category's share of its samples.
Samples of threads just woken, still in the frame they waited in (:data:`WAITS`), are counted
apart and not shared out.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import re
import resource
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synfleet.bench.capacity import cpu_by_group, users_and_rooms
from synfleet.bench.compare import MODES, Report, mode_spec, start_fresh
from synfleet.bench.flamegraph import Stack, flame_graph_svg, format_collapsed, merge, parse_collapsed
from synfleet.bench.measure import (
    STATEMENTS_EXTENSION,
    Statement,
    postgres_activity,
    postgres_statements,
    statements_between,
)
from synfleet.bench.openload import Member, OpenLoad, Room, StepFigures
from synfleet.errors import SynfleetError, UsageError
from synfleet.layout import SECRETS_DIR
from synfleet.model.load import load_spec
from synfleet.model.schema import FleetSpec
from synfleet.render.files import write_file
from synfleet.render.secrets import Secret
from synfleet.run.fleet import down
from synfleet.run.paths import RunPaths
from synfleet.run.postgres import create_extension
from synfleet.run.supervisor import Supervisor
from synfleet.system import find_binary, free_port, free_ports, process_tree_cpu

PY_SPY = "py-spy"
PY_SPY_MISSING = f"{PY_SPY} is not installed: install it with `pip install py-spy` (or 'synfleet[bench]')"
#: Samples per second and process. py-spy's default (100) on the small profile's seven processes
#: took 1.2 of this machine's 2 cores, starving the fleet, and fell behind its own rate.
SAMPLE_RATE = 25
#: How long py-spy may take past the step to attach, finish and write its file.
PY_SPY_GRACE_SECONDS = 30.0
#: The table's file in the output directory.
TABLE_FILE = "profile.json"
OTHER = "other"


@dataclass(frozen=True)
class Category:
    """A kind of work, known by the frames that do it: a frame belongs to the category if its
    module is one of ``modules`` or inside one, or its function's name contains one of
    ``functions``. A frame that called (further in, on the same stack) a frame of a module in
    ``unless_calling`` does not decide the sample: it only dispatched that work."""

    name: str
    modules: tuple[str, ...]
    functions: tuple[str, ...]
    colour: str  # in the flame graphs
    what: str
    unless_calling: tuple[str, ...] = ()


#: The categories, in the order a frame that matches several takes the first: a function that
#: invalidates caches inside synapse.storage is cache work.
CATEGORIES = (
    Category(
        "caches",
        ("synapse.util.caches",),
        ("invalidate",),
        "rgb(80,180,130)",
        "Synapse's caches: lookups, fills and invalidations (synapse.util.caches), and any function "
        "whose name says it invalidates",
    ),
    Category(
        "logging",
        ("logging", "synapse.logging"),
        (),
        "rgb(215,95,95)",
        "the standard library's logging and synapse.logging: log records, log contexts (each switch "
        "reads the thread's CPU usage), tracing",
    ),
    Category(
        "database",
        ("synapse.storage", "psycopg2", "twisted.enterprise.adbapi"),
        (),
        "rgb(80,145,215)",
        "Synapse's stores and their transactions, the PostgreSQL driver and Twisted's pool of "
        "database threads: building queries, reading rows into Python",
    ),
    Category(
        "replication",
        ("synapse.replication", "txredisapi"),
        (),
        "rgb(155,110,210)",
        "replication: the streams the process receives over Redis (and what it does with their rows "
        "there) and the replication HTTP requests it serves or makes",
    ),
    Category(
        "request",
        (
            "synapse.rest",
            "synapse.handlers",
            "synapse.http.server",
            "synapse.http.site",
            "twisted.web.http",
            "twisted.web.server",
        ),
        (),
        "rgb(235,165,60)",
        "the requests it serves: HTTP parsing, the servlet and its handler (what they compute "
        "themselves, JSON and event serialisation included)",
    ),
    Category(
        "reactor",
        (
            "twisted.internet.base",
            "twisted.internet.posixbase",
            "twisted.internet.epollreactor",
            "twisted.internet.pollreactor",
            "twisted.internet.selectreactor",
            "twisted.internet.asyncioreactor",
            "twisted.internet.abstract",
            "twisted.internet.tcp",
            "twisted.internet.unix",
            "twisted.internet.task",
            "twisted.internet.threads",
            "twisted.python.threadpool",
            "twisted._threads",
            # Synapse's wrapper that times the reactor's poll: a sample there is the loop waking up.
            "synapse.metrics._reactor_metrics",
        ),
        (),
        "rgb(160,160,160)",
        "the event loop and the thread pool themselves: polling, timers, reading and writing "
        "sockets, handing work to threads, and waking up (a thread that waits is not sampled, one "
        "that woke and waits for a core or the GIL is); not the Synapse code they run",
        # Every sample of the main thread has the reactor's loop under it: what it runs of Synapse
        # is that code's work (``other`` when no category has it), not the reactor's.
        unless_calling=("synapse",),
    ),
)
CATEGORY_NAMES = (*(c.name for c in CATEGORIES), OTHER)
#: Frames of no category, in the flame graphs.
UNCATEGORISED_COLOUR = "rgb(230,212,165)"
WAITING = "waiting"


@dataclass(frozen=True)
class Wait:
    """A call in which a thread waits: ``function`` (or a method of that name) of ``module``."""

    module: str
    function: str


#: py-spy leaves out threads that wait, but it also catches threads just woken (runnable, waiting
#: for a core or the GIL) still in the frame they waited in. A sample whose innermost frame is one
#: of these is waiting, not CPU: counted apart, never shared out.
WAITS = (
    Wait("synapse.metrics._reactor_metrics", "__call__"),  # Synapse's wrapper of the reactor's poll
    Wait("threading", "wait"),  # a thread-pool worker waiting for work (Condition.wait)
    Wait("selectors", "select"),  # the metrics listener's thread
)

#: A frame as py-spy writes it: ``function (path/of/module.py)``, maybe with ``:line``.
_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>[^()]*?)(?::\d+)?\)$")


@dataclass(frozen=True)
class ProfileSettings:
    mode: str = "fleet"
    rate: float = 8.0  # msgs/s: below every profile's capacity on 2 cores
    step_seconds: float = 20.0
    warmup_seconds: float = 5.0
    drain_seconds: float = 10.0
    users: int = 40
    rooms: int = 40


def frame_module(path: str) -> str:
    """The dotted module of a frame's file as py-spy shortens it: ``synapse/storage/__init__.py``
    is ``synapse.storage``."""
    module = path.removesuffix(".py").removesuffix("/__init__")
    return module.strip("/").replace("/", ".")


@functools.lru_cache(maxsize=65536)
def frame_parts(frame: str) -> tuple[str, str]:
    """A frame's function and dotted module ("" when the frame names no file)."""
    found = _FRAME.match(frame)
    return (found["function"], frame_module(found["path"])) if found else (frame, "")


def in_modules(module: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``module`` is one of ``prefixes`` or inside one (``logging`` holds
    ``logging.handlers``, not ``loggingtools``)."""
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


@functools.lru_cache(maxsize=65536)
def frame_category(frame: str) -> Category | None:
    """The first category the frame matches, None if it matches none."""
    function, module = frame_parts(frame)
    for category in CATEGORIES:
        if in_modules(module, category.modules) or any(f in function for f in category.functions):
            return category
    return None


def classify(stack: Stack) -> str:
    """The category of a sample: that of its innermost frame that has one (and called nothing
    its category's ``unless_calling`` names), else ``other``."""
    called: list[str] = []  # the modules of the frames inside the current one
    for frame in reversed(stack):
        category = frame_category(frame)
        if category is not None and not any(in_modules(m, category.unless_calling) for m in called):
            return category.name
        called.append(frame_parts(frame)[1])
    return OTHER


def waiting(stack: Stack) -> bool:
    """Whether the sample's innermost frame is one of :data:`WAITS`."""
    if not stack:
        return False
    function, module = frame_parts(stack[-1])
    return any(
        module == wait.module and (function == wait.function or function.endswith("." + wait.function))
        for wait in WAITS
    )


def category_samples(stacks: Counter[Stack]) -> Counter[str]:
    """The samples of each category, every category present (0 where none), and under
    :data:`WAITING` those caught waiting."""
    counts: Counter[str] = Counter(dict.fromkeys((*CATEGORY_NAMES, WAITING), 0))
    for stack, samples in stacks.items():
        counts[WAITING if waiting(stack) else classify(stack)] += samples
    return counts


def frame_colour(frame: str) -> str:
    category = frame_category(frame)
    return category.colour if category else UNCATEGORISED_COLOUR


def breakdown(cpu_ms: float, stacks: Counter[Stack]) -> dict[str, dict[str, float]]:
    """``cpu_ms`` shared out over the categories by their share of the samples that were not
    waiting (empty without such samples)."""
    counts = category_samples(stacks)
    del counts[WAITING]
    total = sum(counts.values())
    if not total:
        return {}
    return {
        name: {"share": round(count / total, 4), "cpu_ms_per_message": round(cpu_ms * count / total, 2)}
        for name, count in counts.items()
    }


# -- running it ----------------------------------------------------------------------------------


class Sampler:
    """py-spy on each of the given processes, into files in ``directory``."""

    def __init__(self, program: str, pids: dict[str, int], directory: Path) -> None:
        self.program = program
        self.pids = pids
        self.directory = directory
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def output(self, name: str) -> Path:
        return self.directory / f"{name}.collapsed"

    def start(self, seconds: float) -> None:
        for name, pid in self.pids.items():
            command = [self.program, "record", "--pid", str(pid), "--format", "raw", "--rate", str(SAMPLE_RATE)]
            command += ["--duration", str(math.ceil(seconds)), "--nonblocking", "--nolineno"]
            command += ["--output", str(self.output(name))]
            with (self.directory / f"{name}.log").open("wb") as log:
                self.running[name] = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def finish(self, timeout: float) -> dict[str, Counter[Stack]]:
        """Wait for every py-spy; the stacks of each process. A py-spy that failed is an error
        that names the process and says what py-spy said."""
        stacks = {}
        for name, process in self.running.items():
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise SynfleetError(f"{PY_SPY} on {name} did not finish within {timeout:.0f} s") from None
            if code != 0 or not self.output(name).exists():
                said = (self.directory / f"{name}.log").read_text(errors="replace").splitlines()
                # py-spy's error is its line "Error: ...", followed by a backtrace.
                reason = next((line for line in said if line.startswith("Error:")), f"exit status {code}")
                raise SynfleetError(f"{PY_SPY} could not sample {name} (pid {self.pids[name]}): {reason}")
            stacks[name] = parse_collapsed(self.output(name).read_text(errors="replace"))
        self.running.clear()
        return stacks

    def stop(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        self.running.clear()


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def profile(directory: Path, settings: ProfileSettings, out: Path, report: Report) -> dict[str, Any]:
    """Profile ``settings.mode`` of the fleet in ``directory`` (run in ``directory/bench/<mode>``)
    under its load, write the flame graphs, collapsed stacks and table into ``out``, and return the
    table."""
    if settings.mode not in MODES:
        raise UsageError(f"--compare: unknown mode {settings.mode!r}; allowed: {', '.join(MODES)}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--profile: {out} exists and is not a directory")
    program = find_binary(PY_SPY)
    if program is None:
        raise SynfleetError(PY_SPY_MISSING)
    base = load_spec(directory)
    spec = with_statements(mode_spec(base, settings.mode, free_port(), free_ports(len(base.fleet.workers) + 1)))
    paths = RunPaths(directory / "bench" / settings.mode)
    report(f"{settings.mode}: starting on a fresh database")
    start_fresh(paths.directory, paths, spec)
    try:
        if spec.database.local:
            create_extension(str(paths.sockets), paths.postgres_data, spec.database, STATEMENTS_EXTENSION)
        base_url, users, rooms = users_and_rooms(paths, spec, settings.users, settings.rooms, 1)
        pids = {name: info.pid for name, info in Supervisor(paths).info().items() if info.pid}
        report(
            f"  {settings.rate:g} msgs/s: {settings.warmup_seconds:g} s warm-up, {settings.step_seconds:g} s sampled"
        )
        with tempfile.TemporaryDirectory(prefix="synfleet-profile-") as temp:
            sampler = Sampler(program, _synapse_pids(spec, pids), Path(temp))
            try:
                step, cpu, database, statements, profiler_cpu, stacks = asyncio.run(
                    _sampled_step(base_url, users, rooms, spec, paths, pids, sampler, settings)
                )
            finally:
                sampler.stop()
    finally:
        down(paths, lambda _: None)
    results = table(spec, settings, step, cpu, database, stacks, statements)
    results["profiler_cpu_seconds"] = round(profiler_cpu, 2)
    _write(out, spec, results, stacks)
    return results


def with_statements(spec: FleetSpec) -> FleetSpec:
    """The fleet with ``pg_stat_statements`` among the libraries its own PostgreSQL loads."""
    if not spec.database.local:
        return spec
    data = spec.model_dump(mode="json")
    settings = data["database"]["settings"]
    loaded = [name.strip() for name in str(settings.get("shared_preload_libraries", "")).split(",") if name.strip()]
    settings["shared_preload_libraries"] = ",".join(dict.fromkeys([*loaded, STATEMENTS_EXTENSION]))
    return FleetSpec.model_validate(data)


def _synapse_pids(spec: FleetSpec, pids: dict[str, int]) -> dict[str, int]:
    """The Synapse processes among the fleet's (nginx, PostgreSQL and Redis are not Python)."""
    synapse = {worker.name for worker in spec.fleet.workers}
    return {name: pid for name, pid in pids.items() if name in synapse}


async def _sampled_step(
    base_url: str,
    users: list[Member],
    rooms: list[Room],
    spec: FleetSpec,
    paths: RunPaths,
    pids: dict[str, int],
    sampler: Sampler,
    settings: ProfileSettings,
) -> tuple[StepFigures, dict[str, float], dict[str, int], list[Statement] | None, float, dict[str, Counter[Stack]]]:
    """The warm-up, then the step with py-spy on every Synapse process: the step's figures, CPU
    seconds per group, PostgreSQL's counters and statements over it (None without the fleet's own
    PostgreSQL), py-spy's own CPU, and each process's stacks."""
    database = spec.database
    password = (paths.directory / SECRETS_DIR / Secret.POSTGRES_PASSWORD).read_text().strip()
    marks: list[tuple[dict[str, float], dict[str, int], dict[int, Statement]]] = []
    at = (str(paths.sockets), database.user, password, database.name)

    async def mark() -> None:
        if not marks:
            sampler.start(settings.step_seconds)
        cpu = await asyncio.to_thread(process_tree_cpu, pids)
        activity = await asyncio.to_thread(postgres_activity, *at)
        statements = await asyncio.to_thread(postgres_statements, *at) if database.local else {}
        marks.append((cpu, activity, statements))

    async with OpenLoad(base_url, users, rooms, 1) as load:
        if settings.warmup_seconds:
            await load.step(settings.rate, settings.warmup_seconds, settings.drain_seconds)
        children_before = _children_cpu()
        step = await load.step(settings.rate, settings.step_seconds, settings.drain_seconds, mark)
        stacks = await asyncio.to_thread(sampler.finish, PY_SPY_GRACE_SECONDS)
        profiler_cpu = _children_cpu() - children_before
    (cpu_before, pg_before, statements_before), (cpu_after, pg_after, statements_after) = marks
    cpu = cpu_by_group(spec, {k: v - cpu_before.get(k, 0.0) for k, v in cpu_after.items()})
    cpu["generator"] = step.generator_cpu_s
    activity = {k: v - pg_before.get(k, 0) for k, v in pg_after.items()}
    statements = statements_between(statements_before, statements_after) if database.local else None
    return step, cpu, activity, statements, profiler_cpu, stacks


def group_stacks(spec: FleetSpec, stacks: dict[str, Counter[Stack]]) -> dict[str, Counter[Stack]]:
    """Each group's stacks: those of its processes merged."""
    members: dict[str, list[Counter[Stack]]] = {}
    for name, mine in stacks.items():
        members.setdefault(spec.fleet.group(name), []).append(mine)
    return {group: merge(profiles) for group, profiles in members.items()}


def table(
    spec: FleetSpec,
    settings: ProfileSettings,
    step: StepFigures,
    cpu: dict[str, float],
    database: dict[str, int],
    stacks: dict[str, Counter[Stack]],
    statements: list[Statement] | None = None,
) -> dict[str, Any]:
    """CPU per acknowledged message per group, split by category where the group was sampled, and
    PostgreSQL's transactions, rows and (where counted) statements per acknowledged message, with
    the :data:`TOP_STATEMENTS` that took the most execution time."""
    messages = max(step.acknowledged, 1)
    by_group = group_stacks(spec, stacks)
    processes: dict[str, list[str]] = {}
    for worker in spec.fleet.workers:  # in the fleet's order: rooms1, rooms2, ...
        if worker.name in stacks:
            processes.setdefault(spec.fleet.group(worker.name), []).append(worker.name)
    groups = {}
    for group, seconds in sorted(cpu.items(), key=lambda item: -item[1]):
        cpu_ms = 1000 * seconds / messages
        mine = by_group.get(group)
        counts = category_samples(mine) if mine is not None else None
        groups[group] = {
            "cpu_ms_per_message": round(cpu_ms, 2),
            "processes": processes.get(group, []),
            "samples": sum(counts.values()) - counts[WAITING] if counts is not None else None,
            "waiting_samples": counts[WAITING] if counts is not None else None,
            "categories": breakdown(cpu_ms, mine) if mine is not None else {},
        }
    transactions = database.get("xact_commit", 0) + database.get("xact_rollback", 0)
    return {
        "settings": {**settings.__dict__, "sample_rate": SAMPLE_RATE},
        "step": step.as_json(),
        "groups": groups,
        "postgres_per_message": {
            "transactions": round(transactions / messages, 2),
            **{name: round(count / messages, 2) for name, count in database.items()},
            **statement_figures(statements, messages),
        },
        "categories": {
            c.name: {"modules": list(c.modules), "functions": list(c.functions), "what": c.what} for c in CATEGORIES
        },
    }


#: How many of the statements that took the most execution time the table names.
TOP_STATEMENTS = 10


def statement_figures(statements: list[Statement] | None, messages: int) -> dict[str, Any]:
    """Statements per message, their execution time per message, and the costliest (None: not counted)."""
    if statements is None:
        return {"statements": None, "statement_exec_ms": None, "top_statements": []}
    return {
        "statements": round(sum(s.calls for s in statements) / messages, 2),
        "statement_exec_ms": round(sum(s.exec_ms for s in statements) / messages, 3),
        "top_statements": [
            {
                "query": " ".join(s.query.split())[:300],
                "calls": round(s.calls / messages, 2),
                "exec_ms": round(s.exec_ms / messages, 3),
                "rows": round(s.rows / messages, 2),
            }
            for s in statements[:TOP_STATEMENTS]
        ],
    }


def _write(out: Path, spec: FleetSpec, results: dict[str, Any], stacks: dict[str, Counter[Stack]]) -> None:
    """Per sampled group ``<group>.svg`` and ``<group>.collapsed``, and the table as :data:`TABLE_FILE`;
    each file whole (written aside, then renamed)."""
    out.mkdir(parents=True, exist_ok=True)
    legend = [(c.name, c.colour) for c in CATEGORIES] + [("no category", UNCATEGORISED_COLOUR)]
    for group, merged in group_stacks(spec, stacks).items():
        figures = results["groups"][group]
        title = (
            f"{group} ({', '.join(figures['processes'])}): {figures['cpu_ms_per_message']} ms CPU per message "
            f"at {results['settings']['rate']:g} msgs/s"
        )
        write_file(out / f"{group}.collapsed", format_collapsed(merged))
        write_file(out / f"{group}.svg", flame_graph_svg(merged, title, frame_colour, legend))
    write_file(out / TABLE_FILE, json.dumps(results, indent=2) + "\n")
