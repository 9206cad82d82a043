"""The few statistics every stage reports, written once: ranks with ties, rank and linear
correlation, AUC, pair accuracy, and intervals.

Ties are always treated the same way: tied values share the mean of the ranks they span
(``ranks``), a tied pair counts half (``pair_accuracy``, ``auc``), and Best-of-N splits the
weight of a tied group evenly among its members (``afd.bon`` walks :func:`tie_groups`).
"""

from __future__ import annotations

import math


def tie_groups(values: list[float]) -> list[list[int]]:
    """Indices of ``values`` in ascending order of value, equal values grouped together."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and values[groups[-1][0]] == values[i]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def ranks(values: list[float]) -> list[float]:
    """0-based ranks, ties sharing the mean of the ranks they span."""
    out = [0.0] * len(values)
    start = 0
    for group in tie_groups(values):
        mid = start + (len(group) - 1) / 2
        for i in group:
            out[i] = mid
        start += len(group)
    return out


def pearson(x: list[float], y: list[float]) -> float | None:
    """Pearson correlation; None with fewer than 3 points or a constant side."""
    if len(x) < 3:
        return None
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sx = math.sqrt(sum((a - mx) ** 2 for a in x))
    sy = math.sqrt(sum((b - my) ** 2 for b in y))
    return cov / (sx * sy) if sx > 0 and sy > 0 else None


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman rank correlation (Pearson of tie-averaged ranks)."""
    return pearson(ranks(x), ranks(y)) if len(x) >= 3 else None


def within_group_correlation(groups: list[tuple[list[float], list[float]]], method: str = "spearman") -> float | None:
    """The mean over groups (e.g. the samples of one prompt) of the correlation of x and y
    inside each group; groups where it is undefined (constant or under 3 points) are left out."""
    fn = spearman if method == "spearman" else pearson
    values = [v for v in (fn(x, y) for x, y in groups) if v is not None]
    return sum(values) / len(values) if values else None


def auc(scores: list[float], labels: list[float]) -> float | None:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties half
    (the Mann-Whitney U statistic on tie-averaged ranks)."""
    pos = sum(1 for l in labels if l > 0.5)
    neg = len(labels) - pos
    if not pos or not neg:
        return None
    r = ranks(scores)
    rank_sum = sum(r[i] + 1 for i, l in enumerate(labels) if l > 0.5)
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def pair_accuracy(chosen: list[float], rejected: list[float]) -> float | None:
    """Share of pairs ranked right (ties count half); None for no pairs."""
    if not chosen:
        return None
    return sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected)) / len(chosen)


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its normal 95% interval."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, 1.96 * math.sqrt(var / n)


def wilson_interval(p: float, n: int) -> tuple[float, float]:
    """95% Wilson score interval for a proportion p observed on n trials."""
    if n <= 0:
        return float("nan"), float("nan")
    z = 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half
