"""numba kernels of the fast feature backend (:mod:`cellresdm.features.fast`): the loops that cannot be
vectorised with numpy. Every kernel works on all objects of a label image in one call; objects are given as
runs of pixel indices (``order[starts[k]:starts[k + 1]]`` are the flat indices of object ``k``, ``0 <= k < n``).

Compiled on first use and cached on disk (``cache=True``).
"""

from __future__ import annotations

import numba
import numpy as np

#: mahotas' 2-D directions (dy, dx) of the co-occurrence matrices, CellProfiler's ``_00`` .. ``_03``.
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


@numba.njit(cache=True, nogil=True)
def _find_root(zpar: np.ndarray, p: int) -> int:
    r = p
    while zpar[r] != r:
        r = zpar[r]
    while zpar[p] != r:  # path compression
        nxt = zpar[p]
        zpar[p] = r
        p = nxt
    return r


@numba.njit(cache=True, nogil=True)
def max_tree(image: np.ndarray, order: np.ndarray) -> np.ndarray:
    """The max-tree of ``image`` (H, W), 4-connected (Berger et al. 2007, union-find), like
    skimage.morphology.max_tree(image, connectivity=1).

    Args:
        image: (H, W) float.
        order: (H * W,) flat pixel indices sorting ``image`` ascending (the root first; every pixel after its
            parent, the traverser).

    Returns:
        (H * W,) int64 parent of each pixel: the canonical pixel of its component, or for a canonical pixel
        that of the parent component (the root is its own parent).
    """
    h, w = image.shape
    f = image.ravel()
    n = h * w
    parent = np.empty(n, np.int64)
    zpar = np.full(n, -1, np.int64)
    for i in range(n - 1, -1, -1):  # from the highest value down
        p = order[i]
        parent[p] = p
        zpar[p] = p
        y = p // w
        x = p - y * w
        for k in range(4):
            if k == 0:
                if y == 0:
                    continue
                q = p - w
            elif k == 1:
                if y == h - 1:
                    continue
                q = p + w
            elif k == 2:
                if x == 0:
                    continue
                q = p - 1
            else:
                if x == w - 1:
                    continue
                q = p + 1
            if zpar[q] != -1:
                r = _find_root(zpar, q)
                if r != p:
                    parent[r] = p
                    zpar[r] = p
    for i in range(n):  # canonical parents
        p = order[i]
        q = parent[p]
        if f[parent[q]] == f[q]:
            parent[p] = parent[q]
    return parent


@numba.njit(cache=True, nogil=True)
def reconstruct_levels(parent: np.ndarray, order: np.ndarray, image: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Grey reconstructions by dilation of several seeds under one mask (skimage.morphology.reconstruction with a
    disk(1) footprint), from the mask's max-tree: the reconstruction at a pixel is the largest
    min(level, max seed in the component) over the components (of the mask's upper level sets) holding it.

    Args:
        parent, order: the max-tree of ``image`` (:func:`max_tree`).
        image: (H, W) the mask.
        seeds: (H * W, L) seeds, each <= ``image``.

    Returns:
        (H * W, L) reconstructions, ``seeds``' dtype.
    """
    f = image.ravel()
    n, nl = seeds.shape
    m = seeds.copy()
    for i in range(n - 1, 0, -1):  # subtree maxima of the seeds, at the canonical pixels
        q = order[i]
        r = parent[q]
        for k in range(nl):
            if m[q, k] > m[r, k]:
                m[r, k] = m[q, k]
    root = order[0]
    for k in range(nl):
        if m[root, k] > f[root]:
            m[root, k] = f[root]
    for i in range(1, n):  # from the root up: max over the ancestors of min(level, subtree maximum)
        q = order[i]
        r = parent[q]
        if f[q] == f[r]:  # not canonical: its component's value
            for k in range(nl):
                m[q, k] = m[r, k]
        else:
            fq = f[q]
            for k in range(nl):
                v = m[q, k]
                if v > fq:
                    v = fq
                if v < m[r, k]:
                    v = m[r, k]
                m[q, k] = v
    return m


@numba.njit(cache=True, nogil=True)
def geodesic_distance(labels: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Distance from each object's seed pixel along 8-connected paths inside the object (steps 1 and sqrt 2),
    as centrosome.propagate gives on a zero image; Dijkstra over all objects at once.

    Args:
        labels: (H, W) int labels.
        seeds: (n,) flat indices of the seed pixels (one per object, -1 for none).

    Returns:
        (H, W) float64 distances; -1 where a pixel is not reached (background, object parts not connected to
        their seed).
    """
    h, w = labels.shape
    dist = np.full(h * w, np.inf)
    done = np.zeros(h * w, dtype=np.bool_)
    heap_d = [0.0]
    heap_p = [0]
    heap_d.pop()
    heap_p.pop()
    for s in seeds:
        if s >= 0:
            dist[s] = 0.0
            heap_d.append(0.0)
            heap_p.append(s)
    # binary heap on two parallel lists
    n = len(heap_d)
    for i in range(n // 2 - 1, -1, -1):
        _sift_down(heap_d, heap_p, i)
    r2 = np.sqrt(2.0)
    while len(heap_d) > 0:
        d = heap_d[0]
        p = heap_p[0]
        last_d = heap_d.pop()
        last_p = heap_p.pop()
        if len(heap_d) > 0:
            heap_d[0] = last_d
            heap_p[0] = last_p
            _sift_down(heap_d, heap_p, 0)
        if done[p]:
            continue
        done[p] = True
        y = p // w
        x = p - y * w
        lab = labels[y, x]
        for dy in range(-1, 2):
            for dx in range(-1, 2):
                if dy == 0 and dx == 0:
                    continue
                yy = y + dy
                xx = x + dx
                if yy < 0 or yy >= h or xx < 0 or xx >= w or labels[yy, xx] != lab:
                    continue
                q = yy * w + xx
                nd = d + (r2 if dy != 0 and dx != 0 else 1.0)
                if nd < dist[q]:
                    dist[q] = nd
                    heap_d.append(nd)
                    heap_p.append(q)
                    _sift_up(heap_d, heap_p, len(heap_d) - 1)
    out = np.full(h * w, -1.0)
    for p in range(h * w):
        if done[p]:
            out[p] = dist[p]
    return out.reshape(h, w)


@numba.njit(cache=True, nogil=True)
def _sift_up(hd, hp, i):
    while i > 0:
        parent = (i - 1) // 2
        if hd[parent] <= hd[i]:
            break
        hd[parent], hd[i] = hd[i], hd[parent]
        hp[parent], hp[i] = hp[i], hp[parent]
        i = parent


@numba.njit(cache=True, nogil=True)
def _sift_down(hd, hp, i):
    n = len(hd)
    while True:
        a = 2 * i + 1
        if a >= n:
            break
        b = a + 1
        c = b if b < n and hd[b] < hd[a] else a
        if hd[i] <= hd[c]:
            break
        hd[c], hd[i] = hd[i], hd[c]
        hp[c], hp[i] = hp[i], hp[c]
        i = c


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
def upsampling_weights(
    starts: np.ndarray, y: np.ndarray, x: np.ndarray, fy: float, fx: float, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per object the total bilinear weight of each pixel of a small (h, w) image upsampled to the labels' grid
    (pixel (y, x) reads the small image at (y * fy, x * fx), as map_coordinates with order=1 samples it): the
    sum over an object of the upsampled image is its row of this sparse matrix times the small image.

    Args:
        starts: (n + 1,) run starts; y, x: (P,) row and column of each run entry.
        fy, fx: the upsampling's coordinate scales; shape: (h, w) of the small image.

    Returns:
        CSR (indptr (n + 1,), indices, data) of the (n, h * w) weights.
    """
    h, w = shape
    n = len(starts) - 1
    acc = np.zeros(h * w)
    touched = np.empty(h * w, dtype=np.int64)
    indptr = np.zeros(n + 1, dtype=np.int64)
    indices = np.empty(4 * len(y) + 1, dtype=np.int64)
    data = np.empty(4 * len(y) + 1)
    nnz = 0
    for k in range(n):
        nt = 0
        for t in range(starts[k], starts[k + 1]):
            yi = y[t] * fy
            xj = x[t] * fx
            y0 = int(np.floor(yi))
            x0 = int(np.floor(xj))
            wy = yi - y0
            wx = xj - x0
            for dy in range(2):
                yy = y0 + dy
                wyy = wy if dy else 1.0 - wy
                if yy >= h or wyy == 0.0:
                    continue
                for dx in range(2):
                    xx = x0 + dx
                    wxx = wx if dx else 1.0 - wx
                    if xx >= w or wxx == 0.0:
                        continue
                    q = yy * w + xx
                    if acc[q] == 0.0:
                        touched[nt] = q
                        nt += 1
                    acc[q] += wyy * wxx
        for e in range(nt):
            q = touched[e]
            indices[nnz] = q
            data[nnz] = acc[q]
            acc[q] = 0.0
            nnz += 1
        indptr[k + 1] = nnz
    return indptr, indices[:nnz].copy(), data[:nnz].copy()


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
def erosion_series(image: np.ndarray, levels: int) -> np.ndarray:
    """``levels`` successive grey erosions of ``image`` (H, W) by the 4-connected cross (ndi.grey_erosion with a
    disk(1) footprint, mode reflect: a neighbour outside the image is the pixel itself), in one sweep: erosion
    ``j`` of row ``r`` is computed right after erosion ``j - 1`` of row ``r + 1``, so the rows being worked on
    stay in cache.

    Returns:
        (H * W, levels) array of ``image``'s dtype: column k is the (k + 1)-th erosion.
    """
    h, w = image.shape
    flat = image.ravel()
    out = np.empty((h * w, levels), dtype=image.dtype)
    for step in range(h + levels - 1):
        for j in range(levels):
            r = step - j
            if r < 0 or r >= h:
                continue
            up = r - 1 if r > 0 else r
            down = r + 1 if r < h - 1 else r
            for x in range(w):
                left = x - 1 if x > 0 else x
                right = x + 1 if x < w - 1 else x
                if j == 0:
                    v = flat[r * w + x]
                    v = min(v, flat[up * w + x], flat[down * w + x], flat[r * w + left], flat[r * w + right])
                else:
                    v = out[r * w + x, j - 1]
                    v = min(
                        v,
                        out[up * w + x, j - 1],
                        out[down * w + x, j - 1],
                        out[r * w + left, j - 1],
                        out[r * w + right, j - 1],
                    )
                out[r * w + x, j] = v
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
