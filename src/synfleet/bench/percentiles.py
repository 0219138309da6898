"""Percentiles of a sample of measurements, such as message latencies, as the bench reports give them."""

from __future__ import annotations


def percentile(values: list[float], q: float) -> float:
    """The ``q`` percentile (0 to 1) of ``values``: the value at rank ``q * (len(values) - 1)`` rounded half
    up, one of the values and never interpolated between two; 0.0 when there are none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]
