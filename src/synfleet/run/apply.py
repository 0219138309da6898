"""`synfleet apply`: bring a running native fleet to what fleet.toml says, restarting only what must.

The fleet file the run directory was rendered from is kept in it (``run/fleet.toml``). Both files
are rendered, and what differs decides the plan:

- a worker added or removed, whose shared Synapse config (``homeserver.yaml``) stays the same, as
  for room workers and client readers (not media workers: each writes quarantined_media_changes,
  so they are in ``stream_writers``): start the new worker and wait until it is healthy, reload
  nginx gracefully, then stop the removed worker (nginx has stopped sending to it). No other
  process restarts.
- a process whose own files changed (its worker or log config): restart it alone, one at a time.
- a changed ``homeserver.yaml`` (``instance_map``, stream writers, event persisters, federation
  senders...): Synapse wants every process restarted, and no process may run the old config while
  another runs the new one (two event persisters could write one room). Workers stop, then main;
  then main and the workers start together (the schema is in place), then nginx reloads.

For a hashed group whose workers change, the plan names the rooms (from the database) that move,
and to which worker.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from synfleet.errors import SynfleetError, UsageError
from synfleet.layout import NGINX_DIR, SHARED_CONFIG, log_config_file, worker_config_file
from synfleet.model.schema import FleetSpec
from synfleet.render.secrets import ensure_secrets
from synfleet.routing.corpus import room_keys
from synfleet.routing.plan import RoutingPlan, group_of_upstream
from synfleet.run.accounts import as_root, ensure_accounts
from synfleet.run.fleet import wait_healthy, write_run_files
from synfleet.run.paths import RunPaths
from synfleet.run.plan import Plan, plan_for, run_files, running_spec
from synfleet.run.postgres import query
from synfleet.run.supervised import NativeProcess, Tier
from synfleet.run.supervisor import Supervisor

Report = Callable[[str], None]
NGINX = "nginx"


@dataclass
class Move:
    """A hashed group whose workers change: the share of all room IDs that moves between each pair
    of workers, and the fleet's own rooms that move."""

    group: str
    before: tuple[str, ...]
    after: tuple[str, ...]
    shares: dict[tuple[str, str], float]
    rooms: dict[str, tuple[str, str]] = field(default_factory=dict)  # room ID -> (from, to)


@dataclass
class Change:
    old: Plan
    new: Plan
    start: list[str]
    stop: list[str]
    restart: list[str]
    restart_all: bool
    reload_nginx: bool
    moves: list[Move]

    @property
    def empty(self) -> bool:
        return not (self.start or self.stop or self.restart or self.restart_all or self.reload_nginx)

    def lines(self) -> list[str]:
        if self.empty:
            return ["nothing to change: the running fleet is what fleet.toml says"]
        result = []
        if self.restart_all:
            result.append(
                "homeserver.yaml changes: Synapse needs every process restarted. Order: stop the workers, "
                "then main; start main and the workers together; reload nginx. Requests fail until they are "
                "up (clients retry sends with the same transaction ID)"
            )
        for verb, names in (("start", self.start), ("stop", self.stop), ("restart", self.restart)):
            if names:
                result.append(f"{verb}: {', '.join(names)}")
        if self.reload_nginx:
            result.append("reload nginx gracefully (its master keeps running)")
        if not self.restart_all:
            untouched = [p.name for p in self.old.processes if p.name not in {*self.stop, *self.restart, NGINX}]
            result.append(f"untouched: {', '.join(untouched) or 'nothing'}")
        for move in self.moves:
            total = sum(move.shares.values())
            result.append(
                f"{move.group}: {len(move.before)} -> {len(move.after)} workers; {total:.1%} of room IDs move"
            )
            for (source, target), share in sorted(move.shares.items()):
                result.append(f"  {source} -> {target}: {share:.1%}")
            result.append(f"  this fleet's rooms that move: {len(move.rooms)}")
            for room, (source, target) in sorted(move.rooms.items()):
                result.append(f"    {room}: {source} -> {target}")
        return result


def _moves(old: RoutingPlan, new: RoutingPlan, rooms: Callable[[], list[str]]) -> list[Move]:
    """Each hashed group whose workers change; ``rooms`` (the fleet's, read only then) says which move."""
    changed = [
        (name, before, new.upstreams[name])
        for name, before in old.upstreams.items()
        if name in new.upstreams
        and before.workers != new.upstreams[name].workers
        and (before.hashed or new.upstreams[name].hashed)
    ]
    known = rooms() if changed else []
    keys = room_keys(20_000, seed=1)
    moves = []
    for name, before, after in changed:
        pairs = Counter((before.workers[before.ring.pick(k)], after.workers[after.ring.pick(k)]) for k in keys)
        shares = {pair: n / len(keys) for pair, n in pairs.items() if pair[0] != pair[1]}
        move = Move(group_of_upstream(name), before.workers, after.workers, shares)
        for room in known:
            source, target = before.worker_for(room[1:]), after.worker_for(room[1:])
            if source != target and source is not None and target is not None:
                move.rooms[room] = (source, target)
        moves.append(move)
    return moves


def _own_files(process: str) -> tuple[str, ...]:
    return (f"synapse/{worker_config_file(process)}", f"synapse/{log_config_file(process)}")


def plan_change(paths: RunPaths, spec: FleetSpec) -> Change:
    """What applying ``spec`` to the running fleet in ``paths`` changes; nothing is touched."""
    if not Supervisor(paths).running():
        raise UsageError(f"the fleet in {paths.directory} is not running: `synfleet up` starts it as fleet.toml says")
    old_spec = running_spec(paths)
    if old_spec.server_name != spec.server_name:
        raise UsageError(
            f"server_name: the fleet runs as {old_spec.server_name!r}; a homeserver cannot be renamed "
            f"({spec.server_name!r} needs a new fleet and database)"
        )
    if old_spec.synapse.start != spec.synapse.start:
        raise UsageError(
            f"synapse.start: the fleet runs with {old_spec.synapse.start!r}; how Synapse starts is the "
            f"supervisor's own, so {spec.synapse.start!r} takes a restart of everything: `synfleet down`, then `up`"
        )
    secrets = ensure_secrets(paths.directory, spec)
    old, new = plan_for(paths, old_spec), plan_for(paths, spec)
    old_files, new_files = run_files(old, secrets).files, run_files(new, secrets).files
    old_processes = {p.name: p for p in old.processes}
    new_processes = {p.name: p for p in new.processes}
    start = [name for name in new_processes if name not in old_processes]
    stop = [name for name in old_processes if name not in new_processes]

    def changed(process: NativeProcess) -> bool:
        files = _own_files(process.name)
        return old_processes[process.name] != process or any(old_files.get(f) != new_files.get(f) for f in files)

    restart = [p.name for p in new.processes if p.name in old_processes and p.name != NGINX and changed(p)]
    shared = f"synapse/{SHARED_CONFIG}"
    restart_all = old_files[shared] != new_files[shared]
    nginx_files = {f for f in {*old_files, *new_files} if f.startswith(f"{NGINX_DIR}/")}
    reload_nginx = any(old_files.get(f) != new_files.get(f) for f in nginx_files) or bool(start or stop)
    if restart_all:
        restart = [p.name for p in new.processes if p.name in old_processes and _is_synapse(p)]
    old_routing = RoutingPlan(old_spec.fleet, socket_dir=str(paths.sockets))
    new_routing = RoutingPlan(spec.fleet, socket_dir=str(paths.sockets))
    moves = _moves(
        old_routing,
        new_routing,
        lambda: query(paths, old_spec.database, "SELECT room_id FROM rooms", "cannot list the fleet's rooms"),
    )
    return Change(old, new, start, stop, restart, restart_all, reload_nginx, moves)


def _is_synapse(process: NativeProcess) -> bool:
    return process.tier in (Tier.MAIN, Tier.WORKERS)


def apply(paths: RunPaths, change: Change, report: Report) -> None:
    """Carry out ``change`` on the running fleet."""
    if change.empty:
        return
    supervisor = Supervisor(paths)
    plan = change.new
    secrets = ensure_secrets(paths.directory, plan.spec)
    accounts = ensure_accounts(report) if as_root() else None
    new_processes = {p.name: p for p in plan.processes}
    if change.restart_all:  # nothing may run the old config once anything runs the new one
        for process in reversed(change.old.processes):
            if _is_synapse(process):
                report(f"stopping {process.name}")
                supervisor.stop(process.name)
    write_run_files(plan, secrets, accounts)
    added, changed, removed = supervisor.reload_config()
    for name in added:
        supervisor.add(name)
    for name in changed:  # a program whose command changed: supervisord takes it anew, stopped
        supervisor.remove(name)
        supervisor.add(name)
    if change.restart_all:  # the schema stands: main and the workers start together
        restart(supervisor, [p for p in plan.processes if _is_synapse(p)], report)
        # Then a service this config adds (coturn, with TURN newly enabled).
        restart(supervisor, [new_processes[n] for n in change.start if not _is_synapse(new_processes[n])], report)
    else:
        for name in change.restart:  # one at a time: the others keep serving
            restart(supervisor, [new_processes[name]], report)
        restart(supervisor, [new_processes[name] for name in change.start], report)
    # Anything else supervisord had to take anew (nginx, PostgreSQL, Redis) starts again.
    others = [new_processes[name] for name in changed if not _is_synapse(new_processes[name])]
    restart(supervisor, sorted(others, key=lambda p: p.tier), report)
    if change.reload_nginx and NGINX not in changed:
        report("reloading nginx")
        supervisor.signal(NGINX, "HUP")
    for name in removed:
        report(f"stopping {name}")
        supervisor.remove(name)
    for name in change.stop:
        for stale in _own_files(name):
            (paths.run / stale).unlink(missing_ok=True)


def restart(supervisor: Supervisor, processes: list[NativeProcess], report: Report) -> None:
    """(Re)start ``processes`` and wait until every one is healthy."""
    if not processes:
        return
    for process in processes:
        supervisor.stop(process.name)
        report(f"starting {process.name}")
        supervisor.start(process.name)
    failed = wait_healthy(supervisor, processes, max(Tier.WORKERS.timeout, Tier.MAIN.timeout), report)
    if failed is not None:
        raise SynfleetError(f"{failed.name} did not become healthy; see `synfleet logs {failed.name}`")
