"""Speed of the data stages at the real field size (1080 x 1080), printed as a table.

Run with `make bench`. Figures are printed, not asserted: a benchmark is not a timed test.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from cellresdm.config import section
from cellresdm.dataset import NormSettings, PlateInput, build_dataset
from cellresdm.download import download_plate
from cellresdm.filters import FilterSettings, filter_fields
from cellresdm.groundtruth import GroundTruthSettings, run_cellprofiler
from cellresdm.synth import SynthConfig, SynthPlate, Treatment, make_field, write_plate

REPO = Path(__file__).resolve().parents[1]
CELLPROFILER = REPO / ".venv-cp" / "bin" / "cellprofiler"
PLATE = "BENCH0001"
FIGURES: list[tuple[str, str, str]] = []


def record(stage: str, figure: str, note: str) -> None:
    FIGURES.append((stage, figure, note))
    print(f"[bench] {stage}: {figure} ({note})")


@pytest.fixture(scope="module", autouse=True)
def print_table():
    yield
    width = max(len(s) for s, _, _ in FIGURES) if FIGURES else 0
    print("\n\nData-stage benchmark (this machine, 1080 x 1080 fields)")
    for stage, figure, note in FIGURES:
        print(f"  {stage:<{width}}  {figure:>16}  {note}")


@pytest.fixture(scope="module")
def plate_1080(tmp_path_factory) -> tuple[Path, Path]:
    """A synthetic U2OS plate of 16 real-size fields in the bucket layout, uploaded to nothing yet."""
    root = tmp_path_factory.mktemp("gallery")
    truth = tmp_path_factory.mktemp("truth")
    config = SynthConfig(
        field_size=1080, wells=("B02", "B03", "C02", "C03"), sites=4, black_if_wells=(), missing_fields=(), seed=0
    )
    start = time.perf_counter()
    write_plate(root, truth, SynthPlate(PLATE, "U2OS"), config)
    record("synthetic plate", f"{(time.perf_counter() - start) / 16:.2f} s/field", "16 fields incl. LZW TIFFs")
    return root, truth


def test_synth_field_speed():
    import numpy as np

    for size in (256, 1080):
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        for _ in range(5):
            make_field("A549", size, rng, Treatment())
        record(f"synthetic field {size}", f"{(time.perf_counter() - start) / 5:.3f} s/field", "8 channels + labels")


def test_download_throughput(moto_s3, plate_1080, tmp_path):
    root, _ = plate_1080
    for path in root.rglob("*"):
        if path.is_file():
            moto_s3.client.put_object(
                Bucket="cellpainting-gallery", Key=str(path.relative_to(root)), Body=path.read_bytes()
            )

    def download() -> pd.DataFrame:
        return download_plate(
            PLATE,
            tmp_path / "s3" / "images",
            tmp_path / "s3" / "load_data.parquet",
            "s3://cellpainting-gallery",
            endpoint_url=moto_s3.endpoint_url,
            workers=8,
            progress=False,
        )

    start = time.perf_counter()
    table = download()
    seconds = time.perf_counter() - start
    size = sum(Path(p).stat().st_size for c in table.columns if c.startswith("path_") for p in table[c])
    record(
        "download (local S3, moto)",
        f"{size / 1e6 / seconds:.1f} MB/s",
        f"{len(table) * 8} LZW files, {size / 1e6:.0f} MB, 8 workers, {seconds:.1f} s incl. session and listing",
    )
    start = time.perf_counter()
    download()
    record("download rerun (all complete)", f"{time.perf_counter() - start:.2f} s", "sizes checked, nothing fetched")


@pytest.fixture(scope="module")
def downloaded(plate_1080, tmp_path_factory) -> pd.DataFrame:
    root, _ = plate_1080
    raw = tmp_path_factory.mktemp("raw")
    return download_plate(PLATE, raw / "images", raw / "load_data.parquet", str(root), progress=False)


@pytest.fixture(scope="module")
def fields(downloaded) -> pd.DataFrame:
    start = time.perf_counter()
    table = filter_fields(
        downloaded,
        FilterSettings.from_config(section("filter", {"edge_ring": 0}), workers=2),
        progress=False,
        plate=PLATE,
    )
    record("filter", f"{len(table) / (time.perf_counter() - start):.1f} fields/s", "8 channels read, 2 threads")
    return table


@pytest.fixture(scope="module")
def groundtruth_dir(fields, downloaded, tmp_path_factory) -> Path:
    if not CELLPROFILER.exists():
        pytest.skip("no .venv-cp: run make setup")
    out = tmp_path_factory.mktemp("gt")
    start = time.perf_counter()
    index = run_cellprofiler(
        fields,
        downloaded,
        out,
        GroundTruthSettings.from_config(section("groundtruth")),
        cellprofiler=str(CELLPROFILER),
        workers=2,
        progress=False,
    )
    seconds = time.perf_counter() - start
    record(
        "CellProfiler ground truth",
        f"{seconds / len(index):.2f} s/field",
        f"{len(index)} fields, 2 processes, {seconds:.0f} s incl. JVM start",
    )
    return out


def test_groundtruth_and_dataset(fields, downloaded, groundtruth_dir, tmp_path):
    plate = PlateInput(PLATE, "U2OS", fields, downloaded, groundtruth_dir)
    for scope, resize in (("plate", 512), ("image", None)):
        summary = build_dataset(
            [plate],
            tmp_path / f"{scope}.zarr",
            NormSettings.from_config(section("dataset", {"norm_scope": scope})),
            resize=resize,
            progress=False,
        )
        record(
            f"dataset ({scope} norm, resize {resize})",
            f"{summary['fields_per_s']:.1f} fields/s",
            f"{summary['n_fields']} fields",
        )
