"""The cost model counts what each added process costs: a shape with more processes than the one
measured pays for them, in its group and on the machine, and `init --cores` sizes with that."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
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
    measured = costs({"rooms": 0.021, "sender": 0.034})
    again = Costs.from_json(measured.as_json())
    assert again.added == pytest.approx(measured.added) and again.counts == MEASURED
    assert Costs.from_json(costs().as_json()).added == {}


def test_a_shape_with_more_processes_than_measured_pays_for_them() -> None:
    plain, paying = costs(), costs({"rooms": 0.02, "sender": 0.03})
    assert paying.group_idle("rooms", 2) == pytest.approx(0.01)  # as measured
    assert paying.group_idle("rooms", 6) == pytest.approx(0.01 + 4 * 0.02)
    assert paying.group_idle("rooms", 1) == pytest.approx(0.0)  # one fewer saves its share, down to none
    assert paying.group_idle("sender", 4) == pytest.approx(0.01 + 3 * 0.03)
    seed = {**MEASURED, "rooms": 4, "sender": 4}
    paid, free = bounds(paying, seed, 8, False), bounds(plain, seed, 8, False)
    assert paid["machine"] < free["machine"] and paid["sender"] < free["sender"]
    assert predict(paying, MEASURED, 8, False) == predict(plain, MEASURED, 8, False)


def test_sizing_counts_what_each_added_process_costs() -> None:
    cheap, dear = costs({"client_sync": 0.01}), costs({"client_sync": 0.8})
    assert role_need(cheap, Role.CLIENT_SYNC, 100)[1] == 4  # 2.5 + 0.01 + 3 * 0.01 cores, 70% each
    busy, count = role_need(dear, Role.CLIENT_SYNC, 100)
    # Each process costs 0.8 cores of its own: no count keeps them under 70%, and growing stops
    # where one more takes little off the others.
    assert 1 < count < MOST_PROCESSES and busy / count > 0.7
    assert role_need(dear, Role.CLIENT_SYNC, 0.1)[1] == 1
    start = {"main": 1, "client_sync": 1, "rooms": 1, "tasks": 1, "sender": 1, "media": 1}
    grown, rate = sized_roles(costs(), start, 32)
    paid = costs({"client_sync": 0.1, "rooms": 0.05, "tasks": 0.05})
    paying, paid_rate = sized_roles(paid, start, 32)
    # The machine carries less, and each sized role still keeps its processes under the limit.
    assert paid_rate < rate and grown != paying
    for role in (Role.CLIENT_SYNC, Role.ROOMS, Role.TASKS):
        busy, count = role_need(paid, role, paid_rate)
        assert count == paying[role.value] and busy / count <= 0.7


def test_added_costs_pair_each_variant_with_the_base_of_its_round() -> None:
    """Only the role's own group and the servers every process talks to count: the other groups
    move with the machine."""
    runs = {
        "base": [
            {"total": 100.0, "sender": 5.0, "postgres": 30.0, "redis": 1.0, "client_sync": 30.0},
            {"total": 120.0, "sender": 6.0, "postgres": 35.0, "redis": 1.0, "client_sync": 36.0},
            {"total": 110.0, "sender": 5.5, "postgres": 32.0, "redis": 1.0, "client_sync": 33.0},
        ],
        "sender": [
            {"total": 118.0, "sender": 10.0, "postgres": 31.0, "redis": 1.1, "client_sync": 40.0},
            {"total": 125.0, "sender": 11.0, "postgres": 36.5, "redis": 1.0, "client_sync": 36.0},
            {"total": 113.0, "sender": 11.5, "postgres": 30.0, "redis": 1.0, "client_sync": 29.0},
        ],
        "client_reader": [
            {"total": 99.0, "client_reader": 1.0, "postgres": 29.0, "redis": 1.0},
            {"total": 119.0, "client_reader": 1.0, "postgres": 33.0, "redis": 1.0},
            {"total": 109.5, "client_reader": 1.0, "postgres": 30.0, "redis": 1.0},
        ],
    }
    settings = {"rate": 10.0}
    # 6.1 ms per message at 10 messages a second: 0.061 cores.
    assert added_costs({"settings": settings, "runs": runs}) == {"client_reader": 0.0, "sender": 0.061}
    # Batches pool their rounds, each at its own rate: the median of the six rounds.
    again = {"settings": {"rate": 20.0}, "runs": {"base": runs["base"], "sender": runs["sender"]}}
    assert added_costs({"settings": settings, "runs": runs}, again)["sender"] == pytest.approx(0.0725)
    with pytest.raises(UsageError, match="base"):
        added_costs({"settings": settings, "runs": {"sender": runs["sender"]}})
    with pytest.raises(UsageError, match="'senders', not a role"):
        added_costs({"settings": settings, "runs": {"base": runs["base"], "senders": runs["sender"]}})


def test_init_cores_counts_the_measured_cost_of_each_process() -> None:
    data = load_costs()
    assert data["costs"]["measured_processes"]["main"] == 1
    sizing = size_fleet(16, data)
    assert data["costs"]["added_process_cores"]
    assert any("each process beyond the measured shape costs" in reason for reason in sizing.reasons)
    free = {**data, "costs": {**data["costs"], "added_process_cores": {}}}
    assert sizing.predicted_per_s is not None and size_fleet(16, free).predicted_per_s is not None
    assert sizing.predicted_per_s <= size_fleet(16, free).predicted_per_s


def test_sizing_says_which_single_process_saturates_before_the_machine() -> None:
    """One sender follows every event: when it is a core's worth before the machine is full, the
    reasons say so rather than promise the machine's figure."""
    data = load_costs()
    busy = {**data["costs"], "per_message_cpu_ms": {**data["costs"]["per_message_cpu_ms"], "sender": 20.0}}
    sizing = size_fleet(16, {**data, "costs": busy})
    assert sizing.workers["sender"] == 1 and sizing.predicted_per_s is not None and sizing.predicted_per_s < 50
    assert any(reason.startswith("sender saturates first, at ") for reason in sizing.reasons)
    assert not any("saturates first" in reason for reason in size_fleet(8, data).reasons)


def _sizing(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "synfleet.bench.sizing", *arguments], capture_output=True, text=True)


@pytest.mark.parametrize(
    ("results", "message"),
    [
        ("{}", "not those of bench --capacity"),
        ("[1]", "capacity results should be a JSON object"),
        ("not json", "cannot read capacity results: Expecting value"),
    ],
)
def test_costs_json_is_written_whole_from_good_results_only(tmp_path: Path, results: str, message: str) -> None:
    (tmp_path / "r.json").write_text(results)
    out = tmp_path / "costs.json"
    bad = _sizing(f"small={tmp_path / 'r.json'}", "--out", str(out))
    missing = _sizing(f"small={tmp_path / 'none.json'}", "--out", str(out))
    unnamed = _sizing(str(tmp_path / "r.json"), "--out", str(out))
    for done in (bad, missing, unnamed):
        assert done.returncode == 2 and done.stderr.count("error:") == 1 and "Traceback" not in done.stderr
    assert message in bad.stderr and "NAME=FILE" in unnamed.stderr
    assert "cannot read capacity results: [Errno 2]" in missing.stderr
    assert not out.exists()


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
