"""How a fleet grows: a cost model fitted to the capacity bench's steps.

For each process group (main, each worker role, PostgreSQL, Redis, nginx, and the load generator),
the CPU it used in a step is fitted as ``idle + per_message * rate`` over the steps that kept the
service level (rate: messages delivered to every member per second). A fleet on ``cores`` then
carries at most

- what the machine can give: ``(cores - sum of idle) / sum of per_message``, and
- what each single-threaded group can give: a Synapse process (or Redis) uses one core at most, so
  a group of ``n`` processes carries ``(n - idle) / per_message``, if its load divides evenly; a
  federation sender reads every event whatever the count, so senders carry ``1 / (per_message / n)``;

the smallest of these is the prediction, and its name is the first thing to saturate. On this
machine the generator shares the cores and is counted; on bigger ones it is assumed elsewhere.
Queueing makes the service level break before 100% busy: the ratio measured/predicted on the
machine that ran the bench is printed, and applied to the other predictions as "calibrated".

Every Synapse process also handles every replicated event and runs its own timers, whatever
share of the load it serves: one more process of a role costs the fleet CPU (its own, and what
Redis and PostgreSQL do for it). Where that was measured (``added``: cores per process, at the
bench's rate, against the process counts the costs were measured with), a shape with more or fewer
processes of a role than that pays the difference, in its group's idle cores and the machine's.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from synfleet.model.fleet import Fleet, Role, Service

GENERATOR = "generator"
#: Groups whose processes cannot use more than one core each, besides Synapse's.
SINGLE_THREADED_SERVICES = (Service.REDIS.value,)
#: Worker roles the bench's load exercises, whose counts are sized (here and by `init --cores`).
SIZED_ROLES = (Role.CLIENT_SYNC, Role.ROOMS, Role.TASKS)
#: Roles each of whose processes handles every event (a federation sender reads the whole events
#: stream to find its destinations): more of them divide nothing the bench measures.
EVERY_EVENT_ROLES = (Role.SENDER.value,)
#: A process kept below this share of its core keeps its latency (for sizing).
BUSY_LIMIT = 0.7
CORES = (2, 4, 8, 16, 32)


@dataclass(frozen=True)
class Costs:
    """CPU-seconds per delivered message and idle cores, by process group."""

    per_message: dict[str, float]
    idle: dict[str, float]
    #: Cores the fleet spends for each process of a group beyond ``counts``.
    added: dict[str, float] = field(default_factory=dict)
    #: The processes per group the costs were measured with.
    counts: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "per_message_cpu_ms": {k: round(v * 1000, 3) for k, v in sorted(self.per_message.items())},
            "idle_cores": {k: round(v, 4) for k, v in sorted(self.idle.items())},
        }
        if self.added:
            data["added_process_cores"] = {k: round(v, 4) for k, v in sorted(self.added.items())}
            data["measured_processes"] = dict(sorted(self.counts.items()))
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Costs:
        return cls(
            {k: v / 1000 for k, v in data["per_message_cpu_ms"].items()},
            dict(data["idle_cores"]),
            dict(data.get("added_process_cores", {})),
            dict(data.get("measured_processes", {})),
        )

    def group_idle(self, group: str, count: int | None = None) -> float:
        """Cores ``group`` uses with no messages, with ``count`` processes (None: as measured)."""
        idle = self.idle.get(group, 0.0)
        if count is not None and group in self.added:
            idle += (count - self.counts.get(group, 0)) * self.added[group]
        return max(0.0, idle)

    @classmethod
    def median(cls, runs: list[Costs]) -> Costs:
        groups = sorted({g for c in runs for g in c.per_message})
        return cls(
            {g: statistics.median(c.per_message.get(g, 0.0) for c in runs) for g in groups},
            {g: statistics.median(c.idle.get(g, 0.0) for c in runs) for g in groups},
        )


def _fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(idle, slope) of a least-squares line through (rate, cores), both kept non-negative."""
    xs = [x for x, _ in points]
    if len(set(xs)) < 2:
        total_x = sum(xs)
        return 0.0, (sum(y for _, y in points) / total_x if total_x else 0.0)
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(y for _, y in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x in xs)
    idle = mean_y - slope * mean_x
    if idle < 0 or slope < 0:
        return 0.0, sum(y for _, y in points) / sum(xs)
    return idle, slope


def fit_costs(steps: list[dict[str, Any]]) -> Costs:
    """Costs from the steps that kept the service level (all steps if none did)."""
    usable = [s for s in steps if s["passed"] and s["delivered"]] or [s for s in steps if s["delivered"]]
    groups = sorted({g for s in usable for g in s["cpu_seconds"]})
    per_message, idle = {}, {}
    for group in groups:
        points = [
            (s["delivered"] / s["duration_s"], s["cpu_seconds"].get(group, 0.0) / s["duration_s"]) for s in usable
        ]
        idle[group], per_message[group] = _fit(points)
    return Costs(per_message, idle)


def process_counts(fleet: Fleet) -> dict[str, int]:
    """Processes per group, for the groups that are limited to a core each."""
    counts = Counter(fleet.group(w.name) for w in fleet.workers)
    counts.update({service: 1 for service in SINGLE_THREADED_SERVICES})
    return dict(counts)


@dataclass(frozen=True)
class Prediction:
    capacity: float  # delivered messages/s
    limit: str  # "machine", or the group that saturates first

    def as_json(self) -> dict[str, Any]:
        return {"capacity_per_s": round(self.capacity, 1), "first_saturated": self.limit}


def bounds(costs: Costs, counts: dict[str, int], cores: float, with_generator: bool) -> dict[str, float]:
    """The messages/s the machine ("machine") and each single-threaded group of ``counts`` carry."""
    groups = {g for g in costs.per_message if with_generator or g != GENERATOR} | (counts.keys() & costs.added.keys())
    total = sum(costs.per_message.get(g, 0.0) for g in groups)
    idle = sum(costs.group_idle(g, counts.get(g)) for g in groups)
    found = {"machine": (cores - idle) / total if total else math.inf}
    for group, count in counts.items():
        cost = costs.per_message.get(group, 0.0)
        if cost > 0:
            processes = min(count, cores)
            if group in EVERY_EVENT_ROLES:  # each process does the group's work once per its share
                found[group] = (1 - costs.group_idle(group, count) / count) / (cost / count)
            else:
                found[group] = (processes - costs.group_idle(group, count)) / cost
    return found


def predict(costs: Costs, counts: dict[str, int], cores: float, with_generator: bool) -> Prediction:
    found = bounds(costs, counts, cores, with_generator)
    limit = min(found, key=lambda k: found[k])
    return Prediction(max(0.0, found[limit]), limit)


#: No role is grown past this many processes.
MOST_PROCESSES = 64


def role_need(costs: Costs, role: Role, rate: float) -> tuple[float, int]:
    """The cores a role uses at ``rate`` messages/s, and the processes that keeps each below
    BUSY_LIMIT of its core (at least one). Each process beyond the measured count adds cores of its
    own, so where no count does that, growing stops once one more process takes less than 1% off
    each process's load."""

    def busy(count: int) -> float:
        return costs.group_idle(role.value, count) + costs.per_message.get(role.value, 0.0) * rate

    for count in range(1, MOST_PROCESSES):
        share = busy(count) / count
        if share <= BUSY_LIMIT or busy(count + 1) / (count + 1) > 0.99 * share:
            return busy(count), count
    return busy(MOST_PROCESSES), MOST_PROCESSES


def sized_roles(costs: Costs, counts: dict[str, int], cores: float) -> tuple[dict[str, int], float]:
    """The counts with each sized role grown (or shrunk, to at least one) until none of its
    processes is busier than BUSY_LIMIT at the machine's own limit, and that limit (messages/s).
    The processes added cost the machine too, so this repeats until the counts settle."""
    sized = dict(counts)
    for _ in range(MOST_PROCESSES):
        rate = bounds(costs, sized, cores, with_generator=False)["machine"]
        grown: dict[str, int] = {
            role.value: role_need(costs, role, rate)[1]
            for role in SIZED_ROLES
            if role.value in sized and role.value in costs.per_message
        }
        if all(sized[role] == count for role, count in grown.items()):
            break
        sized.update(grown)
    return sized, rate


def sized_counts(costs: Costs, counts: dict[str, int], cores: float) -> dict[str, int]:
    """The fleet's counts sized for ``cores`` (see :func:`sized_roles`)."""
    return sized_roles(costs, counts, cores)[0]


def predict_for(costs: Costs, counts: dict[str, int], measured: list[float], cores_here: float) -> dict[str, Any]:
    """The model's view of one mode: this machine (with the generator) against what was measured,
    then 2-32 cores for the measured shape and for a shape sized to each."""
    here = predict(costs, counts, cores_here, with_generator=True)
    median = statistics.median(measured) if measured else 0.0
    efficiency = median / here.capacity if here.capacity else 0.0
    table = []
    for cores in CORES:
        same = predict(costs, counts, cores, with_generator=False)
        shape = sized_counts(costs, counts, cores)
        sized = predict(costs, shape, cores, with_generator=False)
        table.append(
            {
                "cores": cores,
                "this_shape": {**same.as_json(), "calibrated_per_s": round(same.capacity * efficiency, 1)},
                "sized_shape": {
                    **sized.as_json(),
                    "calibrated_per_s": round(sized.capacity * efficiency, 1),
                    "processes": {r.value: shape[r.value] for r in SIZED_ROLES if r.value in shape},
                },
            }
        )
    return {
        "costs": costs.as_json(),
        "here": {
            "cores": cores_here,
            "predicted": here.as_json(),
            "measured_median_per_s": median,
            "measured/predicted": round(efficiency, 3),
        },
        "cores": table,
    }
