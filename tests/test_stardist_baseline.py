"""StarDist nuclei baselines: training (learning, resume), the instances store, adapters and bad input."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import zarr

from cellresdm import layout, synth
from cellresdm import stardist_baseline as sb
from cellresdm.config import section
from cellresdm.errors import CellResDMError, ConfigError
from cellresdm.stardist_baseline import StarDistSettings, load_pairs, predict_stardist, train_stardist

REPO = Path(__file__).resolve().parents[1]
SIZE = 128
#: Small enough for one core: a 2-level UNet on 64 px patches learns the synthetic DNA nuclei in 160 steps.
SETTINGS = StarDistSettings.from_config(
    section(
        "stardist",
        {
            "epochs": 4,
            "steps_per_epoch": 40,
            "patch_size": 64,
            "batch_size": 4,
            "learning_rate": 1e-3,
            "unet_depth": 2,
            "unet_n_filter_base": 16,
        },
    ),
    "stardist_if",
)


def write_split(path: Path, n: int, seed: int, size: int = SIZE, channels: dict[str, int] | None = None) -> Path:
    """A dataset split as build_dataset writes it: synthetic A549 fields, each channel scaled to [0, 1]
    between its 0.5 and 99.5 percentiles, float16; ``channels`` overrides the channel count of an array
    (0 leaves it out)."""
    channels = {"bf": 3, "if": 5, "labels": 2, **(channels or {})}
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    arrays = {
        name: root.create_array(
            name, shape=(n, c, size, size), chunks=(1, c, size, size), dtype="uint16" if name == "labels" else "float16"
        )
        for name, c in channels.items()
        if c
    }
    for i in range(n):
        images, labels = synth.make_field("A549", size, np.random.default_rng([seed, i]), synth.Treatment())
        stack = []
        for ch in layout.ALL_CHANNELS:
            img = images[ch].astype(np.float32)
            lo, hi = np.percentile(img, [0.5, 99.5])
            stack.append(np.clip((img - lo) / max(hi - lo, 1.0), 0.0, 1.0))
        stack = np.stack(stack).astype(np.float16)
        values = {"if": stack[:5], "bf": stack[5:], "labels": labels}
        for name, arr in arrays.items():
            arr[i] = values[name][: arr.shape[1]]
    pd.DataFrame({"field": [f"r02c02f{i + 1:02d}" for i in range(n)], "index": np.arange(n)}).to_parquet(
        path / "fields.parquet", index=False
    )
    return path


class _Interrupted(Exception):
    """Stands in for a killed job."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One model for the whole file, trained in two runs: interrupted after epoch 2, then resumed (through the
    Snakemake adapter) to epoch 4."""
    root = tmp_path_factory.mktemp("stardist")
    splits = {
        name: write_split(root / f"{name}.zarr", n, seed)
        for name, n, seed in (("train", 6, 1), ("val", 2, 2), ("test", 2, 3))
    }
    model_dir = root / "models" / "stardist_if"
    original = sb._make_epoch_callback

    def interrupting(*args, **kwargs):
        callback = original(*args, **kwargs)
        inner = callback.on_epoch_end

        def on_epoch_end(epoch, logs=None):
            inner(epoch, logs)
            if epoch == 1:
                raise _Interrupted

        callback.on_epoch_end = on_epoch_end
        return callback

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sb, "_make_epoch_callback", interrupting)
        with pytest.raises(_Interrupted):
            train_stardist(splits["train"], splits["val"], SETTINGS, model_dir, progress=False, threads=1)
    partial = model_dir.parent / f".{model_dir.name}.partial"
    first = json.loads((partial / "checkpoint" / "state.json").read_text())

    log = root / "train.log"
    snakemake = SimpleNamespace(
        input=SimpleNamespace(train=str(splits["train"]), val=str(splits["val"])),
        params=SimpleNamespace(
            settings={k: v for k, v in SETTINGS.to_dict().items() if k != "input"}, source="stardist_if"
        ),
        output=SimpleNamespace(model=str(model_dir)),
        threads=1,
        log=[str(log)],
    )
    assert not model_dir.exists()  # a half-trained model is never taken as done
    runpy.run_path(str(REPO / "workflow_scripts" / "stardist_train.py"), init_globals={"snakemake": snakemake})
    return SimpleNamespace(
        root=root, splits=splits, model_dir=model_dir, first=first, log=log.read_text(), partial=partial
    )


def test_training_learns_and_resumes(trained):
    assert trained.first["epoch"] == 2 and len(trained.first["history"]) == 2
    assert "resuming after epoch 2/4" in trained.log
    assert not trained.partial.exists()
    files = sorted(p.name for p in trained.model_dir.iterdir())
    assert files == ["config.json", "thresholds.json", "training.json", "weights_best.h5", "weights_last.h5"]
    info = json.loads((trained.model_dir / "training.json").read_text())
    history = info["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[:2] == trained.first["history"]  # the resumed run continued, it did not start over
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    assert min(h["val_loss"] for h in history[2:]) < history[0]["val_loss"]
    assert info["settings"] == SETTINGS.to_dict() and info["epochs"] == 4
    thresholds = json.loads((trained.model_dir / "thresholds.json").read_text())
    assert 0 < thresholds["prob"] < 1 and thresholds["nms"] in (0.3, 0.4, 0.5)
    assert json.loads((trained.model_dir / "config.json").read_text())["n_channel_in"] == 1


def test_predict_writes_instances_store(trained, tmp_path):
    from stardist.matching import matching_dataset

    out = tmp_path / "segmentation" / "stardist_if_instances.zarr"
    summary = predict_stardist(
        trained.model_dir, trained.splits["test"], out, "stardist_if", "dna", progress=False, threads=1
    )
    root = zarr.open_group(str(out), mode="r")
    nuclei = root["nuclei"]
    assert nuclei.shape == (2, SIZE, SIZE) and nuclei.dtype == np.int32 and nuclei.chunks == (1, SIZE, SIZE)
    attrs = dict(root.attrs)
    assert attrs["source"] == "stardist_if" and attrs["objects"] == ["nuclei"]
    assert attrs["settings"] == SETTINGS.to_dict() and attrs["device"] == "cpu (TensorFlow)"  # no GPU in tests
    assert attrs["thresholds"] == json.loads((trained.model_dir / "thresholds.json").read_text())
    assert (
        attrs["seconds_per_field"] == pytest.approx(summary["seconds_per_field"]) and summary["seconds_per_field"] > 0
    )
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "fields.parquet"), pd.read_parquet(trained.splits["test"] / "fields.parquet")
    )
    truth = zarr.open_group(str(trained.splits["test"]), mode="r")["labels"][:, 0]
    stats = matching_dataset(list(truth), list(nuclei[:]), thresh=0.5, show_progress=False)
    assert summary["n_objects"] == stats.n_pred > 0
    assert stats.f1 > 0.5  # the model finds the nuclei (F1 0.84 at IoU 0.5 when written)


def test_predict_adapter(trained, tmp_path):
    out = tmp_path / "stardist_if_instances.zarr"
    snakemake = SimpleNamespace(
        input=SimpleNamespace(model=str(trained.model_dir), dataset=str(trained.splits["test"])),
        params=SimpleNamespace(settings=section("stardist", {"tile_size": 64}), source="stardist_if"),
        output=SimpleNamespace(instances=str(out)),
        threads=1,
        log=[str(tmp_path / "predict.log")],
    )
    runpy.run_path(str(REPO / "workflow_scripts" / "stardist_predict.py"), init_globals={"snakemake": snakemake})
    assert zarr.open_group(str(out), mode="r")["nuclei"].shape == (2, SIZE, SIZE)  # predicted in 2x2 tiles
    assert "stardist_if: 2 fields of 128x128" in (tmp_path / "predict.log").read_text()


def test_predict_bad_input(trained, tmp_path):
    out = tmp_path / "inst.zarr"
    with pytest.raises(ConfigError, match="trained on input 'dna', not 'bf'"):
        predict_stardist(trained.model_dir, trained.splits["test"], out, "stardist_bf", "bf", progress=False, threads=1)
    with pytest.raises(ConfigError, match="'rna'"):
        predict_stardist(trained.model_dir, trained.splits["test"], out, "x", "rna", progress=False, threads=1)
    with pytest.raises(CellResDMError, match="is incomplete: config.json is missing"):
        predict_stardist(tmp_path, trained.splits["test"], out, "stardist_if", "dna", progress=False, threads=1)
    no_fields = write_split(tmp_path / "nofields.zarr", 1, 0, size=64)
    (no_fields / "fields.parquet").unlink()
    with pytest.raises(CellResDMError, match="nofields.zarr: dataset lacks table 'fields.parquet'"):
        predict_stardist(trained.model_dir, no_fields, out, "stardist_if", "dna", progress=False, threads=1)
    assert not out.exists()


def test_bad_datasets(tmp_path):
    good = write_split(tmp_path / "good.zarr", 1, 0, size=64)
    with pytest.raises(CellResDMError, match=r"missing\.zarr: dataset is missing"):
        load_pairs(tmp_path / "missing.zarr", "bf")
    no_labels = write_split(tmp_path / "nolabels.zarr", 1, 0, size=64, channels={"labels": 0})
    with pytest.raises(CellResDMError, match=r"nolabels\.zarr: dataset lacks array 'labels'"):
        load_pairs(no_labels, "dna")
    two_planes = write_split(tmp_path / "two.zarr", 1, 0, size=64, channels={"bf": 2})
    with pytest.raises(
        CellResDMError, match=r"two\.zarr: dataset array 'bf' must be \(N, 3, H, W\), got \(1, 2, 64, 64\)"
    ):
        load_pairs(two_planes, "bf")
    assert load_pairs(two_planes, "dna")[0].shape == (1, 64, 64, 1)  # the DNA input does not read 'bf'
    empty = write_split(tmp_path / "empty.zarr", 0, 0, size=64)
    with pytest.raises(CellResDMError, match=r"empty\.zarr holds no fields \(empty split\)"):
        train_stardist(empty, good, SETTINGS, tmp_path / "model", progress=False, threads=1)
    with pytest.raises(ConfigError, match="stardist.patch_size 128 is larger than the fields of .*good.zarr"):
        settings = StarDistSettings.from_config(
            section("stardist", {"patch_size": 128, "unet_depth": 2}), "stardist_if"
        )
        train_stardist(good, good, settings, tmp_path / "m", progress=False, threads=1)
    with pytest.raises(ConfigError, match="stardist input must be one of"):
        load_pairs(good, "rna")
    x, y = load_pairs(good, "bf")
    assert x.shape == (1, 64, 64, 3) and x.dtype == np.float32 and y.shape == (1, 64, 64) and y.max() > 0
    assert not (tmp_path / "model").exists()


def test_settings_from_config():
    s = StarDistSettings.from_config(section("stardist", {"grid": [1, 2], "epochs": 3}), "stardist_bf")
    assert s.input == "bf" and s.grid == (1, 2) and s.epochs == 3 and s.n_rays == 32  # the schema's defaults
    assert StarDistSettings.from_config(section("stardist"), "stardist_if").input == "dna"
    with pytest.raises(ConfigError, match="unknown StarDist baseline 'stardist_xx'"):
        StarDistSettings.from_config(section("stardist"), "stardist_xx")
    with pytest.raises(ConfigError, match="lacks stardist.n_rays"):
        StarDistSettings.from_config({"epochs": 3}, "stardist_bf")
    for bad, key in (
        ({"grid": [3, 3]}, "stardist.grid"),
        ({"patch_size": 100}, "stardist.patch_size"),
        ({"unet_depth": 6, "tile_size": 64}, "stardist.tile_size"),
    ):
        with pytest.raises(ConfigError, match=key):
            StarDistSettings.from_config(section("stardist", bad), "stardist_bf")
    for bad, key in (({"epochs": 0}, "stardist.epochs"), ({"learning_rate": -1.0}, "stardist.learning_rate")):
        with pytest.raises(ConfigError, match=key):
            section("stardist", bad)
