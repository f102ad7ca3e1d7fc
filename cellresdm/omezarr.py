"""OME-NGFF HCS plates of a method's predictions, written and read with ome-zarr-py (OME-Zarr 0.5, zarr v3).

One plate becomes one ``{plate}.ome.zarr`` group::

    {plate}.ome.zarr                 plate metadata: the plate's 16 rows (A-P) and 24 columns (01-24), its wells
      {row}/{col}                    well metadata: its fields (paths = site numbers)
        {site}                       multiscale image (c, y, x) uint16, ``levels`` levels (2x down each)
                                     channels: DNA, RNA, ER, AGP, Mito (predicted), optionally Brightfield,
                                     HighZBF, LowZBF (the input) and DNA_std ... Mito_std (uncertainty, with
                                     several samples); omero names, colours and display windows
          labels/nuclei, labels/cells   instance labels (y, x) int32, the same pyramid (nearest)

Intensities are uint16 counts in the range of the real images: the dataset stored every channel as
``clip((x - low) / (high - low), 0, 1)`` with the ``low``/``high`` percentiles of its norm table (per plate, or per
image), so a prediction ``p`` in [0, 1] maps back to ``round(low + p (high - low))``, and a standard deviation
``s`` to ``round(s (high - low))``. Values outside the percentiles were clipped when the dataset was built, so the
counts lie in [low, high]. Intensity measurements on the plate have the units of the real images.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr
from zarr.codecs import BloscCodec

from cellresdm import layout
from cellresdm.errors import CellResDMError
from cellresdm.io import atomic_dir
from cellresdm.stores import open_dataset, open_instances, open_predictions

_LOG = logging.getLogger(__name__)

#: omero display colour (RRGGBB) of every channel: the usual Cell Painting pseudo-colours, grey brightfield.
CHANNEL_COLOURS: dict[str, str] = {
    "DNA": "0000FF",
    "RNA": "00FFFF",
    "ER": "00FF00",
    "AGP": "FF0000",
    "Mito": "FF00FF",
    "Brightfield": "FFFFFF",
    "HighZBF": "FFFFFF",
    "LowZBF": "FFFFFF",
}
#: Suffix of an uncertainty channel's name (``DNA_std``).
STD_SUFFIX = "_std"
_UINT16_MAX = np.iinfo(np.uint16).max


@dataclass(frozen=True)
class OmeZarrSettings:
    """What goes into a plate (config section ``omezarr``).

    Attributes:
        include_bf: add the three brightfield input planes as channels.
        include_uncertainty: add the per-pixel standard deviation of the IF channels where the predictions have
            one (``n_samples`` > 1).
        levels: resolution levels of every image and label pyramid (level k is 2**k times smaller).
        threads: threads of the dask scheduler that writes the pyramids.
    """

    include_bf: bool = True
    include_uncertainty: bool = True
    levels: int = 3
    threads: int = 1

    def __post_init__(self) -> None:
        if self.levels < 1:
            raise CellResDMError(f"omezarr.levels must be >= 1, got {self.levels}")

    @classmethod
    def from_config(cls, section: dict[str, Any], threads: int = 1) -> OmeZarrSettings:
        """From the validated config section ``omezarr``."""
        return cls(
            include_bf=bool(section["include_bf"]),
            include_uncertainty=bool(section["include_uncertainty"]),
            levels=int(section["levels"]),
            threads=int(threads),
        )


def to_counts(values: np.ndarray, low: np.ndarray, high: np.ndarray, offset: bool = True) -> np.ndarray:
    """Map normalised intensities back to uint16 counts.

    Args:
        values: (C, H, W) values in [0, 1] (clipped to it first when ``offset``; standard deviations are >= 0).
        low, high: (C,) the percentiles each channel was normalised with.
        offset: True for intensities (``low + v (high - low)``), False for standard deviations (``v (high -
            low)``).

    Returns:
        (C, H, W) uint16, rounded to the nearest count and clipped to [0, 65535].
    """
    v = np.asarray(values, dtype=np.float64)
    span = (np.asarray(high, dtype=np.float64) - np.asarray(low, dtype=np.float64))[:, None, None]
    span = np.maximum(span, 0.0)
    counts = np.clip(v, 0.0, 1.0) * span + np.asarray(low, dtype=np.float64)[:, None, None] if offset else v * span
    return np.clip(np.rint(counts), 0, _UINT16_MAX).astype(np.uint16)


def field_percentiles(
    norm: pd.DataFrame, scope: str, plate: str, field: str, source: str | os.PathLike
) -> dict[str, tuple[float, float]]:
    """{channel: (low, high)}: the percentiles a dataset normalised field ``field`` of ``plate`` with.

    Args:
        norm: the dataset's norm table (:meth:`cellresdm.stores.DatasetStore.norm`).
        scope: the dataset's attribute ``scope``: ``"plate"`` (the plate's rows) or ``"image"`` (the field's).
        plate, field: the field.
        source: the dataset, named in errors.

    Raises:
        CellResDMError: naming ``source`` when the table has no row for the plate (or field) and a channel.
    """
    rows = norm[norm["plate"].astype(str) == plate]
    if scope == "image":
        rows = rows[rows["field"].astype(str) == field]
    found = {str(r.channel): (float(r.low), float(r.high)) for r in rows.itertuples()}
    missing = [c for c in layout.ALL_CHANNELS if c not in found]
    if missing:
        where = f"plate {plate}" + (f", field {field}" if scope == "image" else "")
        raise CellResDMError(f"{source}: norm table has no percentiles of {where} for {', '.join(missing)}")
    return found


def _channel_meta(name: str, window: tuple[float, float], active: bool) -> dict[str, Any]:
    base = name.removesuffix(STD_SUFFIX)
    return {
        "label": name,
        "color": CHANNEL_COLOURS[base],
        "active": active,
        "window": {"min": 0, "max": int(_UINT16_MAX), "start": float(window[0]), "end": float(window[1])},
    }


def _row_positions(table: pd.DataFrame, key: Sequence[str] = ("plate", "field")) -> dict[tuple[str, ...], int]:
    return {k: i for i, k in enumerate(zip(*(table[c].astype(str) for c in key), strict=True))}


def plate_names(predictions: str | os.PathLike) -> list[str]:
    """The plates of a prediction store, in the order of its field table."""
    store = open_predictions(predictions, arrays=("if",), columns=("plate",))
    return list(dict.fromkeys(store.fields["plate"].astype(str)))


def write_hcs_plate(
    out: str | os.PathLike,
    plate: str,
    predictions: str | os.PathLike,
    dataset: str | os.PathLike,
    instances: str | os.PathLike | None,
    pixel_size_um: float,
    settings: OmeZarrSettings = OmeZarrSettings(),
    log: logging.Logger | None = None,
) -> dict[str, Any]:
    """Write the predicted fields of ``plate`` as one OME-NGFF HCS plate at ``out`` (module docstring), atomically.

    Args:
        out: the plate's ``.ome.zarr`` folder (replaced when it exists).
        plate: the plate (``plate`` column of the stores' field tables).
        predictions: the method's prediction store: ``if`` (N, 5, H, W) in [0, 1], optional ``if_std``.
        dataset: the dataset store the predictions were sampled from: its ``bf`` (N, 3, H, W) and norm table.
        instances: the method's instance store (``nuclei``/``cells`` (N, H, W) int32), or None for no labels.
        pixel_size_um: pixel size of the fields (their physical scale in the metadata).
        settings: channels and pyramid.
        log: logger (defaults to this module's).

    Returns:
        Summary: plate, fields, wells, channels, labels, shape (H, W), levels, seconds, bytes, out.

    Raises:
        CellResDMError: naming the store and the plate or field when the plate has no predictions, a predicted
            field is absent from the dataset or the instance store, shapes differ or percentiles are missing.
    """
    import dask
    from ome_zarr.writer import write_image, write_labels, write_plate_metadata, write_well_metadata

    log = log or _LOG
    start = time.perf_counter()
    out = Path(out)
    columns = ("plate", "field", "well", "row", "col", "site")
    pred = open_predictions(predictions, arrays=("if",), columns=columns)
    with_std = settings.include_uncertainty and "if_std" in zarr.open_group(str(pred.path), mode="r")
    if with_std:
        pred = open_predictions(predictions, arrays=("if", "if_std"), columns=columns)
    data = open_dataset(dataset, arrays=("bf",) if settings.include_bf else (), columns=("plate", "field"))
    rows = np.flatnonzero(pred.fields["plate"].astype(str).to_numpy() == plate)
    if len(rows) == 0:
        raise CellResDMError(f"{pred.path}: no predicted field of plate {plate}")
    height, width = pred.shape
    if settings.include_bf and data.shape != (height, width):
        raise CellResDMError(f"{data.path}: fields of {data.shape}, the predictions {pred.path} {height}x{width}")
    in_data = _row_positions(data.fields)
    norm, scope = data.norm(), str(data.attr("scope"))
    labels_store, in_labels = None, {}
    if instances is not None:
        labels_store = open_instances(instances, columns=("plate", "field"))
        if labels_store.shape != (height, width):
            raise CellResDMError(
                f"{labels_store.path}: labels of {labels_store.shape} but the predictions are {height}x{width}"
            )
        in_labels = _row_positions(labels_store.fields)
    names = list(layout.IF_CHANNELS)
    names += list(layout.BF_CHANNELS) if settings.include_bf else []
    names += [c + STD_SUFFIX for c in layout.IF_CHANNELS] if with_std else []
    table = pred.fields.iloc[rows]
    wells: dict[tuple[int, int], list[tuple[int, int, str]]] = {}
    for i, rec in zip(rows, table.itertuples(), strict=True):
        wells.setdefault((int(rec.row), int(rec.col)), []).append((int(rec.site), int(i), str(rec.field)))
    factors = [2**k for k in range(1, settings.levels)]
    scale = {"c": 1.0, "y": float(pixel_size_um), "x": float(pixel_size_um)}
    units = {"y": "micrometer", "x": "micrometer"}
    # one chunk per channel and level; blosc zstd with bit shuffling: smaller and faster than zarr's default zstd
    compressors = [BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")]
    chunks = [
        {"chunks": (1, max(1, height // f), max(1, width // f)), "compressors": compressors} for f in (1, *factors)
    ]
    label_chunks = [
        {"chunks": (max(1, height // f), max(1, width // f)), "compressors": compressors} for f in (1, *factors)
    ]
    row_names = [chr(ord("A") + r) for r in range(layout.N_ROWS)]
    col_names = [f"{c:02d}" for c in range(1, layout.N_COLS + 1)]
    for r, c in wells:
        if not (1 <= r <= layout.N_ROWS and 1 <= c <= layout.N_COLS):
            raise CellResDMError(f"{pred.path}: plate {plate} has a field in row {r}, column {c}, outside the plate")
    objects = list(labels_store.arrays) if labels_store is not None else []
    with atomic_dir(out) as tmp, dask.config.set(scheduler="threads", num_workers=settings.threads):
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        well_paths = [f"{row_names[r - 1]}/{col_names[c - 1]}" for r, c in sorted(wells)]
        field_count = max(len(v) for v in wells.values())
        write_plate_metadata(root, row_names, col_names, well_paths, field_count=field_count, name=plate)
        for (r, c), sites in sorted(wells.items()):
            well_group = root.require_group(row_names[r - 1]).require_group(col_names[c - 1])
            sites = sorted(sites)
            write_well_metadata(well_group, [{"path": str(site)} for site, _, _ in sites])
            for site, i, field in sites:
                key = (plate, field)
                perc = field_percentiles(norm, scope, plate, field, data.path)
                low = np.array([perc[ch][0] for ch in layout.IF_CHANNELS])
                high = np.array([perc[ch][1] for ch in layout.IF_CHANNELS])
                planes = [to_counts(pred["if"][i], low, high)]
                windows = [perc[ch] for ch in layout.IF_CHANNELS]
                if settings.include_bf:
                    if key not in in_data:
                        raise CellResDMError(f"{data.path}: has no field {field} of plate {plate} (in {pred.path})")
                    bf_low = np.array([perc[ch][0] for ch in layout.BF_CHANNELS])
                    bf_high = np.array([perc[ch][1] for ch in layout.BF_CHANNELS])
                    planes.append(to_counts(data["bf"][in_data[key]], bf_low, bf_high))
                    windows += [perc[ch] for ch in layout.BF_CHANNELS]
                if with_std:
                    planes.append(to_counts(pred["if_std"][i], low, high, offset=False))
                    windows += [(0.0, float(h - lo) / 4) for lo, h in zip(low, high, strict=True)]
                image = np.concatenate(planes)
                omero = {
                    "name": f"{plate} {field}",
                    "channels": [
                        _channel_meta(n, w, active=n in layout.IF_CHANNELS) for n, w in zip(names, windows, strict=True)
                    ],
                    "rdefs": {"model": "color"},
                }
                field_group = well_group.require_group(str(site))
                write_image(
                    image,
                    field_group,
                    scale_factors=factors,
                    name=field,
                    axes="cyx",
                    scale=scale,
                    axes_units=units,
                    storage_options=chunks,
                    omero=omero,
                )
                for obj in objects:
                    if key not in in_labels:
                        raise CellResDMError(f"{labels_store.path}: has no field {field} of plate {plate}")
                    write_labels(
                        np.asarray(labels_store[obj][in_labels[key]], dtype=np.int32),
                        field_group,
                        name=obj,
                        scaler=None,
                        scale_factors=factors,
                        axes="yx",
                        scale={"y": scale["y"], "x": scale["x"]},
                        axes_units=units,
                        storage_options=label_chunks,
                        label_metadata={"source": {"image": "../../"}},
                    )
                field_group.attrs["cellresdm"] = {"plate": plate, "field": field, "site": site}
        root.attrs["cellresdm"] = {
            "plate": plate,
            "method": str(pred.attrs.get("method", "")),
            "predictions": str(pred.path),
            "dataset": str(data.path),
            "instances": None if labels_store is None else str(labels_store.path),
            "channels": names,
            "labels": objects,
            "intensity": "uint16 counts: low + p (high - low) with the dataset's percentiles (std: s (high - low))",
            "pixel_size_um": float(pixel_size_um),
        }
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    n = len(rows)
    log.info(
        "plate %s: %d fields in %d wells, %d channels, labels %s, %d levels: %s (%.1f MB, %.1f s)",
        plate,
        n,
        len(wells),
        len(names),
        objects,
        settings.levels,
        out,
        size / 1e6,
        seconds,
    )
    return {
        "plate": plate,
        "fields": n,
        "wells": len(wells),
        "channels": names,
        "labels": objects,
        "shape": [height, width],
        "levels": settings.levels,
        "seconds": seconds,
        "bytes": size,
        "out": str(out),
    }
