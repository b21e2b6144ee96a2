"""Latency summaries. Pure Python so the parent process never needs Django or numpy."""

import math
from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], share: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default), on sorted input."""
    if not sorted_values:
        return math.nan
    position = (len(sorted_values) - 1) * share
    low = math.floor(position)
    high = math.ceil(position)
    fraction = position - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


def summarize_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max/mean in milliseconds, rounded for a readable report."""
    ms = sorted(value * 1000 for value in seconds)
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "p50": round(percentile(ms, 0.50), 2),
        "p95": round(percentile(ms, 0.95), 2),
        "p99": round(percentile(ms, 0.99), 2),
        "max": round(ms[-1], 2),
        "mean": round(sum(ms) / len(ms), 2),
    }
