"""The fast feature backend: CellProfiler 4.2.8's measurements (the feature pipeline's modules and settings,
:func:`cellresdm.cppipe.make_measurement_pipeline`) computed in-process for all objects of a field at once.

Per compartment the objects become runs of pixel indices (one stable sort of the label image), and every
measurement is a per-run reduction: numpy ``reduceat``/``bincount`` for intensity, colocalisation and radial
distribution, one co-occurrence pass per channel, scale and direction over all objects for Haralick texture
(numba, :mod:`~cellresdm.features._texture_kernels`, :mod:`~cellresdm.features._morphology_kernels`,
:mod:`~cellresdm.features._object_kernels`), one opening series per channel over the whole subsampled image
for granularity (its per-object means are one sparse product with the bilinear upsampling weights), one
Dijkstra over all objects for the radial distances, and Zernike moments summed over all labelled pixels at
once. Names are CellProfiler's (``Texture_Contrast_DNA_3_00_256``, ``Intensity_MeanIntensity_RNA``).

:func:`measure_field` gives one field's per-object tables and image measurements; :func:`measure_objects_fast`
has the interface of :func:`cellresdm.features.cpmeasure.measure_objects_cp_measure` (per-object tables, also
the per-cell profiles other stages can use); :func:`fast_chunk` is the feature stage's per-chunk step.
Where and why values differ from CellProfiler's: README, feature stage.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.ndimage as ndi
import scipy.sparse

from cellresdm import layout
from cellresdm.cppipe import COMPARTMENTS, px
from cellresdm.errors import CellResDMError
from cellresdm.features import _morphology_kernels as morphology_kernels
from cellresdm.features import _object_kernels as object_kernels
from cellresdm.features import _texture_kernels as texture_kernels
from cellresdm.features.exports import measure_chunk_in_process
from cellresdm.features.settings import FeatureSettings

_EPS = np.finfo(float).eps


@dataclass(frozen=True)
class _Objects:
    """The objects of one label image as pixel runs: object ``k`` (label ``ids[k]``) holds the flat pixel
    indices ``order[starts[k]:starts[k + 1]]`` in C order."""

    labels: np.ndarray  # (H, W) int32
    ids: np.ndarray  # (n,) labels present, ascending
    order: np.ndarray  # (P,) flat indices of labelled pixels, grouped by object
    starts: np.ndarray  # (n + 1,)
    counts: np.ndarray  # (n,) pixels per object
    obj: np.ndarray  # (P,) object index of each entry of order
    y: np.ndarray  # (P,) row of each entry
    x: np.ndarray  # (P,) column of each entry

    @classmethod
    def of(cls, labels: np.ndarray) -> _Objects:
        lab = np.ascontiguousarray(labels, dtype=np.int32)
        flat = lab.ravel()
        idx = np.flatnonzero(flat)
        order = idx[np.argsort(flat[idx], kind="stable")]
        ids, counts = np.unique(flat[order], return_counts=True)
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        y, x = np.divmod(order, lab.shape[1])
        obj = np.repeat(np.arange(len(ids)), counts)
        return cls(lab, ids, order.astype(np.int64), starts, counts, obj, y, x)

    @property
    def n(self) -> int:
        return len(self.ids)

    def sum(self, values: np.ndarray) -> np.ndarray:
        """Per-object sums of per-entry ``values`` ((P,) in run order)."""
        return np.add.reduceat(values, self.starts[:-1]) if self.n else np.zeros(0)

    def sum_where(self, values: np.ndarray, where: np.ndarray) -> np.ndarray:
        return np.bincount(self.obj[where], values[where], minlength=self.n)


# ----------------------------------------------------------------------------------------------- intensity


def _levels(img: np.ndarray) -> np.ndarray | None:
    """``img`` * 65535 as uint16 if its values are uint16 levels (as CellProfiler reads 16-bit TIFFs), else None."""
    u, exact = object_kernels.uint16_levels(np.ascontiguousarray(img, np.float64))
    return u if exact and u.size else None


def _intensity(
    o: _Objects, edge: _Objects, img: np.ndarray, levels: np.ndarray | None, channel: str
) -> dict[str, np.ndarray]:
    """MeasureObjectIntensity: 15 intensity and 6 location features of every object (``levels``: :func:`_levels`
    of ``img``)."""
    area = o.counts.astype(float)
    stats = object_kernels.intensity_stats(img, o.order, o.starts)
    total, std, vmin, vmax = stats[:, 0], stats[:, 1], stats[:, 2], stats[:, 3]
    mean = total / area
    last = stats[:, 4].astype(np.int64)  # the maximum's position: the last in C order among ties (maximum_position)
    cm_x, cm_y = stats[:, 5] / area, stats[:, 6] / area
    with np.errstate(invalid="ignore", divide="ignore"):
        cmi_x, cmi_y = stats[:, 7] / total, stats[:, 8] / total
    if levels is not None:  # uint16 levels: one sort of (object, level) keys instead of one sort per object
        keys = np.sort((o.obj.astype(np.int64) << 16) | levels.ravel()[o.order].astype(np.int64))
        q = object_kernels.object_quantiles((keys & 0xFFFF) / 65535.0, o.starts, True)
    else:
        q = object_kernels.object_quantiles(img.ravel()[o.order], o.starts, False)
    # the edge: objects of the boundary label image (every object has one; placed by label to be sure)
    at = np.searchsorted(o.ids, edge.ids)
    estats = object_kernels.intensity_stats(img, edge.order, edge.starts)
    has = np.zeros(o.n, bool)
    has[at] = True
    ecount, etotal, estd, emin, emax = (np.zeros(o.n) for _ in range(5))
    ecount[at] = edge.counts
    etotal[at], estd[at], emin[at], emax[at] = estats[:, 0], estats[:, 1], estats[:, 2], estats[:, 3]
    with np.errstate(invalid="ignore", divide="ignore"):
        emean = etotal / ecount
    out = {
        "Intensity_IntegratedIntensity": total,
        "Intensity_MeanIntensity": mean,
        "Intensity_StdIntensity": std,
        "Intensity_MinIntensity": vmin,
        "Intensity_MaxIntensity": vmax,
        "Intensity_IntegratedIntensityEdge": etotal,
        "Intensity_MeanIntensityEdge": np.where(has, emean, 0.0),
        "Intensity_StdIntensityEdge": np.where(has, estd, 0.0),
        "Intensity_MinIntensityEdge": emin,
        "Intensity_MaxIntensityEdge": emax,
        "Intensity_MassDisplacement": np.sqrt((cm_x - cmi_x) ** 2 + (cm_y - cmi_y) ** 2),
        "Intensity_LowerQuartileIntensity": q[:, 0],
        "Intensity_MedianIntensity": q[:, 1],
        "Intensity_MADIntensity": q[:, 3],
        "Intensity_UpperQuartileIntensity": q[:, 2],
        "Location_CenterMassIntensity_X": cmi_x,
        "Location_CenterMassIntensity_Y": cmi_y,
        "Location_CenterMassIntensity_Z": np.zeros(o.n),
        "Location_MaxIntensity_X": o.x[last].astype(float),
        "Location_MaxIntensity_Y": o.y[last].astype(float),
        "Location_MaxIntensity_Z": np.zeros(o.n),
    }
    return {f"{k}_{channel}": val for k, val in out.items()}


def _edges(o: _Objects) -> _Objects:
    """The objects' inner boundary pixels (skimage find_boundaries, mode inner, 4-connected), as runs."""
    lab = o.labels
    b = np.zeros(lab.shape, bool)
    b[1:] |= lab[1:] != lab[:-1]
    b[:-1] |= lab[:-1] != lab[1:]
    b[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    b[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    return _Objects.of(np.where(b, lab, 0))


# ----------------------------------------------------------------------------------------------- texture


def _gray(img: np.ndarray, levels: int) -> np.ndarray:
    """skimage img_as_ubyte of a [0, 1] image, rescaled to ``levels`` gray levels like MeasureTexture."""
    g = np.clip(np.rint(np.asarray(img, np.float64) * 255), 0, 255)
    if levels != 256:
        g = g * (levels - 1) / 255.0
    return g.astype(np.uint8)


def _texture_names(channel: str, scale: int, levels: int) -> list[str]:
    return [f"Texture_{f}_{channel}_{scale}_{d:02d}_{levels}" for d in range(4) for f in texture_kernels.HARALICK]


def _texture(o: _Objects, gray: np.ndarray, channel: str, scale: int, levels: int) -> dict[str, np.ndarray]:
    feats = texture_kernels.haralick(gray, o.labels, o.order, o.starts, scale, True).reshape(o.n, 52)
    feats[~np.isfinite(feats)] = 0.0  # CellProfiler records non-finite texture as 0
    return dict(zip(_texture_names(channel, scale, levels), feats.T, strict=True))


def _image_texture(gray: np.ndarray, channel: str, scale: int, levels: int) -> dict[str, float]:
    h, w = gray.shape
    ones = np.ones((1, 1), np.int32)
    feats = texture_kernels.haralick(gray, ones, np.zeros(1, np.int64), np.array([0, h * w]), scale, False, True)
    feats = np.nan_to_num(feats.reshape(52), nan=0.0, posinf=0.0, neginf=0.0)
    return dict(zip(_texture_names(channel, scale, levels), feats.tolist(), strict=True))


# ----------------------------------------------------------------------------------------------- granularity


def _resize_shape(shape: tuple[int, ...], factor: float) -> np.ndarray:
    return np.array(shape, dtype=float) * factor


def _sample(img: np.ndarray, new_shape: np.ndarray, step: float) -> np.ndarray:
    """map_coordinates(img, mgrid[0:new_shape] / step, order=1), as MeasureGranularity subsamples."""
    i, j = np.mgrid[0 : new_shape[0], 0 : new_shape[1]].astype(float) / step
    return ndi.map_coordinates(img, (i, j), order=1)


def _upsample_scale(shape: tuple[int, ...], new_shape: np.ndarray) -> tuple[float, float]:
    """Coordinate scales of MeasureGranularity's map_coordinates back from the subsampled to the original grid."""
    fy = float(new_shape[0] - 1) / float(shape[0] - 1) if shape[0] > 1 else 0.0
    fx = float(new_shape[1] - 1) / float(shape[1] - 1) if shape[1] > 1 else 0.0
    return fy, fx


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius**2


def _disk_filter(img: np.ndarray, selem: np.ndarray, filter1d) -> np.ndarray:
    """ndi.grey_erosion / grey_dilation of ``img`` by a symmetric disk footprint (mode reflect) as one 1-D minimum
    or maximum filter per row width of the disk and a minimum or maximum over the disk's rows."""
    r = selem.shape[0] // 2
    padded = np.pad(img, r, mode="symmetric")  # numpy's symmetric is ndimage's reflect
    h, w = img.shape
    reduce = np.minimum if filter1d is ndi.minimum_filter1d else np.maximum
    rows: dict[int, np.ndarray] = {}
    out = None
    for dy in range(-r, r + 1):
        half = int(np.flatnonzero(selem[dy + r]).max()) - r
        if half not in rows:
            rows[half] = filter1d(padded, 2 * half + 1, axis=1)
        part = rows[half][r + dy : r + dy + h, r : r + w]
        out = part.copy() if out is None else reduce(out, part, out=out)
    return out


def _granularity(
    img: np.ndarray, objects: Mapping[str, _Objects], up: Mapping[str, scipy.sparse.csr_matrix], s: FeatureSettings
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """MeasureGranularity of one channel: image spectrum and {compartment: (n, range) per-object spectrum}
    (``up``: per compartment the objects' bilinear weights of the subsampled pixels,
    :func:`morphology_kernels.upsampling_weights`)."""
    pix = np.asarray(img, np.float32)
    sub, back = s.granularity_subsample, s.granularity_background_subsample
    new_shape = _resize_shape(pix.shape, sub) if sub < 1 else np.array(pix.shape, float)
    pixels = _sample(pix, new_shape, sub) if sub < 1 else pix.copy()
    if back < 1:
        back_shape = new_shape * back
        bp = _sample(pixels, back_shape, back)
    else:
        back_shape, bp = new_shape, pixels
    selem = _disk(px(s.granularity_radius, s.segmentation.scale))
    bp = _disk_filter(_disk_filter(bp, selem, ndi.minimum_filter1d), selem, ndi.maximum_filter1d)
    if back < 1:
        i, j = np.mgrid[0 : new_shape[0], 0 : new_shape[1]].astype(float)
        i *= float(back_shape[0] - 1) / float(new_shape[0] - 1)
        j *= float(back_shape[1] - 1) / float(new_shape[1] - 1)
        bp = ndi.map_coordinates(bp, (i, j), order=1)
    pixels = np.maximum(pixels - bp, 0).astype(np.float32)
    ng = s.granularity_range
    start = float(np.mean(pixels))
    current = start
    start = max(start, _EPS)
    seeds = morphology_kernels.erosion_series(pixels, ng)
    # every reconstruction of the erosions under the same image: one max-tree
    order = np.argsort(pixels.ravel(), kind="stable")
    recs = morphology_kernels.reconstruct_levels(morphology_kernels.max_tree(pixels, order), order, pixels, seeds)
    means = recs.mean(0, dtype=np.float64)
    image: dict[str, float] = {}
    for k in range(ng):
        prev, current = current, float(means[k])
        image[str(k + 1)] = (prev - current) * 100 / start
    per_object: dict[str, np.ndarray] = {}
    flat = np.asarray(img, np.float32).ravel()
    for name, o in objects.items():
        if not o.n:
            per_object[name] = np.zeros((0, ng))
            continue
        area = o.counts.astype(float)
        sums = up[name] @ recs
        means = np.column_stack([o.sum(flat[o.order].astype(float)) / area, sums / area[:, None]])
        per_object[name] = (means[:, :-1] - means[:, 1:]) * 100 / np.maximum(means[:, :1], _EPS)
    return image, per_object


# ----------------------------------------------------------------------------------------------- colocalization


def _dense_rank(v: np.ndarray, levels: np.ndarray | None) -> np.ndarray:
    """Dense ranks of ``v`` (0 for the smallest value); one histogram for uint16 ``levels`` (of ``v``)."""
    if levels is not None:
        rank = np.cumsum(np.bincount(levels, minlength=65536) > 0).astype(np.int32) - 1
        return rank[levels]
    return np.unique(v, return_inverse=True)[1].reshape(-1)


def _correlation(
    o: _Objects, values: np.ndarray, levels: list[np.ndarray | None], threshold: float
) -> dict[str, np.ndarray]:
    """MeasureColocalization within objects (correlation, Manders, RWC, overlap, K) for every channel pair
    (``values``: (C, P) the pixel values of the objects' runs; ``levels``: per channel their uint16 levels or
    None)."""
    out: dict[str, np.ndarray] = {}
    chans = layout.IF_CHANNELS
    ranks = np.empty(values.shape, np.int32)
    for c, (v, u) in enumerate(zip(values, levels, strict=True)):
        ranks[c] = _dense_rank(v, u)
    cross, spread, tot, both, any_both = object_kernels.colocalization_sums(values, o.starts, ranks, threshold / 100)
    q = 0
    with np.errstate(invalid="ignore", divide="ignore"):
        for a in range(len(chans)):
            for b in range(a + 1, len(chans)):
                ca, cb = chans[a], chans[b]
                out[f"Correlation_Correlation_{ca}_{cb}"] = cross[:, q] / (spread[:, a] * spread[:, b])
                if not any_both[q]:
                    zero = np.zeros(o.n)
                    for name in ("Manders", "RWC", "K"):
                        out[f"Correlation_{name}_{ca}_{cb}"] = out[f"Correlation_{name}_{cb}_{ca}"] = zero
                    out[f"Correlation_Overlap_{ca}_{cb}"] = zero
                    q += 1
                    continue
                sa, sb, wa, wb, fa2, fb2, fab = both[:, q].T
                out[f"Correlation_Manders_{ca}_{cb}"] = sa / tot[:, a]
                out[f"Correlation_Manders_{cb}_{ca}"] = sb / tot[:, b]
                out[f"Correlation_RWC_{ca}_{cb}"] = wa / tot[:, a]
                out[f"Correlation_RWC_{cb}_{ca}"] = wb / tot[:, b]
                out[f"Correlation_Overlap_{ca}_{cb}"] = fab / np.sqrt(fa2 * fb2)
                out[f"Correlation_K_{ca}_{cb}"] = fab / fa2
                out[f"Correlation_K_{cb}_{ca}"] = fab / fb2
                q += 1
    return out


# ----------------------------------------------------------------------------------------------- shape, radial


def _crop_edts(o: _Objects) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per object: distance of each of its pixels (run order) to its edge within the image (the image border
    is no edge, as centrosome's distance_to_edge), and max/mean/median radius of the padded mask (the image
    border is an edge, as MeasureObjectSizeShape)."""
    H, W = o.labels.shape
    d_edge = np.zeros(len(o.order))
    radii = np.zeros((o.n, 3))
    slices = ndi.find_objects(o.labels)
    for k, lab in enumerate(o.ids):
        sl = slices[lab - 1]
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        a0, a1 = o.starts[k], o.starts[k + 1]
        ys, xs = o.y[a0:a1], o.x[a0:a1]
        padded = np.pad(o.labels[sl] == lab, 1)
        dist = ndi.distance_transform_edt(padded)
        inner = dist[ys - y0 + 1, xs - x0 + 1]
        radii[k] = inner.max(), inner.mean(), np.median(inner)
        cy0, cy1, cx0, cx1 = max(y0 - 1, 0), min(y1 + 1, H), max(x0 - 1, 0), min(x1 + 1, W)
        if (cy0, cy1, cx0, cx1) == (y0 - 1, y1 + 1, x0 - 1, x1 + 1):
            d_edge[a0:a1] = inner
        else:
            crop = ndi.distance_transform_edt(o.labels[cy0:cy1, cx0:cx1] == lab)
            d_edge[a0:a1] = crop[ys - cy0, xs - cx0]
    return d_edge, radii[:, 0], radii[:, 1:]


def _radial_geometry(o: _Objects, d_edge: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MeasureObjectIntensityDistribution's geometry (scaled bins, centre = the object's point farthest from its
    edge): per entry of ``o.order`` the bin (-1 where unreached) and the octant index; the objects' centres."""
    at_max = np.where(d_edge == np.maximum.reduceat(d_edge, o.starts[:-1])[o.obj], np.arange(len(d_edge)), -1)
    centre = np.maximum.reduceat(at_max, o.starts[:-1])  # last in C order among ties (maximum_position)
    dist = morphology_kernels.geodesic_distance(o.labels, o.order[centre]).ravel()[o.order]
    good = dist >= 0
    norm = np.where(good, dist / (dist + d_edge + 0.001), 0.0)
    bin_index = np.minimum((norm * bins).astype(np.int64), bins)
    bin_index[~good] = -1
    ci, cj = o.y[centre][o.obj], o.x[centre][o.obj]
    octant = (o.y > ci).astype(np.int64) + 2 * (o.x > cj) + 4 * (np.abs(o.y - ci) > np.abs(o.x - cj))
    return bin_index, octant, centre


def _radial(o: _Objects, v: np.ndarray, bin_index: np.ndarray, octant: np.ndarray, bins: int, channel: str):
    good = bin_index >= 0
    ob, bi, oc, vv = o.obj[good], bin_index[good], octant[good], v[good]
    nb = bins + 1
    hist = np.bincount(ob * nb + bi, vv, minlength=o.n * nb).reshape(o.n, nb)
    number = np.bincount(ob * nb + bi, minlength=o.n * nb).reshape(o.n, nb).astype(float)
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = hist / hist.sum(1, keepdims=True)
        frac_bin = number / number.sum(1, keepdims=True)
        mean_frac = frac / (frac_bin + _EPS)
        key = (ob * nb + bi) * 8 + oc
        rv = np.bincount(key, vv, minlength=o.n * nb * 8).reshape(o.n, nb, 8)
        rc = np.bincount(key, minlength=o.n * nb * 8).reshape(o.n, nb, 8)
        means = np.ma.masked_array(rv / rc, rc == 0)
        cv = (np.ma.std(means, axis=2) / np.ma.mean(means, axis=2)).filled(np.nan)
        cv[(rc > 0).sum(2) == 0] = 0.0
    for b in range(bins):
        out[f"RadialDistribution_FracAtD_{channel}_{b + 1}of{bins}"] = frac[:, b]
        out[f"RadialDistribution_MeanFrac_{channel}_{b + 1}of{bins}"] = mean_frac[:, b]
        out[f"RadialDistribution_RadialCV_{channel}_{b + 1}of{bins}"] = np.asarray(cv[:, b], float)
    return out


def _zernike_indexes(limit: int = 10) -> list[tuple[int, int]]:
    return [(n, m) for n in range(limit) for m in range(n + 1) if (n - m) % 2 == 0]


def _zernike(o: _Objects) -> dict[str, np.ndarray]:
    """MeasureObjectSizeShape's Zernike features (degree 9): |sum over the object of V_nm| / (pi r^2) on the
    object's minimum enclosing circle (centre and radius r)."""
    from math import factorial

    from centrosome.cpmorphology import minimum_enclosing_circle

    centers, radii = minimum_enclosing_circle(o.labels, o.ids)
    yy = (o.y - centers[o.obj, 0]) / radii[o.obj]
    xx = (o.x - centers[o.obj, 1]) / radii[o.obj]
    nm = np.array(_zernike_indexes(), dtype=np.int64)
    coef = np.zeros((len(nm), 10))
    for q, (n, m) in enumerate(nm):
        deg = (n - m) // 2
        for k in range(deg + 1):  # coefficient of r^(n - 2k), i.e. of (r^2)^(deg - k): Horner position k
            coef[q, k] = (
                (-1) ** k * factorial(n - k) / (factorial(k) * factorial((n + m) // 2 - k) * factorial(deg - k))
            )
    sums = object_kernels.zernike_sums(o.obj, yy, xx, o.n, nm, coef)
    area = np.pi * radii**2
    return {f"AreaShape_Zernike_{n}_{m}": np.abs(sums[:, q]) / area for q, (n, m) in enumerate(nm)}


def _shape(o: _Objects, radii: tuple[np.ndarray, np.ndarray], zernike: bool) -> dict[str, np.ndarray]:
    """MeasureObjectSizeShape (no advanced features) of every object: skimage regionprops' values (moments,
    bounding box, perimeter, Euler number and convex area from :func:`object_kernels.shape_counts`), centrosome's Feret
    diameters."""
    from centrosome.cpmorphology import convex_hull, feret_diameter

    area = o.counts.astype(float)
    cy, cx = o.sum(o.y.astype(float)) / area, o.sum(o.x.astype(float)) / area
    dy, dx = o.y - cy[o.obj], o.x - cx[o.obj]
    # skimage's inertia tensor of the object's mask: [[mu02, -mu11], [-mu11, mu20]] / mu00
    tensor = np.empty((o.n, 2, 2))
    tensor[:, 0, 0] = o.sum(dx * dx) / area
    tensor[:, 1, 1] = o.sum(dy * dy) / area
    tensor[:, 0, 1] = tensor[:, 1, 0] = -o.sum(dy * dx) / area
    eig = np.clip(np.linalg.eigvalsh(tensor), 0, None)  # ascending
    l1, l2 = eig[:, 1], eig[:, 0]
    a_, b_, c_ = tensor[:, 0, 0], tensor[:, 0, 1], tensor[:, 1, 1]
    orientation = np.where(a_ - c_ == 0, np.where(b_ < 0, -np.pi / 4, np.pi / 4), 0.5 * np.arctan2(-2 * b_, c_ - a_))
    counts = object_kernels.shape_counts(o.labels, o.order, o.starts)
    y0, x0, y1, x1, perim, euler, convex = counts.T
    bbox_area = (y1 - y0) * (x1 - x0)
    max_r, rest = radii
    hulls, hull_counts = convex_hull(o.labels, o.ids)
    min_feret, max_feret = feret_diameter(hulls, hull_counts, o.ids)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {
            "AreaShape_Area": area,
            "AreaShape_Perimeter": perim,
            "AreaShape_MajorAxisLength": 4 * np.sqrt(l1),
            "AreaShape_MinorAxisLength": 4 * np.sqrt(l2),
            "AreaShape_Eccentricity": np.where(l1 == 0, 0.0, np.sqrt(1 - l2 / np.where(l1 == 0, 1.0, l1))),
            "AreaShape_Orientation": orientation * (180 / np.pi),
            "AreaShape_Center_X": cx,
            "AreaShape_Center_Y": cy,
            "AreaShape_BoundingBoxArea": bbox_area,
            "AreaShape_BoundingBoxMinimum_X": x0,
            "AreaShape_BoundingBoxMaximum_X": x1,
            "AreaShape_BoundingBoxMinimum_Y": y0,
            "AreaShape_BoundingBoxMaximum_Y": y1,
            "AreaShape_FormFactor": 4.0 * np.pi * area / perim**2,
            "AreaShape_Extent": area / bbox_area,
            "AreaShape_Solidity": area / convex,
            "AreaShape_Compactness": perim**2 / np.maximum(4.0 * np.pi * area, 1),
            "AreaShape_EulerNumber": euler,
            "AreaShape_MaximumRadius": max_r,
            "AreaShape_MeanRadius": rest[:, 0],
            "AreaShape_MedianRadius": rest[:, 1],
            "AreaShape_ConvexArea": convex,
            "AreaShape_MinFeretDiameter": np.asarray(min_feret, float),
            "AreaShape_MaxFeretDiameter": np.asarray(max_feret, float),
            "AreaShape_EquivalentDiameter": np.sqrt(4 * area / np.pi),
        }
    if zernike:
        out |= _zernike(o)
    out |= {
        "Location_Center_X": cx,
        "Location_Center_Y": cy,
        "Location_Center_Z": np.zeros(o.n),
    }
    return out


# ----------------------------------------------------------------------------------------------- neighbours


def _neighbors(o: _Objects, depth: np.ndarray, obj: str, s: FeatureSettings) -> dict[str, np.ndarray]:
    """The pipeline's MeasureObjectNeighbors modules of ``obj`` (neighbours are the objects themselves), as
    CellProfiler computes them: neighbours are other objects within the object dilated by a disk of the
    distance; touching outline pixels have another object within the distance + 0.5; the closest objects and
    the angle between them come from the objects' centres.

    Args:
        o: the objects; depth: (P,) per run entry the distance to the nearest pixel outside its object.
    """
    from scipy.spatial import cKDTree

    scale = s.segmentation.scale
    if obj == "Cells":
        dist = px(s.neighbor_distance_cells, scale)
        methods = [(str(dist), dist), ("Adjacent", 1)]
    elif obj == "Nuclei":
        dist = px(s.neighbor_distance_nuclei, scale)
        methods = [(str(dist), dist)]
    else:
        return {}
    n = o.n
    out: dict[str, np.ndarray] = {}
    if n < 2:  # CellProfiler finds no neighbour
        for suffix, _ in methods:
            for name in _NEIGHBOR_FEATURES:
                zero = name in ("NumberOfNeighbors", "PercentTouching")
                out[f"Neighbors_{name}_{suffix}"] = np.zeros(n) if zero else np.full(n, np.nan)
        return out
    area = o.counts.astype(float)
    centers = np.column_stack([o.sum(o.y.astype(float)) / area, o.sum(o.x.astype(float)) / area])
    k = min(n, 3)
    _, nearest = cKDTree(centers).query(centers, k=k)
    first = centers[nearest[:, 1]] - centers
    first_number = o.ids[nearest[:, 1]].astype(float)
    if k > 2:
        second = centers[nearest[:, 2]] - centers
        second_number = o.ids[nearest[:, 2]].astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            dot = (first * second).sum(1) / np.sqrt((first**2).sum(1) * (second**2).sum(1))
            angle = np.degrees(np.arccos(dot))
    else:
        second, second_number, angle = np.zeros_like(first), np.zeros(n), np.zeros(n)
    lab = o.labels
    outline = np.zeros(lab.shape, bool)
    for a, b in (
        ((slice(1, None), slice(None)), (slice(None, -1), slice(None))),
        ((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
        ((slice(1, None), slice(1, None)), (slice(None, -1), slice(None, -1))),
        ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None))),
    ):
        differ = lab[a] != lab[b]
        outline[a] |= differ
        outline[b] |= differ
    outline[[0, -1], :] = outline[:, [0, -1]] = True
    for suffix, d in methods:
        counts = object_kernels.neighbor_counts(lab, o.order, o.starts, depth, outline, _offsets(d), _offsets(d + 0.5))
        with np.errstate(invalid="ignore", divide="ignore"):
            percent = counts[:, 1] * 100 / counts[:, 2]
        out |= {
            f"Neighbors_NumberOfNeighbors_{suffix}": counts[:, 0],
            f"Neighbors_FirstClosestObjectNumber_{suffix}": first_number,
            f"Neighbors_FirstClosestDistance_{suffix}": np.hypot(first[:, 0], first[:, 1]),
            f"Neighbors_SecondClosestObjectNumber_{suffix}": second_number,
            f"Neighbors_SecondClosestDistance_{suffix}": np.hypot(second[:, 0], second[:, 1]),
            f"Neighbors_AngleBetweenNeighbors_{suffix}": angle,
            f"Neighbors_PercentTouching_{suffix}": percent,
        }
    return out


def _offsets(radius: float) -> np.ndarray:
    """(K, 2) offsets of centrosome's strel_disk(radius)."""
    r = int(radius)
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    inside = dy * dy + dx * dx <= radius * radius
    return np.column_stack([dy[inside], dx[inside]]).astype(np.int64)


_NEIGHBOR_FEATURES = (
    "NumberOfNeighbors",
    "PercentTouching",
    "FirstClosestObjectNumber",
    "FirstClosestDistance",
    "SecondClosestObjectNumber",
    "SecondClosestDistance",
    "AngleBetweenNeighbors",
)


# ----------------------------------------------------------------------------------------------- field


@dataclass(frozen=True)
class FieldMeasurements:
    """One field's measurements: ``image`` {CellProfiler image measurement (``Intensity_MeanIntensity_DNA``,
    ``Granularity_1_DNA``, ``Texture_Contrast_DNA_3_00_256``): value} and ``objects`` {compartment: per-object
    DataFrame, column ``ObjectNumber`` first}."""

    image: dict[str, float]
    objects: dict[str, pd.DataFrame]


def _image_intensity(img: np.ndarray, levels: np.ndarray | None, channel: str) -> dict[str, float]:
    """MeasureImageIntensity of a whole image (``levels``: :func:`_levels` of ``img``)."""
    if levels is not None:  # uint16 levels: everything from one histogram
        counts = np.bincount(levels.ravel(), minlength=65536)
        n = int(levels.size)
        cum = np.cumsum(counts)
        grey = np.arange(65536, dtype=np.float64)
        present = np.flatnonzero(counts)
        mean = float(counts @ grey) / 65535 / n

        def quantile(q: float) -> float:
            pos = (n - 1) * q
            lo = int(np.floor(pos))
            a, b = np.searchsorted(cum, [lo, min(lo + 1, n - 1)], side="right").astype(float)
            return float(a + (b - a) * (pos - lo)) / 65535

        median = quantile(0.5)
        dev2 = np.abs(2 * grey - 2 * median * 65535).astype(np.int64)  # half-levels: integers
        dcum = np.cumsum(np.bincount(dev2, weights=counts))
        a, b = np.searchsorted(dcum, [(n - 1) // 2, n // 2], side="right")
        vmax = float(present[-1]) / 65535
        values = {
            "Total": float(counts @ grey) / 65535,
            "Mean": mean,
            "Median": median,
            "Std": float(np.sqrt(counts @ (grey / 65535 - mean) ** 2 / n)),
            "MAD": (a + b) / 2 / 2 / 65535,
            "Max": vmax,
            "Min": float(present[0]) / 65535,
            "PercentMaximal": 100.0 * float(counts[present[-1]]) / n,
            "LowerQuartile": quantile(0.25),
            "UpperQuartile": quantile(0.75),
        }
    else:
        v = np.asarray(img, np.float64).ravel()
        v = v[np.isfinite(v)]
        n = v.size
        if n == 0:
            values = dict.fromkeys(("Total", "Mean", "Median", "Std", "MAD", "Max", "Min", "PercentMaximal"), 0.0)
            values |= {"LowerQuartile": 0.0, "UpperQuartile": 0.0}
        else:
            median = float(np.median(v))
            vmax = float(v.max())
            lower, upper = np.percentile(v, [25, 75])
            values = {
                "Total": float(v.sum()),
                "Mean": float(v.sum()) / n,
                "Median": median,
                "Std": float(v.std()),
                "MAD": float(np.median(np.abs(v - median))),
                "Max": vmax,
                "Min": float(v.min()),
                "PercentMaximal": 100.0 * float(np.sum(v == vmax)) / n,
                "LowerQuartile": float(lower),
                "UpperQuartile": float(upper),
            }
    names = {
        "Total": "TotalIntensity",
        "Mean": "MeanIntensity",
        "Median": "MedianIntensity",
        "Std": "StdIntensity",
        "MAD": "MADIntensity",
        "Max": "MaxIntensity",
        "Min": "MinIntensity",
        "PercentMaximal": "PercentMaximal",
        "LowerQuartile": "LowerQuartileIntensity",
        "UpperQuartile": "UpperQuartileIntensity",
    }
    out = {f"Intensity_{names[k]}_{channel}": float(val) for k, val in values.items()}
    out[f"Intensity_TotalArea_{channel}"] = float(n)
    return out


def measure_field(
    labels: Mapping[str, np.ndarray], images: np.ndarray, settings: FeatureSettings, timings: dict | None = None
) -> FieldMeasurements:
    """All measurements of one field (the feature pipeline's modules, CellProfiler's names).

    Args:
        labels: {compartment: (H, W) int label image} for :data:`COMPARTMENTS` (e.g. CellProfiler's labels).
        images: (5, H, W) float in [0, 1], layout.IF_CHANNELS (the values CellProfiler reads: uint16 / 65535).
        settings: feature settings (texture scales and gray levels, granularity, radial bins, colocalisation
            threshold, neighbour distances, Zernike; pixel sizes scaled like the CellProfiler pipeline).
        timings: if given, {step: seconds} is added to it (profiling).

    Returns:
        :class:`FieldMeasurements`; per-object tables have one row per object present (ascending label,
        ``ObjectNumber`` = label).

    Raises:
        CellResDMError: images and labels of different shapes, or not 5 channels.
    """
    imgs = np.asarray(images, dtype=np.float64)
    if imgs.ndim != 3 or imgs.shape[0] != len(layout.IF_CHANNELS):
        raise CellResDMError(f"fast features: images must be (5, H, W), got {imgs.shape}")
    missing = [o for o in COMPARTMENTS if o not in labels]
    if missing:
        raise CellResDMError(f"fast features: no label image for {missing}")
    for obj in COMPARTMENTS:
        if np.shape(labels[obj]) != imgs.shape[1:]:
            raise CellResDMError(f"fast features: {obj} labels {np.shape(labels[obj])} != images {imgs.shape[1:]}")
    t = timings if timings is not None else {}
    clock = [time.perf_counter()]

    def tick(step: str) -> None:
        now = time.perf_counter()
        t[step] = t.get(step, 0.0) + now - clock[0]
        clock[0] = now

    s = settings
    scale = s.segmentation.scale
    scales = [px(v, scale) for v in s.texture_scales]
    objects = {obj: _Objects.of(labels[obj]) for obj in COMPARTMENTS}
    cols: dict[str, dict[str, np.ndarray]] = {obj: {"ObjectNumber": o.ids.astype(float)} for obj, o in objects.items()}
    image: dict[str, float] = {}
    geometry = {}
    tick("objects")
    for obj, o in objects.items():
        if not o.n:
            continue
        d_edge, max_r, rest = _crop_edts(o)
        tick("edt")
        cols[obj] |= _shape(o, (max_r, rest), s.zernike)
        tick("shape")
        geometry[obj] = (_edges(o), *_radial_geometry(o, d_edge, s.radial_bins)[:2])
        tick("radial geometry")
        cols[obj] |= _neighbors(o, d_edge, obj, s)
        tick("neighbors")
    present = {obj: o for obj, o in objects.items() if o.n}
    up = {}
    if present:
        sub = s.granularity_subsample
        shape = imgs.shape[1:]
        new_shape = _resize_shape(shape, sub) if sub < 1 else np.array(shape, float)
        small = (int(np.ceil(new_shape[0])), int(np.ceil(new_shape[1])))  # np.mgrid's length, as _sample
        for obj, o in present.items():
            fy, fx = _upsample_scale(shape, new_shape)
            csr = morphology_kernels.upsampling_weights(o.starts, o.y, o.x, fy, fx, small)
            up[obj] = scipy.sparse.csr_matrix(csr[::-1], shape=(o.n, small[0] * small[1]))
    tick("granularity setup")
    levels = [_levels(img) for img in imgs]
    for channel, img, lev in zip(layout.IF_CHANNELS, imgs, levels, strict=True):
        image |= _image_intensity(img, lev, channel)
        tick("image intensity")
        gray = _gray(img, s.texture_gray_levels)
        for sc in scales:
            image |= _image_texture(gray, channel, sc, s.texture_gray_levels)
        tick("image texture")
        gimage, gobjects = _granularity(img, present, up, s)
        image |= {f"Granularity_{k}_{channel}": v for k, v in gimage.items()}
        for obj, spectrum in gobjects.items():
            cols[obj] |= {f"Granularity_{k + 1}_{channel}": spectrum[:, k] for k in range(spectrum.shape[1])}
        tick("granularity")
        for obj, o in present.items():
            edge, bin_index, octant = geometry[obj]
            cols[obj] |= _intensity(o, edge, img, lev, channel)
            tick("intensity")
            for sc in scales:
                cols[obj] |= _texture(o, gray, channel, sc, s.texture_gray_levels)
            tick("texture")
            cols[obj] |= _radial(o, img.ravel()[o.order], bin_index, octant, s.radial_bins, channel)
            tick("radial")
    flat = imgs.reshape(len(imgs), -1)
    for obj, o in present.items():
        values = flat[:, o.order]
        lev = [None if u is None else u.ravel()[o.order] for u in levels]
        cols[obj] |= _correlation(o, values, lev, s.colocalization_threshold)
        tick("correlation")
    cols["Cytoplasm"].pop("Location_Center_Z", None)  # IdentifyTertiaryObjects records no Z
    tables = {obj: pd.DataFrame(c) for obj, c in cols.items()}
    return FieldMeasurements(image=image, objects=tables)


def measure_objects_fast(
    labels: Mapping[str, np.ndarray], images: np.ndarray, settings: FeatureSettings
) -> dict[str, pd.DataFrame]:
    """Per-object (per-cell) measurements of one image set, the interface of
    :func:`~cellresdm.features.cpmeasure.measure_objects_cp_measure`: {compartment: DataFrame, one row per
    object (ascending label, ``ObjectNumber``), CellProfiler column names}. See :func:`measure_field`."""
    return measure_field(labels, images, settings).objects


def field_row(field: FieldMeasurements, counts: Mapping[str, float], aggregate: str) -> dict[str, float]:
    """The feature-table row of a field: ``Image_*`` (image measurements and ``Image_Count_*`` from ``counts``)
    and ``{compartment}_*`` (per-object values aggregated with ``aggregate``; NaN without objects)."""
    row: dict[str, float] = {f"Image_Count_{o}": float(counts[o]) for o in COMPARTMENTS}
    row |= {f"Image_{k}": v for k, v in field.image.items()}
    for obj, table in field.objects.items():
        values = table.drop(columns="ObjectNumber")
        values = values[[c for c in values.columns if "ObjectNumber" not in c]]
        values = values.replace([np.inf, -np.inf], np.nan)
        row |= {f"{obj}_{k}": v for k, v in values.agg(aggregate).items()}
    return row


@functools.lru_cache(maxsize=8)
def feature_columns(settings: FeatureSettings) -> tuple[str, ...]:
    """Every column of a field's row under ``settings`` (:func:`field_row`), whether or not the field has objects:
    those of a constructed 96-px field with two round cells around their nuclei (a field without objects gets
    them as NaN, as the CellProfiler backend writes them)."""
    yy, xx = np.mgrid[:96, :96]
    nuclei = np.zeros((96, 96), dtype=np.int32)
    cells = np.zeros((96, 96), dtype=np.int32)
    for label, (y, x) in enumerate(((30, 30), (62, 64)), start=1):
        distance = np.hypot(yy - y, xx - x)
        cells[distance <= 18] = label
        nuclei[distance <= 8] = label
    labels = {"Nuclei": nuclei, "Cells": cells, "Cytoplasm": np.where(nuclei > 0, 0, cells)}
    images = np.random.default_rng(0).uniform(0.1, 0.9, (len(layout.IF_CHANNELS), 96, 96))
    row = field_row(measure_field(labels, images, settings), {o: 2.0 for o in COMPARTMENTS}, settings.aggregate)
    return tuple(row)


def fast_chunk(
    cp_out: Path, pics: Path, ids: list[str], settings: FeatureSettings, seconds: dict[str, float]
) -> pd.DataFrame:
    """Per-image features of a chunk from CellProfiler's labels (segmentation-only run) and
    :func:`measure_field`; adds each image set's measuring time to ``seconds``. Every column of
    :func:`feature_columns` is there, NaN where a compartment has no object in any field of the chunk."""

    def measure(labels: dict[str, np.ndarray], images: np.ndarray, counts: dict[str, float]) -> dict[str, float]:
        return field_row(measure_field(labels, images, settings), counts, settings.aggregate)

    table = measure_chunk_in_process(cp_out, pics, ids, seconds, measure)
    return table.reindex(columns=list(dict.fromkeys([*feature_columns(settings), *table.columns])))
