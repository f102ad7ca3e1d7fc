"""Compare two results folders: are two runs (or one run before and after a change) the same?

Arrays must be bit-identical (zarr stores, TIFFs, model weights) and tables equal value for value. What a run
cannot repeat is left out: logs, Snakemake benchmarks, and every column or key that records time or speed
(:data:`TIMING`). Figures and HTML pages are compared through the numbers they are drawn from, not as bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellresdm.stores import store_exists

#: Column and key names of timings and speeds, which differ between two runs of the same config.
TIMING = re.compile(r"second|_per_s\b|per_s$|elapsed|duration|timestamp|wall", re.IGNORECASE)
#: Top-level folders of a results folder that hold only logs and timings.
SKIPPED_FOLDERS: tuple[str, ...] = ("logs", "benchmarks")
#: TensorBoard event files: wall-clock records only.
EVENT_FILE_PREFIX = "events.out.tfevents"
#: Files compared through their data rather than their bytes (rendered figures and pages).
RENDERED_SUFFIXES: tuple[str, ...] = (".png", ".html")
TABLE_SUFFIXES: tuple[str, ...] = (".parquet", ".csv", ".tsv")


@dataclass(frozen=True)
class Difference:
    """One difference between the two folders: the path relative to them and what differs."""

    path: str
    what: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


def _is_store(path: Path) -> bool:
    return path.is_dir() and store_exists(path)


def _items(root: Path) -> dict[str, Path]:
    """Files and zarr stores under ``root`` by relative path (hidden entries, logs and benchmarks left out)."""
    items: dict[str, Path] = {}

    def walk(folder: Path) -> None:
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith((".", EVENT_FILE_PREFIX)):
                continue
            rel = entry.relative_to(root).as_posix()
            if entry.is_dir() and entry.parent == root and entry.name in SKIPPED_FOLDERS:
                continue
            if _is_store(entry) or entry.is_file():
                items[rel] = entry
            elif entry.is_dir():
                walk(entry)

    walk(root)
    return items


#: Stands for a results folder's own location in paths recorded inside it (so two folders compare equal).
ROOT_TOKEN = "<results>"


def _relative(value: Any, root: Path) -> Any:
    """``value`` with the absolute location of the results folder ``root`` replaced by :data:`ROOT_TOKEN`."""
    if isinstance(value, str):
        return value.replace(str(root.absolute()), ROOT_TOKEN)
    if isinstance(value, dict):
        return {k: _relative(v, root) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_relative(v, root) for v in value]
    return value


def _without_timing(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if not TIMING.search(str(k))}
    if isinstance(value, list | tuple):
        return [_without_timing(v) for v in value]
    return value


def _read_table(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")


def _comparable(table: pd.DataFrame, root: Path) -> pd.DataFrame:
    """Without timing columns; text columns with the results folder's location replaced by :data:`ROOT_TOKEN`."""
    table = table[[c for c in table.columns if not TIMING.search(str(c))]].copy()
    for column in table.columns:
        if table[column].dtype == object or pd.api.types.is_string_dtype(table[column]):
            table[column] = table[column].map(lambda v: _relative(v, root))
    return table


def _compare_tables(old: pd.DataFrame, new: pd.DataFrame, roots: tuple[Path, Path]) -> str | None:
    old, new = _comparable(old, roots[0]), _comparable(new, roots[1])
    try:
        pd.testing.assert_frame_equal(old, new, check_exact=True)
    except AssertionError as exc:
        return " ".join(str(exc).split())[:400]
    return None


def _differences(old: np.ndarray, new: np.ndarray) -> tuple[int, float]:
    """(values that differ, largest absolute difference; 0 for integers) of two arrays of one shape and dtype;
    NaN equals NaN."""
    differ = old != new
    if old.dtype.kind not in "fc":
        return int(differ.sum()), 0.0
    differ &= ~(np.isnan(old) & np.isnan(new))
    if not differ.any():
        return 0, 0.0
    return int(differ.sum()), float(np.abs(old[differ].astype(np.float64) - new[differ].astype(np.float64)).max())


def _compare_arrays(old: Any, new: Any) -> str | None:
    """Two arrays (numpy or zarr) compared one field (first-axis slice) at a time, so a plate-sized store never
    has to fit in memory."""
    if old.shape != new.shape or old.dtype != new.dtype:
        return f"{old.dtype}{old.shape} vs {new.dtype}{new.shape}"
    blocks = range(old.shape[0]) if len(old.shape) > 1 else [Ellipsis]
    count, delta = 0, 0.0
    for block in blocks:
        n, d = _differences(np.asarray(old[block]), np.asarray(new[block]))
        count, delta = count + n, max(delta, d)
    if not count:
        return None
    size = int(np.prod(old.shape))
    if old.dtype.kind in "fc":
        return f"{count} of {size} values differ (max |difference| {delta:.3g})"
    return f"{count} of {size} values differ"


def _compare_stores(old: Path, new: Path, roots: tuple[Path, Path]) -> Iterator[str]:
    import zarr

    a, b = zarr.open_group(str(old), mode="r"), zarr.open_group(str(new), mode="r")
    a_arrays, b_arrays = dict(a.arrays()), dict(b.arrays())
    if set(a_arrays) != set(b_arrays):
        yield f"arrays {sorted(a_arrays)} vs {sorted(b_arrays)}"
    for name in sorted(set(a_arrays) & set(b_arrays)):
        problem = _compare_arrays(a_arrays[name], b_arrays[name])
        if problem:
            yield f"array {name!r}: {problem}"
    if _relative(_without_timing(dict(a.attrs)), roots[0]) != _relative(_without_timing(dict(b.attrs)), roots[1]):
        yield "attrs differ"
    for table in sorted({p.name for p in old.glob("*.parquet")} | {p.name for p in new.glob("*.parquet")}):
        if not ((old / table).is_file() and (new / table).is_file()):
            yield f"{table} is in one store only"
            continue
        problem = _compare_tables(pd.read_parquet(old / table), pd.read_parquet(new / table), roots)
        if problem:
            yield f"{table}: {problem}"


def _compare_torch(old: Path, new: Path, roots: tuple[Path, Path]) -> Iterator[str]:
    import torch

    def flat(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
        if isinstance(value, dict):
            for key, item in value.items():
                if not TIMING.search(str(key)):
                    yield from flat(item, f"{prefix}{key}.")
        elif isinstance(value, list | tuple) and any(isinstance(v, dict | torch.Tensor) for v in value):
            for i, item in enumerate(value):
                yield from flat(item, f"{prefix}{i}.")
        else:
            yield prefix.rstrip("."), value

    a = dict(flat(torch.load(old, map_location="cpu", weights_only=False)))
    b = dict(flat(torch.load(new, map_location="cpu", weights_only=False)))
    if set(a) != set(b):
        yield f"keys only in one file: {sorted(set(a) ^ set(b))[:10]}"
    for key in sorted(set(a) & set(b)):
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            problem = None
            if x.dtype != y.dtype or x.shape != y.shape:
                problem = f"{x.dtype}{tuple(x.shape)} vs {y.dtype}{tuple(y.shape)}"
            elif not torch.equal(x, y):
                problem = _compare_arrays(x.detach().double().numpy(), y.detach().double().numpy())
        else:
            x, y = _relative(x, roots[0]), _relative(y, roots[1])
            problem = None if _equal_values(x, y) else f"{x!r:.80} vs {y!r:.80}"
        if problem:
            yield f"{key}: {problem}"


def _equal_values(x: Any, y: Any) -> bool:
    try:
        return bool(x == y) if not isinstance(x, np.ndarray) else np.array_equal(x, y)
    except (TypeError, ValueError):
        return repr(x) == repr(y)


def _compare_hdf5(old: Path, new: Path) -> Iterator[str]:
    """Datasets of two HDF5 files (Keras weights): the bytes differ by the objects' modification times."""
    import h5py

    def datasets(path: Path) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}

        def keep(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                found[name] = obj[()]

        with h5py.File(path, "r") as handle:
            handle.visititems(keep)
        return found

    a, b = datasets(old), datasets(new)
    if set(a) != set(b):
        yield f"datasets only in one file: {sorted(set(a) ^ set(b))[:10]}"
    for name in sorted(set(a) & set(b)):
        problem = _compare_arrays(np.asarray(a[name]), np.asarray(b[name]))
        if problem:
            yield f"{name}: {problem}"


def _compare_files(old: Path, new: Path, roots: tuple[Path, Path]) -> Iterator[str]:
    suffix = old.suffix
    if suffix in TABLE_SUFFIXES:
        problem = _compare_tables(_read_table(old), _read_table(new), roots)
        if problem:
            yield problem
    elif suffix == ".json":
        a, b = (
            _relative(_without_timing(json.loads(p.read_text())), r) for p, r in zip((old, new), roots, strict=True)
        )
        if a != b:
            yield "JSON values differ"
    elif suffix in (".tif", ".tiff"):
        import tifffile

        problem = _compare_arrays(tifffile.imread(old), tifffile.imread(new))
        if problem:
            yield problem
    elif suffix == ".pt":
        yield from _compare_torch(old, new, roots)
    elif suffix == ".h5":
        yield from _compare_hdf5(old, new)
    elif suffix in RENDERED_SUFFIXES:
        return
    elif old.read_bytes() != new.read_bytes():
        yield "contents differ"


def compare_results(old: str | Path, new: str | Path) -> list[Difference]:
    """Every difference between the results folders ``old`` and ``new`` (empty: the runs agree).

    Zarr stores are compared array by array and attribute by attribute, tables value by value (exactly), model
    files tensor by tensor; timings (:data:`TIMING`), logs and benchmarks are left out, figures and HTML pages
    are compared through their data files only.
    """
    old, new = Path(old), Path(new)
    for root in (old, new):
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: not a results folder")
    a, b = _items(old), _items(new)
    differences = [Difference(p, "only in the first folder") for p in sorted(set(a) - set(b))]
    differences += [Difference(p, "only in the second folder") for p in sorted(set(b) - set(a))]
    for rel in sorted(set(a) & set(b)):
        if _is_store(a[rel]) != _is_store(b[rel]):
            differences.append(Difference(rel, "a zarr store in one folder, a file in the other"))
            continue
        compare = _compare_stores if _is_store(a[rel]) else _compare_files
        differences += [Difference(rel, what) for what in compare(a[rel], b[rel], (old, new))]
    return differences
