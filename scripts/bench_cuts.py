"""What one change to a fleet file costs or saves: CPU per message of each variant of a fleet at the
same fixed message rate, variants alternating round by round (the order reversed every other round),
so drift on a shared machine falls on all of them:

    .venv/bin/python scripts/bench_cuts.py --base seed/fleet.toml --out cuts.json \\
        base "warning=synapse.log_level=WARNING" "one-sender=workers.sender=1" [--rounds 3] [--rate 8]

A variant is ``name`` or ``name=section.key=VALUE[;section.key=VALUE...]``: the base fleet file with
those keys set (VALUE is a TOML value; a bare word is a string). Each run is one step of
``synfleet bench --capacity --compare fleet`` at ``--rate`` for ``--seconds`` on a fresh database
(40 users, 40 rooms, everyone syncing), in its own directory under ``--work``. Prints each run's
CPU milliseconds per acknowledged message by group, then each variant's medians; with ``--faults``
also the page faults per second the Synapse processes took during the step. ``--out`` keeps every
run and the medians as JSON (``python -m synfleet.bench.sizing --added`` reads it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any


def variant(text: str) -> tuple[str, dict[tuple[str, str], str]]:
    """A variant's name and the TOML value of each (section, key) it sets."""
    name, _, changes = text.partition("=")
    settings: dict[tuple[str, str], str] = {}
    for change in filter(None, changes.split(";")):
        key, _, value = change.partition("=")
        section, _, option = key.rpartition(".")
        try:
            tomllib.loads(f"v = {value}")
        except tomllib.TOMLDecodeError:
            value = json.dumps(value)
        settings[(section, option)] = value
    return name, settings


def edited(base: str, settings: dict[tuple[str, str], str]) -> str:
    """The base fleet file with each ``[section] option`` line set to its value."""
    out, section, done = [], "", set()
    for line in base.splitlines():
        if header := re.fullmatch(r"\[([^\]]+)\]\s*", line):
            section = header.group(1)
        elif (m := re.match(r"([A-Za-z_0-9]+)\s*=", line)) and (section, m.group(1)) in settings:
            line = f"{m.group(1)} = {settings[(section, m.group(1))]}"
            done.add((section, m.group(1)))
        out.append(line)
    if missing := [".".join(k) for k in settings if k not in done]:
        raise SystemExit(f"not in the base fleet file: {', '.join(missing)}")
    text = "\n".join(out) + "\n"
    tomllib.loads(text)
    return text


class Faults(threading.Thread):
    """Page faults the Synapse processes of ``directory`` take (minor: a page first touched, or
    copied on a write after a fork), sampled each ``period`` seconds: per second of wall time, the
    faults that every process live in that second took."""

    def __init__(self, directory: Path, period: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.marker, self.period = str(directory.resolve()).encode(), period
        self.timeline: list[tuple[float, int]] = []
        self.done = threading.Event()

    def _sample(self) -> dict[int, int]:
        found = {}
        for entry in os.listdir("/proc"):
            try:
                if entry.isdigit() and self.marker in Path(f"/proc/{entry}/cmdline").read_bytes():
                    text = Path(f"/proc/{entry}/stat").read_text()
                    if b"synapse" in Path(f"/proc/{entry}/cmdline").read_bytes():
                        found[int(entry)] = int(text[text.rindex(")") + 2 :].split()[7])
            except OSError:
                continue
        return found

    def run(self) -> None:
        last: dict[int, int] = {}
        while not self.done.wait(self.period):
            now = self._sample()
            self.timeline.append((time.monotonic(), sum(n - last[p] for p, n in now.items() if p in last)))
            last = now

    def during(self, end: float, seconds: float) -> float:
        """Faults per second over the ``seconds`` before ``end`` (a monotonic time)."""
        return sum(n for t, n in self.timeline if end - seconds <= t <= end) / seconds


def run(directory: Path, rate: float, seconds: float, faults: bool = False) -> dict[str, Any]:
    out = directory / "run.json"
    command = [sys.executable, "-m", "synfleet", "bench", "--capacity", "--dir", str(directory), "--compare", "fleet"]
    command += ["--start-rate", str(rate), "--max-steps", "1", "--refine", "0", "--repeat", "1"]
    command += ["--step-seconds", str(seconds), "--out", str(out)]
    sampler = Faults(directory)
    if faults:
        sampler.start()
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}  # each line as it is printed
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
    output, step_end = [], 0.0
    for line in process.stdout or ():
        output.append(line)
        if "/s offered:" in line:  # printed after the step and its drain
            step_end = time.monotonic()
    sampler.done.set()
    if process.wait() != 0:
        raise SystemExit(f"{directory.name}: bench failed\n{''.join(output)}")
    step = json.loads(out.read_text())["runs"][0]["steps"][0]
    acknowledged = max(step["acknowledged"], 1)
    figures = {group: 1000 * cpu / acknowledged for group, cpu in step["cpu_seconds"].items()}
    figures["total"] = sum(v for k, v in figures.items() if k != "generator")
    figures["delivery_p99_ms"] = step["delivery_ms"]["p99"]
    if faults:  # the step, not its drain (which ends when every message was delivered, at most 10 s)
        figures["faults_per_s"] = sampler.during(step_end - 10, seconds - 10)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--base", type=Path, required=True, help="the fleet file the variants change")
    parser.add_argument("--work", type=Path, default=Path("cuts"), help="where each variant's directory goes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=8.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--faults", action="store_true", help="also the Synapse processes' page faults per second")
    options = parser.parse_args()
    base = options.base.read_text()
    variants = dict(variant(v) for v in options.variants)
    for name, settings in variants.items():
        directory = options.work / name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "fleet.toml").write_text(edited(base, settings))
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for round_number in range(1, options.rounds + 1):
        order = list(variants) if round_number % 2 else list(reversed(variants))
        for name in order:
            figures = run(options.work / name, options.rate, options.seconds, options.faults)
            results[name].append(figures)
            shown = ", ".join(f"{k} {v:.1f}" for k, v in sorted(figures.items(), key=lambda kv: -kv[1]))
            print(f"round {round_number} {name}: {shown}", flush=True)
    medians = {
        name: {group: round(statistics.median(r.get(group, 0.0) for r in runs), 1) for group in runs[0]}
        for name, runs in results.items()
    }
    for name, figures in medians.items():
        shown = ", ".join(f"{k} {v}" for k, v in sorted(figures.items(), key=lambda kv: -kv[1]))
        print(f"median {name}: {shown}")
    if options.out:
        settings = {"rate": options.rate, "seconds": options.seconds, "rounds": options.rounds}
        settings["base"] = str(options.base)
        options.out.write_text(json.dumps({"settings": settings, "runs": results, "medians": medians}, indent=1) + "\n")


if __name__ == "__main__":
    main()
