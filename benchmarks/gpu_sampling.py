"""GPU sampling at its limit: the paper's CellResDM network at 512 x 512, T = 15, batched, in one call.

    python benchmarks/gpu_sampling.py [--out FILE.json] [--batches 1,8,16,32] [--compile-batches 32]
                                      [--palette-timed-steps 1000] [--budget-s S] [--smoke]

On a CUDA device the network of ``configs/cpg0000.yaml`` (Swin-UNet, 160 channels, (1, 2, 2, 4), Swin width 192:
114.4 M parameters) samples ``size`` x ``size`` images through the pipeline's sampler (``method.sample``, i.e.
``ResShiftDiffusion.p_sample_loop`` calling ``method.network``) in these variants:

* ``eager-tf32`` and ``eager-bf16``: no compilation, TF32 matmuls / bf16 autocast (``cellresdm.sample.cuda_precision``),
  at every batch of ``--batches``;
* ``compile-bf16``: ``method.network`` replaced by ``torch.compile(network, mode=--compile-mode)`` (default
  ``default``; ``max-autotune-no-cudagraphs`` tunes the kernels for minutes more);
* ``cudagraphs-bf16``: ``torch.compile(network, mode="reduce-overhead")``, CUDA graphs of the network call;
* ``step-cudagraphs-bf16``: one whole sampling step (network call and ResShift posterior update, coefficients
  precomputed on the device; :class:`FusedResShiftSampler`) compiled with ``reduce-overhead``, so a step is one
  graph replay; the package's sampler is unchanged, the agreement check below compares the two.

The compiled variants run at ``--compile-batches`` (default: the largest batch), with ``dynamic=False`` (one
compilation per batch). Every timing excludes a warm-up sample (kernel selection, allocation, compilation),
whose seconds are reported as ``first_call_s``; the time is the median of ``--repeats`` samples of one batch.
A variant that fails (a compile mode this machine cannot run) is recorded with its error and the others go on.

Agreement: on the same BF input and noise, each compiled variant's output is compared with ``eager-bf16``'s on the
[0, 1] scale (max and mean absolute difference). The tolerance is the larger of a fixed floor
(:data:`TOL_MAX_FLOOR`, :data:`TOL_MEAN_FLOOR`) and :data:`TOL_FACTOR` x the difference bf16 itself makes
(``eager-bf16`` against ``eager-tf32`` on the same noise): compilation may not move the output more than bf16
rounding does. Zero-initialised layers (every residual branch and the output convolution, so a fresh network
outputs zeros) are re-initialised with PyTorch's default init first, so the outputs depend on every layer. A
failed check is printed as ``AGREEMENT FAILED`` and the CLI exits with status 1 (after writing the JSON).

Palette at equal backbone (``benchmarks/test_bench_methods.matched_palette_section``: CellResDM's levels and
blocks, the width whose parameter count is closest) samples its 1000 steps at the batch and in the variant of
CellResDM's fastest network-level variant (same precision and compile mode); ``--palette-timed-steps N`` < 1000
times a respaced chain of N steps and scales the time by 1000 / N (marked ``extrapolated``). The speed ratio is
Palette's seconds per image over CellResDM's in that same variant and batch; its limit is 1000 / T.

Every printed line and JSON record names the card, batch, precision, compile mode and torch version; the summary
says whether the goal (:data:`GOAL_IMAGES_PER_S` images per second) is met. ``--smoke`` runs the same code on tiny
networks (32 px, T = 4, Palette 40 steps timed on 8) on whatever device is there (CPU: float32, the compiled
variants through dynamo's ``eager`` backend, no CUDA graphs), so ``tests/test_gpu_sampling_bench.py`` checks the
schema and the logic without a GPU. ``--budget-s`` skips (and records) configurations that would start after that
many seconds, so one call fits a device time limit; the JSON is rewritten after every record, so a killed run
keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as a script or imported by the tests: the bench helpers live here
    sys.path.insert(0, str(HERE))

from test_bench_methods import PALETTE_STEPS, bench_config, matched_palette_section  # noqa: E402

from cellresdm import io  # noqa: E402
from cellresdm.config import validate_config  # noqa: E402
from cellresdm.methods import build_method  # noqa: E402
from cellresdm.methods.base import Method, condition_of  # noqa: E402
from cellresdm.methods.cellresdm_pixel import CellResDM  # noqa: E402
from cellresdm.methods.palette import Palette  # noqa: E402
from cellresdm.nets.layers import count_parameters  # noqa: E402
from cellresdm.sample import cuda_precision, device_name  # noqa: E402

GOAL_IMAGES_PER_S = 10.0
TOL_MAX_FLOOR = 0.05  # [0, 1] scale
TOL_MEAN_FLOOR = 2e-3
TOL_FACTOR = 2.0
SMOKE_SECTION = {"steps": 4, "min_noise_level": 0.2, "model_channels": 8, "channel_mult": [1, 2]}
SMOKE_PALETTE_STEPS = 40
SMOKE_PALETTE_TIMED = 8


@dataclass(frozen=True)
class Variant:
    """How a sample is computed: ``precision`` (``cuda_precision``: tf32, bf16; fp32 on the CPU), ``compile_mode``
    (None: eager; a ``torch.compile`` mode), ``backend`` of torch.compile, ``whole_step``: compile one sampling
    step (network and posterior) instead of the network alone."""

    name: str
    precision: str
    compile_mode: str | None = None
    backend: str = "inductor"
    whole_step: bool = False

    @property
    def cudagraphs(self) -> bool:
        return self.compile_mode == "reduce-overhead"

    @property
    def compiled(self) -> bool:
        return self.compile_mode is not None


def cuda_variants(compile_mode: str) -> tuple[list[Variant], list[Variant]]:
    """(eager, compiled) variants on a CUDA device."""
    eager = [Variant("eager-tf32", "tf32"), Variant("eager-bf16", "bf16")]
    compiled = [
        Variant("compile-bf16", "bf16", compile_mode),
        Variant("cudagraphs-bf16", "bf16", "reduce-overhead"),
        Variant("step-cudagraphs-bf16", "bf16", "reduce-overhead", whole_step=True),
    ]
    return eager, compiled


def cpu_variants() -> tuple[list[Variant], list[Variant]]:
    """(eager, compiled) variants on the CPU (float32 only; dynamo tracing with the eager backend: no code
    generation, so the compile path runs in seconds; CUDA graphs are recorded as skipped)."""
    eager = [Variant("eager-fp32", "fp32")]
    compiled = [
        Variant("compile-fp32", "fp32", "default", backend="eager"),
        Variant("cudagraphs-fp32", "fp32", "reduce-overhead"),
        Variant("step-compile-fp32", "fp32", "default", backend="eager", whole_step=True),
    ]
    return eager, compiled


# ---------------------------------------------------------------------------------------------------------------
# networks


def activate(network: nn.Module) -> int:
    """Re-initialise (PyTorch's default init, from the global RNG) every convolution or linear layer whose weight
    is all zeros, so no branch is switched off; returns how many were."""
    count = 0
    for module in network.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and not module.weight.any():
            module.reset_parameters()
            count += 1
    return count


def cellresdm_method(smoke: bool) -> CellResDM:
    """The paper-size CellResDM (``configs/cpg0000.yaml``) or, with ``smoke``, a tiny one; weights seeded."""
    torch.manual_seed(0)
    config = validate_config({"cellresdm": SMOKE_SECTION}) if smoke else bench_config("paper")
    method = build_method("cellresdm", config)
    activate(method.network)
    return method


def palette_method(reference: nn.Module, section: dict[str, Any], full_steps: int, timed_steps: int) -> Palette:
    """Palette matched to ``reference``'s parameter count, trained on ``full_steps``, sampling ``timed_steps``."""
    torch.manual_seed(1)
    palette = matched_palette_section(reference, section["channel_mult"], section["num_res_blocks"])
    palette = {**palette, "steps": full_steps, "sample_steps": timed_steps}
    method = Palette.from_config({"palette": palette})
    activate(method.network)
    return method


# ---------------------------------------------------------------------------------------------------------------
# samplers


class _MarkedStep(nn.Module):
    """Calls ``module`` after ``torch.compiler.cudagraph_mark_step_begin()``: each network call of the sampling
    loop is a new CUDA-graph step (the previous output has been consumed)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args: Tensor) -> Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return self.module(*args)


class FusedResShiftSampler:
    """``ResShiftDiffusion.p_sample_loop`` with each step's coefficients precomputed as device tensors, so that a
    whole step, ``x_{t-1} = c_xt x_t + c_x0 clamp(net(cat(s x_t, y0), t)) + exp(logvar / 2) noise``, is one
    function of tensors that ``torch.compile`` can capture (and CUDA-graph) once for all steps. Same arithmetic
    as the package's sampler (float32 coefficients, the last step adds zero noise)."""

    def __init__(self, method: CellResDM, batch: int, device: torch.device):
        diffusion = method.diffusion
        schedule = diffusion.schedule
        self.steps = diffusion.num_timesteps
        self.prior = diffusion.prior_sample

        def per_step(values) -> list[Tensor]:
            table = torch.tensor(values, dtype=torch.float64)
            return [table[i].to(device=device, dtype=torch.float32).reshape(1, 1, 1, 1) for i in range(self.steps)]

        self.scale = per_step(schedule.input_scale)
        self.c_xt = per_step(schedule.posterior_mean_coef_xt)
        self.c_x0 = per_step(schedule.posterior_mean_coef_x0)
        self.log_var = per_step(schedule.posterior_log_variance_clipped)
        self.t = [torch.full((batch,), i, dtype=torch.long, device=device) for i in range(self.steps)]

    @staticmethod
    def step(
        network: nn.Module,
        x: Tensor,
        y0: Tensor,
        t: Tensor,
        scale: Tensor,
        c_xt: Tensor,
        c_x0: Tensor,
        log_var: Tensor,
        noise: Tensor,
    ) -> Tensor:
        """One reverse step: (B, 7, H, W) x_t -> x_{t-1} (``noise`` zeros at the last step)."""
        pred_x0 = network(torch.cat([x * scale, y0], dim=1), t).clamp(-1.0, 1.0)
        mean = c_xt * x + c_x0 * pred_x0
        return mean + torch.exp(0.5 * log_var) * noise

    def sample(self, step: Callable[..., Tensor], bf: Tensor, noise: Tensor, clone: bool) -> Tensor:
        """(B, 7, H, W) in [0, 1] from ``bf`` (B, 3, H, W) and ``noise`` (T, B, 7, H, W), as ``method.sample``;
        ``clone`` copies each step's output out of the CUDA graph's memory before the next replay."""
        with torch.no_grad():
            y0 = condition_of(bf)
            x = self.prior(y0, noise[self.steps - 1])
            zeros = torch.zeros_like(x)
            for i in range(self.steps - 1, -1, -1):
                if clone:
                    torch.compiler.cudagraph_mark_step_begin()
                args = (self.t[i], self.scale[i], self.c_xt[i], self.c_x0[i], self.log_var[i])
                x = step(x, y0, *args, noise[i - 1] if i > 0 else zeros)
                if clone:
                    x = x.clone()
            return ((x + 1) / 2).clamp(0, 1)


@contextlib.contextmanager
def prepared(method: Method, variant: Variant, batch: int, device: torch.device) -> Iterator[Callable]:
    """A function ``(bf, noise) -> samples`` computing ``variant`` with ``method`` (its network temporarily
    compiled); dynamo's caches are reset on entry so every variant compiles afresh."""
    network = method.network
    if variant.compiled:
        torch._dynamo.reset()
    compile_kwargs: dict[str, Any] = {"backend": variant.backend, "dynamic": False}
    if variant.backend == "inductor":
        compile_kwargs["mode"] = variant.compile_mode
    try:
        if variant.whole_step:
            if not isinstance(method, CellResDM):
                raise TypeError(f"a whole-step variant needs CellResDM, not {method.name}")
            fused = FusedResShiftSampler(method, batch, device)

            def eager_step(*args: Tensor) -> Tensor:
                return fused.step(network, *args)

            step = torch.compile(eager_step, **compile_kwargs)
            yield lambda bf, noise: fused.sample(step, bf, noise, clone=variant.cudagraphs)
        else:
            if variant.compiled:
                compiled = torch.compile(network, **compile_kwargs)
                method.network = _MarkedStep(compiled) if variant.cudagraphs else compiled
            yield lambda bf, noise: method.sample(bf, noise=noise, generator=sample_generator(method, device))
    finally:
        method.network = network


def sample_generator(method: Method, device: torch.device) -> torch.Generator | None:
    """The per-step noise generator of a sampler that draws it (Palette), freshly seeded; None for CellResDM, whose
    ``noise`` argument holds every step's noise."""
    return torch.Generator(device).manual_seed(2) if isinstance(method, Palette) else None


@contextlib.contextmanager
def short_chain(method: Method) -> Iterator[None]:
    """Within the block a Palette samples a 2-step respaced chain (same network and shapes, so the same kernels
    and compiled graphs): its warm-up does not cost a whole 1000-step chain. Other methods are unchanged."""
    if not isinstance(method, Palette):
        yield
        return
    saved = method.sampling_diffusion
    method.sampling_diffusion = method.diffusion.respace(2)
    try:
        yield
    finally:
        method.sampling_diffusion = saved


# ---------------------------------------------------------------------------------------------------------------
# measurement


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def inputs(method: Method, batch: int, size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """BF (B, 3, size, size) in [0, 1] and the sampler's noise, the same for every variant of one batch."""
    g = torch.Generator().manual_seed(batch)
    bf = torch.rand(batch, 3, size, size, generator=g)
    noise = torch.randn(method.noise_shape(batch, size, size), generator=g)
    return bf.to(device), noise.to(device)


def gflops_per_forward(method: Method, size: int, device: torch.device) -> float:
    """GFLOPs of one network call on one (size x size) image (counted, not timed)."""
    network = method.network
    x = torch.randn(1, network.config.in_channels, size, size, device=device)
    t = torch.zeros(1, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        network(x, t)
    return counter.get_total_flops() / 1e9


def agreement(reference: Tensor, candidate: Tensor, gap: dict[str, float] | None = None) -> dict[str, Any]:
    """Max and mean absolute difference of two (B, 7, H, W) outputs on the [0, 1] scale, against the tolerance:
    the larger of the fixed floors and TOL_FACTOR x ``gap`` (bf16's own difference from TF32: keys max_abs,
    mean_abs; None where there is none, e.g. on the CPU). ``ok`` False when either difference exceeds it or the
    shapes differ or a value is not finite."""
    tol_max, tol_mean = TOL_MAX_FLOOR, TOL_MEAN_FLOOR
    if gap is not None:
        tol_max = max(tol_max, TOL_FACTOR * gap["max_abs"])
        tol_mean = max(tol_mean, TOL_FACTOR * gap["mean_abs"])
    if reference.shape != candidate.shape:
        return {"max_abs": math.inf, "mean_abs": math.inf, "tol_max": tol_max, "tol_mean": tol_mean, "ok": False}
    diff = (reference.double() - candidate.double()).abs()
    max_abs, mean_abs = float(diff.max()), float(diff.mean())
    ok = math.isfinite(max_abs) and max_abs <= tol_max and mean_abs <= tol_mean
    return {"max_abs": max_abs, "mean_abs": mean_abs, "tol_max": tol_max, "tol_mean": tol_mean, "ok": ok}


@dataclass
class Context:
    """What every record names, and the run's bookkeeping."""

    device: torch.device
    card: str
    torch_version: str
    size: int
    repeats: int
    budget_s: float | None
    out: Path | None
    start: float
    records: list[dict[str, Any]]
    settings: dict[str, Any]

    def over_budget(self) -> bool:
        return self.budget_s is not None and time.perf_counter() - self.start > self.budget_s

    def record(self, kind: str, variant: Variant | None, batch: int | None, **fields: Any) -> dict[str, Any]:
        row = {
            "kind": kind,
            "device": self.card,
            "torch": self.torch_version,
            "batch": batch,
            "size": self.size,
            "precision": variant.precision if variant else None,
            "variant": variant.name if variant else None,
            "compile_mode": (variant.compile_mode or "eager") if variant else None,
            "compile_backend": variant.backend if variant and variant.compiled else None,
            "whole_step": variant.whole_step if variant else None,
            **fields,
        }
        self.records.append(row)
        self.write()
        return row

    def document(self, summary: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "benchmark": "gpu_sampling",
            "device": self.card,
            "torch": self.torch_version,
            "settings": self.settings,
            "records": self.records,
            "summary": summary,
        }

    def write(self, summary: dict[str, Any] | None = None) -> None:
        if self.out is not None:
            io.write_text(self.out, json.dumps(self.document(summary), indent=2) + "\n")


def where(ctx: Context, variant: Variant, batch: int) -> str:
    mode = variant.compile_mode or "eager"
    step = ", whole step" if variant.whole_step else ""
    return f"{ctx.card}, torch {ctx.torch_version}, batch {batch}, {variant.precision}, {mode}{step}"


def measure(
    ctx: Context,
    kind: str,
    method: Method,
    variant: Variant,
    batch: int,
    steps: int,
    full_steps: int,
    gflops: float,
    repeats: int | None = None,
) -> tuple[dict[str, Any], Tensor | None]:
    """Time ``method`` sampling one batch in ``variant``: the warm-up sample (compilation included; a 2-step chain
    for Palette), then the median of ``repeats`` (default ``ctx.repeats``) samples; seconds per image are scaled
    from ``steps`` to ``full_steps``. Returns the record and the output (on the CPU) of the last sample (None when
    it failed or was skipped)."""
    repeats = repeats or ctx.repeats
    common = {"steps": full_steps, "timed_steps": steps, "extrapolated": steps < full_steps}
    skip = None
    if variant.cudagraphs and ctx.device.type != "cuda":
        skip = "CUDA graphs need a CUDA device"
    elif ctx.over_budget():
        skip = f"time budget of {ctx.budget_s:g} s spent"
    if skip is not None:
        print(f"[gpu-sampling] {kind} skipped ({where(ctx, variant, batch)}): {skip}", flush=True)
        return ctx.record(kind, variant, batch, status="skipped", error=skip, **common), None
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(ctx.device)
    bf, noise = inputs(method, batch, ctx.size, ctx.device)
    try:
        with prepared(method, variant, batch, ctx.device) as run, cuda_precision(ctx.device, variant.precision):
            with short_chain(method):
                first, _ = timed(lambda: run(bf, noise), ctx.device)
            runs = [timed(lambda: run(bf, noise), ctx.device) for _ in range(repeats)]
    except Exception as exc:  # a compile mode this machine cannot run: record it and go on
        message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        print(f"[gpu-sampling] {kind} FAILED ({where(ctx, variant, batch)}): {message}", flush=True)
        return ctx.record(kind, variant, batch, status="failed", error=message, **common), None
    seconds = statistics.median(t for t, _ in runs) * full_steps / steps
    per_image = seconds / batch
    peak = torch.cuda.max_memory_allocated(ctx.device) / 2**30 if ctx.device.type == "cuda" else None
    row = ctx.record(
        kind,
        variant,
        batch,
        status="ok",
        error=None,
        **common,
        first_call_s=first,
        seconds_per_batch=seconds,
        s_per_image=per_image,
        images_per_s=1 / per_image,
        tflops=gflops * full_steps / per_image / 1e3,
        peak_mem_gib=peak,
        repeats=repeats,
    )
    extrapolated = f" (from {steps} timed steps)" if steps < full_steps else ""
    memory = f", peak {peak:.1f} GiB" if peak is not None else ""
    print(
        f"[gpu-sampling] {kind} T={full_steps}{extrapolated} ({where(ctx, variant, batch)}): "
        f"{row['images_per_s']:.2f} images/s, {per_image:.4f} s/image, {row['tflops']:.1f} TFLOP/s, "
        f"warm-up/compile {first:.1f} s{memory}",
        flush=True,
    )
    return row, runs[-1][1].float().cpu()


def check_agreement(
    ctx: Context, variant: Variant, batch: int, reference: Tensor, candidate: Tensor, gap: dict | None, against: str
) -> dict[str, Any]:
    result = agreement(reference, candidate, gap)
    row = ctx.record("agreement", variant, batch, reference=against, **result)
    verdict = "ok" if result["ok"] else "AGREEMENT FAILED"
    print(
        f"[gpu-sampling] agreement {variant.name} vs {against} ({where(ctx, variant, batch)}): max |diff| "
        f"{result['max_abs']:.2e} (tol {result['tol_max']:.2e}), mean {result['mean_abs']:.2e} "
        f"(tol {result['tol_mean']:.2e}): {verdict}",
        flush=True,
    )
    return row


def parse_batches(text: str) -> list[int]:
    batches = [int(b) for b in text.split(",") if b.strip()]
    if not batches or min(batches) < 1:
        raise argparse.ArgumentTypeError(f"batches must be positive integers, got {text!r}")
    return batches


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON file of every record (rewritten as it goes)")
    parser.add_argument("--batches", type=parse_batches, default=None, help="eager batches [1,8,16,32; smoke 1,2]")
    parser.add_argument("--compile-batches", type=parse_batches, default=None, help="[the largest batch]")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode of compile-bf16 [default]")
    parser.add_argument("--size", type=int, default=None, help="image side [512; smoke 32]")
    parser.add_argument("--repeats", type=int, default=None, help="timed samples per configuration [2; smoke 1]")
    parser.add_argument("--palette-timed-steps", type=int, default=None, help="[1000; smoke 8]")
    parser.add_argument("--budget-s", type=float, default=None, help="start no configuration after this many s")
    parser.add_argument("--device", default=None, help="[cuda when available, else cpu]")
    parser.add_argument("--smoke", action="store_true", help="tiny networks, any device: checks the script")
    return parser.parse_args(argv)


def best_of(rows: list[dict[str, Any]], **where: Any) -> dict[str, Any] | None:
    ok = [r for r in rows if r["status"] == "ok" and all(r[k] == v for k, v in where.items())]
    return max(ok, key=lambda r: r["images_per_s"]) if ok else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON document (also written to ``--out``)."""
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    smoke = args.smoke
    batches = args.batches or ([1, 2] if smoke else [1, 8, 16, 32])
    compile_batches = args.compile_batches or [max(batches)]
    size = args.size or (32 if smoke else 512)
    repeats = args.repeats or (1 if smoke else 2)
    palette_full = SMOKE_PALETTE_STEPS if smoke else PALETTE_STEPS
    palette_timed = min(args.palette_timed_steps or (SMOKE_PALETTE_TIMED if smoke else PALETTE_STEPS), palette_full)
    eager, compiled = cuda_variants(args.compile_mode) if device.type == "cuda" else cpu_variants()

    method = cellresdm_method(smoke)
    method.network.to(device).eval()
    section = method.config()["cellresdm"]
    steps = method.sampling_steps
    if size % method.size_multiple:
        raise SystemExit(f"--size {size} is not a multiple of {method.size_multiple}")
    settings = {
        "smoke": smoke,
        "size": size,
        "batches": batches,
        "compile_batches": compile_batches,
        "repeats": repeats,
        "cellresdm_steps": steps,
        "cellresdm_params": count_parameters(method.network),
        "cellresdm_section": section,
        "palette_steps": palette_full,
        "palette_timed_steps": palette_timed,
        "goal_images_per_s": GOAL_IMAGES_PER_S,
        "tolerance": {"max_floor": TOL_MAX_FLOOR, "mean_floor": TOL_MEAN_FLOOR, "factor_of_bf16_gap": TOL_FACTOR},
        "variants": [asdict(v) for v in eager + compiled],
    }
    ctx = Context(
        device=device,
        card=device_name(device),
        torch_version=torch.__version__,
        size=size,
        repeats=repeats,
        budget_s=args.budget_s,
        out=args.out,
        start=time.perf_counter(),
        records=[],
        settings=settings,
    )
    gflops = gflops_per_forward(method, size, device)
    settings["cellresdm_gflops_per_forward"] = gflops
    print(
        f"[gpu-sampling] CellResDM {settings['cellresdm_params'] / 1e6:.1f} M parameters, T={steps}, {size} x {size}, "
        f"{gflops:.1f} GFLOP per forward, on {ctx.card}, torch {ctx.torch_version}",
        flush=True,
    )

    outputs: dict[tuple[str, int], Tensor] = {}
    rows = []
    for batch in batches + [b for b in compile_batches if b not in batches]:  # eager references of every batch
        for variant in eager:
            row, out = measure(ctx, "cellresdm", method, variant, batch, steps, steps, gflops)
            rows.append(row)
            if out is not None and batch in compile_batches:
                outputs[variant.name, batch] = out
    eager_bf16 = next(v for v in eager if v.precision == "bf16") if device.type == "cuda" else eager[0]
    eager_tf32 = next((v for v in eager if v.precision == "tf32"), None)
    agreements = []
    for batch in compile_batches:
        reference = outputs.get((eager_bf16.name, batch))
        gap = None
        tf32 = outputs.get((eager_tf32.name, batch)) if eager_tf32 else None
        if reference is not None and tf32 is not None:
            gap = agreement(tf32, reference)
            ctx.record("precision_gap", eager_bf16, batch, reference=eager_tf32.name, **gap)
            print(
                f"[gpu-sampling] bf16 vs tf32, eager ({where(ctx, eager_bf16, batch)}): max |diff| "
                f"{gap['max_abs']:.2e}, mean {gap['mean_abs']:.2e}",
                flush=True,
            )
        for variant in compiled:
            row, out = measure(ctx, "cellresdm", method, variant, batch, steps, steps, gflops)
            rows.append(row)
            if out is not None and reference is not None:
                agreements.append(check_agreement(ctx, variant, batch, reference, out, gap, eager_bf16.name))

    # Palette at equal backbone, at the batch and in the variant of CellResDM's fastest network-level variant
    best = best_of(rows)
    network_level = best_of(rows, whole_step=False)
    palette_row = ratio = None
    if network_level is not None:
        variant = next(v for v in eager + compiled if v.name == network_level["variant"])
        batch = network_level["batch"]
        palette = palette_method(method.network, section, palette_full, palette_timed)
        palette.network.to(device).eval()
        palette_gflops = gflops_per_forward(palette, size, device)
        palette_row, _ = measure(
            ctx, "palette", palette, variant, batch, palette_timed, palette_full, palette_gflops, repeats=1
        )
        palette_row.update(params=count_parameters(palette.network), gflops_per_forward=palette_gflops)
        ctx.write()
        if palette_row["status"] == "ok":
            value = palette_row["s_per_image"] / network_level["s_per_image"]
            ratio = ctx.record(
                "ratio",
                variant,
                batch,
                palette_s_per_image=palette_row["s_per_image"],
                cellresdm_s_per_image=network_level["s_per_image"],
                ratio=value,
                limit=palette_full / steps,
                palette_params=palette_row["params"],
                cellresdm_params=settings["cellresdm_params"],
                palette_extrapolated=palette_row["extrapolated"],
            )
            print(
                f"[gpu-sampling] Palette ({palette_full} steps, {palette_row['params'] / 1e6:.1f} M parameters) / "
                f"CellResDM (T={steps}) per image ({where(ctx, variant, batch)}): {value:.1f}x "
                f"(limit {palette_full}/{steps} = {palette_full / steps:.1f}x)",
                flush=True,
            )

    agreement_ok = all(a["ok"] for a in agreements)
    summary = {
        "best": best,
        "goal_images_per_s": GOAL_IMAGES_PER_S,
        "goal_met": bool(best and best["images_per_s"] >= GOAL_IMAGES_PER_S),
        "ratio": ratio["ratio"] if ratio else None,
        "ratio_limit": palette_full / steps,
        "agreement_checks": len(agreements),
        "agreement_ok": agreement_ok,
        "failed": [
            f"{r['variant']} batch {r['batch']}: {r['error']}" for r in ctx.records if r.get("status") == "failed"
        ],
        "skipped": [
            f"{r['variant']} batch {r['batch']}: {r['error']}" for r in ctx.records if r.get("status") == "skipped"
        ],
    }
    ctx.write(summary)
    if best is None:
        print(f"[gpu-sampling] no configuration ran on {ctx.card}", flush=True)
    else:
        label = where(ctx, variant_of(best), best["batch"])
        print(
            f"[gpu-sampling] best: {best['images_per_s']:.2f} images/s ({label}); "
            f"goal {GOAL_IMAGES_PER_S:g} images/s {'MET' if summary['goal_met'] else 'NOT met'}",
            flush=True,
        )
    if not agreement_ok:
        print(
            "[gpu-sampling] AGREEMENT FAILED: compiled and eager outputs differ beyond the bf16 tolerance", flush=True
        )
    return ctx.document(summary)


def variant_of(row: dict[str, Any]) -> Variant:
    mode = None if row["compile_mode"] == "eager" else row["compile_mode"]
    return Variant(row["variant"], row["precision"], mode, row["compile_backend"] or "inductor", row["whole_step"])


def cli(argv: list[str] | None = None) -> int:
    """The command line: 0, or 1 when an agreement check failed (the JSON is written either way)."""
    return 0 if main(argv)["summary"]["agreement_ok"] else 1


if __name__ == "__main__":
    sys.exit(cli())
