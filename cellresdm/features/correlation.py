"""Table 2: per source and feature the Pearson r across test images between real and synthetic per-image
values, averaged per feature category (:func:`feature_correlation`, :func:`table2`, :func:`write_table2`)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cellresdm.errors import CellResDMError, ConfigError
from cellresdm.features.columns import CATEGORIES, feature_category
from cellresdm.io import atomic_path

_LOG = logging.getLogger("cellresdm")

#: Columns of the long correlation table.
CORRELATION_COLUMNS: tuple[str, ...] = ("source", "cell_line", "category", "n_features", "r")

_KEYS = ["Metadata_Plate", "Metadata_Field"]


def _constant(v: np.ndarray) -> bool:
    """True when ``v`` varies by no more than float rounding of its magnitude."""
    return bool(np.ptp(v) <= 1e-12 * max(float(np.abs(v).max()), 1e-300))


def _pearson_per_feature(real: pd.DataFrame, synth: pd.DataFrame, min_images: int) -> pd.Series:
    """Pearson r per column over rows where both are finite; NaN where fewer than ``min_images`` pairs or
    either side is constant."""
    out = {}
    for col in real.columns:
        x, y = real[col].to_numpy(float), synth[col].to_numpy(float)
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() < min_images or _constant(x[ok]) or _constant(y[ok]):
            continue  # too few pairs, or r undefined
        x, y = x[ok] - x[ok].mean(), y[ok] - y[ok].mean()
        sx, sy = np.sqrt((x * x).sum()), np.sqrt((y * y).sum())
        out[col] = float(np.clip((x * y).sum() / (sx * sy), -1.0, 1.0))
    return pd.Series(out, dtype=float)


def feature_correlation(
    real: pd.DataFrame,
    synthetic_tables: Mapping[str, pd.DataFrame],
    by: Sequence[str] = ("category",),
    min_images: int = 3,
) -> pd.DataFrame:
    """Mean Pearson r between real and synthetic per-image features, per source and category (Table 2).

    For each source and feature (columns with a :func:`feature_category`), r across the images present in
    both tables (matched on ``Metadata_Plate`` and ``Metadata_Field``; pairs with a NaN dropped); a feature
    with fewer than ``min_images`` pairs or constant on either side is dropped. r is then averaged per
    category (AreaShape is its own category).

    Args:
        real: features of the real images (:func:`extract_features` table).
        synthetic_tables: {source: features of its predictions}.
        by: ``("category",)``, or ``("cell_line", "category")`` to add one block per cell line (images of
            that line only) after the all-lines block.
        min_images: fewest image pairs for a feature's r.

    Returns:
        Long table with :data:`CORRELATION_COLUMNS`: source, cell_line (``all`` or the line), category,
        n_features (features with an r), r (their mean).
    """
    if set(by) - {"category", "cell_line"} or "category" not in by:
        raise ConfigError(f"feature_correlation by must be ('category',) or ('cell_line', 'category'), got {by}")
    for name, table in {"real": real, **synthetic_tables}.items():
        missing = [c for c in _KEYS if c not in table.columns]
        if missing:
            raise CellResDMError(f"feature table of {name} lacks {missing}")
    features = [c for c in real.columns if feature_category(c) is not None]
    rows = []
    for source, synth in synthetic_tables.items():
        common = [c for c in features if c in synth.columns]
        merged = real[[*_KEYS, "Metadata_CellLine", *common]].merge(
            synth[[*_KEYS, *common]], on=_KEYS, suffixes=("", "__synthetic"), validate="one_to_one"
        )
        if merged.empty:
            raise CellResDMError(f"no image of {source} matches a real image on {_KEYS}")
        groups = [("all", merged)]
        if "cell_line" in by:
            groups += [(str(line), g) for line, g in merged.groupby("Metadata_CellLine", sort=True)]
        for line, g in groups:
            r = _pearson_per_feature(
                g[common], g[[f"{c}__synthetic" for c in common]].set_axis(common, axis=1), min_images
            )
            for cat in CATEGORIES:
                vals = r[r.index.map(feature_category) == cat] if len(r) else r
                rows.append(
                    {
                        "source": source,
                        "cell_line": line,
                        "category": cat,
                        "n_features": int(len(vals)),
                        "r": float(vals.mean()) if len(vals) else float("nan"),
                    }
                )
    return pd.DataFrame(rows, columns=list(CORRELATION_COLUMNS))


def table2(correlation: pd.DataFrame, cell_line: str = "all") -> pd.DataFrame:
    """Table 2 layout of :func:`feature_correlation` output: categories as rows, ``n_features`` (the most
    over sources) then one column per source with its mean r."""
    sub = correlation[correlation["cell_line"] == cell_line]
    wide = sub.pivot(index="category", columns="source", values="r")
    wide = wide.reindex(index=[c for c in CATEGORIES if c in set(sub["category"])])
    wide = wide[list(dict.fromkeys(sub["source"]))]
    n = sub.groupby("category")["n_features"].max().reindex(wide.index)
    wide.insert(0, "n_features", n.astype(int))
    wide.columns.name = None
    return wide


def write_table2(
    real: str | os.PathLike,
    synthetic: Mapping[str, str | os.PathLike],
    out_csv: str | os.PathLike,
    out_md: str | os.PathLike | None = None,
    by: Sequence[str] = ("cell_line", "category"),
    min_images: int = 3,
    log: logging.Logger | None = None,
) -> pd.DataFrame:
    """Read feature parquets, compute :func:`feature_correlation` and write it (long CSV, atomically), plus
    a Markdown file with Table 2 for all lines and one per cell line. Returns the long table."""
    log = log or _LOG

    def read(path: str | os.PathLike) -> pd.DataFrame:
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            raise CellResDMError(f"cannot read feature table {path}: {exc}") from exc

    corr = feature_correlation(read(real), {k: read(v) for k, v in synthetic.items()}, by=by, min_images=min_images)
    with atomic_path(out_csv) as tmp:
        corr.to_csv(tmp, index=False)
    if out_md is not None:
        blocks = []
        for line in dict.fromkeys(corr["cell_line"]):
            t = table2(corr, line)
            blocks.append(f"### Feature correlation (Pearson r, real vs synthetic), cell line: {line}\n\n")
            blocks[-1] += t.to_markdown(floatfmt=("", ".0f", *[".3f"] * (t.shape[1] - 1))) + "\n"
        with atomic_path(out_md) as tmp:
            tmp.write_text("\n".join(blocks))
    for source in dict.fromkeys(corr["source"]):
        sub = corr[(corr["source"] == source) & (corr["cell_line"] == "all")]
        means = dict(zip(sub["category"], sub["r"].round(3), strict=True))
        log.info("feature correlation %s: %s", source, json.dumps(means))
    return corr
