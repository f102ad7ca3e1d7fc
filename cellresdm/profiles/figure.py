"""The profiles figure: replicate, annotation and cross-modal mAP per source (:func:`plot_retrieval`)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cellresdm.io import atomic_path

_PANELS = (
    ("replicate", "Replicate retrieval\n(treatment wells vs controls)", "treatments"),
    ("annotation", "Same-annotation retrieval\n(treatments of one mechanism)", "annotations"),
    ("crossmodal", "Cross-modal retrieval\n(virtual well -> real well)", "wells"),
)


def plot_retrieval(
    tables: dict[str, pd.DataFrame], sources: Sequence[str], out: str | os.PathLike, threshold: float
) -> None:
    """One panel per retrieval test with rows: bars of mAP per source (mean over its groups), one dot per group
    (filled: retrieved, corrected p < ``threshold``), the fraction retrieved above each bar and the random
    level as a dashed line per bar.

    Args:
        tables: ``replicate``, ``annotation``, ``crossmodal`` -> their tables (columns source, map,
            random_map, retrieved); an empty table's panel says so.
        sources: the sources in plotting order.
        out: the PNG to write (atomically).
    """
    panels = [p for p in _PANELS if p[0] in tables]
    fig = Figure(figsize=(4.2 * len(panels), 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, (key, title, unit) in zip(axes[0], panels, strict=True):
        table = tables[key]
        shown = [s for s in sources if s in set(table["source"])]
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 1.12)
        ax.set_ylabel("mAP")
        if not shown:
            ax.text(0.5, 0.5, f"no {unit} to score", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            continue
        for x, source in enumerate(shown):
            rows = table[table["source"] == source]
            ax.bar(x, rows["map"].mean(), color="#9ecae1" if source != "real" else "#6baed6", width=0.7)
            ax.hlines(rows["random_map"].mean(), x - 0.35, x + 0.35, colors="k", linestyles="--", linewidth=1)
            jitter = rng.uniform(-0.2, 0.2, len(rows))
            retrieved = rows["retrieved"].to_numpy(bool)
            ax.scatter(x + jitter[retrieved], rows["map"][retrieved], s=14, color="#08519c", zorder=3)
            ax.scatter(
                x + jitter[~retrieved], rows["map"][~retrieved], s=14, facecolors="none", edgecolors="#08519c", zorder=3
            )
            ax.text(x, 1.04, f"{int(retrieved.sum())}/{len(rows)}", ha="center", fontsize=8)
        ax.set_xticks(range(len(shown)), shown, rotation=45, ha="right", fontsize=8)
    fig.suptitle(
        f"mAP per source; dots: {', '.join(p[2] for p in panels)} (filled: corrected p < {threshold:g}); "
        "dashed: random; numbers: retrieved",
        fontsize=8,
    )
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
