"""Tables and figures of the topology commands: markdown tables, line plots, bar charts, heatmaps.

Matplotlib runs headless (``Agg``); every file is written atomically, by global rank 0 only under DDP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from puma_lightning.io.atomic import atomic_write_text, atomic_write_with
from puma_lightning.pipeline.distributed import on_rank_zero


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; floats with 4 decimals, None as ``n/a``."""
    def cell(v: Any) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.4f}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _wrap(title: str, fig: Any) -> str:
    """The title broken into lines that fit the figure's width (long model paths would be cut off)."""
    import textwrap

    return textwrap.fill(title, width=max(30, int(fig.get_figwidth() * 11)))


def _save(fig: Any, path: Path) -> None:
    plt = _pyplot()
    fig.tight_layout()
    on_rank_zero(lambda: atomic_write_with(path, lambda p: fig.savefig(p, dpi=120, format="png")))
    plt.close(fig)


def line_plot(path: Path, x_labels: Sequence[str], series: dict[str, Sequence[float | None]], ylabel: str, title: str) -> None:
    """One line per series over the x labels (missing points skipped)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(x_labels)), 3.4))
    for name, values in series.items():
        pts = [(i, v) for i, v in enumerate(values) if v is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xticks(range(len(x_labels)), list(x_labels), rotation=20)
    ax.set_ylabel(ylabel)
    ax.set_title(_wrap(title, fig), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def bar_chart(path: Path, labels: Sequence[str], values: Sequence[float | None], ylabel: str, title: str) -> None:
    """Bars with their values written on top."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.5, 1.4 * len(labels)), 3.4))
    vals = [v if v is not None else 0.0 for v in values]
    bars = ax.bar(range(len(labels)), vals, color=["#888888"] * (len(labels) - 1) + ["#1f77b4"])
    for bar, v in zip(bars, values):
        ax.annotate("n/a" if v is None else f"{v:.4f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), list(labels), rotation=15)
    finite = [v for v in values if v is not None]
    if finite:
        lo, hi = min(finite), max(finite)
        ax.set_ylim(max(0.0, lo - 0.15 * (hi - lo + 1e-3) - 0.05), hi + 0.2 * (hi - lo + 1e-3) + 0.02)
    ax.set_ylabel(ylabel)
    ax.set_title(_wrap(title, fig), fontsize=10)
    _save(fig, path)


def heatmap(path: Path, rows: Sequence[str], cols: Sequence[str], values: Sequence[Sequence[float | None]], title: str,
            row_label: str = "source", col_label: str = "target") -> None:
    """A matrix with its values written in the cells (None cells left blank)."""
    import numpy as np

    plt = _pyplot()
    data = np.array([[np.nan if v is None else float(v) for v in r] for r in values], dtype=float)
    fig, ax = plt.subplots(figsize=(1.4 * len(cols) + 2.5, 1.1 * len(rows) + 1.5))
    im = ax.imshow(data, cmap="RdYlGn", vmin=min(0.9, np.nanmin(data)) if np.isfinite(data).any() else 0.9,
                   vmax=max(1.1, np.nanmax(data)) if np.isfinite(data).any() else 1.1)
    for i in range(len(rows)):
        for j in range(len(cols)):
            if np.isfinite(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.3f}", ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(cols)), list(cols), rotation=20)
    ax.set_yticks(range(len(rows)), list(rows))
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    ax.set_title(_wrap(title, fig), fontsize=10)
    fig.colorbar(im, ax=ax)
    _save(fig, path)


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (global rank 0 only under DDP; the others wait)."""
    on_rank_zero(lambda: atomic_write_text(path, text))
