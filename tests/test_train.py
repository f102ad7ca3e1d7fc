"""The shared trainer: learning, LR schedule, EMA, bit-for-bit resume, NaN handling, reruns and DDP on CPU."""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from dataclasses import fields, replace
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from cellresdm.config import load_schema, section
from cellresdm.errors import CellResDMError, ConfigError
from cellresdm.train import (
    EpochBatchSampler,
    Trainer,
    TrainSettings,
    ema_decay_at,
    load_model_weights,
    lr_at,
    step_generator,
)

# a Laplacian-like filter, symmetric under flips, so flipped inputs keep a consistent target
_KERNEL = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3) * 0.25


class ToyData(Dataset):
    """x: random 8x8 images, y: a fixed filter of x; a random flip seeded by (seed, epoch, index)."""

    def __init__(self, n: int = 22, seed: int = 0):
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(n, 1, 8, 8, generator=g)
        self.y = self.x + F.conv2d(self.x, _KERNEL, padding=1)
        self.seed = seed
        self.epoch = 0
        self.epochs_seen: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epochs_seen.append(epoch)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 1009 + int(i))
        x, y = self.x[i], self.y[i]
        if int(torch.randint(0, 2, (1,), generator=g)):
            x, y = x.flip(-1), y.flip(-1)
        return {"x": x, "y": y}


def tiny_net(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.Tanh(), nn.Conv2d(width, 1, 3, padding=1))


def toy_loss(model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(batch["x"].shape, generator=generator) * 0.05  # randomness from the step generator
    return F.mse_loss(model(batch["x"] + noise.to(batch["x"].device)), batch["y"])


class FailingLoss:
    """toy_loss, but call number ``at`` (1-based) fails: raises, or returns NaN."""

    def __init__(self, at: int, nan: bool = False):
        self.at, self.nan, self.calls = at, nan, 0

    def __call__(self, model, batch, generator):
        self.calls += 1
        loss = toy_loss(model, batch, generator)
        if self.calls == self.at:
            if self.nan:
                return loss * float("nan")
            raise RuntimeError("simulated crash")
        return loss


def settings(**overrides) -> TrainSettings:
    """The validated section ``train`` with the schema's defaults and ``overrides``, as the pipeline builds it."""
    return TrainSettings.from_config(section("train", overrides))


#: the reference run's keys (the others keep the schema's defaults)
BASE_KEYS = {
    "steps": 30,
    "batch_size": 4,
    "lr": 1e-2,
    "warmup_steps": 3,
    "min_lr_ratio": 0.1,
    "ema_decay": 0.9,
    "grad_clip": 1.0,
    "checkpoint_every": 7,
    "log_every": 5,
    "seed": 3,
}
BASE = settings(**BASE_KEYS)


def changed(**changes) -> TrainSettings:
    """BASE with ``changes``, validated like every setting."""
    return settings(**{**BASE_KEYS, **changes})


def make_trainer(out: Path, settings: TrainSettings = BASE, loss=toy_loss, net=None, data=None, **kw) -> Trainer:
    return Trainer(
        net if net is not None else tiny_net(),
        loss,
        data if data is not None else ToyData(),
        settings,
        out,
        config={"method": "toy", "width": 8},
        progress=False,
        device="cpu",
        **kw,
    )


def assert_same_weights(a: Path, b: Path) -> None:
    ca, cb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert ca["step"] == cb["step"]
    for key in ("model", "ema"):
        assert ca[key].keys() == cb[key].keys()
        for name in ca[key]:
            assert torch.equal(ca[key][name], cb[key][name]), f"{key}.{name} differs"


def csv_losses(out: Path) -> list[float]:
    table = pd.read_csv(out / "train_log.csv")
    assert table["step"].tolist() == list(range(1, len(table) + 1))
    return table["loss"].tolist()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 30-step run (5 batches per epoch: 22 items, 2 dropped each epoch)."""
    out = tmp_path_factory.mktemp("reference")
    assert make_trainer(out).train() == out / "model.pt"
    return out


def test_settings_defaults_are_the_schema_defaults():
    schema = load_schema()["properties"]["train"]["properties"]
    defaults = settings()
    assert [f.name for f in fields(TrainSettings)] == list(schema)  # every key, in the schema's order
    for name, spec in schema.items():
        value = getattr(defaults, name)
        assert (list(value) if name == "betas" else value) == spec["default"], name
        assert spec.get("description"), f"train.{name} has no description"
    assert defaults.betas == (0.9, 0.999)  # a tuple, as checkpoints have always stored it


def test_invalid_settings_fail_naming_the_key():
    with pytest.raises(ConfigError, match=r"train\.ema_decay"):
        settings(ema_decay=1.5)
    with pytest.raises(ConfigError, match=r"train\.ema_decay"):
        settings(ema_decay=1.0)  # decay 1 would freeze the EMA at the initial weights
    with pytest.raises(ConfigError, match=r"vqgan\.train\.ema_decay"):
        section("vqgan", {"train": {"ema_decay": 1.0}})  # the VQ-GAN's overrides share the limits
    with pytest.raises(ConfigError, match="train.batch_size"):
        settings(batch_size=0)
    with pytest.raises(ConfigError, match="train.amp"):
        settings(amp="fp16")
    with pytest.raises(ConfigError, match="train.betas"):
        settings(betas=[0.9, 1.5])
    # constructed without the schema, the settings are still checked by the trainer
    with pytest.raises(ConfigError, match=r"train\.ema_decay"):
        replace(BASE, ema_decay=2.0).validate()
    with pytest.raises(ConfigError, match="train.lr"):
        replace(BASE, lr=float("nan")).validate()
    with pytest.raises(ConfigError, match="train.steps"):
        TrainSettings.from_config({"lr": 1e-3})
    BASE.validate()


def test_lr_schedule_formula():
    s = settings(steps=110, lr=1e-3, warmup_steps=10, min_lr_ratio=0.05)
    assert lr_at(0, s) == pytest.approx(1e-4)
    assert lr_at(4, s) == pytest.approx(5e-4)
    assert lr_at(9, s) == pytest.approx(1e-3)  # warmup end
    assert lr_at(10, s) == pytest.approx(1e-3)  # cosine start
    assert lr_at(60, s) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5))  # halfway through the cosine
    assert lr_at(35, s) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi / 4))))
    assert lr_at(110, s) == pytest.approx(5e-5)  # end
    assert lr_at(0, settings(steps=110, lr=1e-3, warmup_steps=0)) == pytest.approx(1e-3)


def test_loss_falls_and_log(reference):
    losses = csv_losses(reference)
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    table = pd.read_csv(reference / "train_log.csv")
    assert list(table.columns) == ["step", "epoch", "loss", "lr", "grad_norm", "seconds", "samples_per_s"]
    assert table["lr"].tolist() == pytest.approx([lr_at(i, BASE) for i in range(30)])
    assert table["epoch"].tolist() == [i // 5 for i in range(30)]
    assert (table["grad_norm"] > 0).all() and (table["samples_per_s"] > 0).all()
    model = torch.load(reference / "model.pt", weights_only=True)
    assert set(model) >= {"config", "settings", "step", "model", "ema"}
    assert model["step"] == 30 and model["config"] == {"method": "toy", "width": 8}
    assert model["settings"]["batch_size"] == 4
    assert any(not torch.equal(model["model"][k], model["ema"][k]) for k in model["model"])
    checkpoint = torch.load(reference / "checkpoint.pt", weights_only=True)
    assert (checkpoint["step"], checkpoint["epoch"], checkpoint["batch_in_epoch"]) == (30, 6, 0)
    assert {"optimizer", "scheduler", "settings"} <= set(checkpoint)
    assert not [p.name for p in reference.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_load_model_weights(reference):
    net = tiny_net(width=8)
    config = load_model_weights(reference / "model.pt", net)
    assert config == {"method": "toy", "width": 8}
    saved = torch.load(reference / "model.pt", weights_only=True)
    assert all(torch.equal(v, saved["ema"][k]) for k, v in net.state_dict().items())
    load_model_weights(reference / "model.pt", net, ema=False)
    assert all(torch.equal(v, saved["model"][k]) for k, v in net.state_dict().items())
    with pytest.raises(CellResDMError, match="do not fit"):
        load_model_weights(reference / "model.pt", tiny_net(width=4))
    with pytest.raises(CellResDMError, match="missing"):
        load_model_weights(reference / "nope.pt", net)


def test_ema_matches_hand_computation(tmp_path):
    s = changed(steps=2, warmup_steps=0, ema_decay=0.5, checkpoint_every=1)
    net = tiny_net()
    w0 = {k: v.clone() for k, v in net.state_dict().items()}
    make_trainer(tmp_path, s, net=net).train(stop_after=1)
    w1 = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]
    make_trainer(tmp_path, s).train()
    final = torch.load(tmp_path / "model.pt", weights_only=True)
    d0, d1 = 1 / 10, 2 / 11  # the warmup's decays at steps 0 and 1 (below ema_decay 0.5)
    for k, w2 in final["model"].items():
        expected = d1 * (d0 * w0[k] + (1 - d0) * w1[k]) + (1 - d1) * w2
        torch.testing.assert_close(final["ema"][k], expected, rtol=0, atol=1e-6)
        assert not torch.equal(final["ema"][k], w2)


def test_resume_after_stop_is_bit_for_bit(tmp_path, reference, caplog):
    data = ToyData()
    path = make_trainer(tmp_path, data=data).train(stop_after=13)  # checkpoints at 7, 14: resumes from 7
    assert path == tmp_path / "checkpoint.pt" and not (tmp_path / "model.pt").exists()
    assert torch.load(path, weights_only=True)["step"] == 7
    assert len(pd.read_csv(tmp_path / "train_log.csv")) == 7
    data = ToyData()
    with caplog.at_level(logging.INFO):
        make_trainer(tmp_path, data=data).train()
    assert "resuming" in caplog.text and "from step 7" in caplog.text
    assert data.epochs_seen == [1, 2, 3, 4, 5]  # step 7 is batch 2 of epoch 1
    assert_same_weights(tmp_path / "model.pt", reference / "model.pt")
    assert csv_losses(tmp_path) == csv_losses(reference)


def test_crash_between_checkpoints_resumes_identically(tmp_path, reference):
    with pytest.raises(RuntimeError, match="simulated crash"):
        make_trainer(tmp_path, loss=FailingLoss(at=17)).train()  # dies in step 17: last checkpoint 14
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 14
    make_trainer(tmp_path).train()
    assert_same_weights(tmp_path / "model.pt", reference / "model.pt")
    assert csv_losses(tmp_path) == csv_losses(reference)


def test_dataloader_workers_give_the_same_run(tmp_path, reference):
    make_trainer(tmp_path, changed(num_workers=1)).train(stop_after=10)
    make_trainer(tmp_path, changed(num_workers=2)).train()  # num_workers may change on resume
    assert_same_weights(tmp_path / "model.pt", reference / "model.pt")
    assert csv_losses(tmp_path) == csv_losses(reference)


def test_nan_loss_keeps_last_checkpoint(tmp_path):
    make_trainer(tmp_path).train(stop_after=7)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    log_before = (tmp_path / "train_log.csv").read_bytes()
    with pytest.raises(CellResDMError, match=r"loss is nan at step 12 of 30"):
        make_trainer(tmp_path, loss=FailingLoss(at=5, nan=True)).train()  # resumes at 8: call 5 is step 12
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert (tmp_path / "train_log.csv").read_bytes() == log_before
    assert not (tmp_path / "model.pt").exists()


def test_completed_run_returns_immediately(reference, caplog):
    stamp = (reference / "model.pt").stat().st_mtime_ns
    t0 = time.perf_counter()
    with caplog.at_level(logging.INFO):
        assert make_trainer(reference, loss=FailingLoss(at=1)).train() == reference / "model.pt"
    assert time.perf_counter() - t0 < 1.0
    assert "complete" in caplog.text
    assert (reference / "model.pt").stat().st_mtime_ns == stamp


def test_incompatible_checkpoint_is_explained(tmp_path):
    make_trainer(tmp_path).train(stop_after=7)
    with pytest.raises(CellResDMError, match=r"batch_size 4 \(now 2\).*Delete"):
        make_trainer(tmp_path, changed(batch_size=2)).train()
    with pytest.raises(CellResDMError, match=r"seed 3 \(now 4\)"):
        make_trainer(tmp_path, changed(seed=4)).train()
    with pytest.raises(CellResDMError, match=r"model weights differ: 0.weight: \(8, 1, 3, 3\) vs \(4, 1, 3, 3\)"):
        make_trainer(tmp_path, net=tiny_net(width=4)).train()
    with pytest.raises(CellResDMError, match="dataset_size 22 \\(now 30\\)"):
        make_trainer(tmp_path, data=ToyData(n=30)).train()


def test_changed_lr_resumes_with_warning(tmp_path, caplog):
    make_trainer(tmp_path).train(stop_after=7)
    with caplog.at_level(logging.INFO):
        make_trainer(tmp_path, changed(steps=9, lr=5e-3)).train()
    assert "changed settings" in caplog.text and "lr" in caplog.text
    table = pd.read_csv(tmp_path / "train_log.csv")
    assert table["step"].tolist() == list(range(1, 10))
    assert table["lr"].iloc[-1] == pytest.approx(lr_at(8, changed(steps=9, lr=5e-3)))


def test_bad_inputs(tmp_path):
    with pytest.raises(CellResDMError, match=r"3 items, fewer than one batch of 4"):
        make_trainer(tmp_path, data=ToyData(n=3)).train()
    with pytest.raises(CellResDMError, match="scalar"):
        make_trainer(tmp_path, loss=lambda m, b, g: (m(b["x"]) - b["y"]) ** 2).train()
    assert not (tmp_path / "checkpoint.pt").exists()


def test_sampler_is_deterministic_and_sharded():
    full = list(EpochBatchSampler(22, 4, seed=1, epoch=2))
    assert len(full) == 5 and all(len(b) == 4 for b in full)
    assert full == list(EpochBatchSampler(22, 4, seed=1, epoch=2))
    assert full != list(EpochBatchSampler(22, 4, seed=1, epoch=3))
    assert list(EpochBatchSampler(22, 4, seed=1, epoch=2, start_batch=3)) == full[3:]
    shards = [list(EpochBatchSampler(22, 2, seed=1, epoch=2, rank=r, world_size=2)) for r in range(2)]
    assert [a + b for a, b in zip(*shards, strict=True)] == full
    g1, g2 = step_generator(1, 5), step_generator(1, 5)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))
    assert not torch.equal(torch.rand(3, generator=step_generator(1, 5)), torch.rand(3, generator=step_generator(1, 6)))


# -- DDP on CPU (gloo) -----------------------------------------------------------------------------------------


def _ddp_worker(rank: int, world_size: int, port: int, root: str) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    run_settings = changed(steps=6, batch_size=2, checkpoint_every=4)
    net = tiny_net()
    if rank == 1:  # a different init: DDP must broadcast rank 0's weights
        with torch.no_grad():
            for p in net.parameters():
                p.add_(1.0)
    # each rank gets its own out_dir so that any file rank 1 wrote would show
    make_trainer(Path(root) / f"rank{rank}", run_settings, net=net).train()
    torch.save({k: v.clone() for k, v in net.state_dict().items()}, Path(root) / f"weights{rank}.pt")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_two_cpu_ranks(tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this build")
    import torch.multiprocessing as mp

    context = mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 60
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("DDP workers did not finish within 60 s")
    w0 = torch.load(tmp_path / "weights0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "weights1.pt", weights_only=True)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert not (tmp_path / "rank1").exists()  # rank 1 wrote nothing
    out = tmp_path / "rank0"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "model.pt", "train_log.csv"]
    saved = torch.load(out / "model.pt", weights_only=True)
    assert saved["step"] == 6 and saved["world_size"] == 2
    assert not any(k.startswith("module.") for k in saved["model"])  # the unwrapped module's weights
    assert all(torch.equal(saved["model"][k], w0[k]) for k in w0)
    assert len(csv_losses(out)) == 6


def test_ema_decay_warms_up_so_the_average_forgets_the_initial_weights():
    assert ema_decay_at(0, 0.995) == pytest.approx(0.1)
    assert ema_decay_at(100, 0.995) == pytest.approx(101 / 110)
    assert ema_decay_at(1790, 0.995) == pytest.approx(0.995)
    assert ema_decay_at(10_000, 0.995) == 0.995
    assert ema_decay_at(5, 0.0) == 0.0
    # weight of the initial weights in the EMA after 500 steps: 8% with a constant decay, ~0 with the warmup
    assert math.prod(ema_decay_at(step, 0.995) for step in range(500)) < 1e-15 < 0.995**500
