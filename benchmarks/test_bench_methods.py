"""Seconds per image of every method, in one run on one machine and image size (the paper's speed comparison).

Run with `make bench` (or `pytest -s benchmarks/test_bench_methods.py`). Each entry of :func:`entries` samples
one image (batch 1, float32); the calls of its network (the denoiser of a diffusion method, the generator of a
one-pass method) are counted and timed with forward hooks. Every method is built from one config: the paper's
(``configs/cpg0000.yaml``, the baselines at their schema-default paper sizes) or the demo's (``config.yaml``).
Palette, the acceptance comparison, runs at the same backbone size as CellResDM: its UNet keeps CellResDM's
channel_mult and residual blocks per level, with 4-head attention at the lowest level and in the middle instead
of Swin blocks, and takes the width (a multiple of 8) whose parameter count is closest. The latent variant runs
on a freshly initialised VQ-GAN of the config's ``vqgan`` size (speed does not depend on the weights). The table
prints parameters, FLOPs of one forward pass (counted on the first call) and the mean per-call forward time of
every network, so the match can be judged.

A long chain (Palette and SPADE-Diffusion: 1000 steps) may be timed on fewer steps and extrapolated linearly
(per-step cost x steps; the chain's fixed cost is a few milliseconds); the table then says "extrapolated from N
timed steps". N is at least 50 (``CELLRESDM_BENCH_TIMED_STEPS``); set it to 1000 to time the whole chain.

Environment (defaults in brackets):

* ``CELLRESDM_BENCH_DEVICE``: ``cpu`` or ``cuda`` [cuda when available].
* ``CELLRESDM_BENCH_NET``: ``paper`` (CellResDM 160 channels, (1, 2, 2, 4), Swin width 192; ~114 M parameters) or
  ``demo`` (the demo config's small networks) [paper on cuda, demo on cpu, so a CPU run ends in a few minutes].
* ``CELLRESDM_BENCH_SIZE``: image side in pixels [512 on cuda, 128 on cpu].
* ``CELLRESDM_BENCH_TIMED_STEPS``: steps actually run of a 1000-step chain [1000 on cuda, 50 on cpu].
* ``CELLRESDM_BENCH_REPEATS``: sampling runs per method, the fastest counts (a shared CPU is noisy) [1 on cuda,
  3 on cpu].

To add a method, append an :class:`Entry` to :func:`entries` (a builder taking the number of steps to run).
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from call_timer import CallTimer
from torch.utils.flop_counter import FlopCounterMode

from cellresdm.config import load_config
from cellresdm.methods import build_method
from cellresdm.methods.base import Method
from cellresdm.methods.palette import Palette
from cellresdm.methods.spade_diffusion import SpadeDiffusion
from cellresdm.methods.vqgan import save_vqgan, vqgan_config
from cellresdm.nets.layers import count_parameters
from cellresdm.nets.unet import UNet, UNetConfig
from cellresdm.nets.vqgan import VQGAN
from cellresdm.sample import device_name

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"paper": REPO / "configs" / "cpg0000.yaml", "demo": REPO / "config.yaml"}
PALETTE_STEPS = 1000
MIN_TIMED_STEPS = 50


@dataclass(frozen=True)
class Entry:
    """A row of the table: ``build(steps)`` returns the method set to run ``steps`` network evaluations per
    image; ``timed_steps`` (default ``full_steps``) is how many are run, the time being scaled to ``full_steps``."""

    name: str
    full_steps: int
    build: Callable[[int], Method]
    timed_steps: int | None = None


def bench_config(net: str) -> dict[str, Any]:
    """The validated config whose method sections the bench builds (``paper`` or ``demo``)."""
    return load_config(CONFIGS[net])


def matched_palette_section(reference: torch.nn.Module, channel_mult: list[int], num_res_blocks: int) -> dict:
    """Palette config section whose UNet (same levels and blocks, 4-head attention at the lowest level and in
    the middle) has the parameter count closest to ``reference``'s; widths in multiples of 8."""
    target = count_parameters(reference)

    def params(width: int) -> int:
        config = UNetConfig(
            in_channels=10,
            model_channels=width,
            channel_mult=tuple(channel_mult),
            num_res_blocks=num_res_blocks,
            attention_levels=(-1,),
            head_channels=None,
        )
        with torch.device("meta"):  # shapes only: no memory, no init
            return count_parameters(UNet(config))

    width = min(range(8, 1025, 8), key=lambda w: abs(params(w) - target))
    return {
        "steps": PALETTE_STEPS,
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "sample_steps": PALETTE_STEPS,
        "guidance_scale": 0.0,
        "p_uncond": 0.1,
        "model_channels": width,
        "channel_mult": list(channel_mult),
        "num_res_blocks": num_res_blocks,
        "attention_levels": [-1],
        "head_channels": None,
        "dropout": 0.0,
    }


def with_untrained_vqgan(config: dict[str, Any], directory: Path) -> dict[str, Any]:
    """``config`` whose latent section points at a freshly initialised VQ-GAN of the config's ``vqgan`` size."""
    config = copy.deepcopy(config)
    path = save_vqgan(VQGAN(vqgan_config(config["vqgan"])), directory / "vqgan.pt")
    config["cellresdm_latent"]["vqgan_checkpoint"] = str(path)
    return config


def entries(config: dict[str, Any], timed_steps: int) -> list[Entry]:
    """The table's rows: every method of the paper from ``config`` (a latent section with a usable
    ``vqgan_checkpoint``), with Palette matched to CellResDM's backbone size and the DDPMs at 1000 steps."""
    pixel = config["cellresdm"]
    reference = build_method("cellresdm", config).network
    palette = matched_palette_section(reference, pixel["channel_mult"], pixel["num_res_blocks"])
    spade_diffusion = config["spade_diffusion"]
    long_chain = min(timed_steps, PALETTE_STEPS)

    def one_pass(name: str) -> Entry:
        return Entry(name, 1, lambda steps: build_method(name, config))

    return [
        Entry("cellresdm", pixel["steps"], lambda steps: build_method("cellresdm", config)),
        Entry(
            "cellresdm_latent",
            config["cellresdm_latent"]["steps"],
            lambda steps: build_method("cellresdm_latent", config),
        ),
        one_pass("unet"),
        one_pass("pix2pix"),
        one_pass("spade"),
        Entry(
            "palette",
            PALETTE_STEPS,
            lambda steps: Palette.from_config({"palette": {**palette, "sample_steps": steps}}),
            timed_steps=long_chain,
        ),
        Entry(
            "spade_diffusion",
            spade_diffusion["steps"],
            lambda steps: SpadeDiffusion.from_config({"spade_diffusion": {**spade_diffusion, "sample_steps": steps}}),
            timed_steps=min(timed_steps, spade_diffusion["steps"]),
        ),
    ]


@dataclass(frozen=True)
class Row:
    name: str
    params: int
    gflops: float  # one forward pass
    full_steps: int
    timed_steps: int
    seconds: float  # per image, scaled to full_steps
    forward: float  # mean seconds per network call inside the run

    @property
    def extrapolated(self) -> bool:
        return self.timed_steps < self.full_steps


class _WarmedUp(Exception):
    pass


def timed_network(method: Method) -> torch.nn.Module:
    """The module one sampling step calls: a one-pass method's generator, a diffusion method's denoiser."""
    return getattr(method, "generator", method.network)


def warm_up(method: Method, bf: torch.Tensor, noise: torch.Tensor) -> float:
    """Run the method's sampler up to the end of its first network call (allocations, kernel selection);
    return the GFLOPs of that call."""

    def stop(module, args, output):
        raise _WarmedUp

    handle = timed_network(method).register_forward_hook(stop)
    flops = FlopCounterMode(display=False)
    try:
        with flops:
            method.sample(bf, noise=noise)
    except _WarmedUp:
        pass
    finally:
        handle.remove()
    return flops.get_total_flops() / 1e9


def measure(entry: Entry, size: int, device: torch.device, repeats: int = 1) -> Row:
    """Sample one (size x size) image with ``entry``'s method on ``device``; the fastest of ``repeats`` runs."""
    steps = entry.timed_steps or entry.full_steps
    if steps < entry.full_steps and steps < MIN_TIMED_STEPS:
        raise ValueError(f"{entry.name}: time at least {MIN_TIMED_STEPS} steps to extrapolate, not {steps}")
    torch.manual_seed(0)
    method = entry.build(steps)
    if size % method.size_multiple:
        raise ValueError(f"{entry.name}: the image side {size} is not a multiple of {method.size_multiple}")
    method.network.to(device).eval()
    network = timed_network(method)
    bf = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    noise = torch.randn(method.noise_shape(1, size, size), generator=torch.Generator().manual_seed(1)).to(device)
    gflops = warm_up(method, bf, noise)
    timer = CallTimer(network, device)
    runs = []
    for _ in range(repeats):
        timer.sync()
        start = time.perf_counter()
        method.sample(bf, noise=noise)
        timer.sync()
        runs.append((time.perf_counter() - start, timer.seconds[-steps:]))
    assert len(timer.seconds) == repeats * steps, (entry.name, len(timer.seconds), repeats * steps)
    seconds, calls = min(runs, key=lambda run: run[0])
    return Row(
        name=entry.name,
        params=count_parameters(network),
        gflops=gflops,
        full_steps=entry.full_steps,
        timed_steps=steps,
        seconds=seconds * entry.full_steps / steps,
        forward=sum(calls) / steps,
    )


def test_seconds_per_image_of_every_method():
    device = torch.device(os.environ.get("CELLRESDM_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    net = os.environ.get("CELLRESDM_BENCH_NET", "paper" if cuda else "demo")
    size = int(os.environ.get("CELLRESDM_BENCH_SIZE", 512 if cuda else 128))
    timed = int(os.environ.get("CELLRESDM_BENCH_TIMED_STEPS", PALETTE_STEPS if cuda else MIN_TIMED_STEPS))
    repeats = int(os.environ.get("CELLRESDM_BENCH_REPEATS", 1 if cuda else 3))
    with tempfile.TemporaryDirectory() as directory:
        config = with_untrained_vqgan(bench_config(net), Path(directory))
        rows = [measure(entry, size, device, repeats) for entry in entries(config, timed)]
    ours = next(row for row in rows if row.name == "cellresdm")
    where = device_name(device)
    print(
        f"\n[bench] seconds per image, {size}x{size}, batch 1, float32, {net}-size networks, best of {repeats} "
        f"runs, on {where}"
    )
    print(
        f"{'method':<16} {'params (M)':>10} {'GFLOP/fwd':>9} {'net evals':>9} {'s/image':>9} {'images/s':>9} "
        f"{'s/forward':>10} {'/ cellresdm':>11}  note"
    )
    for row in rows:
        note = f"extrapolated from {row.timed_steps} timed steps" if row.extrapolated else "all steps timed"
        print(
            f"{row.name:<16} {row.params / 1e6:>10.2f} {row.gflops:>9.1f} {row.full_steps:>9} {row.seconds:>9.3f} "
            f"{1 / row.seconds:>9.2f} {row.forward:>10.4f} {row.seconds / ours.seconds:>10.2f}x  {note}"
        )
    palette = next(row for row in rows if row.name == "palette")
    ratio = palette.seconds / ours.seconds
    print(
        f"[bench] Palette ({palette.full_steps} steps) / CellResDM (T={ours.full_steps}): {ratio:.1f}x faster "
        f"(acceptance >= 50x: {'met' if ratio >= 50 else 'NOT met'}); Palette's network has "
        f"{palette.params / ours.params:.2f}x the parameters, {palette.gflops / ours.gflops:.2f}x the FLOPs and "
        f"{palette.forward / ours.forward:.2f}x the per-step forward time of CellResDM's"
    )
