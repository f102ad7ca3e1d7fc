"""cellresdm.gallery against a real local S3 (moto server on 127.0.0.1), a fault-injecting proxy and a local
directory root. No mock objects: every download goes over HTTP through s3fs, anonymously."""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import pandas as pd
import pytest
import s3_fixtures
from s3_fixtures import (
    BUCKET,
    PLATE,
    PLATE_GAPS,
    PLATE_SITES,
    PLATE_WELLS,
    FaultPlan,
    FaultProxy,
    GalleryS3,
    MotoS3,
    make_plate,
    write_plate_to_dir,
)

from cellresdm import layout
from cellresdm.download import download_plate
from cellresdm.errors import GalleryError
from cellresdm.gallery import fetch_load_data, key_column, read_load_data

# the fixtures of s3_fixtures, made visible to pytest in this module
moto_s3, gallery_s3, fault_proxy = s3_fixtures.moto_s3, s3_fixtures.gallery_s3, s3_fixtures.fault_proxy

ROOT = f"s3://{BUCKET}"
FAST = {"backoff": 0.001, "progress": False}


def _download(plate: str, out: Path, root: str, **kwargs) -> pd.DataFrame:
    """Download ``plate`` as the pipeline lays it out: images in ``out/images``, the table in ``out``."""
    return download_plate(plate, out / "images", out / "load_data.parquet", root, **kwargs)


def _check_identical(table: pd.DataFrame, objects: dict[str, bytes]) -> int:
    """Every present path of the table holds exactly the bytes of its key; returns the number checked."""
    n = 0
    for ch in layout.ALL_CHANNELS:
        for key, path in zip(table[key_column(ch)], table[layout.path_column(ch)], strict=True):
            if path is None:
                assert key not in objects, f"{key} is in the bucket but got no path"
                continue
            assert Path(path).read_bytes() == objects[key], path
            n += 1
    return n


def _image_gets(proxy: FaultProxy, keys: list[str]) -> int:
    return sum(proxy.counts.gets_per_key[k] for k in keys)


def _mtimes(images: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in images.iterdir()}


# ----------------------------------------------------------------------------------------------- download


def test_full_download_is_byte_identical(gallery_s3: GalleryS3, tmp_path: Path) -> None:
    plate = gallery_s3.plate
    table = _download(
        PLATE,
        tmp_path,
        ROOT,
        endpoint_url=gallery_s3.endpoint_url,
        workers=4,
        **FAST,
    )
    assert len(table) == len(PLATE_WELLS) * len(PLATE_SITES)
    assert _check_identical(table, plate.objects) == len(plate.image_keys) == len(table) * 8
    stats = table.attrs["download"]
    assert (stats["fetched"], stats["skipped"], stats["missing"]) == (len(plate.image_keys), 0, 0)
    assert stats["bytes_fetched"] == plate.nbytes
    on_disk = pd.read_parquet(tmp_path / "load_data.parquet")
    pd.testing.assert_frame_equal(on_disk, table, check_dtype=False)
    assert set(table["plate_dir"]) == {plate.plate_dir}
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(
        k.rsplit("/", 1)[1] for k in plate.image_keys
    )


def test_subset_of_wells_and_sites(gallery_s3: GalleryS3, tmp_path: Path) -> None:
    table = _download(
        PLATE,
        tmp_path,
        ROOT,
        endpoint_url=gallery_s3.endpoint_url,
        wells=["C05", "B02"],
        sites=[2],
        **FAST,
    )
    assert sorted(table["field"]) == ["r02c02f02", "r03c05f02"]
    assert _check_identical(table, gallery_s3.plate.objects) == 16
    assert len(list((tmp_path / "images").iterdir())) == 16
    with pytest.raises(GalleryError, match="no field"):
        download_plate(
            PLATE,
            tmp_path / "none",
            tmp_path / "none.parquet",
            ROOT,
            endpoint_url=gallery_s3.endpoint_url,
            wells=["P24"],
            **FAST,
        )


def test_rerun_skips_everything(gallery_s3: GalleryS3, tmp_path: Path) -> None:
    _download(PLATE, tmp_path, ROOT, endpoint_url=gallery_s3.endpoint_url, **FAST)
    before = _mtimes(tmp_path / "images")
    time.sleep(0.01)
    table = _download(PLATE, tmp_path, ROOT, endpoint_url=gallery_s3.endpoint_url, **FAST)
    stats = table.attrs["download"]
    assert stats["fetched"] == 0 and stats["skipped"] == len(gallery_s3.plate.image_keys)
    assert _mtimes(tmp_path / "images") == before
    _check_identical(table, gallery_s3.plate.objects)


def test_crash_leftovers_are_resumed(gallery_s3: GalleryS3, tmp_path: Path) -> None:
    """A run killed mid-way leaves missing files, files of the wrong size and ``.part`` temporaries."""
    _download(PLATE, tmp_path, ROOT, endpoint_url=gallery_s3.endpoint_url, **FAST)
    images = tmp_path / "images"
    files = sorted(images.iterdir())
    for p in files[:3]:
        p.unlink()
    for p in files[3:5]:
        p.write_bytes(p.read_bytes()[:100])
    stale = [images / f".{files[0].name}.abc123.part", images / f".{files[7].name}.zz9.part"]
    for p in stale:
        p.write_bytes(b"partial")
    untouched = {p.name: p.stat().st_mtime_ns for p in files[5:]}

    table = _download(PLATE, tmp_path, ROOT, endpoint_url=gallery_s3.endpoint_url, **FAST)
    assert table.attrs["download"]["fetched"] == 5
    assert not any(p.exists() for p in stale)
    assert {p.name: p.stat().st_mtime_ns for p in files[5:]} == untouched
    _check_identical(table, gallery_s3.plate.objects)


def test_interrupted_transfers_leave_no_complete_looking_file(
    gallery_s3: GalleryS3, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    """Bodies cut halfway with no retries allowed: the run fails, leaves only whole files, and a rerun
    fetches exactly the rest."""
    plate = gallery_s3.plate
    fault_proxy.reset(FaultPlan(cut_every=5))
    with pytest.raises(GalleryError, match=plate.plate_dir):
        _download(
            PLATE,
            tmp_path,
            ROOT,
            endpoint_url=fault_proxy.endpoint_url,
            retries=0,
            workers=2,
            **FAST,
        )
    assert fault_proxy.counts.injected_cuts >= 1
    images = tmp_path / "images"
    by_name = {k.rsplit("/", 1)[1]: k for k in plate.image_keys}
    present = [p for p in images.iterdir()]
    assert all(not p.name.startswith(".") for p in present), "a .part temporary was left behind"
    for p in present:
        assert p.read_bytes() == plate.objects[by_name[p.name]], f"{p} looks complete but is not"
    assert not (tmp_path / "load_data.parquet").exists()

    fault_proxy.reset()
    table = _download(PLATE, tmp_path, ROOT, endpoint_url=fault_proxy.endpoint_url, **FAST)
    stats = table.attrs["download"]
    assert stats["fetched"] == len(plate.image_keys) - len(present)
    assert stats["skipped"] == len(present)
    assert _image_gets(fault_proxy, plate.image_keys) == stats["fetched"]
    _check_identical(table, plate.objects)


def test_cut_bodies_are_retried(gallery_s3: GalleryS3, fault_proxy: FaultProxy, tmp_path: Path) -> None:
    fault_proxy.reset(FaultPlan(cut_first=1))
    table = _download(
        PLATE,
        tmp_path,
        ROOT,
        endpoint_url=fault_proxy.endpoint_url,
        retries=2,
        **FAST,
    )
    keys = gallery_s3.plate.image_keys
    n = len(keys)
    assert fault_proxy.counts.injected_cuts == n + 1  # every image and load_data.csv once
    assert _image_gets(fault_proxy, keys) == 2 * n  # s3fs did not resume on its own: we refetched the file
    assert _check_identical(table, gallery_s3.plate.objects) == n


def test_transient_503_are_retried(gallery_s3: GalleryS3, fault_proxy: FaultProxy, tmp_path: Path) -> None:
    fault_proxy.reset(FaultPlan(fail_first=2, fail_every=7))
    table = _download(
        PLATE,
        tmp_path,
        ROOT,
        endpoint_url=fault_proxy.endpoint_url,
        retries=6,
        **FAST,
    )
    n = len(gallery_s3.plate.image_keys)
    assert fault_proxy.counts.injected_503 >= 2 * n
    assert table.attrs["download"]["fetched"] == n
    assert _check_identical(table, gallery_s3.plate.objects) == n


def test_permanent_503_names_the_key(gallery_s3: GalleryS3, fault_proxy: FaultProxy, tmp_path: Path) -> None:
    key = gallery_s3.plate.image_key("B03", 2, "ER")
    fault_proxy.reset(FaultPlan(fail_keys=(key,)))
    with pytest.raises(GalleryError, match=rf"{key}.*3 attempt.*SlowDown|{key}.*3 attempt.*reduce") as err:
        _download(
            PLATE,
            tmp_path,
            ROOT,
            endpoint_url=fault_proxy.endpoint_url,
            retries=2,
            workers=1,
            **FAST,
        )
    assert fault_proxy.counts.gets_per_key[key] == 3  # exactly retries + 1: no hidden botocore/s3fs retries
    assert "last error" in str(err.value)
    images = tmp_path / "images"
    assert not (images / key.rsplit("/", 1)[1]).exists()


def test_access_denied_is_not_retried(gallery_s3: GalleryS3, fault_proxy: FaultProxy, tmp_path: Path) -> None:
    key = gallery_s3.plate.image_key("B02", 1, "DNA")
    fault_proxy.reset(FaultPlan(deny_keys=(key,)))
    with pytest.raises(GalleryError, match=rf"{key}: access denied"):
        _download(
            PLATE,
            tmp_path,
            ROOT,
            endpoint_url=fault_proxy.endpoint_url,
            retries=3,
            **FAST,
        )
    assert fault_proxy.counts.gets_per_key[key] == 1


def test_plate_absent(gallery_s3: GalleryS3, tmp_path: Path) -> None:
    with pytest.raises(GalleryError, match=r"plate NOPE0001 is not in the gallery.*NOPE0001/load_data\.csv"):
        _download(
            "NOPE0001",
            tmp_path,
            ROOT,
            endpoint_url=gallery_s3.endpoint_url,
            **FAST,
        )
    with pytest.raises(GalleryError, match="NOPE0002"):
        fetch_load_data("NOPE0002", ROOT, endpoint_url=gallery_s3.endpoint_url)


def test_keys_absent_from_the_bucket_get_no_path(gallery_s3: GalleryS3, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING)
    table = _download(
        PLATE_GAPS,
        tmp_path,
        ROOT,
        endpoint_url=gallery_s3.endpoint_url,
        **FAST,
    )
    table = table.set_index("field")
    assert table.loc["r02c03f02", [layout.path_column(c) for c in layout.ALL_CHANNELS]].isna().all()
    assert table.loc["r02c02f01", layout.path_column("Mito")] is None
    assert table.loc["r02c02f01", layout.path_column("DNA")] is not None
    assert table.attrs["download"]["missing"] == 9
    assert "absent from the gallery" in caplog.text
    stored = pd.read_parquet(tmp_path / "load_data.parquet").set_index("field")
    assert pd.isna(stored.loc["r02c02f01", layout.path_column("Mito")])  # None, or NaN under pandas >= 3
    _check_identical(table.reset_index(), gallery_s3.gaps.objects)


def test_local_directory_root(gallery_s3: GalleryS3, tmp_path: Path) -> None:
    root = write_plate_to_dir(gallery_s3.plate, tmp_path / "mirror")
    out = tmp_path / "raw"
    table = _download(PLATE, out, str(root), wells=["B03"], **FAST)
    assert _check_identical(table, gallery_s3.plate.objects) == 16
    rerun = _download(PLATE, out, str(root), wells=["B03"], **FAST)
    assert rerun.attrs["download"]["fetched"] == 0
    # an empty URL cell: no key, no path, no crash
    csv = root / gallery_s3.plate.load_data_key
    df = pd.read_csv(csv)
    df.loc[(df["Metadata_Well"] == "B03") & (df["Metadata_Site"] == 1), "URL_OrigDNA"] = ""
    df.to_csv(csv, index=False)
    blank = _download(PLATE, out, str(root), wells=["B03"], **FAST).set_index("field")
    assert pd.isna(blank.loc["r02c03f01", key_column("DNA")])
    assert blank.loc["r02c03f01", layout.path_column("DNA")] is None
    assert blank.loc["r02c03f02", layout.path_column("DNA")] is not None
    with pytest.raises(GalleryError, match="FAKE9999"):
        _download("FAKE9999", out, str(root), **FAST)


def test_throughput(moto_s3: MotoS3, tmp_path: Path) -> None:
    """40 uncompressed 1080x1080 uint16 fields (~2.3 MB each) from the local moto server; prints MB/s."""
    plate = make_plate("THRU0001", ("D04", "D05", "D06", "D07", "D08"), (1,), size=1080, compression=None, seed=3)
    moto_s3.upload(plate)
    start = time.perf_counter()
    table = _download(
        "THRU0001",
        tmp_path,
        ROOT,
        endpoint_url=moto_s3.endpoint_url,
        workers=8,
        progress=False,
    )
    wall = time.perf_counter() - start
    stats = table.attrs["download"]
    assert stats["fetched"] == 40 and stats["bytes_fetched"] == plate.nbytes
    assert _check_identical(table, plate.objects) == 40
    print(
        f"\n[throughput] moto on 127.0.0.1, 8 workers: {stats['fetched']} files, "
        f"{stats['bytes_fetched'] / 1e6:.1f} MB in {stats['seconds']:.2f} s = {stats['mb_per_s']:.1f} MB/s "
        f"(whole call incl. load_data and listing {wall:.2f} s)"
    )


# ----------------------------------------------------------------------------------------------- load_data


def test_filename_pathname_form_gives_the_same_keys(gallery_s3: GalleryS3) -> None:
    plate = gallery_s3.plate
    url_form = read_load_data(io.StringIO(plate.load_data_csv), PLATE)
    df = pd.read_csv(io.StringIO(plate.load_data_csv))
    mount = df.copy()
    s3_paths = df.copy()
    for ch in layout.ALL_CHANNELS:
        urls = df.pop(layout.url_column(ch))
        old_mount = f"/home/ubuntu/bucket/projects/2020_11_04_CPJUMP1/{plate.plate_dir}/Images"
        for frame, prefix in ((mount, old_mount), (s3_paths, None)):
            frame.pop(layout.url_column(ch))
            frame[layout.filename_column(ch)] = urls.str.rsplit("/", n=1).str[1]
            frame[layout.pathname_column(ch)] = prefix or urls.str.rsplit("/", n=1).str[0] + "/"
    # another plate's rows in the same file are dropped
    other = mount.iloc[:1].copy()
    other["Metadata_Plate"] = "OTHER"
    mount = pd.concat([mount, other])
    for frame in (mount, s3_paths):
        parsed = read_load_data(io.StringIO(frame.to_csv(index=False)), PLATE)
        pd.testing.assert_frame_equal(parsed, url_form)
    assert set(url_form[key_column("DNA")]) <= set(plate.objects)
    assert list(url_form["Metadata_Row"]) == [2, 2, 2, 2, 3, 3]


def test_missing_channel_column(gallery_s3: GalleryS3) -> None:
    df = pd.read_csv(io.StringIO(gallery_s3.plate.load_data_csv)).drop(columns=["URL_OrigMito"])
    with pytest.raises(
        GalleryError,
        match=r"plate FAKE0001.*channel Mito \(URL_OrigMito or "
        r"FileName_OrigMito/PathName_OrigMito\)",
    ):
        read_load_data(io.StringIO(df.to_csv(index=False)), PLATE)


def test_load_data_errors(gallery_s3: GalleryS3) -> None:
    df = pd.read_csv(io.StringIO(gallery_s3.plate.load_data_csv))
    with pytest.raises(GalleryError, match="no rows for plate OTHER"):
        read_load_data(io.StringIO(df.to_csv(index=False)), "OTHER")
    dup = pd.concat([df, df.iloc[:1]])
    with pytest.raises(GalleryError, match=r"more than once.*r02c02f01"):
        read_load_data(io.StringIO(dup.to_csv(index=False)), PLATE)
    bad = df.copy()
    bad.loc[1, "Metadata_Well"] = "Z99"
    with pytest.raises(GalleryError, match=r"unparsable well 'Z99'.*Metadata_Well"):
        read_load_data(io.StringIO(bad.to_csv(index=False)), PLATE)
    no_row_col = df.drop(columns=["Metadata_Row", "Metadata_Col"])
    parsed = read_load_data(io.StringIO(no_row_col.to_csv(index=False)), PLATE)
    assert list(parsed["Metadata_Col"]) == [2, 2, 3, 3, 5, 5]
