"""PNG plots for run folders (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def line_plot(path: str | Path, series: dict[str, tuple[list, list]], xlabel: str, ylabel: str,
              title: str, logx: bool = False) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, (x, y) in series.items():
        if len(x):
            ax.plot(x, y, marker="o" if len(x) < 30 else None, markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if logx:
        ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def bar_plot(path: str | Path, bars: dict[str, tuple[float, float, float]], ylabel: str, title: str,
             hline: float | None = None) -> Path:
    """One bar per name with its value and (low, high) interval: `bars[name] = (value, low, high)`."""
    plt = _pyplot()

    names = list(bars)
    values = [bars[n][0] for n in names]
    err = [[bars[n][0] - bars[n][1] for n in names], [bars[n][2] - bars[n][0] for n in names]]
    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(names) + 2), 4), dpi=120)
    ax.bar(range(len(names)), values, yerr=err, capsize=6, color="tab:blue", alpha=0.8)
    tilt = {"rotation": 20, "ha": "right"} if len(names) > 4 else {}
    ax.set_xticks(range(len(names)), names, **tilt)
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle="--", linewidth=1)
    for i, v in enumerate(values):
        ax.annotate(f"{v:.3f}", (i, v), textcoords="offset points", xytext=(12, 3), fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def points_and_curves_plot(path: str | Path, points: dict[str, tuple[float, float]],
                           curves: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str) -> Path:
    """Labelled points (name -> (x, y)) and curves (name -> (xs, ys), in the legend) on one axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
    for name, (x, y) in points.items():
        ax.scatter([x], [y], s=30)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    for name, (xs, ys) in curves.items():
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
