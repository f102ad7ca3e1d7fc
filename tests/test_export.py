"""Model files that travel (cellresdm.export): an exported model rebuilds the same method on another machine, and a
file that is missing, truncated, foreign, of another method, version or input fails naming the file and the
mismatch."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import cellresdm
from cellresdm import export, layout, stores
from cellresdm.config import validate_config
from cellresdm.errors import CellResDMError
from cellresdm.methods import build_method
from tests.tiny_methods import tiny_method_sections

SIZE, SOURCE = 64, 256
NATIVE_UM = 0.598


def _dataset(path: Path, scope: str = "plate") -> Path:
    """A training dataset store of two plates (fields of SIZE px resized from SOURCE px)."""
    n = 2
    fields = pd.DataFrame({"plate": ["T1", "T2"], "field": ["r02c02f01", "r02c03f01"], "index": range(n)})
    rows = [
        ("plate", p, None, -1, ch, 100.0 + k, 900.0 + 10 * k)
        for p in ("T1", "T2")
        for k, ch in enumerate(layout.IF_CHANNELS + layout.BF_CHANNELS)
    ]
    norm = pd.DataFrame(rows, columns=["scope", "plate", "field", "index", "channel", "low", "high"])
    with stores.create_dataset(path, n, (SIZE, SIZE)) as writer:
        writer.finish(
            fields,
            norm,
            {
                "scope": scope,
                "low": 0.5,
                "high": 99.5,
                "resize": SIZE,
                "shape": [SIZE, SIZE],
                "source_shape": [SOURCE, SOURCE],
                "bf_channels": list(layout.BF_CHANNELS),
                "if_channels": list(layout.IF_CHANNELS),
                "plates": ["T1", "T2"],
                "illumination_corrected": ["T1"],
            },
        )
    return path


def _config(name: str, tmp_path: Path) -> dict:
    sections = tiny_method_sections()
    config = {"methods": [name], "reference": name, name: sections[name]}
    if name == "cellresdm_latent":
        from cellresdm.methods.vqgan import save_vqgan, vqgan_config
        from cellresdm.nets.vqgan import VQGAN

        vq = validate_config({"vqgan": sections["vqgan"]})["vqgan"]

        torch.manual_seed(3)
        autoencoder = VQGAN(vqgan_config(vq))
        config[name]["vqgan_checkpoint"] = str(save_vqgan(autoencoder, tmp_path / "vqgan.pt"))
    return validate_config(config)


def _model(name: str, tmp_path: Path) -> tuple[Path, object]:
    """A ``model.pt`` as the trainer writes it, with EMA weights unlike the raw ones."""
    torch.manual_seed(0)
    method = build_method(name, _config(name, tmp_path))
    raw = {k: v.clone() for k, v in method.network.state_dict().items()}
    with torch.no_grad():
        for p in method.network.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "models" / name / "model.pt"
    path.parent.mkdir(parents=True)
    content = {"config": {"method": name, **method.config()}, "settings": {}, "step": 7, "model": raw}
    torch.save({**content, "ema": method.network.state_dict()}, path)
    return path, method


def _export(tmp_path: Path, name: str = "unet") -> tuple[Path, object]:
    model, method = _model(name, tmp_path)
    dataset = _dataset(tmp_path / "train.zarr")
    out = export.export_model(name, model, dataset, tmp_path / f"{name}.cellresdm.pt", NATIVE_UM)
    return out, method


def _outputs(method, seed: int = 5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    bf = torch.rand(1, 3, SIZE, SIZE, generator=gen)
    noise = torch.randn(method.noise_shape(1, SIZE, SIZE), generator=gen)
    method.network.eval()
    with torch.no_grad():
        return method.sample(bf, noise=noise)


@pytest.mark.parametrize("name", ["unet", "cellresdm", "cellresdm_latent"])
def test_an_exported_model_samples_as_the_trained_one(tmp_path, name):
    out, method = _export(tmp_path, name)
    if name == "cellresdm_latent":
        (tmp_path / "vqgan.pt").unlink()  # the file carries the autoencoder: the VQ-GAN checkpoint is not needed
    expect = export.plate_inputs_of_dataset(tmp_path / "train.zarr", NATIVE_UM)
    loaded = export.load_exported_model(out, expect=expect, method=name)
    assert loaded.name == name and loaded.info["step"] == 7
    torch.testing.assert_close(_outputs(loaded.method), _outputs(method), rtol=0, atol=0)


def test_the_file_holds_inputs_outputs_normalisation_and_version(tmp_path):
    out, _ = _export(tmp_path)
    info = export.read_export(out)
    assert info["format"] == export.EXPORT_FORMAT and info["package_version"] == cellresdm.__version__
    assert info["inputs"]["planes"] == list(layout.BF_CHANNELS)
    assert info["inputs"]["pixel_size_um"] == pytest.approx(NATIVE_UM * SOURCE / SIZE)
    assert info["inputs"]["field_size"] == [SIZE, SIZE] and info["inputs"]["resized"]
    assert info["outputs"]["channels"] == list(layout.IF_CHANNELS + layout.OBJECT_CHANNELS)
    norm = info["normalisation"]
    assert (norm["scope"], norm["low"], norm["high"]) == ("plate", 0.5, 99.5)
    records = {(r["plate"], r["channel"]): (r["low"], r["high"]) for r in norm["percentiles"]}
    assert len(records) == 16 and records[("T2", "Mito")] == (104.0, 940.0)
    assert info["training_plates"] == {"plates": ["T1", "T2"], "illumination_corrected": ["T1"]}
    assert set(info["ema"]) == set(build_method("unet", info["config"]).network.state_dict())


def test_a_plate_with_other_inputs_is_refused_naming_file_and_mismatch(tmp_path):
    out, _ = _export(tmp_path)
    good = export.plate_inputs_of_dataset(tmp_path / "train.zarr", NATIVE_UM)
    export.load_exported_model(out, expect=dataclasses.replace(good, pixel_size_um=good.pixel_size_um * 1.01))
    cases = {
        "takes planes": dataclasses.replace(good, name="plate P7", planes=("Brightfield",)),
        "um/px": dataclasses.replace(good, name="plate P7", pixel_size_um=NATIVE_UM),
        "normalised per plate": dataclasses.replace(good, name="plate P7", norm_scope="image"),
    }
    for words, expect in cases.items():
        with pytest.raises(CellResDMError, match=words) as caught:
            export.load_exported_model(out, expect=expect)
        assert str(out) in str(caught.value) and "P7" in str(caught.value)
    with pytest.raises(CellResDMError, match="method 'unet', not 'cellresdm'"):
        export.load_exported_model(out, method="cellresdm")


def test_missing_truncated_foreign_and_incompatible_files_name_the_file(tmp_path):
    out, _ = _export(tmp_path)
    with pytest.raises(CellResDMError, match=r"nothing\.pt: exported model file is missing"):
        export.load_exported_model(tmp_path / "nothing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    with pytest.raises(CellResDMError, match=r"truncated\.pt: not a readable exported CellResDM model"):
        export.load_exported_model(truncated)
    with pytest.raises(CellResDMError, match=r"model\.pt: not an exported CellResDM model"):
        export.load_exported_model(tmp_path / "models" / "unet" / "model.pt")
    content = torch.load(out, weights_only=True)
    for key, value, words in [
        ("package_version", "9.0.0", "written by cellresdm 9.0.0, which is incompatible"),
        ("format_version", 2, "format version 2"),
    ]:
        other = tmp_path / f"other_{key}.pt"
        torch.save({**content, key: value}, other)
        with pytest.raises(CellResDMError, match=words) as caught:
            export.load_exported_model(other)
        assert str(other) in str(caught.value)
    lacking = tmp_path / "lacking.pt"
    torch.save({k: v for k, v in content.items() if k != "inputs"}, lacking)
    with pytest.raises(CellResDMError, match=r"lacking\.pt: exported model lacks key\(s\) inputs"):
        export.load_exported_model(lacking)
    wrong = tmp_path / "wrong.pt"
    torch.save({**content, "ema": {k: v[..., :1] if v.ndim else v for k, v in content["ema"].items()}}, wrong)
    with pytest.raises(CellResDMError, match=r"wrong\.pt: the stored unet config or weights do not fit"):
        export.load_exported_model(wrong)


def test_exporting_needs_the_trained_method_and_leaves_nothing_on_error(tmp_path):
    model, _ = _model("unet", tmp_path)
    dataset = _dataset(tmp_path / "train.zarr")
    out = tmp_path / "out" / "x.cellresdm.pt"
    with pytest.raises(CellResDMError, match=r"model\.pt: holds a model of method 'unet', not 'cellresdm'"):
        export.export_model("cellresdm", model, dataset, out, NATIVE_UM)
    with pytest.raises(CellResDMError, match="model file is missing"):
        export.export_model("unet", tmp_path / "none.pt", dataset, out, NATIVE_UM)
    with pytest.raises(CellResDMError, match=r"absent\.zarr"):
        export.export_model("unet", model, tmp_path / "absent.zarr", out, NATIVE_UM)
    assert not out.exists() and not list(tmp_path.glob("out/*"))
    assert np.isclose(export.dataset_pixel_size({"source_shape": [1080, 1080], "shape": [512, 512]}, 0.598), 1.2614)


def test_the_cli_exports_next_to_the_model(tmp_path, capsys):
    from cellresdm.cli import main
    from cellresdm.results import ResultsLayout

    results = ResultsLayout(str(tmp_path / "results"))
    assert main(["--results", results.root, "export", "unet"]) == 1
    assert f"{results.model('unet')}: model file is missing" in capsys.readouterr().err
    _model("unet", Path(results.root))
    _dataset(Path(results.dataset("train")))
    assert main(["--results", results.root, "export", "unet"]) == 0
    assert capsys.readouterr().out.split() == [results.model_export("unet")]
    assert export.load_exported_model(results.model_export("unet"), method="unet").info["step"] == 7
    other = tmp_path / "elsewhere" / "m.pt"
    assert main(["--results", results.root, "export", "unet", "--out", str(other)]) == 0
    assert export.read_export(other)["method"] == "unet"
