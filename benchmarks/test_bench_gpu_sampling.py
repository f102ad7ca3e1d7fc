"""`make bench` entry of benchmarks/gpu_sampling.py: CellResDM sampling at its limit on a CUDA GPU (skipped
elsewhere), with the Palette speed ratio and the compiled-vs-eager agreement check.

Extra command-line options of the script go in ``CELLRESDM_BENCH_GPU_SAMPLING_ARGS`` (e.g. ``--palette-timed-steps
100 --budget-s 500`` to fit a short device slot); the JSON of every figure is written to
``CELLRESDM_BENCH_GPU_SAMPLING_OUT`` [gpu_sampling.json in pytest's temporary folder, its path printed].
"""

from __future__ import annotations

import os
import shlex

import pytest
import torch
from gpu_sampling import main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_gpu_sampling_at_its_limit(tmp_path):
    out = os.environ.get("CELLRESDM_BENCH_GPU_SAMPLING_OUT") or str(tmp_path / "gpu_sampling.json")
    args = ["--out", out, *shlex.split(os.environ.get("CELLRESDM_BENCH_GPU_SAMPLING_ARGS", ""))]
    print(f"\n[bench] python benchmarks/gpu_sampling.py {shlex.join(args)}")
    summary = main(args)["summary"]
    print(f"[bench] every figure: {out}")
    assert summary["best"] is not None, "no sampling configuration ran"
    assert summary["agreement_ok"], "compiled and eager outputs differ beyond the bf16 tolerance"
