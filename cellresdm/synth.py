"""The embedded synthetic gallery: Cell Painting plates in the exact cpg0000 layout (docs/design.md sections 1, 3).

A local folder mirrors the bucket root, so the downloader, filters and dataset builder run unchanged on it:

- ``{root}/{GalleryLayout().images_key(plate_dir)}/rRRcCCfFFp01-chKsk1fk1fl1.tiff``: uint16, LZW,
  ``field_size`` x ``field_size``, all 8 channels of every present field;
- ``{root}/{GalleryLayout().load_data_key(plate)}``: load_data.csv with ``URL_Orig{channel}`` s3:// URLs
  and ``Metadata_Plate, Metadata_Well, Metadata_Site, Metadata_Row, Metadata_Col``;
- ``{root}/{GalleryLayout().illum_key(plate, channel)}``: the plate's illumination function of every channel,
  (H, W) float32 >= 1 matching the camera model's fall-off (:func:`illumination_functions`): divide to correct.

Beside the gallery (never inside it) the generator's truth is written:

- ``{truth_root}/{plate}/{field}_labels.tiff``: (2, H, W) uint16, [nuclei, cells] instance labels; a cell's
  label equals its nucleus' label (one nucleus per cell), 0 is background;
- ``{truth_root}/{plate}/wells.csv``: ``well, nucleus_scale, mito_scale, black_if`` per well.

Image model, at the real pixel size of 0.598 um/px: cell centres are Poisson-disc samples; cell territories
are a smoothly warped Voronoi partition limited by a per-cell smooth radius (ellipse times low harmonics), so
neighbours touch as in a monolayer; each cell holds one smooth elliptical nucleus kept off its border. The
five fluorescence channels are rendered from distance maps of these objects with channel-specific texture
(chromatin, nucleoli, reticulum, membranes and stress fibres, mitochondrial filaments), then passed through a
camera model (per-plate offset and vignette, shot and read noise). The three brightfield planes come from one
optical path length map: in focus ``I0 (1 - absorption)``, defocused by the transport-of-intensity equation
``I(+-dz) = I0 (1 -+ kappa * laplacian(phi))`` (HighZBF = +dz, LowZBF = -dz).

Every field draws from its own ``np.random.SeedSequence(config.seed, spawn_key=(plate, row, col, site))``,
so a field is identical whatever else is generated; per-well treatments depend on the seed and the well only
(one plate map for all plates, as in CPJUMP1), per-plate optics on the seed and the barcode.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.measure import label as connected_label
from skimage.segmentation import find_boundaries

from cellresdm import layout
from cellresdm.io import atomic_path, write_text, write_tiff
from cellresdm.results import field_labels_name

#: Pixel size of the CPJUMP1 fields (um per pixel, 20x).
PIXEL_SIZE_UM = 0.598
#: Smallest object the generator keeps (pixels); smaller nuclei are dropped together with their cell.
MIN_NUCLEUS_AREA = 80
#: Ranges from which per-well treatments are drawn.
NUCLEUS_SCALE_RANGE = (0.8, 1.25)
MITO_SCALE_RANGE = (0.6, 1.6)

# Spawn-key tags keep the seed streams of fields, plates and wells apart.
_FIELD_TAG, _PLATE_TAG, _WELL_TAG = 1, 2, 3
_PLATE_DIR_BASE = dt.datetime(2020, 11, 5, 8, 0, 0)

#: Per-well generator settings in the truth folder (cellresdm.results ``demo_wells``).
WELLS_NAME = "wells.csv"


@dataclass(frozen=True)
class SynthPlate:
    """One synthetic plate: ``plate`` is the barcode (e.g. ``BR00116991``), ``cell_line`` A549 or U2OS."""

    plate: str
    cell_line: str


@dataclass(frozen=True)
class Treatment:
    """Effect of a well's perturbation: nucleus size scale (linear) and Mito intensity scale."""

    nucleus_scale: float = 1.0
    mito_scale: float = 1.0

    def __post_init__(self) -> None:
        if not (self.nucleus_scale > 0 and self.mito_scale > 0):
            raise ValueError(f"treatment scales must be > 0, got {self}")


@dataclass(frozen=True)
class SynthConfig:
    """What :func:`write_plate` generates per plate.

    Attributes:
        field_size: H = W of every field in pixels (the gallery has 1080; >= 64).
        wells: wells of each plate (A01 and P24 are edge wells).
        sites: fields per well, numbered 1..sites.
        black_if_wells: wells whose 5 IF channels hold background only (brightfield and labels are normal).
        missing_fields: (well, site) pairs absent from load_data.csv, from disk and from the truth.
        seed: root seed of everything.
        treatments: (well, Treatment) pairs that replace the drawn treatment of those wells.
    """

    field_size: int
    wells: tuple[str, ...]
    sites: int
    black_if_wells: tuple[str, ...]
    missing_fields: tuple[tuple[str, int], ...]
    seed: int
    treatments: tuple[tuple[str, Treatment], ...] = ()

    @classmethod
    def from_config(cls, section: dict) -> SynthConfig:
        """From the validated config section ``demo`` (the schema holds the defaults)."""
        return cls(
            field_size=section["field_size"],
            wells=tuple(section["wells"]),
            sites=section["sites"],
            black_if_wells=tuple(section["black_if_wells"]),
            missing_fields=tuple((m["well"], m["site"]) for m in section["missing_fields"]),
            seed=section["seed"],
        )

    def validate(self) -> None:
        """Raise ValueError naming the offending field of the config."""
        if self.field_size < 64:
            raise ValueError(f"SynthConfig.field_size must be >= 64, got {self.field_size}")
        if self.sites < 1:
            raise ValueError(f"SynthConfig.sites must be >= 1, got {self.sites}")
        if not self.wells:
            raise ValueError("SynthConfig.wells is empty")
        for well in self.wells:
            layout.parse_well(well)
        if len(set(self.wells)) != len(self.wells):
            raise ValueError(f"SynthConfig.wells has duplicates: {self.wells}")
        for well in self.black_if_wells:
            if well not in self.wells:
                raise ValueError(f"SynthConfig.black_if_wells: {well!r} is not in wells {self.wells}")
        for well, site in self.missing_fields:
            if well not in self.wells or not 1 <= site <= self.sites:
                raise ValueError(f"SynthConfig.missing_fields: ({well!r}, {site}) is not a generated field")
        for well, treatment in self.treatments:
            if well not in self.wells:
                raise ValueError(f"SynthConfig.treatments: {well!r} is not in wells {self.wells}")
            if not isinstance(treatment, Treatment):
                raise ValueError(f"SynthConfig.treatments: {well!r} needs a Treatment, got {treatment!r}")


@dataclass(frozen=True)
class Optics:
    """Per-plate microscope: camera offsets, signal gains and vignette (shared by all fields of a plate).

    ``offset`` and ``gain`` are per channel (counts); ``vignette`` is the per-channel relative fall-off at the
    field corner; ``centre`` is the vignette centre in field coordinates scaled to [-1, 1].
    """

    offset: dict[str, float]
    gain: dict[str, float]
    vignette: dict[str, float]
    centre: tuple[float, float]
    read_noise: float
    electrons_per_count: float
    bf_level: float

    @classmethod
    def random(cls, rng: np.random.Generator) -> Optics:
        channels = layout.ALL_CHANNELS
        return cls(
            offset={c: float(rng.uniform(170, 310)) for c in channels},
            gain={
                c: float(rng.uniform(0.99, 1.01) if c in layout.BF_CHANNELS else rng.uniform(0.9, 1.1))
                for c in channels
            },
            vignette={
                c: float(rng.uniform(0.04, 0.08) if c in layout.BF_CHANNELS else rng.uniform(0.12, 0.25))
                for c in channels
            },
            centre=(float(rng.uniform(-0.15, 0.15)), float(rng.uniform(-0.15, 0.15))),
            read_noise=float(rng.uniform(4.0, 7.0)),
            electrons_per_count=float(rng.uniform(0.8, 1.2)),
            bf_level=float(rng.uniform(22600, 23400)),
        )


@dataclass(frozen=True)
class _LineModel:
    """Morphology of one cell line, lengths in pixels (0.598 um/px)."""

    density: float  # cell centres per 256 x 256 px
    min_dist: float  # Poisson-disc distance between centres
    cell_radius: tuple[float, float]  # mean radius of the territory
    cell_aspect: tuple[float, float]
    irregularity: float  # amplitude of harmonics 2-5 of the cell outline
    nucleus_radius: tuple[float, float]  # mean radius (14-18 um A549, 18-24 um U2OS diameters)
    nucleus_aspect: tuple[float, float]
    nucleus_offset: float  # off-centre shift of the nucleus, fraction of the cell's short axis
    thickness: tuple[float, float, float]  # um: cell edge, cytoplasm next to the nucleus, nucleus top


_LINES: dict[str, _LineModel] = {
    # Compact, round, epithelial: cells ~35-45 um, nuclei ~15-18 um wide.
    "A549": _LineModel(16.0, 40.0, (30.0, 37.0), (1.0, 1.35), 0.05, (12.0, 14.5), (1.0, 1.25), 0.08, (0.6, 3.0, 6.0)),
    # Large, spread, elongated, irregular: cells ~45-70 um, oval nuclei ~18-22 um.
    "U2OS": _LineModel(8.5, 58.0, (42.0, 52.0), (1.3, 2.1), 0.13, (15.0, 18.0), (1.15, 1.6), 0.18, (0.4, 2.2, 5.0)),
}

# Peak signal (counts above background) per fluorescence channel, before per-cell and per-plate gains.
_IF_AMPLITUDE = {"DNA": 9000.0, "RNA": 3200.0, "ER": 4200.0, "AGP": 3800.0, "Mito": 4200.0}


def cell_lines() -> tuple[str, ...]:
    """Cell lines the generator knows."""
    return tuple(_LINES)


def _line(cell_line: str) -> _LineModel:
    try:
        return _LINES[cell_line]
    except KeyError:
        raise ValueError(f"unknown cell line {cell_line!r}; the synthetic gallery knows {list(_LINES)}") from None


# ----------------------------------------------------------------------------------------------- textures


def _unit(a: np.ndarray) -> np.ndarray:
    """Zero mean, unit standard deviation (float32)."""
    a = a - a.mean()
    std = a.std()
    return (a / std if std > 0 else a).astype(np.float32, copy=False)


def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation, (H, W) float32."""
    return _unit(ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap"))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Large-scale smooth random field (correlation length ~ ``scale`` px), unit std, (H, W) float32."""
    step = max(int(scale), 2)
    coarse = rng.standard_normal((shape[0] // step + 5, shape[1] // step + 5)).astype(np.float32)
    fine = ndi.zoom(coarse, step, order=3, mode="mirror")
    return _unit(fine[2 * step : 2 * step + shape[0], 2 * step : 2 * step + shape[1]])


def _oriented_textures(
    rng: np.random.Generator, shape: tuple[int, int], n: int, along: float, across: float
) -> np.ndarray:
    """``n`` textures of line segments oriented at angles k*pi/n (k = 0..n-1), (n, H, W) float32, unit std.

    One white noise image filtered in Fourier space by anisotropic Gaussians (``along`` and ``across`` px).
    """
    spectrum = np.fft.rfft2(rng.standard_normal(shape, dtype=np.float32))
    fy = np.fft.fftfreq(shape[0]).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(shape[1]).astype(np.float32)[None, :]
    out = np.empty((n, *shape), dtype=np.float32)
    for k in range(n):
        angle = np.pi * k / n
        ua = fy * np.sin(angle) + fx * np.cos(angle)  # frequency along the line direction
        uc = fy * np.cos(angle) - fx * np.sin(angle)
        filt = np.exp(-2 * np.pi**2 * (along**2 * ua**2 + across**2 * uc**2))
        out[k] = _unit(np.fft.irfft2(spectrum * filt, s=shape))
    return out


def _keep_largest_components(lab: np.ndarray) -> np.ndarray:
    """Keep only the largest 4-connected component of every label of ``lab`` (H, W); others become 0."""
    comp = connected_label(lab, background=0, connectivity=1)
    ncomp = int(comp.max())
    if ncomp == 0:
        return lab
    sizes = np.bincount(comp.ravel(), minlength=ncomp + 1)
    owner = np.zeros(ncomp + 1, dtype=np.int64)
    owner[comp.ravel()] = lab.ravel()
    ids = np.arange(1, ncomp + 1)
    order = np.lexsort((-sizes[ids], owner[ids]))
    sorted_owner = owner[ids][order]
    first = np.r_[True, sorted_owner[1:] != sorted_owner[:-1]]
    keep = np.zeros(ncomp + 1, dtype=bool)
    keep[ids[order][first]] = True
    return np.where(keep[comp], lab, 0)


# ----------------------------------------------------------------------------------------------- geometry


def _poisson_centres(rng: np.random.Generator, size: int, n_target: int, min_dist: float) -> np.ndarray:
    """Dart throwing: up to ``n_target`` (y, x) centres in [0, size)^2 at least ``min_dist`` apart."""
    tries = rng.uniform(0, size, size=(max(40 * n_target, 50), 2))
    pts = np.empty((n_target, 2))
    n = 0
    d2 = min_dist**2
    for p in tries:  # one iteration per candidate centre, not per pixel
        if n and np.min(np.sum((pts[:n] - p) ** 2, axis=1)) < d2:
            continue
        pts[n] = p
        n += 1
        if n == n_target:
            break
    return pts[:n]


def _star_radius(
    theta: np.ndarray,
    lab: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    psi: np.ndarray,
    harm_amp: np.ndarray,
    harm_phase: np.ndarray,
) -> np.ndarray:
    """Radius of each pixel's object outline in direction ``theta``: ellipse (a, b, psi) times harmonics."""
    rel = theta - psi[lab]
    aa, bb = a[lab], b[lab]
    r = aa * bb / np.sqrt((bb * np.cos(rel)) ** 2 + (aa * np.sin(rel)) ** 2)
    wobble = np.ones_like(r)
    for k in range(harm_amp.shape[1]):
        wobble += harm_amp[lab, k] * np.cos((k + 2) * theta + harm_phase[lab, k])
    return r * wobble


def _geometry(line: _LineModel, size: int, rng: np.random.Generator, nucleus_scale: float):
    """Nuclei and cell instance labels of one field and per-label cell orientation.

    Returns (nuclei (H, W) int32, cells (H, W) int32, psi (N + 1,) float32 orientation of cell k at [k]).
    """
    pad = int(round(line.min_dist))
    canvas = size + 2 * pad
    density = line.density * rng.uniform(0.85, 1.15)
    n_target = max(int(round(density * canvas**2 / 256**2)), 1)
    centres = _poisson_centres(rng, canvas, n_target, line.min_dist)
    n = len(centres)
    ids = np.arange(1, n + 1)

    # Per-object parameters, index 0 = background (a harmless dummy).
    def per_cell(values: np.ndarray) -> np.ndarray:
        return np.concatenate([[values.mean()], values]).astype(np.float32)

    radius = rng.uniform(*line.cell_radius, n)
    aspect = rng.uniform(*line.cell_aspect, n)
    psi = rng.uniform(0, np.pi, n)
    cell_a, cell_b, cell_psi = per_cell(radius * np.sqrt(aspect)), per_cell(radius / np.sqrt(aspect)), per_cell(psi)
    cell_amp = np.vstack([np.zeros(4), rng.uniform(0, line.irregularity, (n, 4))]).astype(np.float32)
    cell_phase = np.vstack([np.zeros(4), rng.uniform(0, 2 * np.pi, (n, 4))]).astype(np.float32)

    nuc_r = rng.uniform(*line.nucleus_radius, n) * nucleus_scale * rng.uniform(0.93, 1.07, n)
    nuc_aspect = rng.uniform(*line.nucleus_aspect, n)
    nuc_psi = psi + rng.normal(0, 0.35, n)
    nuc_a, nuc_b, nuc_psi = (
        per_cell(nuc_r * np.sqrt(nuc_aspect)),
        per_cell(nuc_r / np.sqrt(nuc_aspect)),
        per_cell(nuc_psi),
    )
    nuc_amp = np.vstack([np.zeros(2), rng.uniform(0, 0.04, (n, 2))]).astype(np.float32)
    nuc_phase = np.vstack([np.zeros(2), rng.uniform(0, 2 * np.pi, (n, 2))]).astype(np.float32)
    shift = rng.uniform(0, line.nucleus_offset, n) * radius / np.sqrt(aspect)
    shift_dir = rng.uniform(0, 2 * np.pi, n)
    nuc_cy = per_cell(centres[:, 0] + shift * np.sin(shift_dir))
    nuc_cx = per_cell(centres[:, 1] + shift * np.cos(shift_dir))

    # Voronoi partition of the centres (nearest seed via the EDT), looked up at smoothly warped coordinates
    # so borders between neighbours are curved; the warp is a small diffeomorphism, regions stay connected.
    seeds = np.zeros((canvas, canvas), dtype=np.int32)
    iy = np.clip(np.round(centres[:, 0]).astype(int), 0, canvas - 1)
    ix = np.clip(np.round(centres[:, 1]).astype(int), 0, canvas - 1)
    seeds[iy, ix] = ids
    _, (ny, nx) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    voronoi = seeds[ny, nx]
    yy, xx = np.mgrid[0:canvas, 0:canvas].astype(np.float32)
    warp = 0.15 * line.min_dist
    wy = yy + warp * _smooth_field(rng, (canvas, canvas), line.min_dist)
    wx = xx + warp * _smooth_field(rng, (canvas, canvas), line.min_dist)
    owner = voronoi[np.clip(np.round(wy).astype(int), 0, canvas - 1), np.clip(np.round(wx).astype(int), 0, canvas - 1)]

    cy, cx = per_cell(centres[:, 0]), per_cell(centres[:, 1])
    dy, dx = wy - cy[owner], wx - cx[owner]
    inside_cell = np.hypot(dy, dx) < _star_radius(
        np.arctan2(dy, dx), owner, cell_a, cell_b, cell_psi, cell_amp, cell_phase
    )
    cells = np.where(inside_cell & (owner > 0), owner, 0)

    # Crop to the field, then make every cell one connected piece.
    crop = (slice(pad, pad + size), slice(pad, pad + size))
    cells = _keep_largest_components(cells[crop])
    # Nuclei are undistorted ellipses, moved to where the warp sends their centre (p + disp(p) = c).
    owner_c = cells
    iy = np.clip(np.round(nuc_cy).astype(int), 0, canvas - 1)
    ix = np.clip(np.round(nuc_cx).astype(int), 0, canvas - 1)
    disp_y, disp_x = (wy - yy)[iy, ix], (wx - xx)[iy, ix]
    ndy = yy[crop] - (nuc_cy - disp_y)[owner_c]
    ndx = xx[crop] - (nuc_cx - disp_x)[owner_c]
    in_ellipse = np.hypot(ndy, ndx) < _star_radius(
        np.arctan2(ndy, ndx), owner_c, nuc_a, nuc_b, nuc_psi, nuc_amp, nuc_phase
    )
    # Keep nuclei >= 3 px off the cell border (touching cells count as border).
    border = find_boundaries(cells, connectivity=1, mode="inner") | (cells == 0)
    interior = ndi.distance_transform_edt(~border) > 3
    nuclei = _keep_largest_components(np.where(in_ellipse & interior & (cells > 0), cells, 0))

    # Drop cells whose nucleus is too small (e.g. cut by the field edge), then relabel 1..N.
    nuc_area = np.bincount(nuclei.ravel(), minlength=n + 1)
    keep = nuc_area >= MIN_NUCLEUS_AREA
    keep[0] = False
    new_id = np.zeros(n + 1, dtype=np.int32)
    new_id[keep] = np.arange(1, int(keep.sum()) + 1)
    psi_out = np.concatenate([[0.0], cell_psi[keep]]).astype(np.float32)
    return new_id[nuclei], new_id[cells], psi_out


# ----------------------------------------------------------------------------------------------- rendering


def _vignette(size: int, strength: float, centre: tuple[float, float]) -> np.ndarray:
    """Smooth illumination fall-off, 1 at ``centre`` and 1 - strength at a corner, (H, W) float32."""
    c = np.linspace(-1, 1, size, dtype=np.float32)
    r2 = (c[:, None] - centre[0]) ** 2 + (c[None, :] - centre[1]) ** 2
    return (1 - strength * r2 / 2).astype(np.float32)


def _camera(signal: np.ndarray, channel: str, optics: Optics, rng: np.random.Generator) -> np.ndarray:
    """Counts of a camera: offset + vignetted signal + shot noise (Gaussian approximation) + read noise."""
    size = signal.shape[0]
    mean = signal * (optics.gain[channel] * _vignette(size, optics.vignette[channel], optics.centre))
    shot = np.sqrt(np.maximum(mean, 0) / optics.electrons_per_count)
    counts = (
        optics.offset[channel]
        + mean
        + rng.standard_normal(signal.shape, dtype=np.float32) * np.hypot(shot, optics.read_noise)
    )
    return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)


def make_field(
    cell_line: str,
    field_size: int,
    rng: np.random.Generator,
    treatment: Treatment,
    black_if: bool = False,
    *,
    optics: Optics | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Generate one field: all 8 channels and the true instance labels.

    Args:
        cell_line: ``A549`` or ``U2OS`` (anything else raises ValueError naming it).
        field_size: H = W in pixels (>= 64).
        rng: the field's generator; the same generator state gives identical output.
        treatment: nucleus size and Mito intensity scales of the well.
        black_if: the 5 IF channels hold background and noise only (the cells are still there in BF/labels).
        optics: the plate's microscope; None draws one from ``rng``.

    Returns:
        ({channel: (H, W) uint16} for every name in ``layout.ALL_CHANNELS``, labels (2, H, W) uint16 with
        [nuclei, cells]; nucleus k lies inside cell k, 0 is background).
    """
    line = _line(cell_line)
    if field_size < 64:
        raise ValueError(f"field_size must be >= 64, got {field_size}")
    if optics is None:
        optics = Optics.random(rng)
    size = int(field_size)
    shape = (size, size)

    nuc_lab, cell_lab, psi = _geometry(line, size, rng, treatment.nucleus_scale)
    n = len(psi) - 1
    cell = cell_lab > 0
    nuc = nuc_lab > 0
    cyto = cell & ~nuc

    # Distance maps: to the cell's own border, to the nearest nucleus, depth inside the nucleus.
    cell_border = find_boundaries(cell_lab, connectivity=1, mode="inner")
    d_border = ndi.distance_transform_edt(~cell_border).astype(np.float32)
    d_nuc = ndi.distance_transform_edt(~nuc).astype(np.float32)
    nuc_core = nuc & ~find_boundaries(nuc_lab, connectivity=1, mode="inner")
    depth = ndi.distance_transform_edt(nuc_core).astype(np.float32) + nuc  # 1 at the nuclear edge
    depth_max = np.ones(n + 1, dtype=np.float32)
    if n:
        depth_max[1:] = ndi.maximum(depth, nuc_lab, np.arange(1, n + 1))
    q = np.clip(depth / depth_max[nuc_lab], 0, 1)
    dome = np.sqrt(np.clip(2 * q - q * q, 0, 1)) * nuc  # ellipsoid cross-section, 0 outside nuclei
    # 0 at the cell membrane, 1 at the nucleus.
    towards_nucleus = np.where(cyto, d_border / (d_border + d_nuc + 1e-6), 0).astype(np.float32)

    # Nucleoli: 1-4 per nucleus, Gaussian blobs of ~1-2.5 um away from the nuclear edge.
    spots = (rng.random(shape, dtype=np.float32) < 0.009) & (depth > 5)
    nucleoli = ndi.gaussian_filter(spots * rng.uniform(0.6, 1.4, shape).astype(np.float32), 1.8) * (2 * np.pi * 1.8**2)
    nucleoli = np.clip(nucleoli, 0, 1) * nuc

    def per_cell_gain(sd: float) -> np.ndarray:
        g = np.exp(rng.normal(0, sd, n + 1)).astype(np.float32)
        g[0] = 0
        return g[cell_lab]

    # Textures are drawn whether or not the IF channels are black, so BF is the same either way.
    chromatin = _noise(rng, shape, 1.0)
    hetero = _noise(rng, shape, 2.5)
    granules = _noise(rng, shape, 1.0)
    reticulum = np.exp(-((_noise(rng, shape, 1.6) / 0.35) ** 2))  # zero crossings: a closed network of lines
    filaments = np.exp(-((_noise(rng, shape, 1.2) / 0.3) ** 2)) * np.clip(0.5 + 0.6 * _noise(rng, shape, 3.0), 0, 1)
    puncta = np.clip(_noise(rng, shape, 0.9) - 1.3, 0, None)
    n_orient = 8
    fibre_stack = _oriented_textures(rng, shape, n_orient, along=9.0, across=0.9)
    orient = np.round(psi / (np.pi / n_orient)).astype(np.int64) % n_orient
    fibres = np.take_along_axis(fibre_stack, orient[cell_lab][None], axis=0)[0]
    fibres = np.clip(fibres - 0.6, 0, None) ** 1.3

    signal = {
        "DNA": nuc
        * (0.45 + 0.55 * dome)
        * np.clip(1 + 0.22 * chromatin + 0.18 * hetero, 0.2, None)
        * (1 - 0.7 * nucleoli)
        * per_cell_gain(0.2),
        "RNA": (
            nuc * (0.14 * (1 + 0.2 * granules) + 0.9 * nucleoli)
            + cyto * (0.16 + 0.22 * towards_nucleus) * np.clip(1 + 0.35 * granules, 0, None)
        )
        * per_cell_gain(0.15),
        "ER": (
            cyto * (0.18 + 0.82 * np.exp(-d_nuc / 9.0)) * (0.3 + 0.9 * reticulum)
            + nuc * 0.55 * np.exp(-(depth - 1) / 1.5)
        )
        * per_cell_gain(0.15),
        "AGP": (cell * (np.exp(-(d_border / 1.6)) + 0.1) + cyto * 0.45 * fibres) * per_cell_gain(0.2),
        "Mito": cyto
        * (0.12 + 0.88 * np.exp(-d_nuc / 12.0))
        * (filaments + 0.5 * puncta)
        * per_cell_gain(0.2)
        * treatment.mito_scale,
    }

    channels: dict[str, np.ndarray] = {}
    for name in layout.IF_CHANNELS:
        s = np.zeros(shape, np.float32) if black_if else signal[name].astype(np.float32) * _IF_AMPLITUDE[name]
        channels[name] = _camera(s, name, optics, rng)

    # Brightfield: thickness (um) -> optical path (rad) -> absorption (in focus) and TIE defocus planes.
    t_edge, t_cyto, t_top = line.thickness
    thickness = cyto * (t_edge + (t_cyto - t_edge) * towards_nucleus**0.7) * np.clip(
        1 + 0.15 * granules, 0, None
    ) + nuc * (t_cyto + (t_top - t_cyto) * dome + 0.4 * nucleoli)
    thickness = ndi.gaussian_filter(thickness.astype(np.float32), 1.0)  # the objective's blur
    wavelength, delta_n, dz = 0.55, 0.035, 6.0  # um, refractive index step cell - medium, defocus um
    phi = (2 * np.pi / wavelength) * delta_n * thickness
    # TIE: I(z) = I0 (1 - z * lambda / (2 pi) * lap(phi)); lap in px^-2 -> um^-2.
    lap = ndi.gaussian_laplace(phi, 1.5) / PIXEL_SIZE_UM**2
    kappa = dz * wavelength / (2 * np.pi)
    defocus = np.clip(kappa * lap, -0.5, 0.5)
    absorb = 0.006 * thickness
    absorb_blur = ndi.gaussian_filter(absorb, 3.0)
    planes = {
        "Brightfield": optics.bf_level * (1 - absorb),
        "HighZBF": optics.bf_level * (1 - absorb_blur) * (1 - defocus),
        "LowZBF": optics.bf_level * (1 - absorb_blur) * (1 + defocus),
    }
    for name in layout.BF_CHANNELS:
        channels[name] = _camera(planes[name].astype(np.float32), name, optics, rng)

    labels = np.stack([nuc_lab, cell_lab]).astype(np.uint16)
    return {name: channels[name] for name in layout.ALL_CHANNELS}, labels


def illumination_functions(optics: Optics, field_size: int, means: dict[str, float]) -> dict[str, np.ndarray]:
    """The plate's illumination functions, as CorrectIlluminationCalculate would find them from its images.

    CellProfiler averages all images of the plate, smooths the average and rescales it by its robust minimum
    (cpg0000: "Regular", median filter, "Rescale: Yes"). The average image of this camera model is known in
    closed form: ``offset + a * vignette(x)``, with ``a`` set so that its mean is the plate's measured mean
    intensity ``means[channel]`` (counts, over every field and pixel). Rescaled by
    :func:`cellresdm.illumination.rescale_robust_minimum`: 1 at the corners, up to ``1 / (1 - fall-off)`` at
    the vignette centre; dividing a field by it flattens the plate's mean image.

    Returns:
        {channel: (field_size, field_size) float32} for every name in ``layout.ALL_CHANNELS``.
    """
    from cellresdm.illumination import rescale_robust_minimum

    out = {}
    for channel in layout.ALL_CHANNELS:
        vignette = _vignette(field_size, optics.vignette[channel], optics.centre).astype(np.float64)
        offset = optics.offset[channel]
        amplitude = max((means[channel] - offset) / float(vignette.mean()), 0.0)
        out[channel] = rescale_robust_minimum(offset + amplitude * vignette)
    return out


def _write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


# ----------------------------------------------------------------------------------------------- gallery


def _plate_key(plate: str) -> int:
    return zlib.crc32(plate.encode())


def plate_dir_name(plate: str) -> str:
    """Image folder of a synthetic plate, like the real ``BR00116991__2020-11-05T19_51_35-Measurement1``.

    The timestamp is a deterministic function of the barcode (between 2020-11-05 and 2020-12-05).
    """
    stamp = _PLATE_DIR_BASE + dt.timedelta(seconds=_plate_key(plate) % (30 * 86400))
    return f"{plate}__{stamp.strftime('%Y-%m-%dT%H_%M_%S')}-Measurement1"


def well_treatment(well: str, config: SynthConfig) -> Treatment:
    """Treatment of ``well``: ``config.treatments`` if listed there, else drawn from the seed and the well.

    The same well gets the same treatment on every plate (one plate map, as in CPJUMP1).
    """
    forced = dict(config.treatments)
    if well in forced:
        return forced[well]
    row, col = layout.parse_well(well)
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(_WELL_TAG, row, col)))
    return Treatment(
        nucleus_scale=float(rng.uniform(*NUCLEUS_SCALE_RANGE)), mito_scale=float(rng.uniform(*MITO_SCALE_RANGE))
    )


def plate_optics(plate: str, config: SynthConfig) -> Optics:
    """The plate's microscope (offsets, gains, vignette), from the seed and the barcode."""
    return Optics.random(
        np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(_PLATE_TAG, _plate_key(plate))))
    )


def field_rng(plate: str, row: int, col: int, site: int, config: SynthConfig) -> np.random.Generator:
    """Generator of one field: depends on the seed, barcode, well and site only."""
    return np.random.default_rng(
        np.random.SeedSequence(config.seed, spawn_key=(_FIELD_TAG, _plate_key(plate), row, col, site))
    )


def _check_roots(root: Path, truth_dir: Path) -> None:
    r, t = root.resolve(), truth_dir.resolve()
    if t == r or r in t.parents:
        raise ValueError(f"truth folder {truth_dir} must lie beside the gallery root {root}, not inside it")


def write_plate(
    root: str | os.PathLike,
    truth_dir: str | os.PathLike,
    plate: SynthPlate,
    config: SynthConfig,
    channels: Sequence[str] = layout.ALL_CHANNELS,
) -> Path:
    """Write one plate's images and load_data.csv under ``root`` and its truth into ``truth_dir``.

    Args:
        root: local folder standing for the bucket root (``s3://cellpainting-gallery/``).
        truth_dir: the plate's truth folder, for ``{field}_labels.tiff`` and ``wells.csv``; outside ``root``.
        plate: barcode and cell line.
        config: wells, sites, black IF wells, missing fields, field size and seed.
        channels: the channels whose images and load_data columns are written (a brightfield-only plate:
            :data:`layout.BF_CHANNELS`); the illumination functions of all 8 are written.

    Returns:
        The path of the written load_data.csv.
    """
    config.validate()
    _line(plate.cell_line)
    if not layout.PLATE_ID_PATTERN.match(plate.plate):
        raise ValueError(f"invalid plate barcode {plate.plate!r}")
    root, truth_dir = Path(root), Path(truth_dir)
    _check_roots(root, truth_dir)
    gallery = layout.GalleryLayout()
    plate_dir = plate_dir_name(plate.plate)
    optics = plate_optics(plate.plate, config)
    missing = set(config.missing_fields)

    rows, wells = [], []
    sums = dict.fromkeys(layout.ALL_CHANNELS, 0.0)  # sum over fields of each channel's mean intensity
    for well in config.wells:
        row, col = layout.parse_well(well)
        treatment = well_treatment(well, config)
        black = well in config.black_if_wells
        wells.append(
            {
                "well": well,
                "nucleus_scale": treatment.nucleus_scale,
                "mito_scale": treatment.mito_scale,
                "black_if": black,
            }
        )
        for site in range(1, config.sites + 1):
            if (well, site) in missing:
                continue
            images, labels = make_field(
                plate.cell_line,
                config.field_size,
                field_rng(plate.plate, row, col, site, config),
                treatment,
                black,
                optics=optics,
            )
            record = {}
            for channel in channels:
                key = gallery.image_key(plate_dir, layout.image_filename(row, col, site, channel))
                write_tiff(root / key, images[channel])
                record[layout.url_column(channel)] = layout.s3_url(key)
            for channel in layout.ALL_CHANNELS:
                sums[channel] += float(images[channel].mean())
            record.update(
                Metadata_Plate=plate.plate, Metadata_Well=well, Metadata_Site=site, Metadata_Row=row, Metadata_Col=col
            )
            rows.append(record)
            write_tiff(truth_dir / field_labels_name(layout.field_id(row, col, site)), labels)

    order = ("DNA", "ER", "RNA", "AGP", "Mito", "Brightfield", "HighZBF", "LowZBF")
    columns = [layout.url_column(c) for c in order if c in channels]
    columns += ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_Row", "Metadata_Col"]
    if rows:
        means = {channel: total / len(rows) for channel, total in sums.items()}
        for channel, function in illumination_functions(optics, config.field_size, means).items():
            _write_npy(root / gallery.illum_key(plate.plate, channel), function)
    load_data = root / gallery.load_data_key(plate.plate)
    write_text(truth_dir / WELLS_NAME, pd.DataFrame(wells).to_csv(index=False))
    write_text(load_data, pd.DataFrame(rows, columns=columns).to_csv(index=False))
    return load_data


def write_gallery(
    root: str | os.PathLike, truth_root: str | os.PathLike, plates: Sequence[SynthPlate], config: SynthConfig
) -> list[Path]:
    """Write every plate with :func:`write_plate`, the truth of each in ``truth_root/{plate}``; returns their
    load_data.csv paths in the given order."""
    barcodes = [p.plate for p in plates]
    if len(set(barcodes)) != len(barcodes):
        raise ValueError(f"duplicate plate barcodes: {barcodes}")
    for p in plates:
        _line(p.cell_line)
    return [write_plate(root, Path(truth_root) / p.plate, p, config) for p in plates]


# ----------------------------------------------------------------------------------------------- plate map


#: Columns of a demo plate map, those of JUMP-Target-1_compound_platemap.tsv plus the annotation (``target``).
PLATEMAP_COLUMNS: tuple[str, ...] = ("well_position", "broad_sample", "target")


@dataclass(frozen=True)
class DemoTreatment:
    """One treatment of the demo plate map: its ``name`` (the plate map's ``broad_sample``), ``mechanism`` (its
    ``target``), the generator's ``effect`` and its replicate ``wells``."""

    name: str
    mechanism: str
    effect: Treatment
    wells: tuple[str, ...]


@dataclass(frozen=True)
class DemoPlatemap:
    """The plate map of the demo's test plates (config ``demo.platemap``).

    Attributes:
        controls: negative-control wells (untreated: nucleus and Mito scales 1).
        treatments: the treatments, each with its replicate wells.
        sites: sites of the wells the plate map adds to a plate (wells not among the plate's own wells).
    """

    controls: tuple[str, ...]
    treatments: tuple[DemoTreatment, ...]
    sites: int = 1

    @classmethod
    def from_config(cls, section: dict) -> DemoPlatemap:
        """From the validated config section ``demo.platemap`` (the schema holds the defaults)."""
        treatments = tuple(
            DemoTreatment(
                name=t["name"],
                mechanism=t["mechanism"],
                effect=Treatment(nucleus_scale=t["nucleus_scale"], mito_scale=t["mito_scale"]),
                wells=tuple(t["wells"]),
            )
            for t in section["treatments"]
        )
        return cls(controls=tuple(section["controls"]), treatments=treatments, sites=section["sites"])

    def wells(self) -> tuple[str, ...]:
        """Every well of the plate map: the controls, then each treatment's wells."""
        return self.controls + tuple(w for t in self.treatments for w in t.wells)

    def validate(self) -> None:
        """Raise ValueError naming a well listed twice, a treatment name listed twice, or no control well."""
        wells = self.wells()
        for well in wells:
            layout.parse_well(well)
        repeated = sorted({w for w in wells if wells.count(w) > 1})
        if repeated:
            raise ValueError(f"demo plate map: wells listed more than once: {', '.join(repeated)}")
        names = [t.name for t in self.treatments]
        if len(set(names)) != len(names):
            raise ValueError(f"demo plate map: treatment names listed more than once: {names}")
        if not self.controls:
            raise ValueError("demo plate map: no negative-control well (demo.platemap.controls is empty)")


def with_platemap(config: SynthConfig, platemap: DemoPlatemap) -> SynthConfig:
    """The generator settings of a plate carrying ``platemap``: its wells not in ``config.wells`` are added with
    ``platemap.sites`` sites (their later sites are absent fields), control wells are untreated and treatment
    wells get their treatment's effect (the other wells keep their drawn treatments)."""
    platemap.validate()
    added = tuple(w for w in platemap.wells() if w not in config.wells)
    absent = tuple((w, s) for w in added for s in range(platemap.sites + 1, config.sites + 1))
    forced = [(w, Treatment()) for w in platemap.controls]
    forced += [(w, t.effect) for t in platemap.treatments for w in t.wells]
    given = dict(config.treatments)
    return dataclasses.replace(
        config,
        wells=config.wells + added,
        missing_fields=config.missing_fields + absent,
        treatments=tuple(given.items()) + tuple((w, t) for w, t in forced if w not in given),
    )


def platemap_table(platemap: DemoPlatemap) -> pd.DataFrame:
    """The plate map as a table of :data:`PLATEMAP_COLUMNS`, one row per well: controls with an empty
    ``broad_sample`` and ``target`` (as JUMP's DMSO wells), treatments with their name and mechanism."""
    platemap.validate()
    rows = [{"well_position": w, "broad_sample": "", "target": ""} for w in platemap.controls]
    rows += [
        {"well_position": w, "broad_sample": t.name, "target": t.mechanism}
        for t in platemap.treatments
        for w in t.wells
    ]
    return pd.DataFrame(rows, columns=list(PLATEMAP_COLUMNS))


def write_platemap(path: str | os.PathLike, platemap: DemoPlatemap) -> pd.DataFrame:
    """Write :func:`platemap_table` to ``path`` (CSV, atomically) and return it."""
    table = platemap_table(platemap)
    write_text(path, table.to_csv(index=False))
    return table
