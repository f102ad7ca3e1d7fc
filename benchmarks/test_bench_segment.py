"""Speed of boundaries -> instances at the real field size (1080 x 1080) against CellProfiler's segmentation.

Run with `make bench`. Figures are printed, not asserted: a benchmark is not a timed test. The same synthetic
U2OS fields are segmented by :func:`cellresdm.segment.instances_from_boundaries` (from their true boundary
masks, and from a damaged copy with gaps and noise that takes the gap-closing path) and by the ground-truth
CellProfiler pipeline (from their DNA and RNA images; skipped without .venv-cp). The paper quotes ~33 s per
image set for CellProfiler; the goal here is >= 100x faster.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage as ndi
from stardist.matching import matching

from cellresdm import config as cfg
from cellresdm import layout
from cellresdm.groundtruth import GroundTruthSettings, run_cellprofiler
from cellresdm.masks import boundaries_from_labels
from cellresdm.segment import InstanceSettings, instances_from_boundaries
from cellresdm.segment_step import segment_predictions
from cellresdm.synth import Treatment, make_field

REPO = Path(__file__).resolve().parents[1]
CELLPROFILER = REPO / ".venv-cp" / "bin" / "cellprofiler"
SIZE = 1080
N_FIELDS = 3
REPEATS = 3
FIGURES: dict[str, float] = {}
LINES: list[tuple[str, str, str]] = []


def record(stage: str, figure: str, note: str) -> None:
    LINES.append((stage, figure, note))
    print(f"[bench] {stage}: {figure} ({note})")


@pytest.fixture(scope="module", autouse=True)
def print_table():
    yield
    if "ours" in FIGURES and "cellprofiler" in FIGURES:
        ratio = FIGURES["cellprofiler"] / FIGURES["ours"]
        record("speed ratio", f"{ratio:.0f}x", "CellProfiler s/field / boundaries->instances s/field (goal >= 100x)")
    if "ours" in FIGURES and "cellprofiler_modules" in FIGURES:
        ratio = FIGURES["cellprofiler_modules"] / FIGURES["ours"]
        record("speed ratio, CellProfiler modules only", f"{ratio:.0f}x", "without CellProfiler's start-up")
    width = max((len(s) for s, _, _ in LINES), default=0)
    print(f"\n\nSegmentation benchmark (this machine, {os.cpu_count()} CPUs, {SIZE} x {SIZE} fields)")
    for stage, figure, note in LINES:
        print(f"  {stage:<{width}}  {figure:>14}  {note}")


@pytest.fixture(scope="module")
def synthetic_fields() -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Real-size U2OS fields: ({channel: (H, W) uint16}, labels (2, H, W) int32)."""
    out = []
    for seed in range(N_FIELDS):
        channels, labels = make_field("U2OS", SIZE, np.random.default_rng(seed), Treatment())
        out.append((channels, labels.astype(np.int32)))
    return out


def _damaged(boundary: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A generator-like probability map: blurred, with gaps of ~7 px in the lines and background noise."""
    p = ndi.gaussian_filter(boundary.astype(np.float32), 1.0) * 1.6
    gaps = ndi.binary_dilation(rng.random(boundary.shape) < 2e-4, iterations=3)
    p[gaps] *= 0.1
    p += 0.25 * ndi.gaussian_filter(rng.standard_normal(boundary.shape).astype(np.float32), 1.5)
    return np.clip(p, 0, 1)


def _time_fields(maps: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """(wall, CPU) seconds per field of instances_from_boundaries, one thread, after one warm-up call."""
    instances_from_boundaries(*maps[0])
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(REPEATS):
        for nuclei, cells in maps:
            instances_from_boundaries(nuclei, cells)
    n = REPEATS * len(maps)
    return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n


def _f1(labels: np.ndarray, maps: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    nuclei, cells = instances_from_boundaries(*maps)
    return matching(labels[0], nuclei, thresh=0.5).f1, matching(labels[1], cells, thresh=0.5).f1


def test_boundaries_to_instances_speed(synthetic_fields, tmp_path):
    rng = np.random.default_rng(0)
    true_maps, damaged_maps = [], []
    for _, labels in synthetic_fields:
        bounds = [boundaries_from_labels(labels[k], thickness=2).astype(np.float32) for k in range(2)]
        true_maps.append((bounds[0], bounds[1]))
        damaged_maps.append((_damaged(bounds[0], rng), _damaged(bounds[1], rng)))
    for name, maps in (("true boundaries", true_maps), ("damaged boundaries", damaged_maps)):
        wall, cpu = _time_fields(maps)
        f1 = np.mean([_f1(labels, m) for (_, labels), m in zip(synthetic_fields, maps, strict=True)], axis=0)
        if name == "true boundaries":
            FIGURES["ours"] = wall
        record(
            f"instances_from_boundaries, {name}",
            f"{wall:.3f} s/field",
            f"CPU {cpu:.3f} s, 1 thread, {len(maps)} U2OS fields x {REPEATS}; F1@0.5 nuclei {f1[0]:.3f}, "
            f"cells {f1[1]:.3f}",
        )

    # the whole step: read a prediction store, segment with 2 threads, write the instance store
    import zarr

    store = tmp_path / "predictions" / "bench" / "test.zarr"
    root = zarr.open_group(str(store), mode="w", zarr_format=3)
    data = np.stack([np.stack(m) for m in damaged_maps]).astype(np.float16)
    root.create_array("boundaries", data=data, chunks=(1, 2, SIZE, SIZE))
    root.attrs.update({"method": "bench"})
    pd.DataFrame({"field": [f"f{i}" for i in range(len(data))]}).to_parquet(store / "fields.parquet")
    summary = segment_predictions(
        store,
        tmp_path / "bench_instances.zarr",
        InstanceSettings.from_config(cfg.section("instances")),
        workers=2,
        progress=False,
    )
    record(
        "segment_predictions (damaged)",
        f"{1 / summary['fields_per_second']:.3f} s/field",
        f"zarr read + write included, {summary['workers']} threads, {summary['fields']} fields",
    )


class _ChunkTimes(logging.Handler):
    """Keeps CellProfiler's per-chunk log record: module seconds per image set and the start-up seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[tuple] = []

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("CellProfiler chunk"):
            self.chunks.append(record.args)


def test_cellprofiler_speed(synthetic_fields, tmp_path):
    if not CELLPROFILER.exists():
        pytest.skip("no .venv-cp: run make setup")
    rows = []
    for i, (channels, _) in enumerate(synthetic_fields):
        row, col, site = 2, 2 + i, 1
        paths = {}
        for channel in ("DNA", "RNA"):
            path = tmp_path / "images" / layout.image_filename(row, col, site, channel)
            path.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(path, channels[channel], compression="lzw")
            paths[layout.path_column(channel)] = str(path)
        meta = {"Metadata_Plate": "BENCH0001", "Metadata_Well": layout.well_name(row, col), "Metadata_Site": site}
        rows.append({"field": layout.field_id(row, col, site), "keep": True, **meta, **paths})
    table = pd.DataFrame(rows)
    log = logging.getLogger("bench.cellprofiler")
    log.setLevel(logging.INFO)
    times = _ChunkTimes()
    log.addHandler(times)
    start = time.perf_counter()
    index = run_cellprofiler(
        table,
        table,
        tmp_path / "gt",
        GroundTruthSettings.from_config(cfg.section("groundtruth")),
        cellprofiler=str(CELLPROFILER),
        log=log,
        progress=False,
    )
    seconds = time.perf_counter() - start
    FIGURES["cellprofiler"] = float(index["seconds"].mean())
    record(
        "CellProfiler segmentation",
        f"{FIGURES['cellprofiler']:.2f} s/field",
        f"{len(index)} fields in one process, {seconds:.0f} s incl. JVM start shared over them",
    )
    if times.chunks:
        _, n_sets, _, modules, other = times.chunks[0]
        FIGURES["cellprofiler_modules"] = float(modules)
        record(
            "CellProfiler modules only",
            f"{modules:.2f} s/field",
            f"per image set, without the {other:.0f} s start-up",
        )
    truth = [labels for _, labels in synthetic_fields]
    f1 = [
        matching(truth[i][k], tifffile.imread(path)[k].astype(np.int32), thresh=0.5).f1
        for i, path in enumerate(index["labels"])
        for k in range(2)
    ]
    record("CellProfiler F1@0.5 vs synthetic truth", f"{np.mean(f1):.3f}", "mean of nuclei and cells (for context)")
