"""Predicted boundaries to instance labels, and the shared instance store (DESIGN.md section 5, segmentation).

Every image-generation method predicts two boundary channels per field (nuclei, cells) as probabilities in
[0, 1]. The training targets are inner object outlines widened to a band (:func:`cellresdm.masks.
boundaries_from_labels`): every boundary pixel belongs to an object, objects are the areas the bands enclose,
and the area outside all objects carries no boundary. :func:`instances_from_boundaries` inverts that:

1. threshold both channels;
2. label the connected areas free of boundary (4-connected, so a diagonal line still separates two areas);
3. drop the background: the area touching the largest share of the field's border (when that share exceeds
   ``background_border_fraction``) and areas larger than the object's maximum;
4. close gaps: outlines with gaps leak into the background, so the background is searched again at larger
   closing radii (an erosion: gaps narrower than 2r close), on the boundary map downsampled 2x for speed;
   an area found there must be enclosed by boundary on most of its rim (``min_enclosure``) and, for nuclei,
   convex (``min_nucleus_solidity``). Nucleus outlines still open on one side (C-shaped) become the convex
   hull of their arcs (``hull_nuclei``);
5. give boundary pixels back to their objects: objects grow into the boundary band for ``grow`` steps, so
   pixels outside the band stay background; drop objects below the minimum areas;
6. give each cell area the id of the nucleus it holds (cell k holds nucleus k, as CellProfiler's
   IdentifySecondaryObjects numbers them); an area holding several nuclei (a missed line between two cells)
   is split among them by a watershed on the cell-boundary probability seeded with the nuclei; an area
   holding none is background (a pocket between cells) unless ``cells_need_nucleus`` is off.

:func:`segment_predictions` runs this over a ``predictions/{method}/test.zarr`` store and writes the instance
store that the StarDist baselines and the scoring share: a zarr v3 group with ``nuclei`` and/or ``cells``
(N, H, W) int32 arrays (chunks (1, H, W)), attrs ``source``, ``objects``, ``seconds_per_field``,
``settings``, and a copy of the predictions' ``fields.parquet`` (:func:`write_instances`,
:func:`read_instances`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.morphology import convex_hull_image
from skimage.segmentation import watershed
from tqdm import tqdm

from cellresdm import io, layout
from cellresdm.errors import CellResDMError, ConfigError

#: Name of the field table inside prediction and instance stores.
FIELDS_FILE = "fields.parquet"

_CROSS = ndi.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class SegmentSettings:
    """How boundary predictions become instances. Lengths and areas are in pixels of the predicted fields;
    the defaults fit 0.6 um/px (the gallery's 20x fields, 256-1080 px); divide areas by 4.6 and lengths by
    2.1 for fields resized 1080 -> 512.

    Attributes:
        threshold: a pixel is boundary where its probability is >= threshold, in (0, 1).
        nuclei_closing_radii, cells_closing_radii: increasing radii (px) at which outlines with gaps are
            closed, after the exact pass over closed outlines; () looks at closed outlines only.
        min_enclosure: share of an area's rim that must be boundary for an area found by gap closing to
            count (the background cut off at narrow passages is open), in [0, 1].
        min_nucleus_solidity: area / convex area a nucleus found by gap closing must reach, in [0, 1].
        hull_nuclei: nucleus outlines still open after gap closing become the convex hull of their arcs.
        hull_gap: arcs closer than this (px) belong to one open outline.
        hull_coverage: share of its convex hull's rim the arcs must cover, in [0, 1].
        grow: how far objects grow into the boundary band, px (the band of the targets is 2 px wide).
        min_nucleus_area: nuclei smaller than this are dropped, px (CellProfiler's smallest nucleus
            diameter, 10 px, is 78 px; nuclei cut by the field edge can be smaller).
        max_nucleus_area: enclosed areas larger than this are not nuclei, px.
        min_cell_area: cells smaller than this are dropped, px.
        max_cell_area: enclosed areas larger than this are not cells, px.
        background_border_fraction: the area touching the largest share of the field's border is
            background when that share exceeds this fraction of the border, in (0, 1].
        cells_need_nucleus: drop cell areas holding no nucleus. True matches the ground truth (every
            CellProfiler cell grows from a nucleus) and removes background pockets enclosed by cells; False
            keeps them as cells numbered after the cells with a nucleus.
        split_cells: split a cell area holding several nuclei among them; False gives the area to the
            nucleus overlapping it most and leaves the other nuclei without a cell.
        workers: fields segmented in parallel threads by :func:`segment_predictions` (numpy and scipy
            release the GIL: 2 threads segment ~1.7x faster than 1 on two cores).
    """

    threshold: float = 0.5
    nuclei_closing_radii: tuple[int, ...] = (4, 7)
    cells_closing_radii: tuple[int, ...] = (3, 6)
    min_enclosure: float = 0.7
    min_nucleus_solidity: float = 0.9
    hull_nuclei: bool = True
    hull_gap: int = 5
    hull_coverage: float = 0.5
    grow: int = 3
    min_nucleus_area: int = 50
    max_nucleus_area: int = 6000
    min_cell_area: int = 100
    max_cell_area: int = 60000
    background_border_fraction: float = 0.25
    cells_need_nucleus: bool = True
    split_cells: bool = True
    workers: int = 2

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"segment.{name}: {why} (got {getattr(self, name)!r})")

        def is_int(value: Any) -> bool:
            return isinstance(value, int | np.integer) and not isinstance(value, bool)

        def is_number(value: Any) -> bool:
            return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)

        if not (is_number(self.threshold) and 0 < self.threshold < 1):
            raise bad("threshold", "must be a number in (0, 1)")
        if not (is_number(self.background_border_fraction) and 0 < self.background_border_fraction <= 1):
            raise bad("background_border_fraction", "must be a number in (0, 1]")
        for name in ("min_enclosure", "min_nucleus_solidity", "hull_coverage"):
            if not (is_number(getattr(self, name)) and 0 <= getattr(self, name) <= 1):
                raise bad(name, "must be a number in [0, 1]")
        for name in ("nuclei_closing_radii", "cells_closing_radii"):
            radii = getattr(self, name)
            if not (
                isinstance(radii, tuple)
                and all(is_int(r) and r >= 1 for r in radii)
                and all(a < b for a, b in zip(radii, radii[1:], strict=False))
            ):
                raise bad(name, "must be a list of increasing integers >= 1")
        for name in ("grow", "hull_gap", "min_nucleus_area", "min_cell_area"):
            if not (is_int(getattr(self, name)) and getattr(self, name) >= 0):
                raise bad(name, "must be an integer >= 0")
        for small, large in (("min_nucleus_area", "max_nucleus_area"), ("min_cell_area", "max_cell_area")):
            if not (is_int(getattr(self, large)) and getattr(self, large) > getattr(self, small)):
                raise bad(large, f"must be an integer > {small} ({getattr(self, small)})")
        for name in ("hull_nuclei", "cells_need_nucleus", "split_cells"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be true or false")
        if not (is_int(self.workers) and self.workers >= 1):
            raise bad("workers", "must be an integer >= 1")

    @classmethod
    def from_config(cls, section: dict | None) -> SegmentSettings:
        """Settings from the ``segment`` config section (keys named like the attributes, lists for the
        radii); None gives the defaults. Unknown keys and invalid values raise ConfigError naming the key."""
        if section is None:
            return cls()
        if not isinstance(section, dict):
            raise ConfigError(f"segment: expected a mapping of settings, got {type(section).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - names)
        if unknown:
            raise ConfigError(f"unknown config key(s) {', '.join(f'segment.{k}' for k in unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in section.items()})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (tuples as lists), as stored in the instance store's attrs."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# ----------------------------------------------------------------------------------------------- one field


def _check_boundary(array: Any, what: str, field: str) -> np.ndarray:
    """One boundary channel as (H, W) float32; CellResDMError naming ``field`` on bad input."""
    a = np.asarray(array)
    if a.ndim != 2 or 0 in a.shape:
        raise CellResDMError(f"{field}: {what} boundary must be a non-empty 2-D (H, W) array, got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating) or a.dtype == bool):
        raise CellResDMError(f"{field}: {what} boundary must be real numbers, got dtype {a.dtype}")
    a = a.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        raise CellResDMError(f"{field}: {what} boundary holds {int(np.count_nonzero(~np.isfinite(a)))} NaN/inf pixels")
    return a


def _border_contact(labels: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """(n + 1,) number of field-border pixels of each label (0 for the background), and the border length."""
    edge = np.concatenate([labels[0], labels[-1], labels[1:-1, 0], labels[1:-1, -1]])
    contact = np.bincount(edge, minlength=n + 1)
    contact[0] = 0
    return contact, edge.size


def _disk(radius: int) -> np.ndarray:
    """(2r + 1, 2r + 1) bool footprint of a disk of ``radius`` px."""
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return yy**2 + xx**2 <= radius**2


def _pool(mask: np.ndarray) -> np.ndarray:
    """(ceil(H / 2), ceil(W / 2)) bool: True where any pixel of the 2 x 2 block is True."""
    h, w = mask.shape
    m = np.pad(mask, ((0, h % 2), (0, w % 2)))
    return m[0::2, 0::2] | m[1::2, 0::2] | m[0::2, 1::2] | m[1::2, 1::2]


def _relabel(labels: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, int]:
    """Keep the labels where ``keep[label]`` and number them 1..n in their order; (int32 labels, n)."""
    new_id = np.zeros(keep.size, dtype=np.int32)
    n = int(np.count_nonzero(keep))
    new_id[keep] = np.arange(1, n + 1, dtype=np.int32)
    return new_id[labels], n


def _sizes(labels: np.ndarray, n: int) -> np.ndarray:
    """(n + 1,) pixel count of each label."""
    return np.bincount(labels.ravel(), minlength=n + 1)


def _candidates(core: np.ndarray, max_area: float, border_fraction: float) -> tuple[np.ndarray, int]:
    """Connected components of ``core`` without the background: (labels 1..m, m). Background is the
    component touching the largest share of the field's border when that share exceeds ``border_fraction``,
    and every component larger than ``max_area``."""
    cand, m = ndi.label(core, structure=_CROSS)
    if m == 0:
        return cand.astype(np.int32), 0
    contact, border = _border_contact(cand, m)
    keep = _sizes(cand, m) <= max_area
    widest = int(np.argmax(contact))
    if contact[widest] > border_fraction * border:
        keep[widest] = False
    keep[0] = False
    return _relabel(cand, keep)


def _enclosure(labels: np.ndarray, n: int, band: np.ndarray) -> np.ndarray:
    """(n + 1,) share of each label's rim (pixels outside all labels, 4-adjacent to it) that is boundary:
    near 1 for an area enclosed by a line with gaps, lower for background cut off at narrow passages."""
    rim = ndi.grey_dilation(labels, footprint=_CROSS)
    rim[labels > 0] = 0
    return np.bincount(rim[band], minlength=n + 1) / np.maximum(_sizes(rim, n), 1)


def _grow(labels: np.ndarray, allowed: np.ndarray, steps: int) -> np.ndarray:
    """Grow labels into unlabelled ``allowed`` pixels by one 4-connected pixel per step, ``steps`` times;
    returns a new (H, W) label image.

    The growth is geodesic (a label never jumps over pixels that are not allowed) and visits only the
    allowed pixels; where two objects meet they share the allowed pixels between them about the middle.
    """
    padded = np.pad(labels, 1)  # a zero frame: every visited pixel has four neighbours
    flat = padded.ravel()
    todo = np.flatnonzero(np.pad(allowed & (labels == 0), 1))
    stride = padded.shape[1]
    for _ in range(steps):
        if todo.size == 0:
            break
        # every pixel of a step reads the labels of the previous step; ties go to the larger label
        near = np.maximum(
            np.maximum(flat[todo - 1], flat[todo + 1]), np.maximum(flat[todo - stride], flat[todo + stride])
        )
        hit = near > 0
        flat[todo[hit]] = near[hit]
        todo = todo[~hit]
    return padded[1:-1, 1:-1].copy()


def _solid(labels: np.ndarray, keep: np.ndarray, min_solidity: float) -> None:
    """Clear ``keep[k]`` for the kept labels k whose area is below ``min_solidity`` x their convex area."""
    for k, box in enumerate(ndi.find_objects(labels), start=1):
        if box is not None and keep[k]:
            region = labels[box] == k
            keep[k] = np.count_nonzero(region) >= min_solidity * np.count_nonzero(convex_hull_image(region))


def _enclosed_areas(
    band: np.ndarray,
    radii: tuple[int, ...],
    max_area: int,
    border_fraction: float,
    min_enclosure: float,
    min_solidity: float = 0.0,
) -> tuple[np.ndarray, int]:
    """Areas enclosed by boundary lines, background removed: ((H, W) int32 labels 1..n, n).

    First the connected non-boundary areas, exactly. Then, for each radius r of ``radii`` and only outside
    the areas found so far, on the boundary map downsampled 2x (speed; what it adds is exact to ~2 px): the
    cores are the non-boundary pixels farther than r from any boundary (an erosion with a disk, so gaps
    narrower than 2r close); each core takes back the non-boundary pixels within r of it, which it sees
    through its boundary-free disk, so at a gap it leaks at most r px. A core becomes an area if boundary
    covers at least ``min_enclosure`` of its rim and, with ``min_solidity``, if it is that convex.

    Background: the area touching the largest share of the field's border when that share exceeds
    ``border_fraction``, and every area larger than ``max_area``.
    """
    free = ~band
    areas, n = _candidates(free, max_area, border_fraction)
    if not radii or not band.any():
        return areas, n
    height, width = band.shape
    band2 = _pool(band)
    free2 = ~band2
    dist2 = ndi.distance_transform_edt(free2)
    added = np.zeros_like(areas)
    for r in radii:
        r2 = r / 2  # in downsampled pixels
        open2 = ~_pool((areas > 0) | (added > 0))
        cand, m = _candidates((dist2 > r2) & open2, max_area / 4, border_fraction)
        if m == 0:
            continue
        near = ndi.maximum_filter(cand, footprint=_disk(int(np.ceil(r2))))
        take = free2 & open2 & (cand == 0)
        cand[take] = near[take]
        keep = (_sizes(cand, m) <= max_area / 4) & (_enclosure(cand, m, band2) >= min_enclosure)
        keep[0] = False
        if min_solidity > 0:
            _solid(cand, keep, min_solidity)
        cand, m = _relabel(cand, keep)
        if m == 0:
            continue
        full = np.repeat(np.repeat(cand, 2, axis=0), 2, axis=1)[:height, :width]
        full[band | (areas > 0) | (added > 0)] = 0
        added = np.where(full > 0, full + n, added)
        n += m
    # the pooled lines are up to a pixel wider: the added areas take back the non-boundary pixels along them
    added = _grow(added, free & (areas == 0), 2)
    return np.where(added > 0, added, areas), n


def _hull_nuclei(nuclei: np.ndarray, n: int, band: np.ndarray, settings: SegmentSettings) -> tuple[np.ndarray, int]:
    """Add nuclei whose outline is still open (C-shaped): boundary arcs that belong to no nucleus are
    grouped (arcs within ``hull_gap`` px form one outline), and the convex hull of an outline becomes a
    nucleus when the arcs cover at least ``hull_coverage`` of the hull's rim (a ring open on one side, not a
    stray line) and its area is that of a nucleus. Nuclei are convex, so the hull is their shape.
    Returns (labels, n)."""
    arcs = band & (nuclei == 0)
    if not arcs.any():
        return nuclei, n
    near = ndi.maximum_filter(arcs, size=2 * settings.hull_gap + 1) if settings.hull_gap else arcs
    groups, _ = ndi.label(near, structure=np.ones((3, 3), dtype=bool))
    groups[~arcs] = 0
    out = nuclei.copy()
    for k, box in enumerate(ndi.find_objects(groups), start=1):
        # the hull lies in the arcs' bounding box: skip boxes too small to hold a nucleus
        if box is None or (box[0].stop - box[0].start) * (box[1].stop - box[1].start) < settings.min_nucleus_area:
            continue
        group = groups[box] == k
        hull = convex_hull_image(group)
        area = np.count_nonzero(hull)
        if not settings.min_nucleus_area <= area <= settings.max_nucleus_area or area < 2 * np.count_nonzero(group):
            continue  # not the size of a nucleus, or a thick blob rather than a ring
        rim = hull & ~ndi.binary_erosion(hull)
        covered = np.count_nonzero(rim & ndi.binary_dilation(group)) / max(np.count_nonzero(rim), 1)
        if covered >= settings.hull_coverage:
            n += 1
            out[box][hull & (out[box] == 0)] = n
    return out, n


def _home_area(nuclei: np.ndarray, n_nuclei: int, areas: np.ndarray, n_areas: int) -> np.ndarray:
    """(n_nuclei + 1,) the area holding most of each nucleus' pixels, 0 where a nucleus lies in none."""
    both = (nuclei > 0) & (areas > 0)
    key = nuclei[both].astype(np.int64) * (n_areas + 1) + areas[both]
    pairs, counts = np.unique(key, return_counts=True)
    nucleus, area = pairs // (n_areas + 1), pairs % (n_areas + 1)
    order = np.lexsort((-counts, nucleus))  # per nucleus, the largest overlap first
    nucleus, area = nucleus[order], area[order]
    first = np.r_[True, nucleus[1:] != nucleus[:-1]] if nucleus.size else np.zeros(0, dtype=bool)
    home = np.zeros(n_nuclei + 1, dtype=np.int64)
    home[nucleus[first]] = area[first]
    return home


def _cells_from_areas(
    areas: np.ndarray,
    n_areas: int,
    nuclei: np.ndarray,
    n_nuclei: int,
    cell_probability: np.ndarray,
    settings: SegmentSettings,
) -> np.ndarray:
    """Cell areas in the id space of the nuclei, (H, W) int32: the area holding nucleus k becomes k (split
    among its nuclei when it holds several); areas without a nucleus are dropped, or numbered
    n_nuclei + 1, ... when ``cells_need_nucleus`` is off."""
    home = _home_area(nuclei, n_nuclei, areas, n_areas)
    housed = np.flatnonzero(home)
    per_area = np.bincount(home[housed], minlength=n_areas + 1)
    cell_id = np.zeros(n_areas + 1, dtype=np.int32)
    if settings.split_cells:
        single = per_area[home[housed]] == 1
        cell_id[home[housed[single]]] = housed[single]
    else:
        # the nucleus overlapping its area most keeps it: nuclei in increasing overlap, the last write wins
        overlap = np.bincount(nuclei[(nuclei > 0) & (areas == home[nuclei])], minlength=n_nuclei + 1)
        order = housed[np.argsort(overlap[housed], kind="stable")]
        cell_id[home[order]] = order
    if not settings.cells_need_nucleus:
        empty = np.flatnonzero(per_area[1:] == 0) + 1
        cell_id[empty] = n_nuclei + 1 + np.arange(empty.size, dtype=np.int32)
    cells = cell_id[areas]
    if settings.split_cells:
        # seeds: each nucleus' pixels inside its own area (a nucleus can spill over a missed line)
        seeds = np.where((nuclei > 0) & (areas == home[nuclei]), nuclei, 0)
        boxes = ndi.find_objects(areas)
        for area in np.flatnonzero(per_area > 1):
            box = boxes[area - 1]
            mask = areas[box] == area
            split = watershed(cell_probability[box], markers=np.where(mask, seeds[box], 0), mask=mask)
            cells[box][mask] = split[mask]
    return cells


def instances_from_boundaries(
    nuclei_boundary: np.ndarray,
    cell_boundary: np.ndarray,
    settings: SegmentSettings | None = None,
    field: str = "field",
) -> tuple[np.ndarray, np.ndarray]:
    """Nuclei and cell instance labels of one field from its predicted boundary probabilities.

    Args:
        nuclei_boundary: (H, W) nucleus-boundary probability in [0, 1] (any real or bool dtype).
        cell_boundary: (H, W) cell-boundary probability in [0, 1].
        settings: segmentation settings (default :class:`SegmentSettings`).
        field: name of the field in error messages.

    Returns:
        (nuclei, cells), each (H, W) int32, 0 = background. Nuclei are numbered 1..N; the cell holding
        nucleus k is k (a nucleus may have no cell); with ``cells_need_nucleus=False`` cells without a
        nucleus follow as N+1, N+2, ... . A prediction without boundaries, or all boundary, has no objects.

    Raises:
        CellResDMError: naming ``field``, for an input that is not a non-empty 2-D numeric array, shapes
            that differ, or NaN/inf pixels.
    """
    settings = settings or SegmentSettings()
    nuc_p = _check_boundary(nuclei_boundary, "nuclei", field)
    cell_p = _check_boundary(cell_boundary, "cell", field)
    if nuc_p.shape != cell_p.shape:
        raise CellResDMError(f"{field}: nuclei boundary {nuc_p.shape} and cell boundary {cell_p.shape} differ")
    nuc_band = nuc_p >= settings.threshold
    cell_band = cell_p >= settings.threshold
    frac = settings.background_border_fraction

    inner, n = _enclosed_areas(
        nuc_band,
        settings.nuclei_closing_radii,
        settings.max_nucleus_area,
        frac,
        settings.min_enclosure,
        settings.min_nucleus_solidity,
    )
    nuclei = _grow(inner, nuc_band, settings.grow)
    if settings.hull_nuclei:
        nuclei, n = _hull_nuclei(nuclei, n, nuc_band, settings)
    keep = _sizes(nuclei, n) >= max(settings.min_nucleus_area, 1)
    keep[0] = False
    nuclei, n = _relabel(nuclei, keep)

    areas, n_areas = _enclosed_areas(
        cell_band, settings.cells_closing_radii, settings.max_cell_area, frac, settings.min_enclosure
    )
    cells = _grow(_cells_from_areas(areas, n_areas, nuclei, n, cell_p, settings), cell_band, settings.grow)
    n_max = int(cells.max())
    keep = _sizes(cells, n_max) >= max(settings.min_cell_area, 1)
    keep[0] = False
    # a nucleus lies inside its cell: nucleus pixels left outside it (e.g. beyond `grow` in the band) join it
    has_cell = np.zeros(n + 1, dtype=bool)
    has_cell[: min(n, n_max) + 1] = keep[: min(n, n_max) + 1]
    orphan = (cells == 0) & has_cell[nuclei]
    cells[orphan] = nuclei[orphan]
    # cells with a nucleus keep its id; those without one are renumbered after the nuclei
    new_id = np.where(keep, np.arange(n_max + 1), 0).astype(np.int32)
    extra = np.flatnonzero(keep[n + 1 :]) + n + 1
    new_id[extra] = n + 1 + np.arange(extra.size, dtype=np.int32)
    return nuclei, new_id[cells]


# ----------------------------------------------------------------------------------------------- instance store


def _store_error(path: Path, why: str) -> CellResDMError:
    return CellResDMError(f"{path}: {why}")


def _read_fields(store: Path) -> pd.DataFrame:
    """The field table of a store; CellResDMError naming it when missing or unreadable."""
    path = store / FIELDS_FILE
    if not path.is_file():
        raise _store_error(store, f"{FIELDS_FILE} is missing")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise _store_error(store, f"unreadable {FIELDS_FILE} ({type(exc).__name__}: {exc})") from exc


def _create_arrays(root, objects: list[str], shape: tuple[int, int, int]) -> dict[str, Any]:
    n, height, width = shape
    return {
        name: root.create_array(name, shape=(n, height, width), chunks=(1, height, width), dtype="int32", fill_value=0)
        for name in objects
    }


def _objects_in_order(path: Path, names) -> list[str]:
    """Object names of an instance store in the canonical order; CellResDMError naming ``path`` if unknown."""
    unknown = sorted(set(names) - set(layout.OBJECT_CHANNELS))
    if unknown:
        raise _store_error(path, f"instance arrays must be named from {list(layout.OBJECT_CHANNELS)}, got {unknown}")
    objects = [name for name in layout.OBJECT_CHANNELS if name in names]
    if not objects:
        raise _store_error(path, f"an instance store needs at least one of {list(layout.OBJECT_CHANNELS)}")
    return objects


def write_instances(
    out: str | os.PathLike,
    source: str,
    arrays: dict[str, np.ndarray],
    fields: pd.DataFrame,
    attrs: dict[str, Any] | None = None,
) -> Path:
    """Write an instance store atomically (replacing an older one).

    Args:
        out: the store, e.g. ``results/segmentation/{source}_instances.zarr``.
        source: the method or baseline that made the instances (attrs ``source``).
        arrays: {"nuclei": (N, H, W), "cells": (N, H, W)} integer labels (one or both), written as int32.
        fields: the field table of the N fields (row i describes field i), saved as ``fields.parquet``.
        attrs: further attributes, e.g. ``seconds_per_field`` (float) and ``settings`` (dict).

    Returns:
        The store's path.
    """
    import zarr

    out = Path(out)
    objects = _objects_in_order(out, arrays)
    shapes = {name: np.shape(arrays[name]) for name in objects}
    first = shapes[objects[0]]
    if len(first) != 3 or any(s != first for s in shapes.values()):
        raise _store_error(out, f"instance arrays must all be (N, H, W) of one shape, got {shapes}")
    if first[0] != len(fields):
        raise _store_error(out, f"{first[0]} label images but {len(fields)} rows in the field table")
    for name in objects:
        a = np.asarray(arrays[name])
        if not np.issubdtype(a.dtype, np.integer) or (a.size and (a.min() < 0 or a.max() > np.iinfo(np.int32).max)):
            raise _store_error(out, f"'{name}' must hold non-negative int32 labels, got {a.dtype}")
    with io.atomic_dir(out) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        for name, target in _create_arrays(root, objects, first).items():
            target[...] = np.asarray(arrays[name], dtype=np.int32)
        root.attrs.update({**(attrs or {}), "source": source, "objects": objects})
        fields.to_parquet(tmp / FIELDS_FILE, index=False)
    return out


def read_instances(
    path: str | os.PathLike, lazy: bool = False
) -> tuple[dict[str, np.ndarray], pd.DataFrame, dict[str, Any]]:
    """Read and check an instance store written by :func:`write_instances` or :func:`segment_predictions`.

    Args:
        path: the store.
        lazy: return zarr arrays (read a field at a time with ``a[i]``) instead of numpy arrays.

    Returns:
        ({object: (N, H, W) int32} for each name in attrs ``objects``, field table, attrs).

    Raises:
        CellResDMError: naming the store, when it is missing or unreadable, lacks a listed array or the field
            table, or its arrays differ in shape, are not int32, or do not match the field table's length.
    """
    import zarr

    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise _store_error(path, "instance store is missing (no zarr.json)")
    try:
        root = zarr.open_group(str(path), mode="r")
        attrs = dict(root.attrs)
    except Exception as exc:  # zarr raises several types for corrupt metadata
        raise _store_error(path, f"unreadable instance store ({type(exc).__name__}: {exc})") from exc
    objects = attrs.get("objects")
    if not isinstance(objects, list) or not objects or not set(objects) <= set(layout.OBJECT_CHANNELS):
        raise _store_error(path, f"attrs 'objects' must list some of {list(layout.OBJECT_CHANNELS)}, got {objects!r}")
    if "source" not in attrs:
        raise _store_error(path, "attrs 'source' is missing")
    fields = _read_fields(path)
    arrays: dict[str, Any] = {}
    for name in objects:
        try:
            array = root[name]
        except KeyError:
            raise _store_error(path, f"array '{name}' listed in attrs 'objects' is missing") from None
        if not isinstance(array, zarr.Array) or array.ndim != 3 or array.dtype != np.int32:
            raise _store_error(path, f"'{name}' must be an (N, H, W) int32 array")
        arrays[name] = array
    shapes = {name: tuple(a.shape) for name, a in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise _store_error(path, f"instance arrays differ in shape: {shapes}")
    n = next(iter(shapes.values()))[0]
    if n != len(fields):
        raise _store_error(path, f"{n} label images but {len(fields)} rows in {FIELDS_FILE}")
    if not lazy:
        try:
            arrays = {name: array[...] for name, array in arrays.items()}
        except Exception as exc:  # truncated or corrupt chunks
            raise _store_error(path, f"unreadable label data ({type(exc).__name__}: {exc})") from exc
    return arrays, fields, attrs


def segment_predictions(
    predictions: str | os.PathLike,
    out: str | os.PathLike,
    settings: SegmentSettings | None = None,
    progress: bool = True,
    log: logging.Logger | None = None,
) -> dict[str, Any]:
    """Segment every field of a prediction store and write its instance store.

    Args:
        predictions: ``predictions/{method}/test.zarr`` with ``boundaries`` (N, 2, H, W) probabilities
            ([nuclei, cells]) and ``fields.parquet``; attrs ``method`` names the source (else the folder).
        out: the instance store, e.g. ``results/segmentation/{method}_instances.zarr``, written atomically
            with ``nuclei`` and ``cells`` (N, H, W) int32 and attrs ``source``, ``objects``,
            ``seconds_per_field`` (mean time of :func:`instances_from_boundaries` per field, in its thread,
            without I/O) and ``settings``.
        settings: segmentation settings (``workers`` threads segment fields in parallel).
        progress: show a progress bar.
        log: logger (default ``cellresdm``).

    Returns:
        Summary: source, fields, image_size, seconds_per_field, fields_per_second (throughput with I/O and
        threads), workers, mean_nuclei and mean_cells per field.

    Raises:
        CellResDMError: naming the store or field for a missing store, array or field table, a wrong shape,
            or NaN in a prediction.
    """
    import zarr

    settings = settings or SegmentSettings()
    log = log or logging.getLogger("cellresdm")
    predictions, out = Path(predictions), Path(out)
    if not (predictions / "zarr.json").is_file():
        raise _store_error(predictions, "prediction store is missing (no zarr.json)")
    fields = _read_fields(predictions)
    try:
        root = zarr.open_group(str(predictions), mode="r")
        boundaries = root["boundaries"]
    except KeyError:
        raise _store_error(predictions, "array 'boundaries' is missing") from None
    except Exception as exc:  # zarr raises several types for corrupt metadata
        raise _store_error(predictions, f"unreadable prediction store ({type(exc).__name__}: {exc})") from exc
    n_objects = len(layout.OBJECT_CHANNELS)
    if not isinstance(boundaries, zarr.Array) or boundaries.ndim != 4 or boundaries.shape[1] != n_objects:
        raise _store_error(predictions, f"'boundaries' must be an (N, {n_objects}, H, W) array")
    n, _, height, width = boundaries.shape
    if n != len(fields):
        raise _store_error(predictions, f"{n} fields in 'boundaries' but {len(fields)} rows in {FIELDS_FILE}")
    source = str(root.attrs.get("method", predictions.parent.name))
    names = [
        f"{predictions} field {i}" + (f" ({fields['field'].iloc[i]})" if "field" in fields.columns else "")
        for i in range(n)
    ]
    counts = np.zeros((n, 2), dtype=np.int64)
    seconds = np.zeros(n)

    start = time.perf_counter()
    with io.atomic_dir(out) as tmp:
        store = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        arrays = _create_arrays(store, list(layout.OBJECT_CHANNELS), (n, height, width))

        def segment(i: int) -> None:
            # each thread reads, segments and writes its own fields (one chunk each), so memory stays bounded
            field = np.asarray(boundaries[i])
            t0 = time.perf_counter()
            nuclei, cells = instances_from_boundaries(field[0], field[1], settings, field=names[i])
            seconds[i] = time.perf_counter() - t0
            arrays["nuclei"][i] = nuclei
            arrays["cells"][i] = cells
            counts[i] = int(nuclei.max()), np.count_nonzero(np.bincount(cells.ravel())[1:])

        pool = ThreadPoolExecutor(max_workers=settings.workers)
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
            "workers": settings.workers,
            "mean_nuclei": float(counts[:, 0].mean()) if n else 0.0,
            "mean_cells": float(counts[:, 1].mean()) if n else 0.0,
        }
        store.attrs.update(
            {
                "source": source,
                "objects": list(layout.OBJECT_CHANNELS),
                "seconds_per_field": summary["seconds_per_field"],
                "settings": settings.to_dict(),
            }
        )
        shutil.copyfile(predictions / FIELDS_FILE, tmp / FIELDS_FILE)
    log.info(
        "%s: %d fields of %dx%d segmented, %.3f s per field (%.1f fields/s with I/O, %d threads), "
        "%.1f nuclei and %.1f cells per field",
        source,
        n,
        height,
        width,
        summary["seconds_per_field"],
        summary["fields_per_second"],
        settings.workers,
        summary["mean_nuclei"],
        summary["mean_cells"],
    )
    return summary
