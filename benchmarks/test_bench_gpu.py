"""Paper-size CellResDM on a GPU: training throughput with bf16 autocast and whole-field sampling speed.

Run with `make bench` on a machine with CUDA (skipped elsewhere). The network is the paper's Swin-UNet
(model_channels 160, channel_mult [1, 2, 2, 4], swin_embed_dim 192: 114.4 M parameters); sampling is timed at the
paper's 512 x 512 input and on a whole 1080 x 1080 field (tiled), in float32, TF32 and bf16 autocast
(CELLRESDM_BENCH_PRECISIONS picks a subset). `gpu_sampling.py` (wrapped by test_bench_gpu_sampling.py) measures
batched, bf16 and compiled sampling and the speed ratio to Palette.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from cellresdm.config import section, validate_config
from cellresdm.methods import build_method
from cellresdm.sample import SampleSettings, cuda_precision, device_name, predict_field
from cellresdm.train import Trainer, TrainSettings

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PAPER_NET = {"model_channels": 160, "channel_mult": [1, 2, 2, 4], "swin_embed_dim": 192, "crop_size": 256}


def paper_method(steps: int = 15, min_noise_level: float = 0.04):
    torch.manual_seed(0)
    section = {**PAPER_NET, "steps": steps, "min_noise_level": min_noise_level}
    return build_method("cellresdm", validate_config({"cellresdm": section}))


def cuda_gen() -> torch.Generator:
    return torch.Generator(device="cuda").manual_seed(0)


def cuda_timed(fn, repeats: int) -> float:
    fn()  # warm-up: cuDNN/cuBLAS kernel selection and allocations
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


class RandomFields(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int):
        g = torch.Generator().manual_seed(0)
        self.bf = torch.rand(n, 3, size, size, generator=g)
        self.fluo = torch.rand(n, 5, size, size, generator=g)
        self.boundaries = (torch.rand(n, 2, size, size, generator=g) > 0.8).float()

    def __len__(self) -> int:
        return len(self.bf)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"bf": self.bf[i], "if": self.fluo[i], "boundaries": self.boundaries[i]}


def test_training_throughput_bf16(tmp_path):
    method = paper_method()
    settings = TrainSettings.from_config(
        section(
            "train",
            {"steps": 30, "batch_size": 8, "lr": 1e-4, "warmup_steps": 5, "checkpoint_every": 30, "amp": "bf16"},
        )
    )
    Trainer(method.network, method.loss, RandomFields(64, 256), settings, tmp_path, progress=False).train()
    import pandas as pd

    log = pd.read_csv(tmp_path / "train_log.csv")
    steady = log.iloc[10:]
    print(
        f"\n[bench] CellResDM paper network ({sum(p.numel() for p in method.network.parameters()) / 1e6:.1f} M "
        f"params) training on {device_name(torch.device('cuda'))}, bf16 autocast, batch 8 x 256 px: "
        f"{steady['seconds'].mean():.3f} s/step, {steady['samples_per_s'].mean():.1f} crops/s; "
        f"loss {log['loss'].iloc[:5].mean():.3f} -> {log['loss'].iloc[-5:].mean():.3f}"
    )
    assert log["loss"].notna().all()


def time_sampling(method, mode: str) -> tuple[float, float, float, float]:
    """Seconds of: one forward pass at 512 px, one 512 px sample, per image in a batch of 8, a tiled 1080 field."""
    device = torch.device("cuda")
    network = method.network
    with cuda_precision(device, mode):
        bf = torch.rand(1, 3, 512, 512, device=device)
        x = torch.randn(1, 14, 512, 512, device=device)
        t = torch.zeros(1, dtype=torch.long, device=device)
        with torch.no_grad():
            forward = cuda_timed(lambda: network(x, t), repeats=5)
        sample = cuda_timed(lambda: method.sample(bf, generator=cuda_gen()), repeats=2)
        batch8 = torch.rand(8, 3, 512, 512, device=device)
        per_image = cuda_timed(lambda: method.sample(batch8, generator=cuda_gen()), repeats=2) / 8
        field = torch.rand(3, 1080, 1080)
        settings = SampleSettings.from_config(
            section("sample", {"tile": 512, "overlap": 64, "batch_size": 4, "precision": mode})
        )
        whole = cuda_timed(
            lambda: predict_field(method, field, settings, torch.Generator().manual_seed(0), device), repeats=1
        )
    return forward, sample, per_image, whole


@pytest.mark.parametrize(("steps", "min_noise_level"), [(15, 0.04), (4, 0.2)])
def test_sampling_speed_paper_network(steps, min_noise_level):
    method = paper_method(steps, min_noise_level)
    method.network.cuda().eval()
    print(f"\n[bench] CellResDM paper network, T={steps}, on {device_name(torch.device('cuda'))}")
    print("  precision  forward 512px (s)  sample 512px (s/img)  batch 8 (s/img)  whole 1080 field tiled (s)")
    for mode in os.environ.get("CELLRESDM_BENCH_PRECISIONS", "fp32,tf32,bf16").split(","):
        forward, sample, per_image, whole = time_sampling(method, mode)
        print(f"  {mode:9s}  {forward:17.4f}  {sample:20.3f}  {per_image:15.3f}  {whole:26.3f}")
        assert sample / forward <= steps + 1.5  # T network calls plus little else
