"""The ``segment`` step: every field of a prediction store to instance labels, written as an instance store.

Reads ``boundaries`` (N, 2, H, W) probabilities of a prediction store, runs
:func:`cellresdm.segment.instances_from_boundaries` on the fields in parallel threads (numpy and OpenCV release
the GIL) and writes the instance store (:mod:`cellresdm.stores`) with ``nuclei`` and ``cells`` (N, H, W) int32,
attrs ``source``, ``objects``, ``seconds_per_field`` and ``settings``, and the predictions' field table.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cellresdm import layout
from cellresdm.errors import CellResDMError, ConfigError
from cellresdm.segment import InstanceSettings, instances_from_boundaries
from cellresdm.stores import create_instances, gather_stores, open_instances, open_predictions


def segment_predictions(
    predictions: str | os.PathLike,
    out: str | os.PathLike,
    settings: InstanceSettings,
    workers: int = 2,
    progress: bool = True,
    log: logging.Logger | None = None,
    rows: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Segment the fields of a prediction store (all, or its ``rows``: a shard) and write their instance store.

    Args:
        predictions: the prediction store, with ``boundaries`` (N, 2, H, W) probabilities ([nuclei, cells]);
            its attrs ``method`` names the source (else the store's folder).
        out: the instance store to write (atomically) with ``nuclei`` and ``cells`` (N, H, W) int32 and attrs
            ``source``, ``objects``, ``seconds_per_field`` (mean time of :func:`instances_from_boundaries` per
            field, in its thread, without I/O) and ``settings`` (with ``workers``).
        settings: boundaries -> instances settings.
        workers: fields segmented in parallel threads.
        progress: show a progress bar.
        log: logger (default ``cellresdm``).
        rows: row positions of the fields to segment (default: all), in the order to write them.

    Returns:
        Summary: source, fields, image_size, seconds_per_field, fields_per_second (throughput with I/O and
        threads), workers, mean_nuclei and mean_cells per field.

    Raises:
        CellResDMError: naming the store or field for a missing store, array or field table, a wrong shape,
            or NaN in a prediction.
    """
    if workers < 1:
        raise ConfigError(f"segment workers must be >= 1, got {workers}")
    log = log or logging.getLogger("cellresdm")
    predictions, out = Path(predictions), Path(out)
    store = open_predictions(predictions, arrays=("boundaries",))
    boundaries = store["boundaries"]
    selected = np.arange(len(store)) if rows is None else np.asarray(rows, dtype=np.int64)
    n, (height, width) = len(selected), store.shape
    source = str(store.attrs.get("method", predictions.parent.name))
    fields = store.fields
    names = [
        f"{predictions} field {r}" + (f" ({fields['field'].iloc[r]})" if "field" in fields.columns else "")
        for r in selected
    ]
    counts = np.zeros((n, 2), dtype=np.int64)
    seconds = np.zeros(n)

    start = time.perf_counter()
    with create_instances(out, layout.OBJECT_CHANNELS, n, (height, width)) as writer:

        def segment(i: int) -> None:
            # each thread reads, segments and writes its own fields (one chunk each), so memory stays bounded
            field = np.asarray(boundaries[int(selected[i])])
            t0 = time.perf_counter()
            nuclei, cells = instances_from_boundaries(field[0], field[1], settings, field=names[i])
            seconds[i] = time.perf_counter() - t0
            writer.write_field(i, nuclei=nuclei, cells=cells)
            counts[i] = int(nuclei.max()), np.count_nonzero(np.bincount(cells.ravel())[1:])

        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            with tqdm(total=n, desc=f"segment {source}", unit="field", disable=not progress) as bar:
                for _ in pool.map(segment, range(n)):
                    bar.update(1)
        finally:
            pool.shutdown(cancel_futures=True)  # after a bad field, do not segment the rest
        wall = time.perf_counter() - start
        summary = {
            "source": source,
            "fields": int(n),
            "image_size": [int(height), int(width)],
            "seconds_per_field": float(seconds.mean()) if n else 0.0,
            "fields_per_second": n / wall if wall > 0 else 0.0,
            "workers": workers,
            "mean_nuclei": float(counts[:, 0].mean()) if n else 0.0,
            "mean_cells": float(counts[:, 1].mean()) if n else 0.0,
        }
        writer.finish(
            store if rows is None else fields.iloc[selected].reset_index(drop=True),
            {
                "source": source,
                "objects": list(layout.OBJECT_CHANNELS),
                "seconds_per_field": summary["seconds_per_field"],
                # the thread count is recorded beside the algorithm's settings
                "settings": {**settings.to_dict(), "workers": workers},
            },
        )
    log.info(
        "%s: %d fields of %dx%d segmented, %.3f s per field (%.1f fields/s with I/O, %d threads), "
        "%.1f nuclei and %.1f cells per field",
        source,
        n,
        height,
        width,
        summary["seconds_per_field"],
        summary["fields_per_second"],
        workers,
        summary["mean_nuclei"],
        summary["mean_cells"],
    )
    return summary


def gather_instances(
    shards: Sequence[str | os.PathLike], predictions: str | os.PathLike, out: str | os.PathLike
) -> dict[str, Any]:
    """Put one method's shard instance stores together (:mod:`cellresdm.shards`) as :func:`segment_predictions`
    writes the whole prediction store in one job: fields in the predictions' order, ``seconds_per_field`` the
    mean over every field. Returns the store's attributes.

    Raises:
        CellResDMError: an invalid shard store, shards that disagree, or fields not covered exactly once.
    """
    fields = open_predictions(predictions, arrays=()).fields
    stores = [open_instances(path) for path in shards]
    if not stores:
        raise CellResDMError(f"{out}: no instance shards to gather")
    n = sum(len(store) for store in stores)
    seconds = sum(float(store.attr("seconds_per_field")) * len(store) for store in stores)
    attrs = {**stores[0].attrs, "seconds_per_field": seconds / n if n else 0.0}
    gather_stores(shards, out, fields, attrs)
    return attrs
