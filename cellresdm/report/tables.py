"""The report's tables: throughput of every timed step, Table 3 (pixel vs latent CellResDM), methods status and
the field-filtering summary."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellresdm.errors import CellResDMError
from cellresdm.io import load_torch_dict
from cellresdm.report.reading import read_json, read_table, require_columns, size_text
from cellresdm.stores import open_instances, store_exists

#: Methods trained with a GAN loss, whose checkpoint config says whether the VGG perceptual loss was on.
GAN_METHODS: tuple[str, ...] = ("pix2pix", "spade")
#: Name prefix of the latent-space CellResDM variants of Table 3.
LATENT_PREFIX = "cellresdm_latent"
#: Filter reasons of ``fields/{plate}.parquet`` (:mod:`cellresdm.filters`).
FILTER_REASONS: tuple[str, ...] = ("edge_well", "black_if", "missing", "unreadable")
THROUGHPUT_COLUMNS: tuple[str, ...] = (
    "step",
    "source",
    "seconds_per_image",
    "images_per_second",
    "seconds_vs_reference",
    "seconds_total",
    "image_size",
    "steps",
    "device",
    "precision",
    "note",
)
TABLE3_COLUMNS: tuple[str, ...] = ("method", "space", "mse", "seconds_per_image", "image_size", "device", "note")
METHODS_COLUMNS: tuple[str, ...] = ("method", "enabled", "trained", "sampled", "perceptual_loss", "note")


# ------------------------------------------------------------------------------------------------- throughput


def _cellprofiler_row(groundtruth_indexes: Mapping[str, str | os.PathLike]) -> dict[str, Any] | None:
    """Mean CellProfiler seconds per image set over the plates' ``groundtruth/{plate}/index.parquet``."""
    parts, sizes = [], []
    for plate, path in groundtruth_indexes.items():
        index = read_table(path, f"CellProfiler index of plate {plate}")
        require_columns(index, ["seconds"], str(path))
        parts.append(index["seconds"].to_numpy(dtype=float))
        if "labels" in index.columns and len(index) and Path(index["labels"].iloc[0]).is_file():
            import tifffile

            with tifffile.TiffFile(index["labels"].iloc[0]) as tif:
                sizes.append(tif.series[0].shape)
    seconds = np.concatenate(parts) if parts else np.zeros(0)
    if not len(seconds):
        return None
    mean = float(seconds.mean())
    return {
        "step": "segmentation",
        "source": "cellprofiler",
        "seconds_per_image": mean,
        "images_per_second": 1.0 / mean if mean > 0 else float("nan"),
        "seconds_total": float(seconds.sum()),
        "image_size": size_text(sizes[0]) if sizes else "",
        "device": "cpu",
        "note": (
            f"CellProfiler nuclei + cells per image set, mean of {len(seconds)} fields of "
            f"{', '.join(groundtruth_indexes)}: the 'seconds' column of groundtruth/{{plate}}/index.parquet "
            "(per-module wall times, JVM start shared out)"
        ),
    }


def throughput_table(
    sample_benchmarks: Mapping[str, str | os.PathLike],
    instances: Mapping[str, str | os.PathLike] | None = None,
    groundtruth_indexes: Mapping[str, str | os.PathLike] | None = None,
    train_benchmarks: Mapping[str, str | os.PathLike] | None = None,
    reference: str = "cellresdm",
) -> pd.DataFrame:
    """Seconds per image of every step timed in this run, one row per step and source.

    Rows: ``sampling`` per method (``benchmarks/sample_{method}.json``), ``segmentation`` per instance store
    (boundaries -> instances for a method, StarDist prediction for ``stardist_*``; attrs ``seconds_per_field``),
    ``segmentation`` of CellProfiler (mean of ``groundtruth/{plate}/index.parquet`` ``seconds``), and
    ``training`` per method (wall seconds, column ``s`` of Snakemake's ``benchmarks/train/{method}.tsv``, in
    ``seconds_total``).

    ``seconds_vs_reference`` is seconds per image over the reference's in the same step: for sampling the
    reference's sampling, for segmentation the reference's boundaries -> instances (so CellProfiler's row says
    how many times longer CellProfiler takes than getting instances from the reference's boundaries; add the
    reference's sampling row for the whole path from BF). Empty where the reference has no row.

    Args:
        sample_benchmarks: method -> its sampling benchmark JSON (seconds_per_image, images_per_second,
            image_size, steps, device, batch, precision).
        instances: source -> ``segmentation/{source}_instances.zarr``.
        groundtruth_indexes: plate -> ``groundtruth/{plate}/index.parquet``.
        train_benchmarks: method -> ``benchmarks/train/{method}.tsv``.
        reference: the source the ratios are relative to.

    Returns:
        Columns :data:`THROUGHPUT_COLUMNS`.

    Raises:
        CellResDMError: a given file is missing, unreadable or lacks its timing.
    """
    rows: list[dict[str, Any]] = []
    for method, path in sample_benchmarks.items():
        record = read_json(path, f"sampling benchmark of {method}")
        if "seconds_per_image" not in record:
            raise CellResDMError(f"{path}: sampling benchmark lacks 'seconds_per_image'")
        spi = float(record["seconds_per_image"])
        extra = [f"{k} {record[k]}" for k in ("batch", "tile", "n_samples") if record.get(k) is not None]
        rows.append(
            {
                "step": "sampling",
                "source": method,
                "seconds_per_image": spi,
                "images_per_second": float(record.get("images_per_second", 1.0 / spi if spi > 0 else np.nan)),
                "seconds_total": record.get("seconds_total"),
                "image_size": size_text(record.get("image_size")),
                "steps": record.get("steps"),
                "device": record.get("device", ""),
                "precision": record.get("precision") or "not recorded",
                "note": f"5 IF + 2 boundary channels per image; {', '.join(extra)}" if extra else "",
            }
        )
    for source, path in (instances or {}).items():
        store = open_instances(path)
        attrs = store.attrs
        spf = float(store.attr("seconds_per_field"))
        shape = store.arrays["nuclei"].shape if "nuclei" in store.arrays else None
        stardist = source.startswith("stardist")
        rows.append(
            {
                "step": "segmentation",
                "source": source,
                "seconds_per_image": spf,
                "images_per_second": 1.0 / spf if spf > 0 else float("nan"),
                "seconds_total": spf * shape[0] if shape else None,
                "image_size": size_text(shape),
                # boundaries -> instances is numpy/scipy only; StarDist records TensorFlow's device
                "device": attrs.get("device", "not recorded") if stardist else "cpu",
                "note": "StarDist2D nuclei prediction (after an untimed warm-up)"
                if stardist
                else "predicted boundaries -> nuclei and cell instances",
            }
        )
    cellprofiler = _cellprofiler_row(groundtruth_indexes or {})
    if cellprofiler is not None:
        rows.append(cellprofiler)
    for method, path in (train_benchmarks or {}).items():
        bench = read_table(path, f"training benchmark of {method}")
        require_columns(bench, ["s"], str(path))
        rows.append(
            {
                "step": "training",
                "source": method,
                "seconds_total": float(bench["s"].mean()),  # several rows when Snakemake repeats a benchmark
                "note": "wall seconds of the training job (Snakemake benchmark)",
            }
        )
    table = pd.DataFrame(rows, columns=list(THROUGHPUT_COLUMNS))
    ref_seconds = {
        step: table.loc[(table["step"] == step) & (table["source"] == reference), "seconds_per_image"]
        for step in ("sampling", "segmentation")
    }
    ratio = []
    for row in table.itertuples():
        ref = ref_seconds.get(row.step)
        ok = ref is not None and len(ref) and float(ref.iloc[0]) > 0 and pd.notna(row.seconds_per_image)
        ratio.append(float(row.seconds_per_image) / float(ref.iloc[0]) if ok else float("nan"))
    table["seconds_vs_reference"] = ratio
    floats = {c: "float64" for c in ("seconds_per_image", "images_per_second", "seconds_total")}
    return table.astype({**floats, "steps": "Int64"})


# ------------------------------------------------------------------------------------------------- Table 3


def table3_latent(
    quality_table: pd.DataFrame,
    sample_benchmarks: Mapping[str, str | os.PathLike],
    pixel: str = "cellresdm",
) -> pd.DataFrame:
    """Table 3: pixel vs latent CellResDM, MSE (mean over test images and IF channels, 0-255) and sampling time.

    Latent variants are the methods named ``cellresdm_latent*`` in the quality table or the benchmarks. Without
    one, the table holds the pixel row and a note row saying the latent variant is not enabled in this run.

    Args:
        quality_table: :func:`cellresdm.metrics.image_quality` rows.
        sample_benchmarks: method -> sampling benchmark JSON (see :func:`throughput_table`).
        pixel: the pixel-space method.

    Returns:
        Columns :data:`TABLE3_COLUMNS`; mse / seconds NaN where the run lacks them (the note says which).
    """
    require_columns(quality_table, ["method", "mse"], "image quality table")
    known = list(dict.fromkeys([*quality_table["method"], *sample_benchmarks]))
    latent = sorted(m for m in known if str(m).startswith(LATENT_PREFIX))
    rows = []
    for method in [pixel, *latent]:
        mse = quality_table.loc[quality_table["method"] == method, "mse"].to_numpy(dtype=float)
        record = (
            read_json(sample_benchmarks[method], f"sampling benchmark of {method}")
            if (method in sample_benchmarks)
            else {}
        )
        lacking = [what for what, ok in (("image quality", len(mse)), ("sampling benchmark", record)) if not ok]
        rows.append(
            {
                "method": method,
                "space": "latent" if method.startswith(LATENT_PREFIX) else "pixel",
                "mse": float(mse.mean()) if len(mse) else float("nan"),
                "seconds_per_image": float(record["seconds_per_image"]) if "seconds_per_image" in record else np.nan,
                "image_size": size_text(record.get("image_size")),
                "device": record.get("device", ""),
                "note": f"no {' and no '.join(lacking)} in this run" if lacking else "",
            }
        )
    if not latent:
        rows.append(
            {
                "method": LATENT_PREFIX,
                "space": "latent",
                "mse": float("nan"),
                "seconds_per_image": float("nan"),
                "image_size": "",
                "device": "",
                "note": f"latent variant not enabled in this run (add {LATENT_PREFIX} to config methods)",
            }
        )
    return pd.DataFrame(rows, columns=list(TABLE3_COLUMNS))


# ------------------------------------------------------------------------------------------------- methods


def _checkpoint_config(path: Path) -> dict[str, Any]:
    config = load_torch_dict(path, "checkpoint").get("config")
    if not isinstance(config, dict):
        raise CellResDMError(f"{path}: checkpoint has no 'config' dict")
    return config


def methods_status(
    config_methods: Sequence[str],
    all_methods: Sequence[str],
    models: Mapping[str, str | os.PathLike],
    predictions: Mapping[str, str | os.PathLike] | None = None,
) -> pd.DataFrame:
    """Which methods are enabled, trained and sampled in this run, why the others are missing, and whether the
    GAN methods trained with the VGG perceptual loss.

    Args:
        config_methods: config ``methods`` (enabled).
        all_methods: every method the package implements (``cellresdm.methods.method_names()``).
        models: method -> ``models/{method}/model.pt`` (trained when the file exists).
        predictions: method -> ``predictions/{method}/test.zarr`` (sampled when the store exists).

    Returns:
        Columns :data:`METHODS_COLUMNS`, one row per method (implemented ones first, then enabled ones the
        package does not know); perceptual_loss is "on"/"off" for :data:`GAN_METHODS` with a model, else "".
    """
    predictions = predictions or {}
    rows = []
    for method in list(dict.fromkeys([*all_methods, *config_methods])):
        enabled = method in config_methods
        model = Path(models[method]) if method in models else None
        trained = bool(model is not None and model.is_file())
        sampled = bool(method in predictions and store_exists(predictions[method]))
        perceptual = ""
        if trained and method in GAN_METHODS:
            section = _checkpoint_config(model).get(method, {})
            flag = section.get("perceptual")
            perceptual = "not recorded" if flag is None else "on" if flag else "off (no VGG weights or weight 0)"
        if not enabled:
            note = "not enabled in config methods"
        elif method not in all_methods:
            note = "enabled but not implemented by this package"
        elif not trained:
            note = f"no model ({model if model is not None else 'no path given'})"
        elif not sampled:
            note = "trained, no predictions of the test split"
        else:
            note = "trained and sampled"
        rows.append(
            {
                "method": method,
                "enabled": enabled,
                "trained": trained,
                "sampled": sampled,
                "perceptual_loss": perceptual,
                "note": note,
            }
        )
    return pd.DataFrame(rows, columns=list(METHODS_COLUMNS))


# ------------------------------------------------------------------------------------------------- filtering


def filtering_summary(fields: Mapping[str, str | os.PathLike]) -> pd.DataFrame:
    """Field counts per plate: total, kept and dropped per filter reason (plus an ``all`` row).

    Args:
        fields: plate -> ``fields/{plate}.parquet`` (columns keep, reason).

    Returns:
        Columns plate, fields, kept, then one column per reason of :data:`FILTER_REASONS` (and any other reason
        found).
    """
    rows = []
    reasons = list(FILTER_REASONS)
    for plate, path in fields.items():
        table = read_table(path, f"filter table of plate {plate}")
        require_columns(table, ["keep", "reason"], str(path))
        dropped = table.loc[~table["keep"].astype(bool), "reason"].astype(str)
        counts = dropped.value_counts()
        reasons += [r for r in counts.index if r not in reasons]
        kept = int(table["keep"].astype(bool).sum())
        rows.append({"plate": plate, "fields": len(table), "kept": kept, **counts.to_dict()})
    table = pd.DataFrame(rows, columns=["plate", "fields", "kept", *reasons]).fillna(0)
    if len(table):
        total = table.drop(columns="plate").sum().to_dict()
        table = pd.concat([table, pd.DataFrame([{"plate": "all", **total}])], ignore_index=True)
    return table.astype({c: "int64" for c in ["fields", "kept", *reasons]})
