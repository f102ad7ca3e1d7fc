"""Field filtering: edge wells, black fluorescence, missing and unreadable files, plate map."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from cellresdm import layout
from cellresdm.config import section
from cellresdm.errors import CellResDMError, ConfigError
from cellresdm.filters import (
    REASONS,
    FilterSettings,
    filter_fields,
    high_column,
    is_edge_well,
    median_column,
    plot_plate_map,
    uint16_percentiles,
    well_status,
)

PLATE = "BR00000001"
SHAPE = (64, 64)


def _if_image(rng: np.random.Generator, shape=SHAPE, signal: bool = True) -> np.ndarray:
    """Background ~200 with noise; with signal, a few bright disks (cells) at ~3000."""
    img = rng.normal(200, 10, shape)
    if signal:
        yy, xx = np.mgrid[: shape[0], : shape[1]]
        for cy, cx in rng.integers(8, min(shape) - 8, size=(4, 2)):
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = 3000 + rng.normal(0, 50)
    return np.clip(img, 0, 65535).astype(np.uint16)


def _bf_image(rng: np.random.Generator, shape=SHAPE) -> np.ndarray:
    return np.clip(rng.normal(23000, 500, shape), 0, 65535).astype(np.uint16)


def write_field(folder: Path, well: str, site: int, rng: np.random.Generator) -> dict[str, str]:
    """Write the 8 channel TIFFs of one field (LZW); return {channel: path}."""
    row, col = layout.parse_well(well)
    paths = {}
    for ch in layout.ALL_CHANNELS:
        img = _if_image(rng) if ch in layout.IF_CHANNELS else _bf_image(rng)
        path = folder / layout.image_filename(row, col, site, ch)
        tifffile.imwrite(path, img, compression="lzw")
        paths[ch] = str(path)
    return paths


def load_data_row(well: str, site: int, paths: dict[str, str | None], plate: str = PLATE) -> dict:
    row, col = layout.parse_well(well)
    rec = {
        "Metadata_Plate": plate,
        "Metadata_Well": well,
        "Metadata_Row": row,
        "Metadata_Col": col,
        "Metadata_Site": site,
        "field": layout.field_id(row, col, site),
        "plate_dir": f"{plate}__2020-11-05T19_51_35-Measurement1",
    }
    for ch in layout.ALL_CHANNELS:
        rec[f"key_{ch}"] = f"images/{layout.image_filename(row, col, site, ch)}"
        rec[layout.path_column(ch)] = paths.get(ch)
    return rec


def roundtrip(df: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    """Pass the table through parquet, as the pipeline does (None paths come back as None/NaN)."""
    path = tmp_path / "load_data.parquet"
    df.to_parquet(path, index=False)
    return pd.read_parquet(path)


@pytest.fixture
def plate(tmp_path: Path):
    """A plate of 7 wells x 2 sites with one problem of each kind; returns (load_data, files to check)."""
    rng = np.random.default_rng(0)
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    wells = ["A01", "B02", "B03", "C04", "C05", "D06", "P24"]
    rows, special = [], {}
    for well in wells:
        for site in (1, 2):
            if (well, site) in {("B03", 2), ("P24", 1)}:
                continue  # absent from load_data
            paths = write_field(img_dir, well, site, rng)
            if (well, site) == ("C05", 1):
                paths["ER"] = None
            if (well, site) == ("B02", 1):  # DNA without any nuclei: background only
                tifffile.imwrite(paths["DNA"], _if_image(rng, signal=False), compression="lzw")
            if (well, site) in {("B02", 2), ("A01", 1)}:  # random bytes
                Path(paths["Mito"]).write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
                special[(well, site)] = paths["Mito"]
            if (well, site) == ("C04", 1):  # truncated LZW TIFF
                data = Path(paths["AGP"]).read_bytes()
                Path(paths["AGP"]).write_bytes(data[: len(data) // 2])
                special[(well, site)] = paths["AGP"]
            if (well, site) == ("C04", 2):  # wrong dtype
                tifffile.imwrite(paths["RNA"], _if_image(rng).astype(np.float32))
                special[(well, site)] = paths["RNA"]
            if (well, site) == ("D06", 1):  # wrong shape in one channel
                tifffile.imwrite(paths["LowZBF"], _bf_image(rng, shape=(32, 64)), compression="lzw")
                special[(well, site)] = paths["LowZBF"]
            if (well, site) == ("A01", 2):  # edge well that is also black
                tifffile.imwrite(paths["Mito"], _if_image(rng, signal=False), compression="lzw")
            rows.append(load_data_row(well, site, paths))
    return roundtrip(pd.DataFrame(rows), tmp_path), special


def _by_field(table: pd.DataFrame) -> dict[str, pd.Series]:
    return {r["field"]: r for _, r in table.iterrows()}


@pytest.mark.parametrize(
    ("well", "ring", "edge"),
    [
        ("A01", 1, True),
        ("P24", 1, True),
        ("A05", 1, True),
        ("H24", 1, True),
        ("P12", 1, True),
        ("B02", 1, False),
        ("O23", 1, False),
        ("H12", 1, False),
        ("B02", 2, True),
        ("O23", 2, True),
        ("C03", 2, False),
        ("A01", 0, False),
    ],
)
def test_edge_ring(well, ring, edge):
    assert is_edge_well(*layout.parse_well(well), ring) is edge


def test_percentiles_match_numpy():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 5000, (50, 70)).astype(np.uint16)
    qs = [0.5, 50, 99.5, 99.9, 100]
    np.testing.assert_allclose(uint16_percentiles(img, qs), np.percentile(img, qs), rtol=0, atol=1e-9)


def test_filter_table(plate, caplog):
    load_data, special = plate
    with caplog.at_level(logging.WARNING):
        table = filter_fields(
            load_data, FilterSettings.from_config(section("filter", {"edge_ring": 1}), workers=2), progress=False
        )

    # Every field of the grid: 7 wells x 2 sites, including the two absent from load_data.
    assert len(table) == 14
    assert table[["Metadata_Well", "Metadata_Site"]].drop_duplicates().shape[0] == 14
    for col in ["Metadata_Plate", "Metadata_Well", "Metadata_Row", "Metadata_Col", "Metadata_Site", "field"]:
        assert col in table.columns
    assert table["keep"].dtype == bool
    assert set(table["reason"]) <= {"", *REASONS}
    assert (table["keep"] == (table["reason"] == "")).all()
    for ch in layout.IF_CHANNELS:
        assert table[high_column(ch)].dtype == np.float64
        assert table[median_column(ch)].dtype == np.float64

    rows = _by_field(table)
    expected = {
        "r01c01f01": "unreadable",  # edge well and corrupt: unreadable comes first
        "r01c01f02": "edge_well",  # edge well and black: edge_well comes first
        "r02c02f01": "black_if",
        "r02c02f02": "unreadable",
        "r02c03f01": "",
        "r02c03f02": "missing",  # absent from load_data
        "r03c04f01": "unreadable",  # truncated
        "r03c04f02": "unreadable",  # float32
        "r03c05f01": "missing",  # ER path None
        "r03c05f02": "",
        "r04c06f01": "unreadable",  # wrong shape
        "r04c06f02": "",
        "r16c24f01": "missing",  # absent and edge
        "r16c24f02": "edge_well",
    }
    assert {f: rows[f]["reason"] for f in expected} == expected

    # Details name the channel and file.
    for (well, site), path in special.items():
        row, col = layout.parse_well(well)
        detail = rows[layout.field_id(row, col, site)]["detail"]
        assert Path(path).name in detail, detail
    assert "dtype" in rows["r03c04f02"]["detail"] and "RNA" in rows["r03c04f02"]["detail"]
    assert "shape" in rows["r04c06f01"]["detail"] and "LowZBF" in rows["r04c06f01"]["detail"]
    assert "ER" in rows["r03c05f01"]["detail"]
    assert "DNA" in rows["r02c02f01"]["detail"]
    assert "black_if" in rows["r01c01f02"]["detail"] and "Mito" in rows["r01c01f02"]["detail"]
    assert "load_data" in rows["r02c03f02"]["detail"]

    # Measurements: NaN where not read, numbers for read fields (edge wells included).
    assert np.isnan(rows["r02c03f02"][high_column("DNA")])
    assert np.isnan(rows["r03c05f01"][median_column("DNA")])
    assert rows["r16c24f02"][high_column("DNA")] > 1000
    assert 150 < rows["r02c03f01"][median_column("Mito")] < 250
    assert rows["r02c02f01"][high_column("DNA")] < 1.5 * rows["r02c02f01"][median_column("DNA")]

    # Unreadable files were logged by name.
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    for path in special.values():
        assert Path(path).name in logged


def test_edge_ring_off_and_two(plate):
    load_data, _ = plate
    off = _by_field(
        filter_fields(load_data, FilterSettings.from_config(section("filter", {"edge_ring": 0})), progress=False)
    )
    assert off["r01c01f02"]["reason"] == "black_if"
    assert off["r16c24f02"]["reason"] == ""
    two = _by_field(
        filter_fields(load_data, FilterSettings.from_config(section("filter", {"edge_ring": 2})), progress=False)
    )
    assert two["r04c06f02"]["reason"] == ""
    assert two["r03c05f02"]["reason"] == ""
    assert two["r02c03f01"]["reason"] == "edge_well"  # B03 is in ring 2


def test_black_ratio_threshold(plate):
    load_data, _ = plate
    # A ratio no field reaches makes every read field black (or an earlier reason).
    table = filter_fields(
        load_data,
        FilterSettings.from_config(section("filter", {"edge_ring": 0, "black_if_min_ratio": 1000.0})),
        progress=False,
    )
    assert not table["keep"].any()
    assert (table["reason"] != "").all()


def test_empty_load_data_names_plate(plate):
    load_data, _ = plate
    with pytest.raises(CellResDMError, match="BR0000009"):
        filter_fields(
            load_data.iloc[:0], FilterSettings.from_config(section("filter")), progress=False, plate="BR0000009"
        )


def test_bad_settings(plate):
    load_data, _ = plate
    with pytest.raises(ConfigError, match="edge_ring"):
        filter_fields(
            load_data, dataclasses.replace(FilterSettings.from_config(section("filter")), edge_ring=-1), progress=False
        )


def test_well_status():
    assert well_status([]) == "not imaged"
    assert well_status(["", ""]) == "all kept"
    assert well_status(["", "black_if"]) == "some dropped"
    assert well_status(["black_if", "missing", "black_if"]) == "black_if"
    assert well_status(["unreadable", "missing"]) == "missing"  # tie: precedence order


def test_plate_map(plate, tmp_path):
    load_data, _ = plate
    table = filter_fields(load_data, FilterSettings.from_config(section("filter")), progress=False)
    out = tmp_path / "qc" / f"{PLATE}_plate_map.png"
    plot_plate_map(table, out, PLATE)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5000
    import matplotlib.image

    img = matplotlib.image.imread(out)
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 500
    # No temporary files left beside it.
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
