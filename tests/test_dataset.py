"""Dataset building (zarr) and the torch Dataset with crops and flips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from cellresdm import layout
from cellresdm.config import section
from cellresdm.dataset import CellPaintingDataset, NormSettings, PlateInput, build_dataset, crops_per_field_of
from cellresdm.errors import CellResDMError, ConfigError, ImageError
from cellresdm.masks import boundaries_from_labels
from cellresdm.stores import open_dataset

SHAPE = (64, 64)


def _norm(scope: str = "plate") -> NormSettings:
    return NormSettings.from_config(section("dataset", {"norm_scope": scope}))


def test_norm_settings_from_the_schema():
    assert _norm() == NormSettings(scope="plate", low=0.5, high=99.5)  # the schema's defaults
    with pytest.raises(ConfigError, match=r"dataset.norm_low \(50\) must be below dataset.norm_high \(50\)"):
        NormSettings.from_config(section("dataset", {"norm_low": 50, "norm_high": 50}))
    with pytest.raises(ConfigError, match="dataset.norm_scope"):
        section("dataset", {"norm_scope": "well"})


def _disk_labels(rng: np.random.Generator, shape, n: int = 4) -> np.ndarray:
    """(2, H, W) uint16 [nuclei, cells]: non-overlapping cells (radius 9) with nuclei (radius 4)."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    labels = np.zeros((2, h, w), dtype=np.uint16)
    centres: list[tuple[int, int]] = []
    while len(centres) < n:
        cy, cx = (int(v) for v in rng.integers(10, min(h, w) - 10, size=2))
        if all((cy - y) ** 2 + (cx - x) ** 2 > 20**2 for y, x in centres):
            centres.append((cy, cx))
    for k, (cy, cx) in enumerate(centres, start=1):
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        labels[1][d2 <= 81] = k
        labels[0][d2 <= 16] = k
    return labels


def make_plate(
    root: Path,
    plate: str,
    sites: int,
    shape=SHAPE,
    brightness: list[float] | None = None,
    drop: set[int] = frozenset(),
    seed: int = 0,
    bad_labels: set[int] = frozenset(),
) -> PlateInput:
    """Fields B02 site 1..sites: DNA bright in nuclei, AGP in cells, BF darker in cells, LowZBF constant.

    Background is 0 in IF channels so the 0.5th percentile is 0 and brightness ratios are exact.
    """
    rng = np.random.default_rng(seed)
    img_dir = root / plate / "images"
    gt_dir = root / plate / "groundtruth"
    img_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    brightness = brightness or [1.0] * sites
    ld_rows, field_rows = [], []
    row, col = 2, 2
    for site in range(1, sites + 1):
        field = layout.field_id(row, col, site)
        labels = _disk_labels(rng, shape)
        stored = labels[:, : shape[0] // 2, :] if site - 1 in bad_labels else labels
        tifffile.imwrite(gt_dir / f"{field}_labels.tiff", stored, compression="zlib")
        nuc, cell = labels[0] > 0, labels[1] > 0
        b = brightness[site - 1]
        images = {
            "DNA": np.where(nuc, 4000 * b, 0),
            "RNA": np.where(cell, 2000 * b, 0),
            "ER": np.where(cell, 3000 * b, 0),
            "AGP": np.where(cell & ~nuc, 5000 * b, 0),
            "Mito": np.where(cell, 1000 * b, 0),
            "Brightfield": np.where(cell, 21000, 23000),
            "HighZBF": np.where(cell, 24000, 23000),
            "LowZBF": np.full(shape, 1000),
        }
        paths = {}
        for ch, img in images.items():
            path = img_dir / layout.image_filename(row, col, site, ch)
            tifffile.imwrite(path, np.asarray(img).astype(np.uint16), compression="lzw")
            paths[ch] = str(path)
        rec = {
            "Metadata_Plate": plate,
            "Metadata_Well": layout.well_name(row, col),
            "Metadata_Row": row,
            "Metadata_Col": col,
            "Metadata_Site": site,
            "field": field,
            "plate_dir": f"{plate}__x-Measurement1",
        }
        for ch in layout.ALL_CHANNELS:
            rec[f"key_{ch}"] = Path(paths[ch]).name
            rec[layout.path_column(ch)] = paths[ch]
        ld_rows.append(rec)
        keep = site - 1 not in drop
        field_rows.append(
            {
                **{k: rec[k] for k in ["Metadata_Plate", "Metadata_Well", "Metadata_Row", "Metadata_Col"]},
                "Metadata_Site": site,
                "field": field,
                "keep": keep,
                "reason": "" if keep else "black_if",
                "detail": "",
            }
        )
    return PlateInput(
        plate=plate,
        cell_line="U2OS",
        fields=pd.DataFrame(field_rows),
        load_data=pd.DataFrame(ld_rows),
        groundtruth_dir=gt_dir,
    )


def _leftovers(folder: Path, name: str) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(f".{name}")]


def test_build_shapes_and_content(tmp_path):
    plates = [
        make_plate(tmp_path, "P1", 3, drop={1}, seed=1),
        make_plate(tmp_path, "P2", 2, seed=2),
    ]
    out = tmp_path / "datasets" / "train.zarr"
    summary = build_dataset(plates, out, _norm(), boundary_thickness=2, progress=False)
    assert summary["n_fields"] == 4
    assert summary["shape"] == [4, 64, 64]
    assert summary["fields_per_s"] > 0
    root = open_dataset(out)
    expect = {
        "bf": ((4, 3, 64, 64), np.float16),
        "if": ((4, 5, 64, 64), np.float16),
        "boundaries": ((4, 2, 64, 64), np.uint8),
        "labels": ((4, 2, 64, 64), np.uint16),
    }
    for name, (shape, dtype) in expect.items():
        arr = root[name]
        assert arr.shape == shape and arr.dtype == dtype, name
        assert arr.chunks == (1, *shape[1:]), name
    bf, if_, bounds, labels = (root[k][:] for k in ("bf", "if", "boundaries", "labels"))
    for a in (bf, if_):
        a32 = a.astype(np.float32)
        assert np.isfinite(a32).all() and a32.min() >= 0 and a32.max() <= 1
    assert set(np.unique(bounds)) <= {0, 1}
    # Constant LowZBF: zeros, not NaN.
    assert (bf[:, 2] == 0).all()

    fields = open_dataset(out).fields
    assert list(fields["index"]) == [0, 1, 2, 3]
    assert list(fields["plate"]) == ["P1", "P1", "P2", "P2"]
    assert list(fields["field"]) == ["r02c02f01", "r02c02f03", "r02c02f01", "r02c02f02"]  # f02 of P1 dropped
    assert set(fields["cell_line"]) == {"U2OS"} and list(fields["site"]) == [1, 3, 1, 2]
    assert set(fields["well"]) == {"B02"}

    # Labels are the ground truth; boundaries derive from them; IF/BF follow the objects.
    for i, (plate, field) in enumerate(zip(fields["plate"], fields["field"], strict=True)):
        gt = tifffile.imread(tmp_path / plate / "groundtruth" / f"{field}_labels.tiff")
        np.testing.assert_array_equal(labels[i], gt)
        for c in range(2):
            np.testing.assert_array_equal(bounds[i, c], boundaries_from_labels(gt[c], 2).astype(np.uint8))
        np.testing.assert_array_equal(if_[i, 0] > 0.5, gt[0] > 0)  # DNA in nuclei
        np.testing.assert_array_equal(bf[i, 0] < 0.5, gt[1] > 0)  # in-focus BF darker in cells
        np.testing.assert_array_equal(bf[i, 1] > 0.5, gt[1] > 0)  # HighZBF brighter in cells

    norm = open_dataset(out).norm()
    assert set(norm["plate"]) == {"P1", "P2"} and set(norm["channel"]) == set(layout.ALL_CHANNELS)
    assert len(norm) == 2 * 8 and set(norm["scope"]) == {"plate"}
    attrs = dict(root.attrs)
    assert attrs["scope"] == "plate" and attrs["low"] == 0.5 and attrs["high"] == 99.5
    assert attrs["resize"] is None and attrs["boundary_thickness"] == 2
    assert attrs["if_channels"] == list(layout.IF_CHANNELS) and attrs["bf_channels"] == list(layout.BF_CHANNELS)
    assert attrs["source_shape"] == [64, 64]
    assert _leftovers(out.parent, out.name) == []

    # A rebuild replaces the dataset in place.
    build_dataset(plates[1:], out, _norm(), progress=False)
    assert open_dataset(out)["bf"].shape[0] == 2
    assert _leftovers(out.parent, out.name) == []


def test_plate_vs_image_scope(tmp_path):
    plates = [make_plate(tmp_path, "P1", 2, brightness=[1.0, 0.5], seed=3)]
    plate_root = open_dataset(build_dataset(plates, tmp_path / "plate.zarr", _norm("plate"), progress=False)["out"])
    image_root = open_dataset(build_dataset(plates, tmp_path / "image.zarr", _norm("image"), progress=False)["out"])
    p_if = plate_root["if"][:].astype(np.float64)
    i_if = image_root["if"][:].astype(np.float64)
    for c, ch in enumerate(layout.IF_CHANNELS):
        ratio_plate = p_if[1, c].sum() / p_if[0, c].sum()
        ratio_image = i_if[1, c].sum() / i_if[0, c].sum()
        # Same object layout is not shared between fields, so compare mean intensity inside objects.
        mask0, mask1 = p_if[0, c] > 0, p_if[1, c] > 0
        assert p_if[1, c][mask1].mean() / p_if[0, c][mask0].mean() == pytest.approx(0.5, abs=0.01), ch
        assert i_if[1, c][i_if[1, c] > 0].mean() == pytest.approx(1.0, abs=0.01), ch
        assert i_if[0, c][i_if[0, c] > 0].mean() == pytest.approx(1.0, abs=0.01), ch
        assert ratio_plate != pytest.approx(ratio_image, rel=0.05)
    assert not np.allclose(p_if, i_if)
    norm = open_dataset(tmp_path / "image.zarr").norm()
    assert set(norm["scope"]) == {"image"} and len(norm) == 2 * 8
    assert dict(image_root.attrs)["scope"] == "image"


def test_resize(tmp_path):
    plates = [make_plate(tmp_path, "P1", 2, seed=4)]
    out = tmp_path / "small.zarr"
    summary = build_dataset(plates, out, _norm(), resize=32, boundary_thickness=1, progress=False)
    assert summary["shape"] == [2, 32, 32] and summary["source_shape"] == [64, 64]
    root = open_dataset(out)
    assert root["bf"].shape == (2, 3, 32, 32) and root["if"].shape == (2, 5, 32, 32)
    labels, bounds = root["labels"][:], root["boundaries"][:]
    assert labels.shape == (2, 2, 32, 32) and labels.dtype == np.uint16
    for i in range(2):
        gt = tifffile.imread(tmp_path / "P1" / "groundtruth" / f"r02c02f{i + 1:02d}_labels.tiff")
        for c in range(2):
            assert set(np.unique(labels[i, c])) <= set(np.unique(gt[c]))  # nearest neighbour: no new values
            assert len(np.unique(labels[i, c])) == len(np.unique(gt[c]))  # every object survives
            np.testing.assert_array_equal(bounds[i, c], boundaries_from_labels(labels[i, c], 1).astype(np.uint8))
    for name in ("bf", "if"):
        a = root[name][:].astype(np.float32)
        assert np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    assert dict(root.attrs)["resize"] == 32 and dict(root.attrs)["shape"] == [32, 32]


def test_label_shape_mismatch(tmp_path):
    plates = [make_plate(tmp_path, "P1", 3, bad_labels={1}, seed=5)]
    out = tmp_path / "out" / "bad.zarr"
    with pytest.raises(ImageError, match="r02c02f02_labels.tiff"):
        build_dataset(plates, out, _norm(), progress=False)
    assert not out.exists()
    assert _leftovers(out.parent, out.name) == []


def test_no_kept_fields(tmp_path):
    p1 = make_plate(tmp_path, "P1", 2, drop={0, 1}, seed=6)
    p2 = make_plate(tmp_path, "P2", 1, drop={0}, seed=7)
    with pytest.raises(CellResDMError, match="P1, P2"):
        build_dataset([p1, p2], tmp_path / "none.zarr", _norm(), progress=False)
    assert not (tmp_path / "none.zarr").exists()


@pytest.fixture
def built(tmp_path) -> Path:
    plates = [make_plate(tmp_path, "P1", 6, seed=8)]
    out = tmp_path / "aug.zarr"
    build_dataset(plates, out, _norm(), boundary_thickness=2, progress=False)
    return out


def test_dataset_items_and_alignment(built):
    ds = CellPaintingDataset(built, crop_size=40, flips=True, seed=0)
    assert len(ds) == 6
    seen = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            assert item["index"] == i
            assert item["bf"].shape == (3, 40, 40) and item["if"].shape == (5, 40, 40)
            assert item["boundaries"].shape == (2, 40, 40) and item["labels"].shape == (2, 40, 40)
            for k in ("bf", "if", "boundaries"):
                assert item[k].dtype == torch.float32
                assert float(item[k].min()) >= 0 and float(item[k].max()) <= 1
            assert item["labels"].dtype == torch.int64
            lab = item["labels"].numpy()
            bnd = item["boundaries"].numpy()
            # The same transform hit every array: IF and BF follow the labels, boundaries sit on label edges.
            np.testing.assert_array_equal(item["if"][0].numpy() > 0.5, lab[0] > 0)
            np.testing.assert_array_equal(item["bf"][0].numpy() < 0.5, lab[1] > 0)
            assert np.all(lab[bnd.astype(bool)] > 0)
            b = 3  # away from the crop border, recomputed boundaries must coincide exactly
            for c in range(2):
                ref = boundaries_from_labels(lab[c], 2)
                np.testing.assert_array_equal(bnd[c, b:-b, b:-b] > 0, ref[b:-b, b:-b])
            seen.add(item["labels"].numpy().tobytes())
    assert len(seen) > len(ds)  # crops/flips vary with the epoch


def test_dataset_reproducible(built):
    def grab(seed, epoch):
        ds = CellPaintingDataset(built, crop_size=32, seed=seed, crops_per_field=1)
        ds.set_epoch(epoch)
        return [ds[i]["if"] for i in range(len(ds))]

    a, b = grab(0, 0), grab(0, 0)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, grab(0, 1), strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, grab(1, 0), strict=True))


def test_dataset_whole_field_no_aug(built):
    ds = CellPaintingDataset(built, crop_size=None, flips=False)
    root = open_dataset(built)
    item = ds[2]
    np.testing.assert_array_equal(item["if"].numpy(), root["if"][2].astype(np.float32))
    np.testing.assert_array_equal(item["labels"].numpy(), root["labels"][2].astype(np.int64))
    assert ds[-1]["index"] == len(ds) - 1
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_dataset_missing(tmp_path):
    with pytest.raises(CellResDMError, match="none.zarr: dataset is missing"):
        CellPaintingDataset(tmp_path / "none.zarr")


def test_dataset_crop_too_large(built):
    with pytest.raises(
        ConfigError, match=r"aug\.zarr: crop_size 128 does not fit its fields of 64x64 \(e\.g\. field r"
    ):
        CellPaintingDataset(built, crop_size=128)
    with pytest.raises(ConfigError, match="one item per field"):
        CellPaintingDataset(built, crop_size=None, crops_per_field=2)


def test_crops_per_field_rule():
    assert crops_per_field_of(540, 540, 64) == 64  # 8 x 8 non-overlapping crops
    assert crops_per_field_of(64, 100, 64) == 1
    assert crops_per_field_of(540, 540, None) == 1
    assert crops_per_field_of(540, 540, 64, requested=3) == 3
    with pytest.raises(ConfigError, match="crops_per_field"):
        crops_per_field_of(540, 540, 64, requested=0)


def test_epoch_draws_distinct_crops_of_every_field(built):
    ds = CellPaintingDataset(built, crop_size=16, seed=5)
    assert ds.crops_per_field == 16 and len(ds) == 6 * 16  # (64 // 16) ** 2 crops of each of 6 fields
    root = open_dataset(built)
    crops = [ds.crop_of(k) for k in range(len(ds))]
    for field in range(6):
        origins = {(y, x) for f, y, x in crops if f == field}
        assert len(origins) == 16  # every draw of a field its own crop
    item = ds[16 * 3 + 5]
    f, y, x = ds.crop_of(16 * 3 + 5)
    assert f == 3 and item["index"] == 3
    raw = torch.from_numpy(root["labels"][3, :, y : y + 16, x : x + 16].astype(np.int64))
    # the item is that crop, flipped or turned
    assert any(torch.equal(item["labels"], t) for t in _transforms(raw))
    ds.set_epoch(1)
    assert [ds.crop_of(k) for k in range(len(ds))] != crops  # new crops each epoch


def test_crops_repeat_with_the_seed(built):
    def grab(seed: int, epoch: int) -> list[torch.Tensor]:
        ds = CellPaintingDataset(built, crop_size=32, seed=seed, crops_per_field=3)
        ds.set_epoch(epoch)
        return [ds[k]["if"] for k in range(len(ds))]

    a = grab(2, 1)
    assert len(a) == 18 and all(torch.equal(x, y) for x, y in zip(a, grab(2, 1), strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, grab(3, 1), strict=True))


def _transforms(t: torch.Tensor) -> list[torch.Tensor]:
    """Every flip and quarter turn of ``t`` (..., h, w)."""
    out = []
    for base in (t, torch.flip(t, dims=(-1,))):
        out += [torch.rot90(base, k, dims=(-2, -1)) for k in range(4)]
    return out


def test_dataloader_workers(built):
    ds = CellPaintingDataset(built, crop_size=32, seed=3, crops_per_field=1)
    ds.set_epoch(2)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    assert sum(len(b["index"]) for b in batches) == 6
    assert batches[0]["bf"].shape == (4, 3, 32, 32) and batches[0]["labels"].dtype == torch.int64
    got = torch.cat([b["if"] for b in batches])
    expected = torch.stack([ds[i]["if"] for i in range(len(ds))])
    assert torch.equal(got, expected)  # workers give the same items as the main process


def test_build_speed(tmp_path):
    plates = [make_plate(tmp_path, "P1", 24, shape=(256, 256), seed=9)]
    summary = build_dataset(plates, tmp_path / "speed.zarr", _norm(), progress=False)
    print(
        f"\nbuild_dataset: {summary['n_fields']} fields of 256x256 in {summary['seconds']:.2f} s "
        f"= {summary['fields_per_s']:.1f} fields/s"
    )
    assert summary["n_fields"] == 24


def test_one_field_fills_batches_of_eight(tmp_path):
    """A single field trains with batch 8: each epoch draws (64 // 16) ** 2 = 16 crops of it."""
    from cellresdm.methods import build_method
    from cellresdm.steps import train_method
    from cellresdm.train import MODEL_NAME, load_model_weights

    out = tmp_path / "one.zarr"
    build_dataset([make_plate(tmp_path, "P1", 1, seed=4)], out, _norm(), progress=False)
    config = {
        "unet": section("unet", {"base_channels": 4, "depth": 4, "crop_size": 16}),
        "train": section("train", {"steps": 3, "batch_size": 8, "warmup_steps": 1, "checkpoint_every": 3}),
    }
    path = train_method("unet", config, str(out), str(tmp_path / "unet"))
    assert path.name == MODEL_NAME
    assert load_model_weights(path, build_method("unet", config).network)["method"] == "unet"
    saved = torch.load(path, weights_only=True)
    assert saved["step"] == 3 and saved["dataset_size"] == 16 and saved["crops_per_field"] == 16
    config["train"]["crops_per_field"] = 8  # other items each epoch: the run cannot be continued
    with pytest.raises(CellResDMError, match=r"incompatible run: .*crops_per_field 16 \(now 8\)"):
        train_method("unet", config, str(out), str(tmp_path / "unet"))
    config["train"]["crops_per_field"] = 4  # 4 items: fewer than one batch
    with pytest.raises(CellResDMError, match="4 items, fewer than one batch of 8.*4 crops per field"):
        train_method("unet", config, str(out), str(tmp_path / "unet4"))
