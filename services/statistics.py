"""The pure number-crunching behind the ``sales`` report's summary: no I/O, no token.

Kept apart from the service so the service reads as "fetch, then crunch in checked chunks", and so
these functions stay plain, synchronous and testable on their own.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CategorySummary", "summarise"]

BOOTSTRAP_SAMPLES = 400


@dataclass(frozen=True, slots=True)
class CategorySummary:
    """One category over the report's period."""

    category: str
    days: int
    revenue_cents: int
    new_customers: int
    returning_share: float
    """Share of revenue from customers who had bought before."""
    trend_cents_per_day: float
    """Least-squares slope of daily revenue: is the category growing or shrinking?"""
    mean_daily_cents: float
    mean_daily_ci95: tuple[float, float]
    """Bootstrap 95% interval of the mean daily revenue: how much to trust the mean."""


def summarise(
    category: str, revenue: Sequence[int], returning: Sequence[int], new_customers: int
) -> CategorySummary:
    """Summarise one category's daily revenue series (in day order)."""
    days = len(revenue)
    total = sum(revenue)
    mean = total / days if days else 0.0
    return CategorySummary(
        category=category,
        days=days,
        revenue_cents=total,
        new_customers=new_customers,
        returning_share=(sum(returning) / total) if total else 0.0,
        trend_cents_per_day=_slope(revenue),
        mean_daily_cents=mean,
        mean_daily_ci95=_bootstrap_ci(revenue, seed=category),
    )


def _slope(values: Sequence[int]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    mean_x = (n - 1) / 2
    mean_y = sum(values) / n
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values))
    variance = sum((x - mean_x) ** 2 for x in range(n))
    return covariance / variance


def _bootstrap_ci(values: Sequence[int], *, seed: str) -> tuple[float, float]:
    """Resample the days with replacement; deterministic per category, so reports are stable."""
    n = len(values)
    if n == 0:
        return (0.0, 0.0)
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(BOOTSTRAP_SAMPLES))
    low = means[math.floor(0.025 * (BOOTSTRAP_SAMPLES - 1))]
    high = means[math.ceil(0.975 * (BOOTSTRAP_SAMPLES - 1))]
    return (low, high)
