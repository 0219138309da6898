"""The cost model counts what each added process costs: a shape with more processes than the one
measured pays for them, in its group and on the machine, and `init --cores` sizes with that."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from synfleet.bench.model import MOST_PROCESSES, Costs, bounds, predict, role_need, sized_roles
from synfleet.bench.sizing import added_costs, load_costs, size_fleet
from synfleet.errors import UsageError
from synfleet.model.fleet import Role

MEASURED = {"main": 1, "client_sync": 1, "rooms": 2, "tasks": 1, "sender": 1, "redis": 1}


def costs(added: dict[str, float] | None = None) -> Costs:
    per_message = {"main": 0.002, "client_sync": 0.025, "rooms": 0.012, "tasks": 0.011, "sender": 0.003}
    per_message |= {"postgres": 0.025, "redis": 0.001, "nginx": 0.0015}
    idle = {group: 0.01 for group in per_message}
    return Costs(per_message, idle, added or {}, MEASURED)


def test_costs_keep_what_an_added_process_costs_through_json() -> None:
    measured = costs({"rooms": 0.0021, "sender": 0.0034})
    again = Costs.from_json(measured.as_json())
    assert again.added == pytest.approx(measured.added) and again.counts == MEASURED
    assert Costs.from_json(costs().as_json()).added == {}


def test_a_shape_with_more_processes_than_measured_pays_for_them() -> None:
    plain, paying = costs(), costs({"rooms": 0.002, "sender": 0.003})
    assert paying.group_cost("rooms", 2) == pytest.approx(0.012)  # as measured
    assert paying.group_cost("rooms", 6) == pytest.approx(0.012 + 4 * 0.002)
    assert paying.group_cost("rooms", 1) == pytest.approx(0.010)  # one fewer saves its share
    assert paying.group_cost("sender", 4) == pytest.approx(0.012)
    seed = {**MEASURED, "rooms": 4, "sender": 4}
    assert bounds(paying, seed, 8, False)["machine"] < bounds(plain, seed, 8, False)["machine"]
    assert bounds(paying, seed, 8, False)["sender"] == pytest.approx(bounds(plain, seed, 8, False)["sender"] / 4)
    assert predict(paying, MEASURED, 8, False) == predict(plain, MEASURED, 8, False)


def test_sizing_stops_adding_processes_that_cost_more_than_they_take_off() -> None:
    cheap, dear = costs({"client_sync": 0.0005}), costs({"client_sync": 0.02})
    assert role_need(cheap, Role.CLIENT_SYNC, 100)[1] == 4  # 2.5 + 3 * 0.05 + 0.01 cores, 70% each
    busy, count = role_need(dear, Role.CLIENT_SYNC, 100)
    # Each process adds 2 cores of its own at 100 msgs/s: no count keeps them under 70%, and
    # growing stops where one more takes little off the others.
    assert 1 < count < MOST_PROCESSES and busy / count > 2
    assert role_need(dear, Role.CLIENT_SYNC, 1)[1] == 1
    start = {"main": 1, "client_sync": 1, "rooms": 1, "tasks": 1, "sender": 1, "media": 1}
    grown, rate = sized_roles(costs(), start, 32)
    paying, paid_rate = sized_roles(costs({"client_sync": 0.001, "rooms": 0.001, "tasks": 0.001}), start, 32)
    # The machine carries less, and each sized role still keeps its processes under the limit.
    assert paid_rate < rate and grown != paying
    paid = costs({"client_sync": 0.001, "rooms": 0.001, "tasks": 0.001})
    for role in (Role.CLIENT_SYNC, Role.ROOMS, Role.TASKS):
        busy, count = role_need(paid, role, paid_rate)
        assert count == paying[role.value] and busy / count <= 0.7


def test_added_costs_pair_each_variant_with_the_base_of_its_round() -> None:
    runs = {
        "base": [{"total": 100.0}, {"total": 120.0}, {"total": 110.0}],
        "sender": [{"total": 104.0}, {"total": 125.0}, {"total": 113.0}],
        "rooms": [{"total": 99.0}, {"total": 119.0}, {"total": 109.5}],
    }
    assert added_costs({"runs": runs}) == {"rooms": 0.0, "sender": 4.0}
    with pytest.raises(UsageError, match="base"):
        added_costs({"runs": {"sender": runs["sender"]}})
    with pytest.raises(UsageError, match="'senders', not a role"):
        added_costs({"runs": {"base": runs["base"], "senders": runs["sender"]}})


def test_init_cores_counts_the_measured_cost_of_each_process() -> None:
    data = load_costs()
    assert data["costs"]["measured_processes"]["main"] == 1
    sizing = size_fleet(16, data)
    if data["costs"].get("added_process_cpu_ms"):
        assert any("each process beyond the measured shape adds" in reason for reason in sizing.reasons)
    free = {**data, "costs": {**data["costs"], "added_process_cpu_ms": {}}}
    assert sizing.predicted_per_s is not None and size_fleet(16, free).predicted_per_s is not None
    assert sizing.predicted_per_s <= size_fleet(16, free).predicted_per_s


def _bench_cuts() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_cuts", Path(__file__).parents[1] / "scripts" / "bench_cuts.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_cut_variant_changes_only_the_keys_it_names() -> None:
    cuts = _bench_cuts()
    base = '[workers]\nrooms = 4  # by hash\nsender = 4\n\n[synapse]\nlog_level = "INFO"\ngc_thresholds = []\n'
    name, settings = cuts.variant("quiet=synapse.log_level=WARNING;synapse.gc_thresholds=[10000, 50];workers.sender=1")
    assert name == "quiet"
    text = cuts.edited(base, settings)
    expected = base.replace("sender = 4", "sender = 1").replace('"INFO"', '"WARNING"').replace("[]", "[10000, 50]")
    assert text == expected
    assert cuts.edited(base, cuts.variant("base")[1]) == base
    with pytest.raises(SystemExit, match=r"not in the base fleet file: workers\.media"):
        cuts.edited(base, cuts.variant("x=workers.media=2")[1])
