"""Multi-process training through torchrun (gloo on CPU): every method and the VQ-GAN, and the launcher's config."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_dataset import _norm, make_plate
from tiny_methods import METHODS, tiny_method_sections

from cellresdm.config import load_config
from cellresdm.dataset import build_dataset
from cellresdm.errors import CellResDMError
from cellresdm.methods import build_method
from cellresdm.methods.vqgan import VQGANStage
from cellresdm.results import LAUNCH_CONFIG_NAME
from cellresdm.steps import VQGAN, launch_training
from cellresdm.train import MODEL_NAME, load_model_weights

REPO = Path(__file__).resolve().parents[1]
#: Every method at the smallest size that runs (as in the tiny end-to-end run), 2 steps of 1 crop per rank; the
#: latent method crops like the others and the VQ-GAN's discriminator starts at once, so both steps exercise it.
CONFIG = {"methods": METHODS, "train": {"steps": 2, "batch_size": 1, "warmup_steps": 1, "checkpoint_every": 2}}
CONFIG.update(tiny_method_sections())
CONFIG["cellresdm_latent"]["crop_size"] = 64
CONFIG["vqgan"]["disc_start"] = 1

#: A torchrun worker that trains each named model through ``cellresdm.cli`` (as the launcher's workers do) in
#: one process group, and saves the trained parameters this rank holds for the test to compare.
WORKER = """
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from cellresdm import cli
from cellresdm.train import Trainer

config_file, dataset, root, *names = sys.argv[1:]
dist.init_process_group("gloo")  # one group for every training of this launch; the trainer joins it
rank = dist.get_rank()
train = Trainer.train


def train_and_keep(self, *args, **kwargs):
    path = train(self, *args, **kwargs)
    params = {k: v.detach().clone() for k, v in self.model.named_parameters()}
    torch.save(params, Path(root) / f"{self.out_dir.name}.rank{rank}.pt")
    return path


Trainer.train = train_and_keep
for name in names:
    step = ["train-vqgan"] if name == "vqgan" else ["train", name]
    code = cli.main(["--config", config_file, *step, "--dataset", dataset, "--out-dir", str(Path(root) / name)])
    if code:
        sys.exit(code)
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict, Path]:
    """One 128-px field (4 crops of 64 px an epoch), the VQ-GAN and every method trained on 2 CPU ranks."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this build")
    root = tmp_path_factory.mktemp("ddp")
    dataset = root / "train.zarr"
    build_dataset([make_plate(root, "P1", 1, shape=(128, 128), seed=3)], dataset, _norm(), progress=False)
    config = copy.deepcopy(CONFIG)
    config["cellresdm_latent"]["vqgan_checkpoint"] = str(root / VQGAN / MODEL_NAME)
    config_file = root / "config.json"
    config_file.write_text(json.dumps(config))
    (root / "worker.py").write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [str(root / "worker.py"), str(config_file), str(dataset), str(root), VQGAN, *METHODS]
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    return root, load_config(config_file), dataset


def _env() -> dict[str, str]:
    """The environment of a torchrun child: this checkout first on the import path."""
    path = os.pathsep.join(p for p in (str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


@pytest.mark.parametrize("name", [VQGAN, *METHODS])
def test_two_ranks_train_the_same_weights(trained, name):
    root, config, _ = trained
    model = root / name / MODEL_NAME
    saved = torch.load(model, weights_only=True)
    assert saved["step"] == 2 and saved["world_size"] == 2 and saved["dataset_size"] == 4
    ranks = [torch.load(root / f"{name}.rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and ranks[0]
    for key, value in ranks[0].items():  # the parameters (buffers such as BatchNorm statistics stay per rank)
        assert torch.equal(value, ranks[1][key]), key
        assert torch.equal(value, saved["model"][key]), key  # rank 0 saved what both hold
    network = VQGANStage.from_config(config).network if name == VQGAN else build_method(name, config).network
    assert load_model_weights(model, network)["method"] == name


def test_launcher_gives_the_workers_the_whole_config(trained, tmp_path, monkeypatch):
    """``launch_training`` of a method other than the default (and of the VQ-GAN) on 2 processes repeats the
    worker's run exactly, from the validated config it writes beside the model."""
    root, config, dataset = trained
    monkeypatch.setenv("PYTHONPATH", _env()["PYTHONPATH"])
    for name in ("palette", VQGAN):
        out = tmp_path / name
        path = launch_training(name, config, str(dataset), str(out), gpus=2)
        assert path == out / MODEL_NAME
        assert load_config(out / LAUNCH_CONFIG_NAME) == config
        ours = torch.load(path, weights_only=True)["model"]
        theirs = torch.load(root / name / MODEL_NAME, weights_only=True)["model"]
        assert all(torch.equal(value, theirs[key]) for key, value in ours.items())
    with pytest.raises(CellResDMError, match="'pix2pix' is not enabled"):
        launch_training("pix2pix", {**config, "methods": ["cellresdm"]}, str(dataset), str(tmp_path / "x"), gpus=2)
