"""Predicted boundaries to instance labels (docs/design.md section 5, stage ``segment``).

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

Speed: labelling and morphology run in OpenCV (one thread per field), label images are 16-bit while their
ids fit, and per-object work is done at the few pixels it concerns (nuclei, arcs, rims) rather than over the
field; the result is pixel for pixel that of the scipy / scikit-image formulation above (tests check the
building blocks against scipy.ndimage.label and skimage's convex_hull_image). A 1080 x 1080 field takes
~0.02 s (true boundaries) to ~0.04 s (damaged ones) on one core. The first field segmented in a process
asks glibc to keep freed memory for reuse (:func:`_keep_freed_memory`): a field's temporaries are ~16 MB,
and by default glibc returns them to the system after each field and faults them back in on the next,
which costs ~40% more time.

:mod:`cellresdm.segment_step` runs this over a prediction store and writes the instance store
(:mod:`cellresdm.stores`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from skimage.measure import grid_points_in_poly
from skimage.segmentation import watershed

from cellresdm.config import section, settings_values
from cellresdm.errors import CellResDMError, ConfigError

# fields run in parallel threads (cellresdm.segment_step); OpenCV's own thread pool would oversubscribe the cores
cv2.setNumThreads(1)

_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
#: label images whose ids stay below this are uint16, others int32 (a noisy field can hold more areas)
_UINT16_IDS = 1 << 16
# the midpoints of a pixel's edges: hulls of pixels, not of their centres (as skimage's convex_hull_image)
_EDGE_MIDPOINTS = np.array([[-0.5, 0], [0.5, 0], [0, -0.5], [0, 0.5]], dtype=np.float32)


@dataclass(frozen=True)
class InstanceSettings:
    """How boundary predictions become instances (config section ``instances``; the schema holds the defaults
    and checks each key). Lengths and areas are in pixels of the predicted fields; the defaults fit 0.6 um/px
    (the gallery's 20x fields, 256-1080 px); divide areas by 4.6 and lengths by 2.1 for fields resized
    1080 -> 512.

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
    """

    threshold: float
    nuclei_closing_radii: tuple[int, ...]
    cells_closing_radii: tuple[int, ...]
    min_enclosure: float
    min_nucleus_solidity: float
    hull_nuclei: bool
    hull_gap: int
    hull_coverage: float
    grow: int
    min_nucleus_area: int
    max_nucleus_area: int
    min_cell_area: int
    max_cell_area: int
    background_border_fraction: float
    cells_need_nucleus: bool
    split_cells: bool

    def __post_init__(self) -> None:
        # checks the schema cannot express: radii increase, each maximum area exceeds its minimum
        for name in ("nuclei_closing_radii", "cells_closing_radii"):
            radii = getattr(self, name)
            if not all(a < b for a, b in zip(radii, radii[1:], strict=False)):
                raise ConfigError(f"instances.{name}: must increase (got {list(radii)})")
        for small, large in (("min_nucleus_area", "max_nucleus_area"), ("min_cell_area", "max_cell_area")):
            low, high = getattr(self, small), getattr(self, large)
            if not high > low:
                raise ConfigError(f"instances.{large}: must be > instances.{small} ({low}) (got {high})")

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> InstanceSettings:
        """Settings from the validated ``instances`` config section (:func:`cellresdm.config.section`); lists
        become tuples."""
        return cls(**settings_values(cls, section, "instances"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (tuples as lists), as stored in the instance store's attrs."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# ----------------------------------------------------------------------------------------------- one field


@functools.cache
def _default_settings() -> InstanceSettings:
    """Settings of config section ``instances`` with every key at the schema's default."""
    return InstanceSettings.from_config(section("instances"))


@functools.cache
def _keep_freed_memory() -> None:
    """Once per process: let glibc serve allocations up to 32 MiB from its heap and keep up to 128 MiB of
    freed heap memory, instead of mapping each large temporary afresh and trimming the heap after each
    field (the page faults of that cost ~8 ms per 1080 x 1080 field). Nothing to do without glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _check_boundary(array: Any, what: str, field: str) -> np.ndarray:
    """One boundary channel as (H, W) float16 or float32 (other dtypes become float32); CellResDMError naming
    ``field`` on bad input."""
    a = np.asarray(array)
    if a.ndim != 2 or 0 in a.shape:
        raise CellResDMError(f"{field}: {what} boundary must be a non-empty 2-D (H, W) array, got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating) or a.dtype == bool):
        raise CellResDMError(f"{field}: {what} boundary must be real numbers, got dtype {a.dtype}")
    if a.dtype not in (np.float16, np.float32):
        a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise CellResDMError(f"{field}: {what} boundary holds {int(np.count_nonzero(~np.isfinite(a)))} NaN/inf pixels")
    return a


def _u8(mask: np.ndarray) -> np.ndarray:
    """A bool mask as the uint8 image OpenCV takes (a view, no copy)."""
    return np.ascontiguousarray(mask).view(np.uint8)


def _disk(radius: float) -> np.ndarray:
    """(2k + 1, 2k + 1) uint8 footprint of the offsets within ``radius`` px, k = floor(radius)."""
    k = int(radius)
    yy, xx = np.mgrid[-k : k + 1, -k : k + 1]
    return (yy**2 + xx**2 <= radius**2).astype(np.uint8)


def _compact(n: int) -> type:
    """The dtype of a label image holding ids 0..n: uint16 while they fit (half the memory traffic of int32,
    and OpenCV dilates and counts it directly), else int32."""
    return np.uint16 if n < _UINT16_IDS else np.int32


def _dilate_labels(labels: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """(H, W) labels of the same dtype: the largest label within ``footprint`` of each pixel (int32 labels are
    dilated as float32, which holds the ids of any field below 2^24 pixels exactly)."""
    if labels.dtype == np.uint16:
        return cv2.dilate(labels, footprint)
    return cv2.dilate(labels.astype(np.float32), footprint).astype(labels.dtype)


def _label(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """Connected components of a bool mask, 4- or 8-connected: ((H, W) int32 labels 1..m, m), numbered in the
    raster order of their first pixel as scipy.ndimage.label does (OpenCV's scan by pixels, SAUF, keeps that
    order; its faster scans by 2 x 2 blocks do not, and the order decides ties)."""
    count, labels = cv2.connectedComponentsWithAlgorithm(_u8(mask), connectivity, cv2.CV_32S, cv2.CCL_SAUF)
    return labels, count - 1


def _border_contact(labels: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """(n + 1,) number of field-border pixels of each label (0 for the background), and the border length."""
    edge = np.concatenate([labels[0], labels[-1], labels[1:-1, 0], labels[1:-1, -1]])
    contact = np.bincount(edge, minlength=n + 1)
    contact[0] = 0
    return contact, edge.size


def _pool(mask: np.ndarray) -> np.ndarray:
    """(ceil(H / 2), ceil(W / 2)) bool: True where any pixel of the 2 x 2 block is True (outside is False)."""
    h, w = mask.shape
    if h % 2 or w % 2:
        mask = np.pad(mask, ((0, h % 2), (0, w % 2)))
    pairs = np.ascontiguousarray(mask).view(np.uint16)  # two neighbouring pixels of a row in one number
    return (pairs[0::2] | pairs[1::2]).astype(bool)


def _sizes(labels: np.ndarray, n: int) -> np.ndarray:
    """(n + 1,) int64 pixel count of each label 0..n (``labels`` holds no larger label)."""
    if n < _UINT16_IDS:
        # np.bincount is slow on long runs of one label (each count waits for the previous one); OpenCV's
        # histogram of a 16-bit image is not, and counts exactly in float32 (< 2^24 pixels per label)
        hist = cv2.calcHist([labels.astype(np.uint16, copy=False)], [0], None, [n + 1], [0, n + 1])
        return hist.ravel().astype(np.int64)
    return np.bincount(labels.ravel(), minlength=n + 1)


def _relabel(labels: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, int]:
    """Keep the labels where ``keep[label]`` (``keep[0]`` is False) and number them 1..n in their order;
    (labels of dtype ``_compact(n)``, n)."""
    n = int(np.count_nonzero(keep))
    new_id = np.zeros(keep.size, dtype=_compact(n))
    new_id[keep] = np.arange(1, n + 1)
    return np.take(new_id, labels), n


def _candidates(core: np.ndarray, max_area: float, border_fraction: float) -> tuple[np.ndarray, int]:
    """Connected components of ``core`` without the background: (labels of dtype ``_compact(m)``, m), ids
    1..m of which the background's are left unused (renumbering the field costs more than the gaps).
    Background is the component touching the largest share of the field's border when that share exceeds
    ``border_fraction``, and every component larger than ``max_area``."""
    cand, m = _label(core, 4)
    labels = cand.astype(_compact(m))
    if m == 0:
        return labels, 0
    contact, border = _border_contact(cand, m)
    widest = int(np.argmax(contact))
    if contact[widest] > border_fraction * border:
        labels *= labels != widest
    # the background often covers most of the field: then count the other components at their pixels
    inside = labels > 0
    if np.count_nonzero(inside) * 8 < labels.size:
        sizes = np.bincount(labels[inside], minlength=m + 1)
    else:
        sizes = _sizes(labels, m)
    large = np.flatnonzero(sizes[1:] > max_area) + 1
    if large.size == 1:
        labels *= labels != large[0]
    elif large.size > 1:
        labels = np.take(np.where(sizes <= max_area, np.arange(m + 1), 0).astype(labels.dtype), labels)
    return labels, m


def _enclosure(labels: np.ndarray, n: int, band: np.ndarray) -> np.ndarray:
    """(n + 1,) share of each label's rim (pixels outside all labels, 4-adjacent to it) that is boundary:
    near 1 for an area enclosed by a line with gaps, lower for background cut off at narrow passages."""
    rim = _dilate_labels(labels, _CROSS)
    rim *= labels == 0
    at = np.flatnonzero(rim > 0)  # the rims are thin: count at their pixels
    owner = rim.reshape(-1)[at]
    on_band = np.bincount(owner[band.reshape(-1)[at]], minlength=n + 1)
    return on_band / np.maximum(np.bincount(owner, minlength=n + 1), 1)


def _grow(labels: np.ndarray, allowed: np.ndarray, steps: int) -> np.ndarray:
    """Grow labels into unlabelled ``allowed`` pixels by one 4-connected pixel per step, ``steps`` times, in
    place; returns ``labels`` ((H, W) uint16 or int32).

    The growth is geodesic (a label never jumps over pixels that are not allowed) and visits only the
    allowed pixels; where two objects meet they share the allowed pixels between them about the middle.
    """
    todo = allowed & (labels == 0)
    for _ in range(steps):
        if not todo.any():
            break
        # every pixel of a step reads the labels of the previous step; ties go to the larger label. A pixel
        # to fill holds 0, so the largest of its label and its neighbours' is theirs
        near = _dilate_labels(labels, _CROSS)
        near *= todo
        np.maximum(labels, near, out=labels)
        todo &= labels == 0
    return labels


def _hull_image(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``shape`` bool convex hull of the pixels (rows, cols) (not empty), pixel for pixel as skimage's
    ``convex_hull_image``: the pixels on or in the hull of the pixels' edge midpoints."""
    centres = cv2.convexHull(np.stack([rows, cols], axis=1).astype(np.float32))[:, 0, :]
    vertices = cv2.convexHull((centres[:, None, :] + _EDGE_MIDPOINTS).reshape(-1, 2))[:, 0, :]
    return grid_points_in_poly(shape, vertices, binarize=False) >= 1


def _solid(labels: np.ndarray, keep: np.ndarray, min_solidity: float) -> None:
    """Clear ``keep[k]`` for the kept labels k whose area is below ``min_solidity`` x their convex area."""
    ids = np.flatnonzero(keep)
    if ids.size == 0:
        return
    rows, cols = np.nonzero(keep[labels])
    own = labels[rows, cols]
    order = np.argsort(own, kind="stable")
    rows, cols, own = rows[order], cols[order], own[order]
    for k, start, stop in zip(ids, np.searchsorted(own, ids), np.searchsorted(own, ids, side="right"), strict=True):
        r, c = rows[start:stop], cols[start:stop]
        r0, c0 = r.min(), c.min()
        hull = _hull_image(r - r0, c - c0, (r.max() - r0 + 1, c.max() - c0 + 1))
        keep[k] = stop - start >= min_solidity * np.count_nonzero(hull)


def _enclosed_areas(
    band: np.ndarray,
    radii: tuple[int, ...],
    max_area: int,
    border_fraction: float,
    min_enclosure: float,
    min_solidity: float = 0.0,
) -> tuple[np.ndarray, int]:
    """Areas enclosed by boundary lines, background removed: ((H, W) labels of dtype ``_compact(n)``, n); ids
    run to n, some unused.

    First the connected non-boundary areas, exactly. Then, for each radius r of ``radii`` and only outside
    the areas found so far, on the boundary map downsampled 2x (speed; what it adds is exact to ~2 px): the
    cores, connected pixels farther than r from every boundary pixel (an erosion: gaps narrower than 2r
    close); each core takes back the non-boundary pixels within r of it, which it sees through its
    boundary-free disk, so at a gap it leaks at most r px. A core becomes an area if boundary covers at
    least ``min_enclosure`` of its rim and, with ``min_solidity``, if it is that convex.

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
    # downsampled pixels (2 x 2 blocks) holding a pixel of an area are not searched, nor, at larger radii,
    # those holding a pixel of an added area (every block it covers that is not all boundary)
    occupied2 = _pool(areas > 0)
    all_band2 = ~_pool(free)
    added2 = np.zeros(band2.shape, dtype=np.int32)
    n_added = 0
    for r in radii:
        r2 = r / 2  # in downsampled pixels
        open2 = ~occupied2
        # the cores: free pixels farther than r2 from every boundary pixel (outside the field is free)
        core = cv2.erode(_u8(free2), _disk(r2)).view(bool)
        cand, m = _candidates(core & open2, max_area / 4, border_fraction)
        if m == 0:
            continue
        near = _dilate_labels(cand, _disk(np.ceil(r2)))
        np.copyto(cand, near, where=free2 & open2 & (cand == 0))
        sizes = _sizes(cand, m)
        keep = (sizes > 0) & (sizes <= max_area / 4) & (_enclosure(cand, m, band2) >= min_enclosure)
        keep[0] = False
        if not keep.any():
            continue
        if min_solidity > 0:
            _solid(cand, keep, min_solidity)
        cand, m = _relabel(cand, keep)
        if m == 0:
            continue
        new = cand > 0
        added2[new] = cand[new].astype(np.int32) + (n + n_added)
        occupied2 |= new & ~all_band2
        n_added += m
    if n_added == 0:
        return areas, n
    n += n_added
    added2 = added2.astype(_compact(n))
    added = cv2.resize(added2, (2 * added2.shape[1], 2 * added2.shape[0]), interpolation=cv2.INTER_NEAREST)
    added = added[:height, :width]
    open_ = free & (areas == 0)
    added *= open_
    # the pooled lines are up to a pixel wider: the added areas take back the non-boundary pixels along them
    added = _grow(added, open_, 2)
    # the added areas lie outside the others
    return np.maximum(areas.astype(added.dtype, copy=False), added), n


def _extents(group: np.ndarray, count: int, *values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((count + 1, V), (count + 1, V)) int64: the least and the largest of each of the V ``values`` (P,) over
    the points of each group 1..count (``group`` (P,), every group has a point); row 0 is 0."""
    points = np.stack(values, axis=1)
    lo = np.full((count + 1, points.shape[1]), np.iinfo(np.int64).max)
    hi = np.full((count + 1, points.shape[1]), np.iinfo(np.int64).min)
    np.minimum.at(lo, group, points)
    np.maximum.at(hi, group, points)
    lo[0] = hi[0] = 0
    return lo, hi


def _octagon_pixels(lo: np.ndarray, hi: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(len(ids),) number of pixels (r, c) whose r, c, r + c and r - c lie within the extents ``lo``, ``hi``
    (from :func:`_extents` of rows, columns, their sum and difference) of the groups ``ids``: the octagon
    around each group, which holds its convex hull (the hull of the pixels' edge midpoints reaches 0.5 past
    each extent, and no pixel lies there)."""
    heights = hi[ids, 0] - lo[ids, 0] + 1
    which = np.repeat(np.arange(ids.size), heights)  # one entry per row of each octagon
    k = ids[which]
    r = lo[k, 0] + np.arange(which.size) - np.repeat(np.cumsum(heights) - heights, heights)
    first = np.maximum(np.maximum(lo[k, 1], lo[k, 2] - r), r - hi[k, 3])
    last = np.minimum(np.minimum(hi[k, 1], hi[k, 2] - r), r - lo[k, 3])
    return np.bincount(which, weights=np.maximum(last - first + 1, 0), minlength=ids.size)


def _hull_nuclei(nuclei: np.ndarray, n: int, band: np.ndarray, settings: InstanceSettings) -> tuple[np.ndarray, int]:
    """Add nuclei whose outline is still open (C-shaped), in place: boundary arcs that belong to no nucleus
    are grouped (arcs within ``hull_gap`` px form one outline), and the convex hull of an outline becomes a
    nucleus when the arcs cover at least ``hull_coverage`` of the hull's rim (a ring open on one side, not a
    stray line) and its area is that of a nucleus. Nuclei are convex, so the hull is their shape.
    Returns (labels, n)."""
    arcs = band & (nuclei == 0)
    if not arcs.any():
        return nuclei, n
    # group the arcs in their box, widened by the gap (the field's edge aside), not in the whole field
    gap = settings.hull_gap
    x, y, w, h = cv2.boundingRect(_u8(arcs))
    y0, x0 = max(y - gap, 0), max(x - gap, 0)
    arcs = arcs[y0 : y + h + gap, x0 : x + w + gap]
    near = cv2.dilate(_u8(arcs), np.ones((2 * gap + 1, 2 * gap + 1), dtype=np.uint8)).view(bool)
    groups, count = _label(near, 8)
    # the arcs are sparse: their pixels sorted by group, and each group's extent along the rows, columns and
    # both diagonals: its convex hull lies in the octagon they bound
    where = np.flatnonzero(arcs)
    group = groups.reshape(-1)[where]
    order = np.argsort(group, kind="stable")
    where, group = where[order], group[order]
    rows, cols = np.divmod(where, arcs.shape[1])
    rows += y0
    cols += x0
    lo, hi = _extents(group, count, rows, cols, rows + cols, rows - cols)
    pixels = np.bincount(group, minlength=count + 1)
    top, left, bottom, right = lo[:, 0], lo[:, 1], hi[:, 0] + 1, hi[:, 1] + 1
    box = (bottom - top) * (right - left)
    # skip groups whose hull cannot hold a nucleus, or twice their pixels (a thick blob rather than a ring)
    least = np.maximum(settings.min_nucleus_area, 2 * pixels)
    possible = (box >= least) & (pixels <= settings.max_nucleus_area)
    possible[0] = False
    candidates = np.flatnonzero(possible)
    candidates = candidates[_octagon_pixels(lo, hi, candidates) >= least[candidates]]
    if nuclei.dtype == np.uint16 and n + candidates.size > np.iinfo(np.uint16).max:
        nuclei = nuclei.astype(np.int32)  # room for the ids of the hulls
    starts = np.searchsorted(group, candidates)
    for k, start in zip(candidates, starts, strict=True):
        r, c = rows[start : start + pixels[k]] - top[k], cols[start : start + pixels[k]] - left[k]
        shape = (bottom[k] - top[k], right[k] - left[k])
        hull = _hull_image(r, c, shape)
        area = np.count_nonzero(hull)
        if not settings.min_nucleus_area <= area <= settings.max_nucleus_area or area < 2 * pixels[k]:
            continue  # not the size of a nucleus, or a thick blob rather than a ring
        arc = np.zeros(shape, dtype=np.uint8)
        arc[r, c] = 1
        inner = cv2.erode(_u8(hull), _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0).view(bool)
        rim = hull & ~inner
        reached = cv2.dilate(arc, _CROSS).view(bool)
        if np.count_nonzero(rim & reached) >= settings.hull_coverage * max(np.count_nonzero(rim), 1):
            n += 1
            target = nuclei[top[k] : bottom[k], left[k] : right[k]]
            target[hull & (target == 0)] = n
    return nuclei, n


def _home_area(nucleus_at: np.ndarray, area_at: np.ndarray, n_nuclei: int, n_areas: int) -> np.ndarray:
    """(n_nuclei + 1,) the area holding most of each nucleus' pixels (the smaller id on a tie), 0 where a
    nucleus lies in none; from the nucleus and area ids (P,) at the nucleus pixels."""
    inside = area_at > 0
    key = nucleus_at[inside].astype(np.int64) * (n_areas + 1) + area_at[inside]
    if (n_nuclei + 1) * (n_areas + 1) <= 1 << 20:  # a dense overlap table is small enough
        table = np.bincount(key, minlength=(n_nuclei + 1) * (n_areas + 1)).reshape(n_nuclei + 1, n_areas + 1)
        return table.argmax(axis=1)  # the first largest; a nucleus in no area has an all-zero row: 0
    home = np.zeros(n_nuclei + 1, dtype=np.int64)
    pairs, counts = np.unique(key, return_counts=True)
    nucleus, area = pairs // (n_areas + 1), pairs % (n_areas + 1)
    order = np.lexsort((-counts, nucleus))  # per nucleus, the largest overlap first (stable: smaller area)
    nucleus, area = nucleus[order], area[order]
    first = np.r_[True, nucleus[1:] != nucleus[:-1]] if nucleus.size else np.zeros(0, dtype=bool)
    home[nucleus[first]] = area[first]
    return home


def _cells_from_areas(
    areas: np.ndarray,
    n_areas: int,
    nuclei: np.ndarray,
    n_nuclei: int,
    nucleus_pixels: np.ndarray,
    nucleus_at: np.ndarray,
    cell_probability: np.ndarray,
    settings: InstanceSettings,
) -> np.ndarray:
    """Cell areas in the id space of the nuclei, (H, W) labels: the area holding nucleus k becomes k (split
    among its nuclei when it holds several); areas without a nucleus are dropped, or numbered
    n_nuclei + 1, ... when ``cells_need_nucleus`` is off. ``nucleus_pixels``, ``nucleus_at``: the flat indices
    of the nucleus pixels and their nuclei."""
    home = _home_area(nucleus_at, areas.reshape(-1).take(nucleus_pixels), n_nuclei, n_areas)
    housed = np.flatnonzero(home)
    per_area = np.bincount(home[housed], minlength=n_areas + 1)
    cell_id = np.zeros(n_areas + 1, dtype=_compact(n_nuclei + n_areas))
    if settings.split_cells:
        single = per_area[home[housed]] == 1
        cell_id[home[housed[single]]] = housed[single]
    else:
        # the nucleus overlapping its area most keeps it: nuclei in increasing overlap, the last write wins
        at_home = areas.reshape(-1).take(nucleus_pixels) == home[nucleus_at]
        overlap = np.bincount(nucleus_at[at_home], minlength=n_nuclei + 1)
        order = housed[np.argsort(overlap[housed], kind="stable")]
        cell_id[home[order]] = order
    if not settings.cells_need_nucleus:
        empty = np.flatnonzero(per_area[1:] == 0) + 1
        cell_id[empty] = n_nuclei + 1 + np.arange(empty.size, dtype=np.int32)
    cells = np.take(cell_id, areas)
    for area in np.flatnonzero(per_area > 1) if settings.split_cells else []:
        x, y, w, h = cv2.boundingRect(_u8(areas == area))
        box = (slice(y, y + h), slice(x, x + w))
        mask = areas[box] == area
        # seeds: each nucleus' pixels inside its own area (a nucleus can spill over a missed line)
        local = nuclei[box]
        seeds = np.where(mask & (local > 0) & (home[local] == area), local, 0)
        split = watershed(cell_probability[box].astype(np.float32), markers=seeds, mask=mask)
        cells[box][mask] = split[mask]
    return cells


def instances_from_boundaries(
    nuclei_boundary: np.ndarray,
    cell_boundary: np.ndarray,
    settings: InstanceSettings | None = None,
    field: str = "field",
) -> tuple[np.ndarray, np.ndarray]:
    """Nuclei and cell instance labels of one field from its predicted boundary probabilities.

    Args:
        nuclei_boundary: (H, W) nucleus-boundary probability in [0, 1] (any real or bool dtype).
        cell_boundary: (H, W) cell-boundary probability in [0, 1].
        settings: segmentation settings (default: the schema's defaults of config section ``instances``).
        field: name of the field in error messages.

    Returns:
        (nuclei, cells), each (H, W) int32, 0 = background. Nuclei are numbered 1..N; the cell holding
        nucleus k is k (a nucleus may have no cell); with ``cells_need_nucleus=False`` cells without a
        nucleus follow as N+1, N+2, ... . A prediction without boundaries, or all boundary, has no objects.

    Raises:
        CellResDMError: naming ``field``, for an input that is not a non-empty 2-D numeric array, shapes
            that differ, or NaN/inf pixels.
    """
    settings = settings or _default_settings()
    _keep_freed_memory()
    nuc_p = _check_boundary(nuclei_boundary, "nuclei", field)
    cell_p = _check_boundary(cell_boundary, "cell", field)
    if nuc_p.shape != cell_p.shape:
        raise CellResDMError(f"{field}: nuclei boundary {nuc_p.shape} and cell boundary {cell_p.shape} differ")
    threshold = np.float32(settings.threshold)  # float16 maps compare in float32, as float32 maps
    nuc_band = nuc_p >= threshold
    cell_band = cell_p >= threshold
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
    # nuclei cover a small part of the field: count and renumber them at their pixels
    nucleus_pixels = np.flatnonzero(nuclei > 0)
    nucleus_at = nuclei.reshape(-1)[nucleus_pixels]
    keep = np.bincount(nucleus_at, minlength=n + 1) >= max(settings.min_nucleus_area, 1)
    keep[0] = False
    new_id = np.zeros(n + 1, dtype=np.int32)
    n = int(np.count_nonzero(keep))
    new_id[keep] = np.arange(1, n + 1, dtype=np.int32)
    kept = keep[nucleus_at]
    nucleus_pixels, nucleus_at = nucleus_pixels[kept], new_id[nucleus_at[kept]]
    nuclei = np.zeros(nuc_band.shape, dtype=np.int32)
    nuclei.reshape(-1)[nucleus_pixels] = nucleus_at

    areas, n_areas = _enclosed_areas(
        cell_band, settings.cells_closing_radii, settings.max_cell_area, frac, settings.min_enclosure
    )
    cells = _cells_from_areas(areas, n_areas, nuclei, n, nucleus_pixels, nucleus_at, cell_p, settings)
    cells = _grow(cells, cell_band, settings.grow)
    n_max = max(int(cells.max()), n)
    sizes = _sizes(cells, n_max)
    keep = sizes >= max(settings.min_cell_area, 1)
    keep[0] = False
    # a nucleus lies inside its cell: nucleus pixels left outside it (e.g. beyond `grow` in the band) join it
    has_cell = keep[: n + 1]
    orphan = (cells.reshape(-1).take(nucleus_pixels) == 0) & has_cell[nucleus_at]
    cells.reshape(-1)[nucleus_pixels[orphan]] = nucleus_at[orphan]
    # cells with a nucleus keep their id; those without one are renumbered after the nuclei
    new_id = np.where(keep, np.arange(n_max + 1), 0).astype(np.int32)
    extra = np.flatnonzero(keep[n + 1 :]) + n + 1
    new_id[extra] = n + 1 + np.arange(extra.size, dtype=np.int32)
    return nuclei, np.take(new_id, cells)
