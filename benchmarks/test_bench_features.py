"""Seconds per image set of the feature stage (cellresdm.features) at the demo size and the real field size.

Run with `make bench`. Figures are printed, not asserted. One synthetic U2OS field per size (256 and
1080 px, percentile-normalised like the dataset) is measured by the CellProfiler backend (the full
measurement pipeline) and by the cp_measure backend (CellProfiler segmentation, cp_measure measurements).
test_fast_vs_cellprofiler_1080 measures the fast (default) and the CellProfiler backends on the same four 1080 px
fields, one chunk (one CellProfiler process) each, in one run and prints seconds per field, peak memory, the speed
ratio and the fast backend's breakdown. Skipped without .venv-cp. The reference
README quotes ~105 s for a real 1080 px field with 8 channels on
one core.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from cellresdm import config as cfg
from cellresdm import layout
from cellresdm.features import FeatureSettings, extract_features
from cellresdm.synth import Treatment, make_field

REPO = Path(__file__).resolve().parents[1]
CELLPROFILER = REPO / ".venv-cp" / "bin" / "cellprofiler"


def _zarr(path: Path, size: int) -> Path:
    channels, _ = make_field("U2OS", size, np.random.default_rng(size), Treatment())
    imgs = np.stack([channels[c].astype(np.float32) for c in layout.IF_CHANNELS])
    lo = np.percentile(imgs, 0.5, axis=(1, 2), keepdims=True)
    hi = np.percentile(imgs, 99.5, axis=(1, 2), keepdims=True)
    imgs = np.clip((imgs - lo) / (hi - lo), 0, 1).astype(np.float16)[None]
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.create_array("if", shape=imgs.shape, chunks=imgs.shape, dtype="float16")[:] = imgs
    pd.DataFrame(
        {"plate": ["P1"], "cell_line": ["U2OS"], "well": ["B02"], "site": [1], "field": ["r02c02f01"], "index": [0]}
    ).to_parquet(path / "fields.parquet")
    return path


@pytest.mark.cellprofiler
@pytest.mark.parametrize("backend", ["cellprofiler", "cp_measure"])
@pytest.mark.parametrize("size", [256, 1080])
def test_feature_seconds(tmp_path: Path, size: int, backend: str) -> None:
    if not CELLPROFILER.is_file():
        pytest.skip(f"CellProfiler is not installed at {CELLPROFILER} (run `make setup`)")
    src = _zarr(tmp_path / "f.zarr", size)
    settings = FeatureSettings.from_config(cfg.section("features", {"backend": backend}))
    table = extract_features(src, "bench", tmp_path / "f.parquet", settings, str(CELLPROFILER), progress=False)
    row = table.iloc[0]
    print(
        f"\n[bench] features {backend} {size}x{size}: {row['Metadata_Seconds']:.1f} s per image set "
        f"({int(row['Image_Count_Cells'])} cells, {table.shape[1]} columns, {os.cpu_count()} CPUs)"
    )
    assert row["Image_Count_Cells"] > 0


_CHILD = """
import json, resource, sys, time
from pathlib import Path
import numpy as np
from cellresdm import config as cfg
from cellresdm.features import FeatureSettings, extract_features, fast, measure_field
src, out, backend, exe, fields = sys.argv[1:6]
settings = FeatureSettings.from_config(cfg.section("features", {"backend": backend}))
warm = 0.0
steps = {}
if backend == "fast":  # load (or compile) the numba kernels outside the timed run; time the measuring steps
    t0 = time.perf_counter()
    lab = np.zeros((32, 32), np.int32)
    lab[4:20, 4:20] = 1
    measure_field({"Nuclei": lab, "Cells": lab, "Cytoplasm": lab}, np.full((5, 32, 32), 0.5), settings)
    warm = time.perf_counter() - t0
    fast.measure_field = lambda labels, images, s: measure_field(labels, images, s, steps)
def cpu():
    who = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, who))
t0, c0 = time.perf_counter(), cpu()
table = extract_features(src, "bench", out, settings, exe, progress=False)
wall, cpu_s = time.perf_counter() - t0, cpu() - c0
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
assert len(table) == int(fields)
print(json.dumps({"wall": wall, "cpu": cpu_s, "warm": warm, "steps": steps,
    "cells": int(table["Image_Count_Cells"].sum()), "columns": table.shape[1], "peak_mib": max(own, kids) / 1024,
    "own_mib": own / 1024, "children_mib": kids / 1024}))
"""

#: 1080 px fields measured by each backend in one chunk (one CellProfiler process: its start-up is shared alike).
FIELDS = 4


def _zarr_fields(path: Path, size: int, n: int) -> Path:
    """``n`` synthetic U2OS fields (different seeds), percentile-normalised like the dataset, in one zarr."""
    imgs = []
    for k in range(n):
        channels, _ = make_field("U2OS", size, np.random.default_rng(1000 + k), Treatment())
        one = np.stack([channels[c].astype(np.float32) for c in layout.IF_CHANNELS])
        lo = np.percentile(one, 0.5, axis=(1, 2), keepdims=True)
        hi = np.percentile(one, 99.5, axis=(1, 2), keepdims=True)
        imgs.append(np.clip((one - lo) / (hi - lo), 0, 1).astype(np.float16))
    stack = np.stack(imgs)
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.create_array("if", shape=stack.shape, chunks=(1, *stack.shape[1:]), dtype="float16")[:] = stack
    pd.DataFrame(
        {
            "plate": ["P1"] * n,
            "cell_line": ["U2OS"] * n,
            "well": ["B02"] * n,
            "site": list(range(1, n + 1)),
            "field": [f"r02c02f{k + 1:02d}" for k in range(n)],
            "index": list(range(n)),
        }
    ).to_parquet(path / "fields.parquet")
    return path


@pytest.mark.cellprofiler
def test_fast_vs_cellprofiler_1080(tmp_path: Path) -> None:
    """FIELDS 1080 px fields, each backend in one run of extract_features on the same cores (one chunk: one
    CellProfiler process each, start-up shared the same way): seconds per field (wall time / fields: TIFFs,
    CellProfiler, measurements; also CPU seconds of both processes), peak memory (max RSS of the measuring process
    and of its CellProfiler child,
    which hold one field at a time), the speed ratio, and the fast backend's breakdown (CellProfiler's
    segmentation run and each measurement category)."""
    import json
    import subprocess
    import sys

    if not CELLPROFILER.is_file():
        pytest.skip(f"CellProfiler is not installed at {CELLPROFILER} (run `make setup`)")
    src = _zarr_fields(tmp_path / "f.zarr", 1080, FIELDS)
    results = {}
    for backend in ("fast", "cellprofiler"):
        run = subprocess.run(
            [
                sys.executable,
                "-c",
                _CHILD,
                str(src),
                str(tmp_path / f"{backend}.parquet"),
                backend,
                str(CELLPROFILER),
                str(FIELDS),
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        )
        results[backend] = r = json.loads(run.stdout.strip().splitlines()[-1])
        print(
            f"\n[bench] features {backend}, {FIELDS} fields 1080x1080 in one chunk: {r['wall'] / FIELDS:.1f} s per "
            f"field ({r['cpu'] / FIELDS:.1f} CPU s), peak memory {r['peak_mib']:.0f} MiB (Python "
            f"{r['own_mib']:.0f}, CellProfiler {r['children_mib']:.0f}), {r['cells'] / FIELDS:.0f} cells per field, "
            f"{r['columns']} columns, {os.cpu_count()} CPUs"
        )
    fast, ref = results["fast"], results["cellprofiler"]
    measuring = sum(fast["steps"].values())
    steps = ", ".join(f"{k} {v / FIELDS:.2f}" for k, v in sorted(fast["steps"].items(), key=lambda kv: -kv[1]))
    print(
        f"[bench] fast per field: CellProfiler segmentation run and TIFFs {(fast['wall'] - measuring) / FIELDS:.1f} s, "
        f"measuring {measuring / FIELDS:.1f} s ({steps}); numba kernels loaded before timing in {fast['warm']:.1f} s"
    )
    print(
        f"[bench] features fast vs cellprofiler: {ref['wall'] / fast['wall']:.1f}x faster per 1080 px field "
        f"({ref['cpu'] / fast['cpu']:.1f}x in CPU seconds, less sensitive to other jobs on the cores)"
    )
    assert fast["columns"] == ref["columns"] and fast["cells"] == ref["cells"] > 0
