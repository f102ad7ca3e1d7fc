"""numba kernels of the fast feature backend (:mod:`cellresdm.features.fast`): Per-object statistics of a field:
intensity quantiles and moments, shape counts and convex hulls, Zernike sums, colocalisation sums and neighbour
counts.

Every kernel works on all objects of a label image in one call; objects are given as runs of pixel indices
(``order[starts[k]:starts[k + 1]]`` are the flat indices of object ``k``, ``0 <= k < n``). Compiled on first use
and cached on disk (``cache=True``).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _quantile(v: np.ndarray, fraction: float) -> float:
    """CellProfiler's MeasureObjectIntensity quantile of sorted ``v`` (linear between neighbours)."""
    n = len(v)
    q = n * fraction
    qi = int(np.floor(q))
    qf = q - qi
    if qi < n - 1:
        return v[qi] * (1 - qf) + v[qi + 1] * qf
    return v[qi]


@numba.njit(cache=True, nogil=True)
def _deviation_at(v: np.ndarray, med: float, split: int, k: int) -> float:
    """The k-th smallest |v - med| of sorted ``v`` (``split``: the first index with v >= med), by merging the
    two sorted sequences med - v[split - 1], med - v[split - 2], ... and v[split] - med, ... ."""
    i = split - 1
    j = split
    n = len(v)
    d = 0.0
    for _ in range(k + 1):
        if j >= n or (i >= 0 and med - v[i] <= v[j] - med):
            d = med - v[i]
            i -= 1
        else:
            d = v[j] - med
            j += 1
    return d


@numba.njit(cache=True, nogil=True)
def object_quantiles(values: np.ndarray, starts: np.ndarray, presorted: bool) -> np.ndarray:
    """Per object lower quartile, median, upper quartile and MAD of its pixel values, as
    CellProfiler's MeasureObjectIntensity computes them.

    Args:
        values: (P,) pixel values grouped by object (object ``k``: ``values[starts[k]:starts[k + 1]]``).
        starts: (n + 1,) run starts.
        presorted: every run of ``values`` is sorted already.

    Returns:
        (n, 4) float64 (0 for an empty object).
    """
    n = len(starts) - 1
    out = np.zeros((n, 4))
    for k in range(n):
        a0, a1 = starts[k], starts[k + 1]
        if a1 == a0:
            continue
        v = values[a0:a1] if presorted else np.sort(values[a0:a1])
        med = _quantile(v, 0.5)
        out[k, 0] = _quantile(v, 0.25)
        out[k, 1] = med
        out[k, 2] = _quantile(v, 0.75)
        # the median of the sorted absolute deviations, without sorting them
        m = len(v)
        split = np.searchsorted(v, med)
        q = m * 0.5
        qi = int(np.floor(q))
        qf = q - qi
        if qi < m - 1:
            out[k, 3] = _deviation_at(v, med, split, qi) * (1 - qf) + _deviation_at(v, med, split, qi + 1) * qf
        else:
            out[k, 3] = _deviation_at(v, med, split, qi)
    return out


@numba.njit(cache=True, nogil=True)
def uint16_levels(image: np.ndarray) -> tuple[np.ndarray, bool]:
    """``image`` * 65535 as uint16, and whether that is exact (every value a uint16 level / 65535, as
    CellProfiler reads 16-bit TIFFs)."""
    flat = image.ravel()
    out = np.empty(flat.size, dtype=np.uint16)
    for i in range(flat.size):
        v = flat[i]
        u = np.rint(v * 65535.0)
        if not (u >= 0.0 and u <= 65535.0 and u / 65535.0 == v):
            return out.reshape(image.shape), False
        out[i] = np.uint16(u)
    return out.reshape(image.shape), True


@numba.njit(cache=True, nogil=True)
def intensity_stats(image: np.ndarray, order: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per object (pixel runs of ``image`` (H, W)) the sums and extremes MeasureObjectIntensity needs.

    Returns:
        (n, 9) float64: sum, standard deviation (population), minimum, maximum, the run position of the maximum
        (the last in C order among ties), sums of x, y, x * value and y * value.
    """
    w = image.shape[1]
    flat = image.ravel()
    n = len(starts) - 1
    out = np.zeros((n, 9))
    for k in range(n):
        a0, a1 = starts[k], starts[k + 1]
        if a1 == a0:
            continue
        s = 0.0
        vmin = np.inf
        vmax = -np.inf
        at = a0
        sx = 0.0
        sy = 0.0
        sxv = 0.0
        syv = 0.0
        for t in range(a0, a1):
            p = order[t]
            v = flat[p]
            y = p // w
            x = p - y * w
            s += v
            if v < vmin:
                vmin = v
            if v >= vmax:
                vmax = v
                at = t
            sx += x
            sy += y
            sxv += x * v
            syv += y * v
        mean = s / (a1 - a0)
        ss = 0.0
        for t in range(a0, a1):
            d = flat[order[t]] - mean
            ss += d * d
        out[k, 0] = s
        out[k, 1] = np.sqrt(ss / (a1 - a0))
        out[k, 2] = vmin
        out[k, 3] = vmax
        out[k, 4] = at
        out[k, 5] = sx
        out[k, 6] = sy
        out[k, 7] = sxv
        out[k, 8] = syv
    return out


@numba.njit(cache=True, nogil=True)
def _hull_area(ys: np.ndarray, xs: np.ndarray) -> int:
    """Pixel centres inside or on the convex hull of points (Y, X) (twice the pixel coordinates, integers): the
    monotone chain hull, then per pixel row the hull's exact (rational) extent."""
    m = len(ys)
    key = np.empty(m, dtype=np.int64)
    for i in range(m):
        key[i] = (ys[i] + (1 << 20)) * (1 << 22) + xs[i] + (1 << 20)
    idx = np.argsort(key)
    hy = np.empty(2 * m + 1, dtype=np.int64)
    hx = np.empty(2 * m + 1, dtype=np.int64)
    k = 0
    for rep in range(2):  # lower then upper chain
        start = k
        for t in range(m):
            i = idx[t] if rep == 0 else idx[m - 1 - t]
            while k >= start + 2:
                cross = (hy[k - 1] - hy[k - 2]) * (xs[i] - hx[k - 2]) - (hx[k - 1] - hx[k - 2]) * (ys[i] - hy[k - 2])
                if cross > 0:
                    break
                k -= 1
            hy[k] = ys[i]
            hx[k] = xs[i]
            k += 1
        k -= 1  # the last point starts the other chain
    ymin = hy[0]
    ymax = hy[0]
    for i in range(k):
        ymin = min(ymin, hy[i])
        ymax = max(ymax, hy[i])
    area = 0
    y = (ymin + 1) // 2
    while 2 * y <= ymax:
        yy = 2 * y
        have = False
        lo_n, lo_d, hi_n, hi_d = 0, 1, 0, 1
        for i in range(k):
            j = i + 1 if i + 1 < k else 0
            y1, x1, y2, x2 = hy[i], hx[i], hy[j], hx[j]
            if yy < min(y1, y2) or yy > max(y1, y2):
                continue
            if y1 == y2:
                cands = ((min(x1, x2), 1), (max(x1, x2), 1))
            else:
                num = x1 * (y2 - y1) + (yy - y1) * (x2 - x1)
                den = y2 - y1
                if den < 0:
                    num, den = -num, -den
                cands = ((num, den), (num, den))
            for c in range(2):
                num, den = cands[c]
                if not have:
                    lo_n, lo_d, hi_n, hi_d = num, den, num, den
                    have = True
                else:
                    if num * lo_d < lo_n * den:
                        lo_n, lo_d = num, den
                    if num * hi_d > hi_n * den:
                        hi_n, hi_d = num, den
        if have:
            xl = -((-lo_n) // (2 * lo_d))
            xr = hi_n // (2 * hi_d)
            if xr >= xl:
                area += xr - xl + 1
        y += 1
    return area


@numba.njit(cache=True, nogil=True)
def shape_counts(labels: np.ndarray, order: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """skimage regionprops' bounding box, perimeter (4-connected border, weighted), Euler number (8-connected) and
    convex area (pixels of the convex hull of the pixels' edge midpoints) of every object.

    Returns:
        (n, 7) float64: min row, min column, max row + 1, max column + 1, perimeter, Euler number, convex area.
    """
    h, w = labels.shape
    n = len(starts) - 1
    out = np.zeros((n, 7))
    border = np.zeros((h, w), dtype=np.bool_)
    weights = np.zeros(50)
    for v in (5, 7, 15, 17, 25, 27):
        weights[v] = 1.0
    weights[21] = np.sqrt(2.0)
    weights[33] = np.sqrt(2.0)
    weights[13] = (1 + np.sqrt(2.0)) / 2
    weights[23] = (1 + np.sqrt(2.0)) / 2
    for k in range(n):
        a0, a1 = starts[k], starts[k + 1]
        if a1 == a0:
            continue
        lab = labels.flat[order[a0]]
        y0, x0, y1, x1 = h, w, -1, -1
        for t in range(a0, a1):
            p = order[t]
            y = p // w
            x = p - y * w
            y0 = min(y0, y)
            y1 = max(y1, y)
            x0 = min(x0, x)
            x1 = max(x1, x)
            inner = (
                y > 0
                and labels[y - 1, x] == lab
                and y < h - 1
                and labels[y + 1, x] == lab
                and x > 0
                and labels[y, x - 1] == lab
                and x < w - 1
                and labels[y, x + 1] == lab
            )
            border[y, x] = not inner
        rmin = np.full(y1 - y0 + 1, w, dtype=np.int64)
        rmax = np.full(y1 - y0 + 1, -1, dtype=np.int64)
        perimeter = 0.0
        for t in range(a0, a1):
            p = order[t]
            y = p // w
            x = p - y * w
            rmin[y - y0] = min(rmin[y - y0], x)
            rmax[y - y0] = max(rmax[y - y0], x)
            if border[y, x]:
                v = 1
                for dy in range(-1, 2):
                    for dx in range(-1, 2):
                        if dy == 0 and dx == 0:
                            continue
                        yy = y + dy
                        xx = x + dx
                        if 0 <= yy < h and 0 <= xx < w and labels[yy, xx] == lab and border[yy, xx]:
                            v += 2 if dy == 0 or dx == 0 else 10
                perimeter += weights[v]
        for t in range(a0, a1):
            p = order[t]
            border.flat[p] = False
        euler = 0
        for a in range(y0 - 1, y1 + 1):  # 2x2 windows touching the object (top-left corner (a, b))
            for b in range(x0 - 1, x1 + 1):
                tl = a >= 0 and b >= 0 and labels[a, b] == lab
                tr = a >= 0 and b + 1 < w and labels[a, b + 1] == lab
                bl = a + 1 < h and b >= 0 and labels[a + 1, b] == lab
                br = a + 1 < h and b + 1 < w and labels[a + 1, b + 1] == lab
                if tl and not tr and not bl and not br:
                    euler += 1
                elif tr and bl and not br:  # the anti-diagonal pair, or three pixels without the bottom right
                    euler -= 1
        npts = 0
        for r in range(y1 - y0 + 1):
            if rmax[r] >= 0:
                npts += 6
        ys = np.empty(npts, dtype=np.int64)
        xs = np.empty(npts, dtype=np.int64)
        i = 0
        for r in range(y1 - y0 + 1):
            if rmax[r] < 0:
                continue
            y = r + y0
            for yy, xx in (
                (2 * y - 1, 2 * rmin[r]),
                (2 * y - 1, 2 * rmax[r]),
                (2 * y, 2 * rmin[r] - 1),
                (2 * y, 2 * rmax[r] + 1),
                (2 * y + 1, 2 * rmin[r]),
                (2 * y + 1, 2 * rmax[r]),
            ):
                ys[i] = yy
                xs[i] = xx
                i += 1
        out[k, 0] = y0
        out[k, 1] = x0
        out[k, 2] = y1 + 1
        out[k, 3] = x1 + 1
        out[k, 4] = perimeter
        out[k, 5] = euler
        out[k, 6] = _hull_area(ys, xs)
    return out


@numba.njit(cache=True, nogil=True)
def zernike_sums(
    obj: np.ndarray, yy: np.ndarray, xx: np.ndarray, n: int, nm: np.ndarray, coef: np.ndarray
) -> np.ndarray:
    """Per-object sums of the Zernike polynomials R_nm(r) e^(i m theta) over pixels at normalised positions
    (``yy``, ``xx``; the unit disk is the object's enclosing circle; points outside it count 0).

    Args:
        obj: (P,) object index per pixel; yy, xx: (P,) normalised coordinates.
        n: number of objects.
        nm: (K, 2) int (n, m) pairs; coef: (K, C) coefficients of R_nm / r^m as a polynomial in r^2, highest
            power first (Horner).

    Returns:
        (n, K) complex128 sums.
    """
    nk = nm.shape[0]
    out = np.zeros((n, nk), dtype=np.complex128)
    mmax = 0
    for q in range(nk):
        mmax = max(mmax, nm[q, 1])
    zp = np.empty(mmax + 1, dtype=np.complex128)
    for t in range(len(obj)):
        r2 = yy[t] * yy[t] + xx[t] * xx[t]
        if r2 > 1.0:
            continue
        z = complex(yy[t], xx[t])
        zp[0] = 1.0
        for m in range(1, mmax + 1):
            zp[m] = zp[m - 1] * z
        k = obj[t]
        for q in range(nk):
            deg = (nm[q, 0] - nm[q, 1]) // 2
            s = 0.0
            for c in range(deg + 1):
                s = s * r2 + coef[q, c]
            out[k, q] += s * zp[nm[q, 1]]
    return out


@numba.njit(cache=True, nogil=True)
def colocalization_sums(
    values: np.ndarray, starts: np.ndarray, ranks: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-object sums of MeasureColocalization for every channel pair (a < b, in order), in one pass per object.

    Args:
        values: (C, P) pixel values of the objects' runs; starts: (n + 1,) run starts.
        ranks: (C, P) dense ranks of the values among all the objects' pixels.
        threshold: the fraction of each object's maximum above which a pixel counts (Manders, RWC, overlap, K).

    Returns:
        cross: (n, pairs) sum of the products of the deviations from the object means; spread: (n, C) the
        square roots of the sums of squared deviations; total: (n, C) sums of the values above threshold;
        both: (n, pairs, 7) over pixels above threshold in both channels, sums of va, vb, va w, vb w, va^2,
        vb^2, va vb (w the rank weight (R - |rank a - rank b|) / R, R = 1 + the largest rank of the two);
        any_both: (pairs,) pixels above threshold in both channels, all objects.
    """
    nc, npix = values.shape
    n = len(starts) - 1
    npairs = nc * (nc - 1) // 2
    rmax = np.zeros(nc)
    for c in range(nc):
        for t in range(npix):
            if ranks[c, t] > rmax[c]:
                rmax[c] = ranks[c, t]
    cross = np.zeros((n, npairs))
    spread = np.zeros((n, nc))
    total = np.zeros((n, nc))
    both = np.zeros((n, npairs, 7))
    any_both = np.zeros(npairs, dtype=np.int64)
    mean = np.zeros(nc)
    thr = np.zeros(nc)
    dev = np.zeros(nc)
    above = np.zeros(nc, dtype=np.bool_)
    for k in range(n):
        a0, a1 = starts[k], starts[k + 1]
        if a1 == a0:
            continue
        for c in range(nc):
            s = 0.0
            m = -np.inf
            for t in range(a0, a1):
                v = values[c, t]
                s += v
                if v > m:
                    m = v
            mean[c] = s / (a1 - a0)
            thr[c] = threshold * m
        for t in range(a0, a1):
            for c in range(nc):
                v = values[c, t]
                dev[c] = v - mean[c]
                spread[k, c] += dev[c] * dev[c]
                above[c] = v >= thr[c]
                if above[c]:
                    total[k, c] += v
            q = 0
            for a in range(nc):
                for b in range(a + 1, nc):
                    cross[k, q] += dev[a] * dev[b]
                    if above[a] and above[b]:
                        va = values[a, t]
                        vb = values[b, t]
                        r = max(rmax[a], rmax[b]) + 1.0
                        wgt = (r - abs(ranks[a, t] - ranks[b, t])) / r
                        both[k, q, 0] += va
                        both[k, q, 1] += vb
                        both[k, q, 2] += va * wgt
                        both[k, q, 3] += vb * wgt
                        both[k, q, 4] += va * va
                        both[k, q, 5] += vb * vb
                        both[k, q, 6] += va * vb
                        any_both[q] += 1
                    q += 1
        for c in range(nc):
            spread[k, c] = np.sqrt(spread[k, c])
    return cross, spread, total, both, any_both


@numba.njit(cache=True, nogil=True)
def neighbor_counts(
    labels: np.ndarray,
    order: np.ndarray,
    starts: np.ndarray,
    depth: np.ndarray,
    outline: np.ndarray,
    near: np.ndarray,
    touch: np.ndarray,
) -> np.ndarray:
    """MeasureObjectNeighbors' counts for every object (neighbours are the objects themselves).

    Args:
        labels: (H, W) int labels; order, starts: the objects' pixel runs.
        depth: (P,) per run entry the distance to the nearest pixel outside its object (within the image).
        outline: (H, W) bool, centrosome's outline (pixels with an 8-neighbour of another label, image border).
        near: (K, 2) offsets (dy, dx) of the neighbour disk (strel_disk(distance)).
        touch: (K2, 2) offsets of the touching disk (strel_disk(distance + 0.5)).

    Returns:
        (n, 3) float64: number of neighbours (other labels within ``near`` of the object), outline pixels with
        another object within ``touch``, outline pixels.
    """
    h, w = labels.shape
    n = len(starts) - 1
    out = np.zeros((n, 3))
    reach = 0.0
    for e in range(near.shape[0]):
        reach = max(reach, np.sqrt(near[e, 0] ** 2 + near[e, 1] ** 2))
    seen = np.full(labels.max() + 1, -1, dtype=np.int64)
    for k in range(n):
        a0, a1 = starts[k], starts[k + 1]
        if a1 == a0:
            continue
        lab = labels.flat[order[a0]]
        count = 0
        touching = 0
        perimeter = 0
        for t in range(a0, a1):
            p = order[t]
            y = p // w
            x = p - y * w
            if depth[t] <= reach:  # deeper pixels see only their own object within the disk
                for e in range(near.shape[0]):
                    yy = y + near[e, 0]
                    xx = x + near[e, 1]
                    if yy < 0 or yy >= h or xx < 0 or xx >= w:
                        continue
                    q = labels[yy, xx]
                    if q != 0 and q != lab and seen[q] != k:
                        seen[q] = k
                        count += 1
            if outline[y, x]:
                perimeter += 1
                for e in range(touch.shape[0]):
                    yy = y + touch[e, 0]
                    xx = x + touch[e, 1]
                    if yy < 0 or yy >= h or xx < 0 or xx >= w:
                        continue
                    q = labels[yy, xx]
                    if q != 0 and q != lab:
                        touching += 1
                        break
        out[k, 0] = count
        out[k, 1] = touching
        out[k, 2] = perimeter
    return out
