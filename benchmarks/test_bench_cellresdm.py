"""CellResDM sampling speed: seconds per image against one forward pass of the same network.

Run with `make bench`. With T steps, a sample costs T network evaluations, so the ratio of sampling time to
one forward pass should be close to T (at most T + 1: the rest is the sampler's own arithmetic).
"""

from __future__ import annotations

import time

import pytest
import torch
from call_timer import CallTimer

from cellresdm.config import validate_config
from cellresdm.methods import build_method
from cellresdm.sample import device_name


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, kernel selection)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


@pytest.mark.parametrize(("steps", "min_noise_level"), [(15, 0.04), (4, 0.2)])
@pytest.mark.parametrize("size", [256, 512])
def test_sampling_time_against_one_forward_pass(steps, min_noise_level, size):
    torch.manual_seed(0)
    config = validate_config({"cellresdm": {"steps": steps, "min_noise_level": min_noise_level}})
    method = build_method("cellresdm", config)
    network = method.network.eval()
    bf = torch.rand(1, 3, size, size)
    x = torch.randn(1, 14, size, size)
    t = torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        forward = timed(lambda: network(x, t), repeats=3)
    timer = CallTimer(network)
    sample = timed(lambda: method.sample(bf, generator=torch.Generator().manual_seed(0)), repeats=1)
    in_run = timer.seconds[-steps:]
    assert len(timer.seconds) == 2 * steps  # warm-up run + timed run: exactly T network calls each
    print(
        f"\n[bench] CellResDM demo network ({sum(p.numel() for p in network.parameters()) / 1e6:.1f} M params), "
        f"T={steps}, {size}x{size} on {device_name(torch.device('cpu'))}: sampling {sample:.2f} s/image; "
        f"one forward pass {forward:.3f} s (separate) / {sum(in_run) / steps:.3f} s (mean inside the run); "
        f"ratio {sample / forward:.1f} / {sample * steps / sum(in_run):.2f} (T = {steps})"
    )
