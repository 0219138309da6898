"""The bench's pictures: the comparison of modes, and the capacity steps with the model."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from synfleet.bench.model import CORES
from synfleet.errors import UsageError


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("drawing the PNG needs matplotlib: pip install 'synfleet[bench]'") from None
    return plt


def plot(results: dict[str, Any], path: Path) -> None:
    """Throughput, latency and CPU per mode, as one PNG."""
    plt = _pyplot()
    modes = results["settings"]["modes"]
    summary = results["summary"]["modes"]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    medians = [summary[m]["acknowledged_msgs_per_s"].get("median", 0) for m in modes]
    errors = [
        [medians[i] - summary[m]["acknowledged_msgs_per_s"].get("min", 0) for i, m in enumerate(modes)],
        [summary[m]["acknowledged_msgs_per_s"].get("max", 0) - medians[i] for i, m in enumerate(modes)],
    ]
    axes[0].bar(modes, medians, yerr=errors, capsize=6, color="#4c72b0")
    axes[0].set_title("acknowledged messages/s (median, min-max)")
    width = 0.35
    for offset, key, label in ((-width / 2, "send_p50_ms", "send p50"), (width / 2, "send_p99_ms", "send p99")):
        axes[1].bar(
            [i + offset for i in range(len(modes))],
            [summary[m][key].get("median", 0) for m in modes],
            width,
            label=label,
        )
    axes[1].set_xticks(range(len(modes)), modes)
    axes[1].set_title("send latency, ms (median of runs)")
    axes[1].legend()
    groups = sorted({g for r in results["runs"] for g in r["cpu_seconds"]})
    bottom = [0.0] * len(modes)
    for group in groups:
        values = [
            statistics.median([r["cpu_seconds"].get(group, 0.0) for r in results["runs"] if r["mode"] == m])
            for m in modes
        ]
        axes[2].bar(modes, values, bottom=bottom, label=group)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axes[2].set_title("CPU seconds per process group")
    axes[2].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_capacity(results: dict[str, Any], path: Path) -> None:
    """Each run's steps (offered against delivered, and delivery p99), and the model's capacity
    for 2-32 cores per mode, as one PNG."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    colours = dict(zip(results["settings"]["modes"], ("#c44e52", "#4c72b0", "#55a868", "#8172b2"), strict=False))
    for run in results["runs"]:
        steps = sorted(run["steps"], key=lambda s: s["offered_per_s"])
        offered = [s["offered_per_s"] for s in steps]
        label = f"{run['mode']} #{run['repetition']}"
        colour = colours.get(run["mode"])
        axes[0].plot(offered, [s["delivered"] / s["duration_s"] for s in steps], "o-", color=colour, label=label)
        axes[1].plot(offered, [s["delivery_ms"]["p99"] for s in steps], "o-", color=colour, label=label)
    top = max((s["offered_per_s"] for r in results["runs"] for s in r["steps"]), default=1)
    axes[0].plot([0, top], [0, top], ":", color="grey", label="offered")
    axes[0].set(title="delivered messages/s per step", xlabel="offered messages/s")
    axes[1].axhline(2000, linestyle=":", color="grey", label="service level")
    axes[1].set(title="delivery p99 (ms) per step", xlabel="offered messages/s")
    for mode, model in results["model"].items():
        cores = [row["cores"] for row in model["cores"]]
        for shape, style, label in (("this_shape", "o-", "this shape"), ("sized_shape", "s--", "sized")):
            capacities = [row[shape]["calibrated_per_s"] for row in model["cores"]]
            axes[2].plot(cores, capacities, style, color=colours.get(mode), label=f"{mode} ({label})")
        axes[2].plot([model["here"]["cores"]], [model["here"]["measured_median_per_s"]], "k*", markersize=12)
    axes[2].set_xscale("log", base=2)
    axes[2].set_xticks(CORES, [str(c) for c in CORES])
    axes[2].set(title="model: capacity by cores (calibrated; * measured)", xlabel="cores", ylabel="messages/s")
    for axis in axes:
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
