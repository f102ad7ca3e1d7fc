"""The embedded synthetic gallery (cellresdm.synth): layout, truth labels, image structure, determinism."""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage as ndi
from skimage.measure import label as connected_label
from skimage.segmentation import find_boundaries

from cellresdm import layout, synth
from cellresdm.io import read_tiff
from cellresdm.synth import SynthConfig, SynthPlate, Treatment

PLATES = (SynthPlate("BR00116991", "A549"), SynthPlate("BR00116995", "U2OS"))
#: Six wells (two edge wells, one of them black), one missing field.
CONFIG = SynthConfig(
    field_size=256,
    wells=("A01", "B02", "B03", "C02", "C03", "P24"),
    sites=2,
    black_if_wells=("A01",),
    missing_fields=(("C03", 2),),
    seed=0,
)


def synth_config(**changes) -> SynthConfig:
    return dataclasses.replace(CONFIG, **changes)


URL_COLUMNS = [layout.url_column(c) for c in ("DNA", "ER", "RNA", "AGP", "Mito", "Brightfield", "HighZBF", "LowZBF")]
META_COLUMNS = ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_Row", "Metadata_Col"]
PREFIX = f"s3://{layout.BUCKET}/"


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("synth")
    root, truth = base / "gallery", base / "truth"
    paths = synth.write_gallery(root, truth, PLATES, CONFIG)
    return {"root": root, "truth": truth, "load_data": dict(zip([p.plate for p in PLATES], paths, strict=True))}


def _local(root: Path, url: str) -> Path:
    assert url.startswith(PREFIX), url
    return root / url[len(PREFIX) :]


def _field(gallery: dict, plate: str, well: str, site: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    df = pd.read_csv(gallery["load_data"][plate])
    row = df[(df.Metadata_Well == well) & (df.Metadata_Site == site)].iloc[0]
    images = {c: tifffile.imread(_local(gallery["root"], row[layout.url_column(c)])) for c in layout.ALL_CHANNELS}
    r, c = layout.parse_well(well)
    labels = tifffile.imread(gallery["truth"] / plate / f"{layout.field_id(r, c, site)}_labels.tiff")
    return images, labels


def _expected_fields(config: SynthConfig) -> list[tuple[str, int]]:
    return [(w, s) for w in config.wells for s in range(1, config.sites + 1) if (w, s) not in config.missing_fields]


# ------------------------------------------------------------------------------------------------ layout


def test_load_data_paths_and_columns(gallery):
    gl = layout.GalleryLayout()
    plate_dirs = set()
    for plate in PLATES:
        path = gallery["load_data"][plate.plate]
        assert path == gallery["root"] / gl.load_data_key(plate.plate)
        df = pd.read_csv(path)
        assert list(df.columns) == URL_COLUMNS + META_COLUMNS
        assert len(df) == len(_expected_fields(CONFIG))
        assert (df.Metadata_Plate == plate.plate).all()
        for col in ("Metadata_Site", "Metadata_Row", "Metadata_Col"):
            assert pd.api.types.is_integer_dtype(df[col]), col
        plate_dir = synth.plate_dir_name(plate.plate)
        assert re.fullmatch(rf"{plate.plate}__\d{{4}}-\d\d-\d\dT\d\d_\d\d_\d\d-Measurement1", plate_dir)
        plate_dirs.add(plate_dir.split("__")[1])
        for rec in df.itertuples(index=False):
            r, c = layout.parse_well(rec.Metadata_Well)
            assert (rec.Metadata_Row, rec.Metadata_Col) == (r, c)
            for channel in layout.ALL_CHANNELS:
                url = getattr(rec, layout.url_column(channel))
                key = gl.image_key(plate_dir, layout.image_filename(r, c, rec.Metadata_Site, channel))
                assert url == layout.s3_url(key)
                assert _local(gallery["root"], url).is_file()
        # Nothing on disk beyond what load_data lists.
        on_disk = {p.name for p in (gallery["root"] / gl.images_key(plate_dir)).iterdir()}
        listed = {u.rsplit("/", 1)[1] for col in URL_COLUMNS for u in df[col]}
        assert on_disk == listed
        assert all(layout.FIELD_FILE_PATTERN.match(name) for name in on_disk)
    assert len(plate_dirs) == len(PLATES), "timestamps should differ per plate"


def test_tiffs_are_uint16_lzw_of_field_size(gallery):
    df = pd.read_csv(gallery["load_data"]["BR00116991"])
    for channel in layout.ALL_CHANNELS:
        with tifffile.TiffFile(_local(gallery["root"], df[layout.url_column(channel)].iloc[0])) as tif:
            page = tif.pages[0]
            assert page.compression == tifffile.COMPRESSION.LZW
            assert page.dtype == np.uint16
            assert page.shape == (CONFIG.field_size, CONFIG.field_size)


def test_truth_beside_gallery(gallery):
    for plate in PLATES:
        files = sorted((gallery["truth"] / plate.plate).glob("*_labels.tiff"))
        expected = {f"{layout.field_id(*layout.parse_well(w), s)}_labels.tiff" for w, s in _expected_fields(CONFIG)}
        assert {f.name for f in files} == expected
        labels = tifffile.imread(files[0])
        assert labels.dtype == np.uint16 and labels.shape == (2, CONFIG.field_size, CONFIG.field_size)
    assert not list(gallery["root"].rglob("*_labels.tiff"))
    assert not list(gallery["root"].rglob("wells.csv"))


def test_truth_inside_gallery_is_refused(tmp_path):
    with pytest.raises(ValueError, match="beside"):
        synth.write_plate(
            tmp_path,
            tmp_path / "truth",
            PLATES[0],
            synth_config(wells=("B02",), sites=1, black_if_wells=(), missing_fields=()),
        )


def test_missing_fields_absent(gallery):
    for plate in PLATES:
        df = pd.read_csv(gallery["load_data"][plate.plate])
        present = set(zip(df.Metadata_Well, df.Metadata_Site, strict=True))
        for well, site in CONFIG.missing_fields:
            assert (well, site) not in present
            r, c = layout.parse_well(well)
            assert not list(gallery["root"].rglob(f"{layout.field_id(r, c, site)}p01-*"))
            assert not (gallery["truth"] / plate.plate / f"{layout.field_id(r, c, site)}_labels.tiff").exists()
        assert ("C03", 1) in present


def test_wells_csv(gallery):
    for plate in PLATES:
        wells = pd.read_csv(gallery["truth"] / plate.plate / "wells.csv")
        assert list(wells.columns) == ["well", "nucleus_scale", "mito_scale", "black_if"]
        assert list(wells.well) == list(CONFIG.wells)
        assert wells.nucleus_scale.between(*synth.NUCLEUS_SCALE_RANGE).all()
        assert wells.mito_scale.between(*synth.MITO_SCALE_RANGE).all()
        assert set(wells.well[wells.black_if]) == set(CONFIG.black_if_wells)
        for rec in wells.itertuples(index=False):
            t = synth.well_treatment(rec.well, CONFIG)
            assert (rec.nucleus_scale, rec.mito_scale) == pytest.approx((t.nucleus_scale, t.mito_scale))
    assert len({synth.well_treatment(w, CONFIG).mito_scale for w in CONFIG.wells}) == len(CONFIG.wells)


def test_black_if_wells(gallery):
    black, _ = _field(gallery, "BR00116991", "A01", 1)
    normal, _ = _field(gallery, "BR00116991", "B02", 1)
    for channel in layout.IF_CHANNELS:
        p99_black = np.percentile(black[channel], 99)
        assert 150 < p99_black < 400, (channel, p99_black)
        assert np.percentile(normal[channel], 99) > p99_black + 1000, channel
    for channel in layout.BF_CHANNELS:
        assert 20000 < black[channel].mean() < 26000
        assert black[channel].std() > 200


def test_if_intensity_ranges(gallery):
    for plate in PLATES:
        images, _ = _field(gallery, plate.plate, "B03", 1)
        for channel in layout.IF_CHANNELS:
            a = images[channel]
            assert 150 < np.percentile(a, 1) < 400, channel  # background offset
            assert 1500 < np.percentile(a, 99) < 16000, channel


# ------------------------------------------------------------------------------------------------ labels


def _check_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    nuclei, cells = labels.astype(np.int64)
    ids = np.unique(cells[cells > 0])
    assert np.array_equal(ids, np.unique(nuclei[nuclei > 0])), "one nucleus per cell, same label"
    assert np.array_equal(ids, np.arange(1, len(ids) + 1))
    assert np.all(cells[nuclei > 0] == nuclei[nuclei > 0]), "nucleus inside its own cell"
    assert not np.any(find_boundaries(cells, connectivity=1, mode="inner") & (nuclei > 0)), "nucleus touches border"
    for lab in (nuclei, cells):
        assert connected_label(lab, background=0, connectivity=1).max() == len(ids), "one component per object"
    nuc_area = np.bincount(nuclei.ravel())[1:]
    cell_area = np.bincount(cells.ravel())[1:]
    assert nuc_area.min() >= synth.MIN_NUCLEUS_AREA
    assert np.all(cell_area > nuc_area)
    return nuc_area, cell_area


def test_labels_consistent_and_plausible(gallery):
    for plate in PLATES:
        counts = []
        for f in sorted((gallery["truth"] / plate.plate).glob("*_labels.tiff")):
            nuc_area, _ = _check_labels(tifffile.imread(f))
            counts.append(len(nuc_area))
        assert min(counts) >= 5 and max(counts) <= 30, (plate, counts)


def test_cell_lines_differ():
    stats = {}
    for line in ("A549", "U2OS"):
        nuc, cell, count = [], [], []
        for i in range(4):
            _, labels = synth.make_field(line, 256, np.random.default_rng(i), Treatment())
            n_area, c_area = _check_labels(labels)
            nuc.append(n_area)
            cell.append(c_area)
            count.append(len(n_area))
        stats[line] = (np.concatenate(nuc).mean(), np.concatenate(cell).mean(), np.mean(count))
    # Equivalent diameters at 0.598 um/px: A549 nuclei ~14-18 um, U2OS ~18-24 um.
    a549_d = 2 * np.sqrt(stats["A549"][0] / np.pi) * synth.PIXEL_SIZE_UM
    u2os_d = 2 * np.sqrt(stats["U2OS"][0] / np.pi) * synth.PIXEL_SIZE_UM
    assert 12 < a549_d < 19 and 16 < u2os_d < 25, (a549_d, u2os_d)
    assert stats["A549"][0] < stats["U2OS"][0]
    assert stats["A549"][1] < stats["U2OS"][1]
    assert stats["A549"][2] > stats["U2OS"][2]


def test_unknown_cell_line():
    with pytest.raises(ValueError, match="HeLa"):
        synth.make_field("HeLa", 256, np.random.default_rng(0), Treatment())
    with pytest.raises(ValueError, match="HeLa"):
        synth.write_gallery("/nonexistent/a", "/nonexistent/b", [SynthPlate("P1", "HeLa")], CONFIG)


# ------------------------------------------------------------------------------------------------ structure


@pytest.fixture(scope="module")
def fields() -> dict:
    return {line: synth.make_field(line, 256, np.random.default_rng(7), Treatment()) for line in ("A549", "U2OS")}


def test_dna_in_nuclei(fields):
    for images, labels in fields.values():
        dna = images["DNA"].astype(float)
        inside, outside = dna[labels[0] > 0].mean(), dna[labels[0] == 0].mean()
        assert inside > 5 * outside


def test_agp_at_cell_borders(fields):
    for images, labels in fields.values():
        agp = images["AGP"].astype(float)
        cells = labels[1]
        border = find_boundaries(cells, connectivity=1, mode="inner")
        depth = ndi.distance_transform_edt(~border)
        interior = (cells > 0) & (depth > 6) & (labels[0] == 0)
        assert agp[border].mean() > 2 * agp[interior].mean()


def test_mito_and_er_cytoplasmic(fields):
    for images, labels in fields.values():
        cyto = (labels[1] > 0) & (labels[0] == 0)
        nuclear_core = ndi.binary_erosion(labels[0] > 0, iterations=3)  # without the ER's nuclear envelope
        for channel in ("Mito", "ER"):
            a = images[channel].astype(float)
            assert a[cyto].mean() > 1.5 * a[nuclear_core].mean(), channel
            assert a[cyto].mean() > 1.5 * a[labels[1] == 0].mean(), channel


def test_brightfield_planes(fields):
    for images, _ in fields.values():
        bf = images["Brightfield"].astype(float)
        for channel in layout.BF_CHANNELS:
            a = images[channel].astype(float)
            assert 20000 < a.mean() < 26000, channel
            assert 200 < a.std() < 2000, channel
        high = images["HighZBF"] - bf
        low = images["LowZBF"] - bf
        assert np.corrcoef(high.ravel(), low.ravel())[0, 1] < -0.5


def test_brightfield_resembles_the_real_cpg0000_planes(fields, shared_dir):
    """Real BR00116991 A01 planes (../shared): same intensity scale, weak in-focus contrast, and the +z and
    -z planes departing from focus in opposite directions."""
    crops = shared_dir / "data" / "real_brightfield_crops"
    real = {
        name: read_tiff(crops / f"brightfield_{name}.tiff", ndim=2).astype(float) for name in ("focus", "over", "under")
    }
    assert np.corrcoef((real["over"] - real["focus"]).ravel(), (real["under"] - real["focus"]).ravel())[0, 1] < 0
    for images, _ in fields.values():
        focus = images["Brightfield"].astype(float)
        assert abs(focus.mean() / real["focus"].mean() - 1) < 0.15
        assert 0.5 < focus.std() / real["focus"].std() < 4
        for plane, name in (("HighZBF", "over"), ("LowZBF", "under")):
            assert 0.5 < images[plane].std() / real[name].std() < 4, plane


# ------------------------------------------------------------------------------------------------ determinism


def test_same_seed_same_field():
    a_images, a_labels = synth.make_field("U2OS", 128, np.random.default_rng(3), Treatment(1.1, 0.9))
    b_images, b_labels = synth.make_field("U2OS", 128, np.random.default_rng(3), Treatment(1.1, 0.9))
    c_images, _ = synth.make_field("U2OS", 128, np.random.default_rng(4), Treatment(1.1, 0.9))
    assert np.array_equal(a_labels, b_labels)
    for channel in layout.ALL_CHANNELS:
        assert a_images[channel].dtype == np.uint16 and a_images[channel].shape == (128, 128)
        assert np.array_equal(a_images[channel], b_images[channel])
        assert not np.array_equal(a_images[channel], c_images[channel])


def test_field_independent_of_rest_of_gallery(gallery, tmp_path):
    small = synth_config(wells=("B03",), sites=1, black_if_wells=(), missing_fields=())
    synth.write_plate(tmp_path / "root", tmp_path / "truth" / PLATES[1].plate, PLATES[1], small)
    images, labels = _field(
        {
            "root": tmp_path / "root",
            "truth": tmp_path / "truth",
            "load_data": {PLATES[1].plate: tmp_path / "root" / layout.GalleryLayout().load_data_key(PLATES[1].plate)},
        },
        PLATES[1].plate,
        "B03",
        1,
    )
    ref_images, ref_labels = _field(gallery, PLATES[1].plate, "B03", 1)
    assert np.array_equal(labels, ref_labels)
    for channel in layout.ALL_CHANNELS:
        assert np.array_equal(images[channel], ref_images[channel])


def test_treatment_effects():
    def run(t: Treatment):
        return synth.make_field("A549", 256, np.random.default_rng(11), t)

    high, labels_high = run(Treatment(mito_scale=1.5))
    low, labels_low = run(Treatment(mito_scale=0.7))
    assert np.array_equal(labels_high, labels_low)
    bg = np.percentile(low["Mito"], 1)
    ratio = (high["Mito"].mean() - bg) / (low["Mito"].mean() - bg)
    assert 1.7 < ratio < 2.6  # 1.5 / 0.7 = 2.14
    _, big = run(Treatment(nucleus_scale=1.2))
    _, small = run(Treatment(nucleus_scale=0.85))
    assert np.mean(np.bincount(big[0].ravel())[1:]) > 1.4 * np.mean(np.bincount(small[0].ravel())[1:])


def test_forced_treatment_recorded(tmp_path):
    config = synth_config(
        wells=("B02", "B03"),
        sites=1,
        black_if_wells=(),
        missing_fields=(),
        treatments=(("B02", Treatment(1.0, 1.5)), ("B03", Treatment(1.0, 0.7))),
    )
    synth.write_plate(tmp_path / "root", tmp_path / "truth", PLATES[0], config)
    wells = pd.read_csv(tmp_path / "truth" / "wells.csv").set_index("well")
    assert wells.loc["B02", "mito_scale"] == pytest.approx(1.5)
    assert wells.loc["B03", "mito_scale"] == pytest.approx(0.7)


def test_config_validation(tmp_path):
    bad = [
        synth_config(black_if_wells=("Z99",)),
        synth_config(missing_fields=(("B02", 3),)),
        synth_config(wells=("B02", "B02"), black_if_wells=(), missing_fields=()),
        synth_config(field_size=16),
    ]
    for config in bad:
        with pytest.raises(ValueError):
            synth.write_plate(tmp_path / "root", tmp_path / "truth", PLATES[0], config)


# ------------------------------------------------------------------------------------------------ speed, size


def test_speed_256():
    best = min(_timed(lambda: synth.make_field("U2OS", 256, np.random.default_rng(0), Treatment())) for _ in range(3))
    assert best < 1.0, best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def test_full_size_field():
    images, labels = synth.make_field("A549", 1080, np.random.default_rng(0), Treatment())
    assert labels.shape == (2, 1080, 1080) and labels.dtype == np.uint16
    assert all(images[c].shape == (1080, 1080) and images[c].dtype == np.uint16 for c in layout.ALL_CHANNELS)
    assert 150 < labels[0].max() < 600
