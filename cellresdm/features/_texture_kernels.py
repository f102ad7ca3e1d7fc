"""numba kernels of the fast feature backend (:mod:`cellresdm.features.fast`): Haralick texture of every object of a
field: one co-occurrence pass per channel, scale and direction over all objects.

Every kernel works on all objects of a label image in one call; objects are given as runs of pixel indices
(``order[starts[k]:starts[k + 1]]`` are the flat indices of object ``k``, ``0 <= k < n``). Compiled on first use
and cached on disk (``cache=True``).
"""

from __future__ import annotations

import numba
import numpy as np

DIRECTIONS = np.array([(0, 1), (1, 1), (1, 0), (1, -1)], dtype=np.int64)
#: Haralick features in mahotas' (and CellProfiler's) order.
HARALICK = (
    "AngularSecondMoment",
    "Contrast",
    "Correlation",
    "Variance",
    "InverseDifferenceMoment",
    "SumAverage",
    "SumVariance",
    "SumEntropy",
    "Entropy",
    "DifferenceVariance",
    "DifferenceEntropy",
    "InfoMeas1",
    "InfoMeas2",
)


@numba.njit(cache=True, nogil=True)
def _xlog2x_sum(p: np.ndarray, n: int) -> float:
    """-sum p log2 p over the first ``n`` entries (0 log 0 = 0)."""
    s = 0.0
    for i in range(n):
        if p[i] > 0:
            s -= p[i] * np.log2(p[i])
    return s


@numba.njit(cache=True, nogil=True)
def haralick(
    gray: np.ndarray,
    labels: np.ndarray,
    order: np.ndarray,
    starts: np.ndarray,
    distance: int,
    ignore_zeros: bool,
    whole: bool = False,
) -> np.ndarray:
    """Haralick features of every object, as mahotas computes them on the object's masked bounding box.

    One pass over each object's pixels fills the four directions' co-occurrence counts; each direction's
    features come from one pass over its non-zero counts (which also clears them).

    Args:
        gray: (H, W) uint8 gray levels.
        labels: (H, W) int labels; object ``k`` has label ``labels.flat[order[starts[k]]]``.
        order, starts: the objects' pixel runs (see the module docstring).
        distance: the co-occurrence offset (CellProfiler's texture scale).
        ignore_zeros: drop pairs with a zero gray level (per object: True; whole image: False).
        whole: one object, the whole image (``labels``, ``order`` and ``starts`` are not read).

    Returns:
        (n, 4, 13) float64: per object, direction and feature (:data:`HARALICK`); NaN for every direction of
        an object with no pair in some direction (mahotas raises there, CellProfiler records NaN).
    """
    h, w = gray.shape
    n = len(starts) - 1
    out = np.full((n, 4, 13), np.nan)
    cmat = np.zeros((4, 256, 256), dtype=np.int32)
    touched = np.empty((4, 65536), dtype=np.int32)
    nt = np.zeros(4, dtype=np.int64)
    total = np.zeros(4, dtype=np.int64)
    # c log2 c for small counts (the entropy of counts c / total is log2 total - sum c log2 c / total)
    ntab = 4096
    clog = np.zeros(ntab)
    for c in range(1, ntab):
        clog[c] = c * np.log2(c)
    px = np.zeros(256)
    plus = np.zeros(512)
    minus = np.zeros(256)
    feats = np.empty((4, 13))
    dys = np.empty(4, dtype=np.int64)
    dxs = np.empty(4, dtype=np.int64)
    for d in range(4):
        dys[d] = DIRECTIONS[d, 0] * distance
        dxs[d] = DIRECTIONS[d, 1] * distance
    for k in range(n):
        a0, a1 = starts[k], starts[k + 1]
        if a1 == a0:
            continue
        lab = labels.flat[order[a0]]
        maxg = 0
        nt[:] = 0
        total[:] = 0
        if whole:  # the whole image: every pixel, no labels to check
            for y in range(h):
                for x in range(w):
                    ga = gray[y, x]
                    if ga > maxg:
                        maxg = ga
                    if ignore_zeros and ga == 0:
                        continue
                    for d in range(4):
                        y2 = y + dys[d]
                        x2 = x + dxs[d]
                        if y2 >= h or x2 < 0 or x2 >= w:  # dy >= 0
                            continue
                        gb = gray[y2, x2]
                        if ignore_zeros and gb == 0:
                            continue
                        lo = min(ga, gb)
                        hi = max(ga, gb)
                        if cmat[d, lo, hi] == 0:
                            touched[d, nt[d]] = lo * 256 + hi
                            nt[d] += 1
                        cmat[d, lo, hi] += 1
                        total[d] += 2
        for t in range(a0, a1 if not whole else a0):
            p = order[t]
            y = p // w
            x = p - y * w
            ga = gray[y, x]
            if ga > maxg:
                maxg = ga
            if ignore_zeros and ga == 0:
                continue
            for d in range(4):
                y2 = y + dys[d]
                x2 = x + dxs[d]
                if y2 < 0 or y2 >= h or x2 < 0 or x2 >= w:
                    continue
                if labels[y2, x2] != lab:
                    continue
                gb = gray[y2, x2]
                if ignore_zeros and gb == 0:
                    continue
                lo = min(ga, gb)  # the matrix is symmetric: count each pair once, as (low, high)
                hi = max(ga, gb)
                if cmat[d, lo, hi] == 0:
                    touched[d, nt[d]] = lo * 256 + hi
                    nt[d] += 1
                cmat[d, lo, hi] += 1
                total[d] += 2
        maxv = maxg + 1
        ok = True
        for d in range(4):
            if total[d] == 0:
                ok = False
            tf = float(total[d])
            px[:maxv] = 0.0
            plus[: 2 * maxv] = 0.0
            minus[:maxv] = 0.0
            asm = 0.0
            idm = 0.0
            sij = 0.0
            clogc = 0.0
            for e in range(nt[d]):
                i = touched[d, e] >> 8
                j = touched[d, e] & 255
                c = cmat[d, i, j]
                cmat[d, i, j] = 0
                if i == j:  # a diagonal entry holds both orders of its pairs: 2 c
                    c2 = 2 * c
                    p = c2 / tf
                    px[i] += p
                    plus[2 * i] += p
                    minus[0] += p
                    asm += p * p
                    idm += p
                    sij += i * i * p
                    clogc += clog[c2] if c2 < ntab else c2 * np.log2(c2)
                else:  # entries (i, j) and (j, i), c each
                    p = c / tf
                    px[i] += p
                    px[j] += p
                    plus[i + j] += 2.0 * p
                    minus[j - i] += 2.0 * p
                    asm += 2.0 * p * p
                    idm += 2.0 * p / (1.0 + (i - j) * (i - j))
                    sij += 2.0 * i * j * p
                    clogc += 2.0 * (clog[c] if c < ntab else c * np.log2(c))
            if not ok:
                continue
            ent = np.log2(tf) - clogc / tf
            ux = 0.0
            ux2 = 0.0
            for i in range(maxv):
                ux += i * px[i]
                ux2 += i * i * px[i]
            vx = ux2 - ux * ux
            sx = np.sqrt(vx) if vx > 0 else (0.0 if vx == 0 else np.nan)
            contrast = 0.0
            mmean = 0.0
            for i in range(maxv):
                contrast += i * i * minus[i]
                mmean += minus[i]
            mmean /= maxv
            dvar = 0.0
            for i in range(maxv):
                dvar += (minus[i] - mmean) ** 2
            dvar /= maxv
            savg = 0.0
            s2 = 0.0
            for i in range(2 * maxv):
                savg += i * plus[i]
                s2 += i * i * plus[i]
            hx = _xlog2x_sum(px, maxv)
            feats[d, 0] = asm
            feats[d, 1] = contrast
            feats[d, 2] = 1.0 if sx == 0.0 else (sij - ux * ux) / (sx * sx)
            feats[d, 3] = vx
            feats[d, 4] = idm
            feats[d, 5] = savg
            feats[d, 6] = s2 - savg * savg
            feats[d, 7] = _xlog2x_sum(plus, 2 * maxv)
            feats[d, 8] = ent
            feats[d, 9] = dvar
            feats[d, 10] = _xlog2x_sum(minus, maxv)
            # p is symmetric: py = px, HY = HX, HXY1 = -sum p log2(px py) = HX + HY and HXY2 = HX + HY
            feats[d, 11] = (ent - 2.0 * hx) / hx if hx > 0 else ent - 2.0 * hx
            feats[d, 12] = np.sqrt(max(0.0, 1.0 - np.exp(-2.0 * (2.0 * hx - ent))))
        if ok:
            out[k] = feats
    return out
