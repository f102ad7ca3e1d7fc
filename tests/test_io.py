"""Atomic writes and validated TIFF reads."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import tifffile

from cellresdm import io
from cellresdm.errors import ImageError
from cellresdm.io import atomic_dir, atomic_path, read_tiff, write_tiff
from cellresdm.masks import boundaries_from_labels


def test_write_and_read_lzw_roundtrip(tmp_path):
    image = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    path = tmp_path / "a.tiff"
    write_tiff(path, image)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.LZW
    np.testing.assert_array_equal(read_tiff(path, shape=(64, 64), dtype=np.uint16), image)
    assert [p.name for p in tmp_path.iterdir()] == ["a.tiff"]  # no temporary left behind


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_read_tiff_errors_name_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.tiff"
    corrupt.write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    with pytest.raises(ImageError, match="corrupt.tiff: unreadable TIFF"):
        read_tiff(corrupt)
    good = tmp_path / "good.tiff"
    write_tiff(good, np.random.default_rng(0).integers(0, 60000, (128, 128), dtype=np.uint16))
    truncated = tmp_path / "truncated.tiff"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageError, match="truncated.tiff"):
        read_tiff(truncated)
    with pytest.raises(ImageError, match=r"good.tiff: expected shape \(64, 64\)"):
        read_tiff(good, shape=(64, 64))
    with pytest.raises(ImageError, match="good.tiff: expected dtype uint8"):
        read_tiff(good, dtype=np.uint8)
    with pytest.raises(ImageError, match="missing.tiff: image file is missing"):
        read_tiff(tmp_path / "missing.tiff")


def test_boundaries_thickness():
    labels = np.zeros((20, 20), np.uint16)
    labels[5:15, 5:15] = 1
    one = boundaries_from_labels(labels, thickness=1)
    assert one.sum() == 36  # perimeter of a 10x10 square, inside the object
    two = boundaries_from_labels(labels, thickness=2)
    assert two.sum() == 36 + 28 and not two[labels == 0].any()
    touching = np.zeros((10, 10), np.uint16)
    touching[:, :5], touching[:, 5:] = 1, 2
    edges = boundaries_from_labels(touching, thickness=1)
    assert edges[:, 4].all() and edges[:, 5].all()  # both sides of a shared border


@pytest.fixture(params=[0o022, 0o007], ids=["umask0022", "umask0007"])
def umask(request):
    """Run under this umask (restored afterwards)."""
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("from_proc", [True, False], ids=["proc", "set-and-restore"])
def test_the_umask_is_read_without_changing_it(umask, from_proc, monkeypatch):
    if not from_proc:  # a system without /proc
        monkeypatch.setattr(io, "PROC_STATUS", "/nonexistent/status")
    assert io.current_umask() == umask
    assert os.umask(umask) == umask


def test_atomic_writes_get_the_modes_of_plain_writes(tmp_path, umask):
    """Files and folders (a zarr store: a folder of folders and files) as a plain write leaves them."""
    plain_file, plain_dir = tmp_path / "plain.txt", tmp_path / "plain_store"
    plain_file.write_text("x")
    plain_dir.mkdir()
    with atomic_path(tmp_path / "atomic.txt") as tmp:
        tmp.write_text("x")
    with atomic_dir(tmp_path / "atomic_store") as tmp:
        (tmp / "group").mkdir()
        with atomic_path(tmp / "group" / "zarr.json") as inner:
            inner.write_text("{}")
    assert _mode(plain_file) == 0o666 & ~umask and _mode(plain_dir) == 0o777 & ~umask
    assert _mode(tmp_path / "atomic.txt") == _mode(plain_file)
    assert _mode(tmp_path / "atomic_store") == _mode(plain_dir)
    assert _mode(tmp_path / "atomic_store" / "group") == _mode(plain_dir)
    assert _mode(tmp_path / "atomic_store" / "group" / "zarr.json") == _mode(plain_file)


def test_a_killed_writers_parts_are_removed_by_the_next_write(tmp_path):
    """A SIGKILL leaves the temporary sibling of an output behind; the next write of that output removes it."""
    store, table = tmp_path / "s.zarr", tmp_path / "t.parquet"
    stale_dir = tmp_path / ".s.zarr.part.tmp"
    stale_dir.mkdir()
    (stale_dir / "chunk").write_bytes(b"half")
    stale_file = tmp_path / ".t.parquet.part.parquet"
    stale_file.write_bytes(b"half")
    unrelated = [tmp_path / ".s.zarr.keep", tmp_path / ".other.zarr.part.tmp"]
    for path in unrelated:
        path.write_text("x")
    with atomic_dir(store) as tmp:
        (tmp / "a").write_text("1")
    with atomic_path(table) as tmp:
        tmp.write_text("2")
    assert not stale_dir.exists() and not stale_file.exists()
    assert all(path.exists() for path in unrelated) and (store / "a").read_text() == "1" and table.read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".s.zarr") or p.name.startswith(".t.")) == [
        ".s.zarr.keep"
    ]
