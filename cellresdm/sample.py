"""Whole-field inference: overlapping tiles, cosine blending, one noise field per image, optional ensembles.

Fields larger than the tile are cut into overlapping tiles that are sampled in batches; each tile's output is
weighted by a raised-cosine ramp over the overlap and the weighted outputs are averaged. The noise of every
tile is cropped from one noise tensor for the whole field, so overlapping tiles see the same noise.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from cellresdm import io, layout
from cellresdm.config import settings_values
from cellresdm.errors import CellResDMError, ConfigError
from cellresdm.methods.base import N_OUTPUT_CHANNELS, Method
from cellresdm.stores import create_predictions, gather_stores, open_dataset, open_predictions


@contextlib.contextmanager
def cuda_precision(device: torch.device, precision: str) -> Iterator[None]:
    """Run the block with ``precision`` arithmetic on a CUDA device (see :class:`SampleSettings`); no-op on CPU."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision != "fp32"
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext():
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@dataclass(frozen=True)
class SampleSettings:
    """Whole-field inference settings (config section ``sample``; the schema documents and checks each key).

    Attributes:
        tile: tile side in pixels; fields larger than a tile are sampled in overlapping tiles.
        overlap: overlap of neighbouring tiles in pixels (cosine-blended), below ``tile``.
        batch_size: tiles per forward pass.
        n_samples: samples per field; above 1 the store also holds per-pixel standard deviations.
        boundary_threshold: probability at which ``boundaries_binary`` is 1.
        seed: seed of the noise generator.
        precision: CUDA arithmetic: ``tf32`` (TensorFloat-32 matmuls/convolutions, 2.6x float32 on an H100 for
            the paper network), ``fp32`` or ``bf16`` (autocast). Ignored on the CPU, which always computes in
            float32.
    """

    tile: int
    overlap: int
    batch_size: int
    n_samples: int
    boundary_threshold: float
    seed: int
    precision: str

    def __post_init__(self) -> None:
        if not self.overlap < self.tile:
            raise ConfigError(f"sample.overlap must be below sample.tile, got {self.overlap} and {self.tile}")

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> SampleSettings:
        """Settings from the validated ``sample`` config section (:func:`cellresdm.config.section`)."""
        return cls(**settings_values(cls, section, "sample"))


def tile_starts(size: int, tile: int, overlap: int, alignment: int = 1) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering [0, size) with at least ``overlap`` overlap.

    With ``alignment`` > 1 (``size - tile`` must be a multiple of it) every start is a multiple of ``alignment``,
    so methods that subsample the noise field (latent CellResDM takes every 4th pixel) see the same noise grid in
    every tile; an overlap may then shrink by up to ``alignment - 1`` pixels.
    """
    if size <= tile:
        return [0]
    stride = tile - overlap
    n = math.ceil((size - tile) / stride) + 1
    # spread the tiles evenly so every overlap is at least `overlap` and the last tile ends at `size`
    return [alignment * round(i * (size - tile) / (n - 1) / alignment) for i in range(n)]


def blend_weight(height: int, width: int, overlap: int) -> Tensor:
    """(H, W) weights: 1 inside, a raised-cosine ramp from near 0 to 1 over ``overlap`` pixels at each edge."""

    def ramp(n: int) -> Tensor:
        w = torch.ones(n, dtype=torch.float64)
        k = min(overlap, n // 2)
        if k > 0:
            edge = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(k, dtype=torch.float64) + 0.5) / k)
            w[:k] = edge
            w[n - k :] = edge.flip(0)
        return w

    return (ramp(height)[:, None] * ramp(width)[None, :]).float()


def _padded(size: int, multiple: int) -> int:
    return math.ceil(size / multiple) * multiple


def predict_field(
    method: Method, bf: Tensor, settings: SampleSettings, generator: torch.Generator, device: torch.device
) -> Tensor:
    """Sample one field.

    Args:
        bf: (3, H, W) BF planes in [0, 1].

    Returns:
        (n_samples, 7, H, W) predictions in [0, 1] on the CPU.
    """
    _, height, width = bf.shape
    multiple = method.size_multiple
    if settings.tile % multiple:
        raise CellResDMError(f"sample.tile {settings.tile} is not a multiple of {multiple} required by {method.name}")
    # The field is padded by reflection to a multiple the network accepts; the noise is drawn for the padded
    # field whatever the tiling, so a prediction does not depend on the tile size.
    full_h, full_w = _padded(height, multiple), _padded(width, multiple)
    tile_h, tile_w = min(settings.tile, full_h), min(settings.tile, full_w)
    image = F.pad(bf[None], (0, full_w - width, 0, full_h - height), mode="reflect")[0]
    boxes = [
        (y, x)
        for y in tile_starts(full_h, tile_h, settings.overlap, method.tile_alignment)
        for x in tile_starts(full_w, tile_w, settings.overlap, method.tile_alignment)
    ]
    weight = blend_weight(tile_h, tile_w, settings.overlap if len(boxes) > 1 else 0).to(device)
    outputs = []
    for _ in range(settings.n_samples):
        noise = torch.randn(method.noise_shape(1, full_h, full_w), generator=generator)
        total = torch.zeros(N_OUTPUT_CHANNELS, full_h, full_w, device=device)
        norm = torch.zeros(1, full_h, full_w, device=device)
        for start in range(0, len(boxes), settings.batch_size):
            chunk = boxes[start : start + settings.batch_size]
            tiles = torch.stack([image[:, y : y + tile_h, x : x + tile_w] for y, x in chunk]).to(device)
            tile_noise = torch.cat([noise[..., y : y + tile_h, x : x + tile_w] for y, x in chunk], dim=-4)
            with cuda_precision(device, settings.precision):
                pred = method.sample(tiles, noise=tile_noise.to(device)).float()
            for (y, x), out in zip(chunk, pred, strict=True):
                total[:, y : y + tile_h, x : x + tile_w] += out * weight
                norm[:, y : y + tile_h, x : x + tile_w] += weight
        outputs.append((total / norm)[:, :height, :width].cpu())
    return torch.stack(outputs)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def field_seed(seed: int, row: int) -> int:
    """Seed of the noise of dataset field ``row``: independent streams per field, fixed by ``seed``."""
    return int(np.random.SeedSequence([seed, row]).generate_state(1, dtype=np.uint64)[0] >> 1)


def predict_dataset(
    method: Method,
    dataset: str | Path,
    out: str | Path,
    settings: SampleSettings,
    benchmark_out: str | Path | None = None,
    device: torch.device | None = None,
    progress: bool = True,
    log: logging.Logger | None = None,
    rows: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Sample the fields of a dataset split (all, or its ``rows``: a shard) and write their prediction store
    (:mod:`cellresdm.stores`).

    The store holds ``if`` (N, 5, H, W) and ``boundaries`` (N, 2, H, W) as float16 in [0, 1] (boundary
    probabilities), ``boundaries_binary`` (N, 2, H, W) uint8 at ``boundary_threshold``, with ``n_samples > 1``
    also ``if_std`` and ``boundaries_std`` (per-pixel standard deviation over the samples), the dataset's field
    table (of the sampled rows) and the timing record in the attrs (``sampling``). Field ``i`` of the dataset
    draws its noise from a generator of its own, seeded by (``seed``, ``i``), so its prediction does not depend
    on which other fields a job samples. Returns the timing record, also written to ``benchmark_out`` as JSON.
    """
    log = log or logging.getLogger("cellresdm")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    source = open_dataset(dataset, arrays=("bf",))
    selected = np.arange(len(source)) if rows is None else np.asarray(rows, dtype=np.int64)
    n, (height, width) = len(selected), source.shape
    method.network.to(device).eval()
    seconds = 0.0
    with create_predictions(out, n, (height, width), with_std=settings.n_samples > 1) as writer:
        n_if = len(layout.IF_CHANNELS)
        for i, row in enumerate(tqdm(selected, desc=f"sample {method.name}", unit="field", disable=not progress)):
            bf = torch.from_numpy(np.asarray(source["bf"][int(row)], dtype=np.float32))
            generator = torch.Generator().manual_seed(field_seed(settings.seed, int(row)))
            _sync(device)
            start = time.perf_counter()
            samples = predict_field(method, bf, settings, generator, device)
            _sync(device)
            seconds += time.perf_counter() - start
            mean = samples.mean(0).numpy()
            boundaries = mean[n_if:].astype(np.float16)
            writer.write_field(
                i,
                if_=mean[:n_if].astype(np.float16),
                boundaries=boundaries,
                boundaries_binary=(boundaries >= settings.boundary_threshold).astype(np.uint8),
            )
            if settings.n_samples > 1:
                std = samples.std(0, unbiased=False).numpy()
                writer.write_field(
                    i, if_std=std[:n_if].astype(np.float16), boundaries_std=std[n_if:].astype(np.float16)
                )
        record = {
            "method": method.name,
            "fields": int(n),
            "image_size": [int(height), int(width)],
            "seconds_total": seconds,
            "seconds_per_image": seconds / max(n, 1),
            "images_per_second": n / seconds if seconds > 0 else float("inf"),
            "steps": method.sampling_steps,
            "tile": settings.tile,
            "overlap": settings.overlap,
            "batch": settings.batch_size,
            "n_samples": settings.n_samples,
            "device": device_name(device),
            "precision": settings.precision if device.type == "cuda" else "fp32",
        }
        writer.finish(
            source.fields.iloc[selected].reset_index(drop=True),
            {
                "method": method.name,
                "channels_if": list(layout.IF_CHANNELS),
                "channels_boundaries": list(layout.OBJECT_CHANNELS),
                "sampling": record,
            },
        )
    if benchmark_out is not None:
        io.write_text(benchmark_out, json.dumps(record, indent=2) + "\n")
    log.info(
        "%s: %d fields of %dx%d in %.1f s (%.3f s/image) on %s",
        method.name,
        n,
        height,
        width,
        seconds,
        record["seconds_per_image"],
        record["device"],
    )
    return record


def gather_predictions(
    shards: Sequence[str | Path],
    dataset: str | Path,
    out: str | Path,
    benchmark_out: str | Path,
    log: logging.Logger | None = None,
) -> dict[str, Any]:
    """Put the shard stores of one method together (:mod:`cellresdm.shards`) as :func:`predict_dataset` writes
    the whole test split in one job: fields in the dataset's order, the timing record summed over the shards
    (also written to ``benchmark_out`` as JSON). Returns the timing record.

    Raises:
        CellResDMError: a shard store is invalid, the shards disagree, or they do not cover the dataset's fields
            exactly once.
    """
    log = log or logging.getLogger("cellresdm")
    fields = open_dataset(dataset, arrays=()).fields
    stores = [open_predictions(path, arrays=()) for path in shards]
    if not stores:
        raise CellResDMError(f"{out}: no prediction shards to gather")
    records = [store.attr("sampling") for store in stores]
    n = sum(int(r["fields"]) for r in records)
    seconds = sum(float(r["seconds_total"]) for r in records)
    record = {
        **records[0],
        "fields": n,
        "seconds_total": seconds,
        "seconds_per_image": seconds / max(n, 1),
        "images_per_second": n / seconds if seconds > 0 else float("inf"),
    }
    attrs = {**stores[0].attrs, "sampling": record}
    gather_stores(shards, out, fields, attrs)
    io.write_text(benchmark_out, json.dumps(record, indent=2) + "\n")
    log.info(
        "%s: %d fields from %d shards, %.3f s/image", record["method"], n, len(stores), record["seconds_per_image"]
    )
    return record
