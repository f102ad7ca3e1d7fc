"""numba kernels of the fast feature backend (:mod:`cellresdm.features.fast`): Granularity (the erosion series and
reconstructions by dilation from one max-tree of the image, the upsampling of the subsampled spectrum) and the
geodesic distances of the radial distribution.

Every kernel works on all objects of a label image in one call; objects are given as runs of pixel indices
(``order[starts[k]:starts[k + 1]]`` are the flat indices of object ``k``, ``0 <= k < n``). Compiled on first use
and cached on disk (``cache=True``).
"""

from __future__ import annotations

import numba
import numpy as np


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
