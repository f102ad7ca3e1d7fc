"""benchmarks/gpu_sampling.py in its --smoke configuration on the CPU: the JSON has every figure, the ratio
comes from the measured times, the fused sampler agrees with the package's, a perturbed output is flagged."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_sampling  # noqa: E402

NAMED = ("device", "torch", "batch", "size", "precision", "variant", "compile_mode")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "gpu_sampling.json"
    document = gpu_sampling.main(["--smoke", "--device", "cpu", "--out", str(out)])
    return document, json.loads(out.read_text())


def rows(document, kind, **where):
    return [r for r in document["records"] if r["kind"] == kind and all(r[k] == v for k, v in where.items())]


def test_smoke_json_has_every_figure(smoke):
    document, written = smoke
    assert written == json.loads(json.dumps(document))  # the file holds what main returned
    settings = document["settings"]
    assert settings["batches"] == [1, 2] and settings["compile_batches"] == [2]
    for row in document["records"]:
        for key in NAMED:
            assert row[key] is not None, (key, row)
        assert row["device"].startswith("cpu") and row["torch"] == torch.__version__
    for batch in (1, 2):
        (row,) = rows(document, "cellresdm", variant="eager-fp32", batch=batch)
        assert row["status"] == "ok" and row["steps"] == row["timed_steps"] == 4
        assert row["s_per_image"] == pytest.approx(row["seconds_per_batch"] / batch)
        assert row["images_per_s"] == pytest.approx(1 / row["s_per_image"])
        assert row["first_call_s"] > 0 and row["tflops"] > 0 and row["peak_mem_gib"] is None
    for name in ("compile-fp32", "step-compile-fp32"):
        (row,) = rows(document, "cellresdm", variant=name, batch=2)
        assert row["status"] == "ok", row
        assert row["compile_backend"] == "eager" and row["whole_step"] == (name == "step-compile-fp32")
    (graphs,) = rows(document, "cellresdm", variant="cudagraphs-fp32")
    assert graphs["status"] == "skipped" and "CUDA" in graphs["error"]


def test_smoke_fused_and_compiled_samplers_agree_with_the_package(smoke):
    document, _ = smoke
    checks = rows(document, "agreement", batch=2)
    assert {r["variant"] for r in checks} == {"compile-fp32", "step-compile-fp32"}
    for row in checks:
        assert row["reference"] == "eager-fp32" and row["ok"]
        assert row["max_abs"] <= 1e-5, row  # float32 on the CPU: the fused step does the package's arithmetic
    assert document["summary"]["agreement_ok"] and document["summary"]["agreement_checks"] == 2


def test_smoke_ratio_comes_from_the_measured_times(smoke):
    document, _ = smoke
    (palette,) = rows(document, "palette")
    assert palette["status"] == "ok" and palette["extrapolated"]
    assert (palette["steps"], palette["timed_steps"]) == (gpu_sampling.SMOKE_PALETTE_STEPS, 8)
    (ratio,) = rows(document, "ratio")
    (ours,) = rows(document, "cellresdm", variant=ratio["variant"], batch=ratio["batch"])
    assert palette["variant"] == ratio["variant"] and palette["batch"] == ratio["batch"]
    assert not ours["whole_step"]  # Palette runs in a network-level variant, compared with the same one
    assert ratio["ratio"] == pytest.approx(palette["s_per_image"] / ours["s_per_image"])
    assert ratio["limit"] == gpu_sampling.SMOKE_PALETTE_STEPS / 4
    # the fastest network-level CellResDM configuration is the one compared
    network_level = [r for r in rows(document, "cellresdm", status="ok") if not r["whole_step"]]
    assert ours["images_per_s"] == max(r["images_per_s"] for r in network_level)
    summary = document["summary"]
    assert summary["ratio"] == ratio["ratio"]
    best = max(rows(document, "cellresdm", status="ok"), key=lambda r: r["images_per_s"])
    assert summary["best"] == best
    assert summary["goal_met"] == (best["images_per_s"] >= gpu_sampling.GOAL_IMAGES_PER_S)


def test_agreement_flags_a_perturbed_output():
    reference = torch.rand(2, 7, 16, 16, generator=torch.Generator().manual_seed(0))
    assert gpu_sampling.agreement(reference, reference.clone())["ok"]
    shifted = gpu_sampling.agreement(reference, reference + 0.01)  # mean 0.01 > the 2e-3 floor
    assert not shifted["ok"] and shifted["mean_abs"] == pytest.approx(0.01)
    spike = reference.clone()
    spike[0, 0, 0, 0] += 0.2
    assert not gpu_sampling.agreement(reference, spike)["ok"]
    # bf16's own difference from TF32 widens the tolerance to twice that difference
    widened = gpu_sampling.agreement(reference, spike, gap={"max_abs": 0.15, "mean_abs": 0.01})
    assert widened["ok"] and widened["tol_max"] == pytest.approx(0.3)
    nan = reference.clone()
    nan[0, 0, 0, 0] = math.nan
    assert not gpu_sampling.agreement(reference, nan)["ok"]
    assert not gpu_sampling.agreement(reference, reference[:1])["ok"]


def test_a_perturbed_compiled_sampler_fails_the_run(tmp_path, monkeypatch, capsys):
    sample = gpu_sampling.FusedResShiftSampler.sample
    monkeypatch.setattr(
        gpu_sampling.FusedResShiftSampler, "sample", lambda self, *a, **k: (sample(self, *a, **k) + 0.05).clamp(0, 1)
    )
    out = tmp_path / "perturbed.json"
    status = gpu_sampling.cli(["--smoke", "--device", "cpu", "--batches", "2", "--out", str(out)])
    assert status == 1
    assert "AGREEMENT FAILED" in capsys.readouterr().out
    document = json.loads(out.read_text())
    verdicts = {r["variant"]: r["ok"] for r in rows(document, "agreement")}
    assert verdicts == {"compile-fp32": True, "step-compile-fp32": False}
    assert not document["summary"]["agreement_ok"]


def test_budget_skips_and_records_every_configuration(tmp_path):
    document = gpu_sampling.main(["--smoke", "--device", "cpu", "--budget-s", "0", "--out", str(tmp_path / "b.json")])
    cellresdm = rows(document, "cellresdm")
    assert cellresdm and all(r["status"] == "skipped" for r in cellresdm)
    assert not rows(document, "palette") and not rows(document, "ratio")
    summary = document["summary"]
    assert summary["best"] is None and summary["ratio"] is None and not summary["goal_met"]
    assert len(summary["skipped"]) == len(cellresdm)
