"""Datasets of kept fields (docs/design.md section 5, stage ``dataset``) and the torch Dataset that reads them.

``build_dataset`` writes one dataset store (:mod:`cellresdm.stores`) per split::

    bf          (N, 3, H, W) float16 in [0, 1]   layout.BF_CHANNELS (in-focus Brightfield, HighZBF, LowZBF)
    if          (N, 5, H, W) float16 in [0, 1]   layout.IF_CHANNELS
    boundaries  (N, 2, H, W) uint8 0/1           layout.OBJECT_CHANNELS (nuclei, cells)
    labels      (N, 2, H, W) uint16              instance labels
    fields table                                 plate, cell_line, well, row, col, site, field, index
    norm table                                   the percentile values used per plate (or image) and channel

Images are illumination-corrected first where the plate has functions (:mod:`cellresdm.illumination`: divided,
then uint16 counts again), so percentiles, stored images and the features of real images all describe corrected
images; the root attribute ``illumination_corrected`` lists those plates. Chunked one field per chunk; the root
attributes record the settings. The store is written beside the
target and renamed into place only when complete.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cellresdm import layout
from cellresdm.errors import CellResDMError, ConfigError, ImageError
from cellresdm.filters import histogram_percentiles, uint16_histogram
from cellresdm.illumination import PlateIllumination, plate_illumination
from cellresdm.io import read_tiff
from cellresdm.masks import boundaries_from_labels
from cellresdm.results import field_labels_name
from cellresdm.stores import DatasetStore, create_dataset, open_dataset

_LOG = logging.getLogger(__name__)

#: Image channels in the order they are read: IF first, then BF (layout.ALL_CHANNELS).
_CHANNELS: tuple[str, ...] = layout.IF_CHANNELS + layout.BF_CHANNELS
_N_IF = len(layout.IF_CHANNELS)
#: config ``dataset.bf_planes`` -> the BF planes a model trained on the dataset takes.
BF_PLANE_CHOICES: dict[str, tuple[str, ...]] = {"all": layout.BF_CHANNELS, "in_focus": layout.BF_CHANNELS[:1]}


@dataclass(frozen=True)
class NormSettings:
    """Intensity normalisation: clip to the [low, high] percentiles, then scale to [0, 1].

    Attributes:
        scope: ``"plate"``: percentiles per plate and channel over all kept fields of the plate (keeps
            intensity differences between images, which CellProfiler intensity features need);
            ``"image"``: per image and channel, as the official CellResDM code does.
        low, high: percentiles (0-100).
    """

    scope: str
    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ConfigError(f"dataset.norm_low ({self.low}) must be below dataset.norm_high ({self.high})")

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> NormSettings:
        """Settings from the validated ``dataset`` config section (:func:`cellresdm.config.section`)."""
        lacking = [key for key in ("norm_scope", "norm_low", "norm_high") if key not in section]
        if lacking:
            keys = ", ".join(f"dataset.{key}" for key in lacking)
            raise ConfigError(f"config section 'dataset' lacks {keys} (pass a validated section)")
        return cls(scope=section["norm_scope"], low=section["norm_low"], high=section["norm_high"])


@dataclass
class PlateInput:
    """One plate going into a dataset.

    Attributes:
        plate: plate name (Metadata_Plate).
        cell_line: cell line of the plate (stored in the fields table).
        fields: the filter table of the plate (``fields/{plate}.parquet``); rows with ``keep`` are used.
        load_data: ``raw/{plate}/load_data.parquet`` (local paths of the 8 channels and, for a corrected
            plate, of their illumination functions: every image is divided by its function before normalising).
        groundtruth_dir: folder with ``{field}_labels.tiff`` of the plate.
    """

    plate: str
    cell_line: str
    fields: pd.DataFrame
    load_data: pd.DataFrame
    groundtruth_dir: Path


@dataclass(frozen=True)
class _Field:
    index: int
    plate: str
    cell_line: str
    well: str
    row: int
    col: int
    site: int
    field: str
    paths: tuple[str, ...]  # in _CHANNELS order
    labels_path: str


def _kept_fields(plates: Sequence[PlateInput]) -> list[_Field]:
    """The kept fields of every plate, in plate order then row, column, site."""
    out: list[_Field] = []
    empty: list[str] = []
    for p in plates:
        table = p.fields
        if "Metadata_Plate" in table.columns:
            table = table[table["Metadata_Plate"] == p.plate]
        kept = table[table["keep"].astype(bool)].sort_values(["Metadata_Row", "Metadata_Col", "Metadata_Site"])
        if kept.empty:
            empty.append(p.plate)
            continue
        ld = p.load_data
        if "Metadata_Plate" in ld.columns:
            ld = ld[ld["Metadata_Plate"] == p.plate]
        by_key = {
            (str(w), int(s)): rec
            for w, s, rec in zip(ld["Metadata_Well"], ld["Metadata_Site"], ld.to_dict("records"), strict=True)
        }
        for rec in kept.to_dict("records"):
            well, site = str(rec["Metadata_Well"]), int(rec["Metadata_Site"])
            row, col = layout.parse_well(well)
            field = rec.get("field") or layout.field_id(row, col, site)
            src = by_key.get((well, site))
            if src is None:
                raise CellResDMError(
                    f"plate {p.plate}: kept field {field} (well {well}, site {site}) is not in load_data"
                )
            paths = []
            for ch in _CHANNELS:
                value = src.get(layout.path_column(ch))
                if value is None or (not isinstance(value, str) and pd.isna(value)) or value == "":
                    raise CellResDMError(f"plate {p.plate}: kept field {field} has no file for channel {ch}")
                paths.append(str(value))
            out.append(
                _Field(
                    index=len(out),
                    plate=p.plate,
                    cell_line=p.cell_line,
                    well=well,
                    row=row,
                    col=col,
                    site=site,
                    field=field,
                    paths=tuple(paths),
                    labels_path=str(Path(p.groundtruth_dir) / field_labels_name(field)),
                )
            )
    if not out:
        raise CellResDMError(f"no kept fields to build a dataset from: plates with none: {', '.join(empty)}")
    return out


def _read_images(f: _Field, shape: tuple[int, int] | None, illum: PlateIllumination | None = None) -> np.ndarray:
    """(8, H, W) uint16 stack of one field, in _CHANNELS order, divided by the plate's illumination functions
    when ``illum`` holds them; ImageError naming the file on problems."""
    stack = []
    for channel, path in zip(_CHANNELS, f.paths, strict=True):
        img = read_tiff(path, ndim=2, dtype=np.uint16)
        if shape is None:
            shape = tuple(img.shape)
        elif tuple(img.shape) != tuple(shape):
            raise ImageError(f"{path}: expected shape {tuple(shape)} (as the other fields), got {img.shape}")
        stack.append(img if illum is None else illum.apply(channel, img, path))
    return np.stack(stack)


def _read_labels(f: _Field, shape: tuple[int, int]) -> np.ndarray:
    labels = read_tiff(f.labels_path, ndim=3)
    expected = (len(layout.OBJECT_CHANNELS), *shape)
    if tuple(labels.shape) != expected:
        raise ImageError(f"{f.labels_path}: expected labels of shape {expected} (as the images), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ImageError(f"{f.labels_path}: expected integer instance labels, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.uint16).max):
        raise ImageError(f"{f.labels_path}: label values outside the uint16 range")
    return labels.astype(np.uint16, copy=False)


def _normalise(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Clip to [lo, hi] and scale to [0, 1] (float32); a constant channel (hi <= lo) gives zeros."""
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(img.shape, dtype=np.float32)
    out = (np.clip(img.astype(np.float32), lo, hi) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def _resize_intensity(img: np.ndarray, size: int) -> np.ndarray:
    from skimage.transform import resize

    out = resize(img, (size, size), order=1, mode="reflect", anti_aliasing=True, preserve_range=True)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
    from skimage.transform import resize

    out = resize(labels, (size, size), order=0, mode="edge", anti_aliasing=False, preserve_range=True)
    return np.rint(out).astype(np.uint16)


def build_dataset(
    plates: Sequence[PlateInput],
    out: str | Path,
    norm: NormSettings,
    resize: int | None = None,
    boundary_thickness: int = 2,
    progress: bool = True,
    log: logging.Logger | None = None,
    workers: int = 2,
    bf_planes: str = "all",
) -> dict:
    """Write the kept fields of ``plates`` to the zarr dataset ``out`` (see the module docstring).

    Args:
        plates: plates with their filter table, load_data and ground-truth folder.
        out: target ``.zarr`` directory; written beside it and renamed into place when complete.
        norm: normalisation settings.
        resize: None keeps the native size; an int resizes each field to ``resize x resize``
            (anti-aliased linear for intensities, nearest for labels; boundaries are recomputed).
        boundary_thickness: width of the boundary masks (masks.boundaries_from_labels).
        progress: show tqdm progress bars.
        log: logger (defaults to this module's).
        workers: threads reading and writing fields in parallel.
        bf_planes: ``"all"`` (the three BF planes) or ``"in_focus"``: the in-focus plane fills all three ``bf``
            slots, so models trained on the store take that plane only (attribute ``bf_planes`` records which).

    Returns:
        Summary: n_fields, seconds, fields_per_s, shape (N, H, W of the stored fields), source_shape, out.
    """
    log = log or _LOG
    if resize is not None and (not isinstance(resize, int | np.integer) or resize < 1):
        raise ConfigError(f"dataset resize must be a positive int or None, got {resize!r}")
    if boundary_thickness < 1:
        raise ConfigError(f"dataset boundary_thickness must be >= 1, got {boundary_thickness}")
    if workers < 1:
        raise ConfigError(f"dataset workers must be >= 1, got {workers}")
    if bf_planes not in BF_PLANE_CHOICES:
        raise ConfigError(f"dataset.bf_planes must be one of {list(BF_PLANE_CHOICES)}, got {bf_planes!r}")
    names = [p.plate for p in plates]
    if len(set(names)) != len(names):
        raise ConfigError(f"dataset lists a plate twice: {names}")
    out = Path(out)
    fields = _kept_fields(plates)
    illum = {p.plate: plate_illumination(p.load_data, p.plate) for p in plates}
    for plate, functions in illum.items():
        log.info("plate %s: illumination correction %s", plate, "on" if functions.corrected else "off (no functions)")
    n = len(fields)
    t0 = time.perf_counter()

    # Source shape from the first field; every other field must match it.
    first = read_tiff(fields[0].paths[0], ndim=2, dtype=np.uint16)
    src_shape = (int(first.shape[0]), int(first.shape[1]))
    h, w = (resize, resize) if resize is not None else src_shape
    qs = (norm.low, norm.high)

    # Plate scope: exact percentiles from per-field uint16 histograms summed over the plate.
    plate_stats: dict[str, np.ndarray] = {}
    if norm.scope == "plate":
        hists = {p: np.zeros((len(_CHANNELS), 65536), dtype=np.int64) for p in dict.fromkeys(names)}
        lock = threading.Lock()

        def accumulate(f: _Field) -> None:
            imgs = _read_images(f, src_shape, illum[f.plate])
            local = np.stack([uint16_histogram(img) for img in imgs])
            with lock:
                hists[f.plate] += local

        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in tqdm(
                pool.map(accumulate, fields),
                total=n,
                desc="dataset stats",
                unit="field",
                disable=not progress,
            ):
                pass
        for plate, hist in hists.items():
            if hist.sum():
                plate_stats[plate] = np.stack([histogram_percentiles(hc, qs) for hc in hist])

    with create_dataset(out, n, (h, w)) as writer:
        image_stats: dict[int, np.ndarray] = {}

        def process(f: _Field) -> None:
            imgs = _read_images(f, src_shape, illum[f.plate])
            labels = _read_labels(f, src_shape)
            if norm.scope == "plate":
                stats = plate_stats[f.plate]
            else:
                stats = np.stack([histogram_percentiles(uint16_histogram(img), qs) for img in imgs])
                image_stats[f.index] = stats
            chans = [_normalise(img, float(lo), float(hi)) for img, (lo, hi) in zip(imgs, stats, strict=True)]
            if resize is not None:
                chans = [_resize_intensity(c, resize) for c in chans]
                labels = np.stack([_resize_labels(lab, resize) for lab in labels])
            bounds = np.stack([boundaries_from_labels(lab, boundary_thickness) for lab in labels]).astype(np.uint8)
            if bf_planes == "in_focus":
                chans[_N_IF + 1 :] = [chans[_N_IF]] * (len(chans) - _N_IF - 1)
            stack = np.stack(chans).astype(np.float16)
            writer.write_field(f.index, bf=stack[_N_IF:], if_=stack[:_N_IF], boundaries=bounds, labels=labels)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in tqdm(pool.map(process, fields), total=n, desc="dataset write", unit="field", disable=not progress):
                pass

        fields_df = pd.DataFrame(
            {
                "plate": [f.plate for f in fields],
                "cell_line": [f.cell_line for f in fields],
                "well": [f.well for f in fields],
                "row": [f.row for f in fields],
                "col": [f.col for f in fields],
                "site": [f.site for f in fields],
                "field": [f.field for f in fields],
                "index": [f.index for f in fields],
            }
        )
        rows = []
        if norm.scope == "plate":
            for plate, stats in plate_stats.items():
                for ch, (lo, hi) in zip(_CHANNELS, stats, strict=True):
                    rows.append(("plate", plate, None, -1, ch, float(lo), float(hi)))
        else:
            for f in fields:
                for ch, (lo, hi) in zip(_CHANNELS, image_stats[f.index], strict=True):
                    rows.append(("image", f.plate, f.field, f.index, ch, float(lo), float(hi)))
        norm_df = pd.DataFrame(rows, columns=["scope", "plate", "field", "index", "channel", "low", "high"])
        writer.finish(
            fields_df,
            norm_df,
            {
                "format": "cellresdm-dataset-1",
                "scope": norm.scope,
                "low": float(norm.low),
                "high": float(norm.high),
                "resize": None if resize is None else int(resize),
                "boundary_thickness": int(boundary_thickness),
                "bf_channels": list(layout.BF_CHANNELS),
                "bf_planes": list(BF_PLANE_CHOICES[bf_planes]),
                "if_channels": list(layout.IF_CHANNELS),
                "object_channels": list(layout.OBJECT_CHANNELS),
                "source_shape": list(src_shape),
                "shape": [h, w],
                "n_fields": n,
                "plates": names,
                "illumination_corrected": [p for p in names if illum[p].corrected],
            },
        )
    seconds = time.perf_counter() - t0
    rate = n / seconds if seconds > 0 else float("inf")
    log.info("dataset %s: %d fields of %dx%d in %.1f s (%.2f fields/s)", out, n, h, w, seconds, rate)
    return {
        "n_fields": n,
        "seconds": seconds,
        "fields_per_s": rate,
        "shape": [n, h, w],
        "source_shape": list(src_shape),
        "out": str(out),
    }


def _seed_for(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1, dtype=np.uint64)[0])


def crops_per_field_of(height: int, width: int, crop_size: int | None, requested: int | None = None) -> int:
    """Random crops drawn from each field per epoch (config key ``train.crops_per_field``).

    ``requested`` (an int >= 1) is used as given; None derives it from the sizes: the number of non-overlapping
    ``crop_size`` crops that fit in a ``height x width`` field, ``(height // crop_size) * (width // crop_size)``,
    at least 1 (a 540-px field gives 64 crops of 64 px). Whole fields (``crop_size`` None) give 1.
    """
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"train.crops_per_field must be >= 1 or null, got {requested}")
        return int(requested)
    if crop_size is None:
        return 1
    return max(1, (height // crop_size) * (width // crop_size))


class CellPaintingDataset(torch.utils.data.Dataset):
    """Fields of a dataset built by :func:`build_dataset`, with random crops, flips and 90-degree rotations.

    An epoch holds ``crops_per_field`` items per field (:func:`crops_per_field_of`): item ``k`` is draw
    ``k % crops_per_field`` of field ``k // crops_per_field``, so a dataset of one large field still fills
    batches. Each item is a dict of ``bf`` (3, h, w), ``if`` (5, h, w), ``boundaries`` (2, h, w) float32
    tensors in [0, 1], ``labels`` (2, h, w) int64 and ``index`` (int, the field). The same crop
    and transform apply to every array. Randomness comes from a generator seeded by (seed, epoch, item): call
    :meth:`set_epoch` each epoch (with ``persistent_workers`` DataLoaders the workers keep their own copy, so
    recreate those). The store is opened lazily in each process, so DataLoader workers do not share handles.

    Raises:
        ConfigError: the crop is larger than the fields (naming the dataset, its first field and both sizes).
    """

    def __init__(
        self,
        path: str | Path,
        crop_size: int | None = 256,
        flips: bool = True,
        seed: int = 0,
        crops_per_field: int | None = None,
    ):
        self.path = Path(path)
        self.crop_size = crop_size
        self.flips = flips
        self.seed = int(seed)
        self.epoch = 0
        store = open_dataset(self.path)
        self.n_fields = len(store)
        self.height, self.width = store.shape
        if crop_size is not None and (crop_size < 1 or crop_size > min(self.height, self.width)):
            names = store.fields["field"] if "field" in store.fields.columns else store.fields.index
            first = next(iter(names), "?")
            raise ConfigError(
                f"dataset {self.path}: crop_size {crop_size} does not fit its fields of {self.height}x{self.width} "
                f"(e.g. field {first}); lower the method's crop_size or rebuild the dataset larger"
            )
        if crop_size is None and crops_per_field not in (None, 1):
            raise ConfigError(f"dataset {self.path}: whole fields (no crop) allow one item per field")
        self.crops_per_field = crops_per_field_of(self.height, self.width, crop_size, crops_per_field)
        self._store: DatasetStore | None = None
        self._pid: int | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n_fields * self.crops_per_field

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_store"] = None
        state["_pid"] = None
        return state

    def _open(self) -> DatasetStore:
        if self._store is None or self._pid != os.getpid():
            self._store = open_dataset(self.path)
            self._pid = os.getpid()
        return self._store

    def _generator(self, k: int) -> torch.Generator:
        """The generator of item ``k`` in the current epoch (its crop, then its flips)."""
        return torch.Generator().manual_seed(_seed_for(self.seed, self.epoch, k) & 0x7FFF_FFFF_FFFF_FFFF)

    def _origin(self, gen: torch.Generator) -> tuple[int, int]:
        c = self.crop_size
        y0 = int(torch.randint(0, self.height - c + 1, (1,), generator=gen))
        x0 = int(torch.randint(0, self.width - c + 1, (1,), generator=gen))
        return y0, x0

    def crop_of(self, k: int) -> tuple[int, int, int]:
        """``(field, y0, x0)`` of item ``k`` in the current epoch (the top-left corner of its crop; 0, 0 for whole
        fields)."""
        k = self._check_index(k)
        field = k // self.crops_per_field
        if self.crop_size is None:
            return field, 0, 0
        return (field, *self._origin(self._generator(k)))

    def _check_index(self, k: int) -> int:
        k = int(k)
        n = len(self)
        if k < 0:
            k += n
        if not 0 <= k < n:
            raise IndexError(f"dataset {self.path}: index {k} out of range for {n} items")
        return k

    def __getitem__(self, k: int) -> dict:
        k = self._check_index(k)
        i = k // self.crops_per_field
        store = self._open()
        gen = self._generator(k)
        if self.crop_size is None:
            ys, xs = slice(None), slice(None)
        else:
            c = self.crop_size
            y0, x0 = self._origin(gen)
            ys, xs = slice(y0, y0 + c), slice(x0, x0 + c)
        item = {
            "bf": torch.from_numpy(np.asarray(store["bf"][i, :, ys, xs], dtype=np.float32)),
            "if": torch.from_numpy(np.asarray(store["if"][i, :, ys, xs], dtype=np.float32)),
            "boundaries": torch.from_numpy(np.asarray(store["boundaries"][i, :, ys, xs], dtype=np.float32)),
            "labels": torch.from_numpy(np.asarray(store["labels"][i, :, ys, xs], dtype=np.int64)),
        }
        if self.flips:
            hflip, vflip, k = (int(v) for v in torch.randint(0, 4, (3,), generator=gen))
            h, w = item["bf"].shape[-2:]
            k = k if h == w else (k // 2) * 2  # quarter turns only where the crop is square
            for name, t in item.items():
                if hflip % 2:
                    t = torch.flip(t, dims=(-1,))
                if vflip % 2:
                    t = torch.flip(t, dims=(-2,))
                if k:
                    t = torch.rot90(t, k, dims=(-2, -1))
                item[name] = t.contiguous()
        item["index"] = i
        return item
