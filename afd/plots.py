"""PNG plots for run folders (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path


def line_plot(path: str | Path, series: dict[str, tuple[list, list]], xlabel: str, ylabel: str,
              title: str, logx: bool = False) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
