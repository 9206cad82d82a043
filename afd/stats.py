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


# --------------------------------------------------------------------------------------------
# Across seeds: the statistics a study's claims are decided on (VERIFICATION.md §4)

def iqm(values: list[float]) -> float | None:
    """Interquartile mean: the mean of the middle half (rliable; Agarwal et al. 2021), with the
    two quartile points weighted by how much of them falls inside."""
    xs = sorted(v for v in values if v is not None)
    n = len(xs)
    if not n:
        return None
    lo, hi = n / 4, 3 * n / 4
    total = sum(x * max(0.0, min(i + 1, hi) - max(i, lo)) for i, x in enumerate(xs))
    return total / (hi - lo)


def probability_of_improvement(x: list[float], y: list[float]) -> float | None:
    """P(X > Y) for a run X of one method and a run Y of another, ties half (rliable's
    probability of improvement, over all pairs of their seeds)."""
    x, y = [v for v in x if v is not None], [v for v in y if v is not None]
    if not x or not y:
        return None
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in x for b in y) / (len(x) * len(y))


def bootstrap(per_seed: list, rounds: int = 4000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean over seeds and its bootstrap interval. ``per_seed`` holds one entry a seed: a number,
    or a mapping prompt -> value (a figure measured on a seed's own prompts, e.g. a difference of
    two methods on the same prompts, already paired). Each round resamples the seeds with
    replacement and, within each seed drawn, its prompts: the two levels of variation a study
    has (VERIFICATION.md §4: a bootstrap over seeds, paired over prompts within a seed)."""
    import random

    entries = [e for e in per_seed if e is not None and (not isinstance(e, dict) or e)]
    if not entries:
        return {"mean": None, "ci95": None, "iqm": None, "seeds": 0}
    means = [sum(e.values()) / len(e) if isinstance(e, dict) else float(e) for e in entries]
    out = {"mean": sum(means) / len(means), "iqm": iqm(means), "seeds": len(means), "per_seed": means}
    if len(entries) < 2:
        out["ci95"] = None
        return out
    rng = random.Random(seed)
    stats = []
    for _ in range(rounds):
        total = 0.0
        for _ in entries:
            e = entries[rng.randrange(len(entries))]
            if isinstance(e, dict):
                values = list(e.values())
                total += sum(values[rng.randrange(len(values))] for _ in values) / len(values)
            else:
                total += float(e)
        stats.append(total / len(entries))
    stats.sort()
    tail = (1 - level) / 2
    out["ci95"] = [stats[int(tail * (rounds - 1))], stats[int((1 - tail) * (rounds - 1))]]
    return out


def verdict(entry: dict | None, null: float = 0.0, side: str = "above") -> str:
    """The decision rule of a claim, fixed before its runs: **reproduced** when the interval lies
    wholly on the claim's side of ``null`` (``side`` "above" or "below"), **refuted** when it lies
    wholly on the other side, **inconclusive** otherwise (or without an interval)."""
    if not entry or entry.get("ci95") is None:
        return "inconclusive"
    lo, hi = entry["ci95"]
    if side == "below":
        lo, hi, null = -hi, -lo, -null
    return "reproduced" if lo > null else "refuted" if hi < null else "inconclusive"


def gao_fit(kl: list[float], gain: list[float]) -> dict | None:
    """Least squares of Gao et al.'s Best-of-N form ``gain(d) = d (alpha - beta d)`` with
    ``d = sqrt(KL)``: (alpha, beta), or None with fewer than 2 points of positive KL."""
    points = [(math.sqrt(k), g) for k, g in zip(kl, gain) if k > 0]
    if len(points) < 2:
        return None
    # gain = alpha d - beta d^2: normal equations of two regressors without intercept
    s11 = sum(d * d for d, _ in points)
    s12 = sum(d ** 3 for d, _ in points)
    s22 = sum(d ** 4 for d, _ in points)
    b1 = sum(d * g for d, g in points)
    b2 = sum(d * d * g for d, g in points)
    det = s11 * s22 - s12 * s12
    if det == 0:
        return None
    alpha = (b1 * s22 - b2 * s12) / det
    minus_beta = (s11 * b2 - s12 * b1) / det
    return {"alpha": alpha, "beta": -minus_beta}
