"""`synfleet bench --profile`'s parts that need no fleet: collapsed stacks, the flame graph, and the
categories samples are put in. The smoke run of the whole is in test_bench.py."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter

import pytest

from helpers import profile_with
from synfleet.bench.flamegraph import (
    Stack,
    flame_graph_svg,
    format_collapsed,
    merge,
    parse_collapsed,
)
from synfleet.bench.measure import Statement, statements_between
from synfleet.bench.profile import (
    CATEGORIES,
    CATEGORY_NAMES,
    OTHER,
    WAITING,
    breakdown,
    category_samples,
    classify,
    frame_category,
    frame_module,
    statement_figures,
    with_statements,
)
from synfleet.model.schema import FleetSpec

SVG = "{http://www.w3.org/2000/svg}"


def frames(svg: str) -> dict[str, ET.Element]:
    """The frame rectangles of a flame graph, by the frame's name (from its title)."""
    found = {}
    for group in ET.fromstring(svg).iter(f"{SVG}g"):
        title = group.find(f"{SVG}title")
        rect = group.find(f"{SVG}rect")
        assert title is not None and title.text and rect is not None
        found[title.text.rsplit(": ", 1)[0]] = rect
    return found


def test_collapsed_text_round_trips_and_merges() -> None:
    text = "a (m.py);b (m.py) 3\na (m.py);c (n.py) 1\n\nnot a sample line\na (m.py);b (m.py) 2\n"
    stacks = parse_collapsed(text)
    assert stacks == Counter({("a (m.py)", "b (m.py)"): 5, ("a (m.py)", "c (n.py)"): 1})
    assert parse_collapsed(format_collapsed(stacks)) == stacks
    assert merge([stacks, Counter({("a (m.py)", "c (n.py)"): 4})])[("a (m.py)", "c (n.py)")] == 5


def test_flame_graph_sizes_frames_by_samples_and_stacks_callees_on_callers() -> None:
    stacks: Counter[Stack] = Counter({("main", "serve", "query"): 3, ("main", "serve"): 1, ("main", "log"): 4})
    svg = flame_graph_svg(stacks, "rooms <test>", legend=[("database", "rgb(1,2,3)")])
    drawn = frames(svg)
    assert set(drawn) == {"all", "main", "serve", "query", "log"}
    width = {name: float(rect.attrib["width"]) for name, rect in drawn.items()}
    y = {name: float(rect.attrib["y"]) for name, rect in drawn.items()}
    assert width["all"] == pytest.approx(width["main"])
    assert width["serve"] == pytest.approx(width["log"]) == pytest.approx(width["main"] / 2)
    assert width["query"] == pytest.approx(width["serve"] * 3 / 4)
    # The root at the bottom, each callee on top of its caller, siblings side by side.
    assert y["all"] > y["main"] > y["serve"] > y["query"] and y["serve"] == y["log"]
    left, right = sorted(("log", "serve"), key=lambda name: float(drawn[name].attrib["x"]))
    assert float(drawn[right].attrib["x"]) == pytest.approx(float(drawn[left].attrib["x"]) + width[left])
    titles = [t.text for t in ET.fromstring(svg).iter(f"{SVG}title")]
    assert "query: 3 samples, 37.50%" in titles
    assert "rooms <test> (8 samples)" in svg.replace("&lt;", "<").replace("&gt;", ">")


def test_flame_graph_escapes_frames_and_leaves_out_invisible_ones() -> None:
    stacks: Counter[Stack] = Counter({("<module> (a&b.py)", "f (x.py)"): 100_000, ("<module> (a&b.py)", "tiny"): 1})
    drawn = frames(flame_graph_svg(stacks, "t"))
    assert "<module> (a&b.py)" in drawn and "f (x.py)" in drawn
    assert "tiny" not in drawn


def test_flame_graph_stays_well_formed_with_a_frame_caught_half_written() -> None:
    # Sampling a running process without stopping it can read a frame's name mid-write: bytes
    # that are no text XML can hold, even escaped.
    garbled = ("\x01\x00run (\x1bm.py)", "\ud800f\ufffe (x.py)")
    svg = flame_graph_svg(Counter({garbled: 5, ("main (m.py)",): 5}), "sender \x07")
    assert ET.fromstring(svg.encode()).tag == f"{SVG}svg"  # as the file is written: UTF-8
    drawn = frames(svg)
    assert {"\ufffd\ufffdrun (\ufffdm.py)", "\ufffdf\ufffd (x.py)", "main (m.py)"} <= set(drawn)


def test_empty_profile_is_still_a_picture() -> None:
    root = ET.fromstring(flame_graph_svg(Counter(), "idle"))
    assert root.tag == f"{SVG}svg" and not list(root.iter(f"{SVG}g"))


@pytest.mark.parametrize(
    ("path", "module"),
    [
        ("synapse/storage/__init__.py", "synapse.storage"),
        ("synapse/handlers/sync.py", "synapse.handlers.sync"),
        ("logging/__init__.py", "logging"),
        ("threading.py", "threading"),
    ],
)
def test_frame_module(path: str, module: str) -> None:
    assert frame_module(path) == module


@pytest.mark.parametrize(
    ("stack", "category"),
    [
        # The innermost frame with a category decides; frames of none (json, Deferreds) are transparent.
        (
            [
                "run (twisted/internet/base.py)",
                "on_GET (synapse/rest/client/sync.py)",
                "wait_for_sync_for_user (synapse/handlers/sync.py)",
                "runInteraction (synapse/storage/database.py)",
                "dumps (json/__init__.py)",
            ],
            "database",
        ),
        (
            [
                "run (twisted/internet/base.py)",
                "f (synapse/handlers/message.py)",
                "callback (twisted/internet/defer.py)",
            ],
            "request",
        ),
        (["_on_line (synapse/replication/tcp/redis.py)", "get (synapse/util/caches/lrucache.py)"], "caches"),
        # In one frame, the first category that matches: a store's invalidation is cache work.
        (["_invalidate_caches_for_event (synapse/storage/databases/main/cache.py)"], "caches"),
        (["x (synapse/handlers/sync.py)", "emit (logging/__init__.py)", "format (logging/handlers.py)"], "logging"),
        (["x (synapse/handlers/sync.py)", "__exit__ (synapse/logging/context.py)"], "logging"),
        (["on_rdata (synapse/replication/tcp/client.py)", "dataReceived (txredisapi.py)"], "replication"),
        (["doPoll (twisted/internet/epollreactor.py)", "doRead (twisted/internet/unix.py)"], "reactor"),
        (["run (twisted/internet/base.py)", "callback (twisted/internet/defer.py)"], "reactor"),
        (["doPoll (twisted/internet/epollreactor.py)", "__call__ (synapse/metrics/_reactor_metrics.py)"], "reactor"),
        # The reactor's loop is under every sample of the main thread: Synapse code it runs that no
        # category has is "other", not the reactor's.
        (["run (twisted/internet/base.py)", "send (synapse/federation/sender/__init__.py)"], OTHER),
        # The reactor's own work that Synapse asks for is the reactor's.
        (
            [
                "run (twisted/internet/base.py)",
                "on_new_event (synapse/notifier.py)",
                "callLater (twisted/internet/base.py)",
            ],
            "reactor",
        ),
        (["dataReceived (twisted/web/http.py)"], "request"),
        # A module whose name only starts like a category's is not in it.
        (["<module> (loggingtools/x.py)", "decode (json/decoder.py)"], OTHER),
        (["collect (gc)"], OTHER),
        # Line numbers, when py-spy writes them, are not part of the module.
        (["on_PUT (synapse/rest/client/room.py:123)"], "request"),
    ],
)
def test_a_sample_takes_the_category_of_its_innermost_categorised_frame(stack: list[str], category: str) -> None:
    assert classify(tuple(stack)) == category


def test_every_category_is_documented_and_other_is_last() -> None:
    assert CATEGORY_NAMES[-1] == OTHER and len(set(CATEGORY_NAMES)) == len(CATEGORY_NAMES)
    for category in CATEGORIES:
        assert category.what and (category.modules or category.functions)
        assert frame_category(f"f ({category.modules[0].replace('.', '/')}.py)") is category


def test_breakdown_shares_out_the_cpu_by_samples() -> None:
    stacks: Counter[Stack] = Counter(
        {("a (synapse/storage/x.py)",): 3, ("b (synapse/rest/y.py)",): 1, ("c (elsewhere.py)",): 4}
    )
    split = breakdown(16.0, stacks)
    assert set(split) == set(CATEGORY_NAMES)
    assert split["database"] == {"share": 0.375, "cpu_ms_per_message": 6.0}
    assert split["request"]["cpu_ms_per_message"] == 2.0 and split[OTHER]["cpu_ms_per_message"] == 8.0
    assert sum(v["share"] for v in split.values()) == pytest.approx(1.0)
    assert sum(v["cpu_ms_per_message"] for v in split.values()) == pytest.approx(16.0)
    assert breakdown(5.0, Counter()) == {}


def test_threads_caught_waiting_are_counted_apart_and_not_shared_out() -> None:
    poll = ("run (twisted/internet/base.py)", "doPoll (twisted/internet/epollreactor.py)")
    stacks: Counter[Stack] = Counter(
        {
            (*poll, "CallWrapper.__call__ (synapse/metrics/_reactor_metrics.py)"): 5,
            ("work (twisted/_threads/_threadworker.py)", "Queue.get (queue.py)", "Condition.wait (threading.py)"): 3,
            (*poll, "doRead (twisted/internet/unix.py)"): 1,
            ("a (synapse/storage/x.py)",): 1,
        }
    )
    counts = category_samples(stacks)
    assert counts[WAITING] == 8 and counts["reactor"] == 1 and counts["database"] == 1
    split = breakdown(10.0, stacks)
    assert WAITING not in split
    assert split["reactor"]["cpu_ms_per_message"] == 5.0 and split["database"]["share"] == 0.5
    # Only waiting: nothing to share out.
    assert breakdown(10.0, Counter({(*poll, "CallWrapper.__call__ (synapse/metrics/_reactor_metrics.py)"): 2})) == {}


def test_the_profiled_fleet_loads_pg_stat_statements_beside_what_it_loads() -> None:
    plain = with_statements(profile_with("small"))
    assert plain.database.server_settings()["shared_preload_libraries"] == "pg_stat_statements"
    data = profile_with("small").model_dump(mode="json")
    data["database"]["settings"] = {"shared_preload_libraries": "auto_explain, pg_stat_statements"}
    loaded = with_statements(FleetSpec.model_validate(data))
    assert loaded.database.server_settings()["shared_preload_libraries"] == "auto_explain,pg_stat_statements"
    data["database"] = {"host": "db.example.org"}
    external = FleetSpec.model_validate(data)
    assert with_statements(external) == external  # not ours to restart with a library


def test_statements_are_what_each_cost_over_the_step_costliest_first() -> None:
    before = {1: Statement("SELECT 1", 10, 5.0, 10), 2: Statement("SELECT $1", 4, 1.0, 4)}
    after = {
        1: Statement("SELECT 1", 30, 9.0, 30),
        2: Statement("SELECT $1", 4, 1.0, 4),  # not run during the step
        3: Statement("UPDATE t  SET\n x = $1", 20, 12.0, 20),  # first run during the step
    }
    spent = statements_between(before, after)
    assert spent == [Statement("UPDATE t  SET\n x = $1", 20, 12.0, 20), Statement("SELECT 1", 20, 4.0, 20)]
    figures = statement_figures(spent, 10)
    assert figures["statements"] == 4.0 and figures["statement_exec_ms"] == 1.6
    assert figures["top_statements"][0] == {"query": "UPDATE t SET x = $1", "calls": 2.0, "exec_ms": 1.2, "rows": 2.0}
    assert statement_figures(None, 10) == {"statements": None, "statement_exec_ms": None, "top_statements": []}
