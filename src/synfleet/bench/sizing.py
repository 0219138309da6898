"""`synfleet init --cores N`: a fleet sized for a machine, from what the capacity bench measured.

``costs.json`` beside this file holds the measurements it rests on: each role's CPU per delivered
message and idle CPU in the small fleet, and the capacity of several shapes on 2 cores. On 2 cores
or fewer the machine saturates before any one process does, and every process adds replication
work for each event, so the shape that measured best there is taken. With more cores the cost
model sizes the roles that carry the messages: each gets enough processes that none is busier than
the model's limit when the whole machine is.

Whether a machine gets an initial-sync pool comes from what the initial-sync bench measured
(``initial_sync`` in ``costs.json``, see :mod:`synfleet.bench.initial_sync`): the CPU an initial sync
of a large account costs, and the live clients' delivery p99 during a burst of them with and without
the pool. See :func:`initial_sync_pool`.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synfleet.bench.capacity import DELIVERY_P99_MS
from synfleet.bench.compare import spread
from synfleet.bench.model import BUSY_LIMIT, SIZED_ROLES, Costs, predict, process_counts, sized_roles
from synfleet.errors import UsageError
from synfleet.model.fleet import Role, build_fleet
from synfleet.model.schema.workers import Workers
from synfleet.render.files import write_file

COSTS_FILE = Path(__file__).with_name("costs.json")
SMALL_MACHINE_CORES = 2
#: How many initial syncs a burst has (clients restarting at once), as the initial-sync bench ran it.
INITIAL_SYNC_BURST = 30


@dataclass(frozen=True)
class Sizing:
    cores: int
    workers: dict[str, int]  # the fleet file's [workers]
    reasons: list[str]
    predicted_per_s: float | None


def read_json(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; a UsageError naming ``what`` it should hold if it cannot be read."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read {what}: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: {what} should be a JSON object")
    return data


def load_costs(path: Path = COSTS_FILE) -> dict[str, Any]:
    return read_json(path, "the measured costs")


#: The fleet file's [workers] key of each worker role.
WORKERS_KEY = dict(zip(Workers().counts(), Workers.model_fields, strict=True))


def _counts_key(role: Role) -> str:
    return WORKERS_KEY[role]


def initial_sync_pool(data: dict[str, Any]) -> tuple[int, str]:
    """The initial-sync workers a machine gets, and why. A burst of initial syncs holds the process
    that serves them for ``burst x CPU per initial sync``. If that fits in the delivery service level,
    the sync workers absorb bursts and no pool is needed. Otherwise one worker takes them (they are
    sticky per user: a burst is mostly one account's), if the measurement showed that the pool kept
    live delivery faster than sharing client_sync did."""
    measured = data.get("initial_sync")
    if not measured:
        return 0, "initial_sync = 0: costs.json has no initial-sync measurement"
    burst = INITIAL_SYNC_BURST * measured["initial_sync_cpu_s"]
    shared, pool = measured["delivery_p99_ms"]["shared"], measured["delivery_p99_ms"]["pool"]
    figures = (
        f"{INITIAL_SYNC_BURST} initial syncs of a {measured['rooms']}-room account cost {burst:.1f} s CPU "
        f"({measured['initial_sync_cpu_s'] * 1000:.0f} ms each, an incremental sync "
        f"{measured['incremental_sync_cpu_s'] * 1000:.1f} ms)"
    )
    if burst * 1000 <= DELIVERY_P99_MS:
        return 0, f"initial_sync = 0: {figures}, within the {DELIVERY_P99_MS / 1000:.0f} s delivery service level"
    verdict = f"live delivery p99 during such bursts measured {pool:.0f} ms with the pool, {shared:.0f} ms without"
    if pool >= shared:
        return 0, f"initial_sync = 0: {figures}, but {verdict}"
    return 1, f"initial_sync = 1: {figures}, more than the {DELIVERY_P99_MS / 1000:.0f} s service level; {verdict}"


def _with_initial_sync(sizing: Sizing, data: dict[str, Any]) -> Sizing:
    count, reason = initial_sync_pool(data)
    workers = {**sizing.workers, _counts_key(Role.INITIAL_SYNC): count}
    return Sizing(sizing.cores, workers, [*sizing.reasons, reason], sizing.predicted_per_s)


def _small_machine(cores: int, data: dict[str, Any]) -> Sizing:
    measured = data["capacity_on_2_cores"]
    best = max(data["shapes"], key=lambda name: measured[name]["median"])
    figures = ", ".join(f"{name} {measured[name]['median']:.0f}" for name in sorted(measured))
    reasons = [
        f"measured on {SMALL_MACHINE_CORES} cores (messages/s at the service level, median): {figures}",
        f"on {cores} {'core' if cores == 1 else 'cores'} the machine saturates before any single process, "
        "and every process adds replication work for each event: the best measured shape is taken",
    ]
    return Sizing(cores, dict(data["shapes"][best]["workers"]), reasons, measured[best]["median"])


#: The processes that can saturate before the machine does, whatever the cores, and why.
SINGLE_LIMITS = {
    Role.MAIN.value: "more cores do not help this load",
    Role.SENDER.value: "each sender reads every event, so more senders do not divide that part of its work",
}


def size_fleet(cores: int, data: dict[str, Any] | None = None) -> Sizing:
    """The [workers] of a fleet for ``cores``, with the reasons for each count."""
    if cores < 1:
        raise UsageError(f"--cores must be at least 1, got {cores}")
    data = data or load_costs()
    if cores <= SMALL_MACHINE_CORES:
        return _with_initial_sync(_small_machine(cores, data), data)
    costs = Costs.from_json(data["costs"])
    readers = 1 if cores >= 8 else 0
    fixed = {Role.MEDIA: 1, Role.SENDER: 1, Role.CLIENT_READER: readers, Role.FEDERATION_READER: readers}
    workers = {_counts_key(role): count for role, count in fixed.items()}
    start: dict[str, int] = {Role.MAIN.value: 1, **{r.value: n for r, n in fixed.items()}}
    start.update({role.value: 1 for role in SIZED_ROLES})
    counts, machine = sized_roles(costs, start, cores)
    reasons = [f"the cost model puts this machine's capacity at {machine:.0f} messages/s ({cores} cores)"]
    if costs.added:
        added = ", ".join(f"{group} {share:.0%}" for group, share in sorted(costs.added.items()))
        reasons.append(f"each process beyond the measured shape costs a share of a core (counted): {added}")
    reasons.append("media = 1: uploads and downloads are not in the bench's load")
    for role in SIZED_ROLES:
        count = counts[role.value]
        workers[_counts_key(role)] = count
        idle = costs.group_idle(role.value, count)
        busy = idle + costs.per_message.get(role.value, 0.0) * machine
        reasons.append(
            f"{_counts_key(role)} = {count}: {costs.per_message.get(role.value, 0.0) * 1000:.1f} ms CPU per "
            f"message at {machine:.0f} msgs/s and {idle:.2f} cores besides are {busy:.2f} cores, at most "
            f"{BUSY_LIMIT:.0%} of a core per process"
        )
    reasons.append(
        "sender = 1: the bench has no other server; each sender reads every event, so more senders only add "
        "work until federation traffic needs them"
    )
    reasons.append(
        "client_reader and federation_reader: not loaded by the bench; one each from 8 cores, "
        "for the requests the model does not see"
    )
    fleet = build_fleet("sized.invalid", {role: workers.get(key, 0) for role, key in WORKERS_KEY.items()})
    predicted = predict(costs, process_counts(fleet), cores, with_generator=False)
    if predicted.limit in SINGLE_LIMITS:
        why = SINGLE_LIMITS[predicted.limit]
        reasons.append(f"{predicted.limit} saturates first, at {predicted.capacity:.0f} msgs/s: {why}")
    return _with_initial_sync(Sizing(cores, workers, reasons, predicted.capacity), data)


def _workers_of(processes: dict[str, int]) -> dict[str, int]:
    """A run's process counts as the fleet file's [workers]."""
    return {key: processes.get(role.value, 0) for role, key in WORKERS_KEY.items()}


def costs_from_results(shapes: dict[str, list[dict[str, Any]]], costs_shape: str) -> dict[str, Any]:
    """costs.json from capacity results on 2 cores: each shape's capacity (a monolith run is the
    shape "monolith"), and the per-role costs of ``costs_shape``'s runs."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, results in shapes.items():
        for result in results:
            for run in result["runs"]:
                runs.setdefault("monolith" if run["mode"] == "monolith" else name, []).append(run)
    if costs_shape not in runs:
        raise UsageError(f"no runs of {costs_shape!r} among {', '.join(sorted(runs))}")
    return {
        "about": "measured by `synfleet bench --capacity` on 2 cores; see the README's bench section",
        "settings": next(iter(shapes.values()))[0]["settings"],
        "repetitions": {name: len(mine) for name, mine in runs.items()},
        "capacity_on_2_cores": {name: spread([r["capacity_per_s"] for r in mine]) for name, mine in runs.items()},
        "shapes": {name: {"workers": _workers_of(mine[0]["processes"])} for name, mine in runs.items()},
        "costs": {
            **Costs.median([Costs.from_json(r["costs"]) for r in runs[costs_shape]]).as_json(),
            "measured_processes": runs[costs_shape][0]["processes"],
        },
    }


#: The groups whose CPU one more process of a role can raise: its own group, and the servers every
#: process talks to. The other groups' change is the shared machine's drift (an idle client reader
#: measured as raising the sync worker's CPU per message by 5 ms).
SHARED_SERVERS = ("postgres", "redis")


def added_costs(*batches: dict[str, Any]) -> dict[str, float]:
    """Cores that one more process of each role costs, from runs of ``scripts/bench_cuts.py`` with
    the variant "base" and one variant per role named after it, each with one more process of that
    role: in each round, the CPU per message the role's group and :data:`SHARED_SERVERS` used
    beyond the base of that round, as cores at that batch's message rate; the median over every
    round of every batch (at least 0: a process costs, whatever the noise says)."""
    pairs: dict[str, list[float]] = {}
    for cuts in batches:
        runs, rate = cuts["runs"], cuts["settings"]["rate"]
        if "base" not in runs:
            raise UsageError("the added-process runs have no variant named base")
        unknown = sorted(set(runs) - {"base"} - set(WORKERS_KEY.values()))
        if unknown:
            raise UsageError(f"the added-process runs name {unknown[0]!r}, not a role")
        for role, mine in runs.items():
            if role != "base":
                groups = (role, *SHARED_SERVERS)
                pairs.setdefault(role, []).extend(
                    sum(v.get(g, 0.0) - b.get(g, 0.0) for g in groups) * rate / 1000
                    for v, b in zip(mine, runs["base"], strict=True)
                )
    return {role: round(max(0.0, statistics.median(cores)), 4) for role, cores in sorted(pairs.items())}


def main() -> None:
    """python -m synfleet.bench.sizing NAME=RESULTS.json... [--costs-from NAME]: writes costs.json."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("results", nargs="+", help="NAME=FILE: capacity results of the fleet shape NAME")
    parser.add_argument("--costs-from", default="small", help="the shape whose per-role costs size fleets")
    parser.add_argument(
        "--added",
        type=Path,
        action="append",
        default=[],
        help="scripts/bench_cuts.py's results: one more process of each role (again for more batches)",
    )
    parser.add_argument("--out", type=Path, default=COSTS_FILE)
    args = parser.parse_args()
    try:
        data = _costs_file(args.results, args.costs_from, args.added)
        if args.out.exists() and "initial_sync" in (kept := load_costs(args.out)):
            data["initial_sync"] = kept["initial_sync"]  # measured by the initial-sync test, not by these runs
        write_file(args.out, json.dumps(data, indent=2) + "\n")
    except (OSError, UsageError) as error:  # OSError: writing --out
        parser.error(str(error))
    print(f"wrote {args.out}")


def _costs_file(results: list[str], costs_from: str, added: list[Path]) -> dict[str, Any]:
    """costs.json's content from the NAME=FILE capacity results and the added-process runs."""
    shapes: dict[str, list[dict[str, Any]]] = {}
    for item in results:
        name, _, file = item.partition("=")
        if not name or not file:
            raise UsageError(f"{item!r}: give the capacity results as NAME=FILE")
        shapes.setdefault(name, []).append(read_json(Path(file), "capacity results"))
    try:
        data = costs_from_results(shapes, costs_from)
        if added:
            batches = [read_json(path, "added-process runs") for path in added]
            data["costs"]["added_process_cores"] = added_costs(*batches)
    except (KeyError, TypeError, ValueError) as error:
        raise UsageError(f"the results are not those of bench --capacity and bench_cuts.py: {error!r}") from None
    return data


if __name__ == "__main__":
    main()
