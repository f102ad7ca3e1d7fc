"""The pipeline's zarr v3 stores: the one module that knows their arrays, tables and attributes (docs/design.md
section 5).

Every store is a zarr v3 group directory written with :func:`cellresdm.io.atomic_dir` (readers never see a
half-written one), one field per chunk, with a field table (one row per field, in array order)::

    dataset       bf (N, 3, H, W) float16, if (N, 5, H, W) float16, boundaries (N, 2, H, W) uint8,
                  labels (N, 2, H, W) uint16; fields and norm tables; attrs of the build settings
    predictions   if (N, 5, H, W) float16, boundaries (N, 2, H, W) float16, boundaries_binary (N, 2, H, W)
                  uint8, optional if_std / boundaries_std float16; fields table; attrs method, sampling, ...
    instances     nuclei and/or cells (N, H, W) int32; fields table; attrs source, objects, ...

Readers: :func:`open_dataset`, :func:`open_predictions`, :func:`open_instances` check the store and return a
small class holding the (lazy) arrays, the attrs and the field table. Writers: :func:`create_dataset`,
:func:`create_predictions`, :func:`create_instances` (field by field, then ``finish``) and
:func:`write_instances` (whole arrays). Every problem raises :class:`CellResDMError` naming the store and the
missing or invalid array, attribute or table.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import zarr

from cellresdm import layout
from cellresdm.errors import CellResDMError
from cellresdm.io import atomic_dir

_FIELDS = "fields.parquet"
_NORM = "norm.parquet"
_GROUP_FILE = "zarr.json"

#: Channels of each 4-D array of a dataset store.
DATASET_ARRAYS: dict[str, int] = {
    "bf": len(layout.BF_CHANNELS),
    "if": len(layout.IF_CHANNELS),
    "boundaries": len(layout.OBJECT_CHANNELS),
    "labels": len(layout.OBJECT_CHANNELS),
}
#: dtype of each array of a dataset store.
_DATASET_DTYPES: dict[str, str] = {"bf": "float16", "if": "float16", "boundaries": "uint8", "labels": "uint16"}
#: Channels of each 4-D array of a prediction store (the ``*_std`` arrays only with several samples).
PREDICTION_ARRAYS: dict[str, int] = {
    "if": len(layout.IF_CHANNELS),
    "if_std": len(layout.IF_CHANNELS),
    "boundaries": len(layout.OBJECT_CHANNELS),
    "boundaries_std": len(layout.OBJECT_CHANNELS),
    "boundaries_binary": len(layout.OBJECT_CHANNELS),
}


def _error(path: Path, why: str) -> CellResDMError:
    return CellResDMError(f"{path}: {why}")


def store_exists(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a finished zarr store (its group metadata exists)."""
    return (Path(path) / _GROUP_FILE).is_file()


# ----------------------------------------------------------------------------------------------- reading


def _open_group(path: Path, kind: str) -> zarr.Group:
    if not store_exists(path):
        raise _error(path, f"{kind} is missing (no {_GROUP_FILE})")
    try:
        return zarr.open_group(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for corrupt metadata
        raise _error(path, f"unreadable {kind} ({type(exc).__name__}: {exc})") from exc


def _array(root: zarr.Group, path: Path, kind: str, name: str, shape: str, ndim: int) -> zarr.Array:
    """Array ``name`` of the group; ``shape`` describes it, e.g. "(N, 2, H, W)", in the error."""
    try:
        array = root[name]
    except KeyError:
        raise _error(path, f"{kind} lacks array '{name}'") from None
    except Exception as exc:  # corrupt array metadata
        raise _error(path, f"{kind} array '{name}' is unreadable ({type(exc).__name__}: {exc})") from exc
    if not isinstance(array, zarr.Array) or array.ndim != ndim:
        raise _error(path, f"{kind} array '{name}' must be {shape}, got {getattr(array, 'shape', 'a group')}")
    return array


def _table(path: Path, kind: str, name: str, columns: Sequence[str] = ()) -> pd.DataFrame:
    file = path / name
    if not file.is_file():
        raise _error(path, f"{kind} lacks table '{name}'")
    try:
        table = pd.read_parquet(file)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise _error(path, f"{kind} table '{name}' is unreadable ({type(exc).__name__}: {exc})") from exc
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise _error(path, f"{kind} table '{name}' lacks column(s) {', '.join(missing)}")
    return table


def _images(
    root: zarr.Group, path: Path, kind: str, channels: Mapping[str, int], names: Sequence[str]
) -> dict[str, zarr.Array]:
    """The 4-D arrays ``names`` (N, C, H, W) with C from ``channels``, all of one N, H and W."""
    arrays = {}
    for name in names:
        if name not in channels:
            raise ValueError(f"{kind} has no array named {name!r} (known: {', '.join(channels)})")
        array = _array(root, path, kind, name, f"(N, {channels[name]}, H, W)", 4)
        if array.shape[1] != channels[name]:
            raise _error(path, f"{kind} array '{name}' must be (N, {channels[name]}, H, W), got {array.shape}")
        arrays[name] = array
    if arrays:
        first = next(iter(arrays))
        n, _, h, w = arrays[first].shape
        for name, array in arrays.items():
            if array.shape[0] != n or array.shape[2:] != (h, w):
                raise _error(
                    path, f"{kind} array '{name}' has shape {array.shape}, '{first}' has {arrays[first].shape}"
                )
    return arrays


@dataclass(frozen=True, eq=False)
class Store:
    """A checked store: its path, the arrays that were asked for (lazy zarr arrays: ``store["if"][i]`` reads one
    field), the root attributes and the field table (row i describes field i). Made by the ``open_*`` functions."""

    path: Path
    arrays: dict[str, zarr.Array]
    attrs: dict[str, Any]
    fields: pd.DataFrame

    kind: ClassVar[str] = "store"

    def __getitem__(self, name: str) -> zarr.Array:
        if name not in self.arrays:
            raise KeyError(f"{self.path}: array {name!r} was not opened (opened: {', '.join(self.arrays)})")
        return self.arrays[name]

    def __len__(self) -> int:
        """Number of fields N."""
        return len(self.fields)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the fields (of the opened arrays, which share it)."""
        if not self.arrays:
            raise ValueError(f"{self.path}: no array was opened, so the field size is unknown")
        return tuple(next(iter(self.arrays.values())).shape[-2:])

    def attr(self, name: str) -> Any:
        """Root attribute ``name``; CellResDMError naming the store when it is missing."""
        if name not in self.attrs:
            raise _error(self.path, f"{self.kind} lacks attribute '{name}'")
        return self.attrs[name]


def _check_rows(store: Store) -> None:
    n = next(iter(store.arrays.values())).shape[0] if store.arrays else len(store.fields)
    if n != len(store.fields):
        raise _error(
            store.path, f"{store.kind} holds {n} fields but its table '{_FIELDS}' has {len(store.fields)} rows"
        )


@dataclass(frozen=True, eq=False)
class DatasetStore(Store):
    """A dataset split ``datasets/{split}.zarr`` (see the module docstring)."""

    kind: ClassVar[str] = "dataset"

    def norm(self) -> pd.DataFrame:
        """The normalisation table: scope, plate, field, index, channel, low, high (one row per plate or image
        and channel)."""
        return _table(self.path, self.kind, _NORM)


@dataclass(frozen=True, eq=False)
class PredictionStore(Store):
    """The predictions of one method ``predictions/{method}/{split}.zarr`` (see the module docstring)."""

    kind: ClassVar[str] = "prediction store"


@dataclass(frozen=True, eq=False)
class InstanceStore(Store):
    """Instance labels of one source ``segmentation/{source}_instances.zarr``: ``arrays`` holds ``nuclei``
    and/or ``cells`` (N, H, W) int32 (the names in attrs ``objects``, in :data:`layout.OBJECT_CHANNELS` order)."""

    kind: ClassVar[str] = "instance store"

    @property
    def source(self) -> str:
        """The method or baseline that made the instances."""
        return str(self.attrs["source"])

    def load(self) -> dict[str, np.ndarray]:
        """Every instance array read in full: {object: (N, H, W) int32}."""
        try:
            return {name: array[...] for name, array in self.arrays.items()}
        except Exception as exc:  # truncated or corrupt chunks
            raise _error(self.path, f"unreadable label data ({type(exc).__name__}: {exc})") from exc


def _open_images(
    path: Path,
    root: zarr.Group,
    store_class: type[Store],
    channels: Mapping[str, int],
    arrays: Sequence[str],
    columns: Sequence[str],
) -> Any:
    """A ``store_class`` of the group ``root`` at ``path`` with its 4-D ``arrays`` checked against ``channels``,
    its attrs and its field table (with ``columns``) of one row per field."""
    opened = _images(root, path, store_class.kind, channels, arrays)
    store = store_class(path, opened, dict(root.attrs), _table(path, store_class.kind, _FIELDS, columns))
    _check_rows(store)
    return store


def open_dataset(
    path: str | os.PathLike, arrays: Sequence[str] = tuple(DATASET_ARRAYS), columns: Sequence[str] = ()
) -> DatasetStore:
    """Open and check a dataset store.

    Args:
        path: ``datasets/{split}.zarr``.
        arrays: the arrays needed (default all: bf, if, boundaries, labels); each must be (N, C, H, W) with the
            channels of :data:`DATASET_ARRAYS`, ``labels`` integer, all of one N, H, W.
        columns: columns the field table must have.

    Raises:
        CellResDMError: naming the store and the missing or invalid array, table or column.
    """
    path = Path(path)
    store = _open_images(path, _open_group(path, DatasetStore.kind), DatasetStore, DATASET_ARRAYS, arrays, columns)
    if "labels" in store.arrays and not np.issubdtype(store["labels"].dtype, np.integer):
        raise _error(path, f"{store.kind} array 'labels' must hold integers, got {store['labels'].dtype}")
    return store


def open_predictions(
    path: str | os.PathLike, arrays: Sequence[str] = ("if", "boundaries"), columns: Sequence[str] = ()
) -> PredictionStore:
    """Open and check a prediction store.

    Args:
        path: ``predictions/{method}/{split}.zarr``.
        arrays: the arrays needed (default if and boundaries), named in :data:`PREDICTION_ARRAYS`.
        columns: columns the field table must have.

    Raises:
        CellResDMError: naming the store and the missing or invalid array, table or column.
    """
    path = Path(path)
    root = _open_group(path, PredictionStore.kind)
    return _open_images(path, root, PredictionStore, PREDICTION_ARRAYS, arrays, columns)


def open_if_images(path: str | os.PathLike, columns: Sequence[str] = ()) -> DatasetStore | PredictionStore:
    """The ``if`` array (N, 5, H, W) and field table of a dataset or a prediction store (the feature stage
    measures both alike): a :class:`PredictionStore` when the store's attrs name a method, else a
    :class:`DatasetStore`.

    Raises:
        CellResDMError: naming the store and the missing or invalid array, table or column.
    """
    path = Path(path)
    root = _open_group(path, "image store")
    store_class = PredictionStore if "method" in root.attrs else DatasetStore
    return _open_images(path, root, store_class, {"if": len(layout.IF_CHANNELS)}, ("if",), columns)


def open_instances(path: str | os.PathLike, columns: Sequence[str] = ()) -> InstanceStore:
    """Open and check an instance store (arrays stay lazy; :meth:`InstanceStore.load` reads them).

    Raises:
        CellResDMError: naming the store, when it is missing or unreadable, lacks attrs ``source`` or
            ``objects``, a listed array or the field table, or its arrays are not (N, H, W) int32 of one shape
            matching the field table's length.
    """
    path = Path(path)
    kind = InstanceStore.kind
    root = _open_group(path, kind)
    attrs = dict(root.attrs)
    for name in ("source", "objects"):
        if name not in attrs:
            raise _error(path, f"{kind} lacks attribute '{name}'")
    objects = attrs["objects"]
    if not isinstance(objects, list) or not objects or not set(objects) <= set(layout.OBJECT_CHANNELS):
        raise _error(
            path, f"{kind} attribute 'objects' must list some of {list(layout.OBJECT_CHANNELS)}, got {objects!r}"
        )
    arrays = {}
    for name in (o for o in layout.OBJECT_CHANNELS if o in objects):
        array = _array(root, path, kind, name, "(N, H, W) int32", 3)
        if array.dtype != np.int32:
            raise _error(path, f"{kind} array '{name}' must be (N, H, W) int32, got {array.dtype}")
        arrays[name] = array
    shapes = {name: tuple(a.shape) for name, a in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise _error(path, f"{kind} arrays differ in shape: {shapes}")
    store = InstanceStore(path, arrays, attrs, _table(path, kind, _FIELDS, columns))
    _check_rows(store)
    return store


# ----------------------------------------------------------------------------------------------- writing


class _Writer:
    """A store being written in a temporary directory: arrays are filled field by field, then :meth:`finish`
    writes the field table and the attributes. The store appears at its path only when finished."""

    kind: ClassVar[str] = "store"

    def __init__(self, tmp: Path, target: Path):
        self.tmp, self.target = tmp, target
        self.root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        self.arrays: dict[str, zarr.Array] = {}
        self.finished = False

    def _create(self, name: str, shape: tuple[int, ...], dtype: str) -> None:
        # one field per chunk: readers and parallel writers touch one field at a time
        self.arrays[name] = self.root.create_array(name, shape=shape, chunks=(1, *shape[1:]), dtype=dtype, fill_value=0)

    def _write_fields(self, fields: pd.DataFrame | Store) -> None:
        if isinstance(fields, Store):
            # a store's table is copied byte for byte
            shutil.copyfile(fields.path / _FIELDS, self.tmp / _FIELDS)
        else:
            fields.to_parquet(self.tmp / _FIELDS, index=False)

    def _finish(self, attrs: Mapping[str, Any]) -> None:
        self.root.attrs.update(dict(attrs))
        self.finished = True


@contextlib.contextmanager
def _writing(path: str | os.PathLike, make: type[_Writer], *args: Any) -> Iterator[Any]:
    target = Path(path)
    with atomic_dir(target) as tmp:
        writer = make(tmp, target, *args)
        yield writer
        if not writer.finished:
            raise _error(target, f"{writer.kind} was not finished (no field table and attributes)")


class DatasetWriter(_Writer):
    """Writes a dataset store; made by :func:`create_dataset`."""

    kind: ClassVar[str] = DatasetStore.kind

    def __init__(self, tmp: Path, target: Path, n: int, shape: tuple[int, int]):
        super().__init__(tmp, target)
        for name, channels in DATASET_ARRAYS.items():
            self._create(name, (n, channels, *shape), _DATASET_DTYPES[name])

    def write_field(
        self, index: int, bf: np.ndarray, if_: np.ndarray, boundaries: np.ndarray, labels: np.ndarray
    ) -> None:
        """Store field ``index``: bf (3, H, W), if_ (5, H, W), boundaries (2, H, W), labels (2, H, W)."""
        self.arrays["if"][index] = if_
        self.arrays["bf"][index] = bf
        self.arrays["boundaries"][index] = boundaries
        self.arrays["labels"][index] = labels

    def finish(self, fields: pd.DataFrame, norm: pd.DataFrame, attrs: Mapping[str, Any]) -> None:
        """Write the field table (one row per field), the normalisation table and the root attributes."""
        self._write_fields(fields)
        norm.to_parquet(self.tmp / _NORM, index=False)
        self._finish(attrs)


class PredictionWriter(_Writer):
    """Writes a prediction store; made by :func:`create_predictions`."""

    kind: ClassVar[str] = PredictionStore.kind

    def __init__(self, tmp: Path, target: Path, n: int, shape: tuple[int, int], with_std: bool):
        super().__init__(tmp, target)
        # created in the order the sampler always used: if, if_std, boundaries, boundaries_std, boundaries_binary
        for name, channels in PREDICTION_ARRAYS.items():
            if with_std or not name.endswith("_std"):
                self._create(name, (n, channels, *shape), "uint8" if name == "boundaries_binary" else "float16")

    def write_field(
        self,
        index: int,
        if_: np.ndarray | None = None,
        boundaries: np.ndarray | None = None,
        boundaries_binary: np.ndarray | None = None,
        if_std: np.ndarray | None = None,
        boundaries_std: np.ndarray | None = None,
    ) -> None:
        """Store the given arrays of field ``index``: ``if_`` and ``if_std`` (5, H, W), ``boundaries``,
        ``boundaries_binary`` and ``boundaries_std`` (2, H, W); the ``*_std`` arrays only in a store created
        ``with_std``."""
        given = {
            "if": if_,
            "boundaries": boundaries,
            "boundaries_binary": boundaries_binary,
            "if_std": if_std,
            "boundaries_std": boundaries_std,
        }
        for name, value in given.items():
            if value is not None:
                self.arrays[name][index] = value

    def finish(self, fields: pd.DataFrame, attrs: Mapping[str, Any]) -> None:
        """Write the field table (one row per field) and the root attributes."""
        self._write_fields(fields)
        self._finish(attrs)


class InstanceWriter(_Writer):
    """Writes an instance store; made by :func:`create_instances`."""

    kind: ClassVar[str] = InstanceStore.kind

    def __init__(self, tmp: Path, target: Path, objects: Sequence[str], n: int, shape: tuple[int, int]):
        super().__init__(tmp, target)
        self.objects = _objects_in_order(target, objects)
        for name in self.objects:
            self._create(name, (n, *shape), "int32")

    def write_field(self, index: int, nuclei: np.ndarray | None = None, cells: np.ndarray | None = None) -> None:
        """Store the given (H, W) instance labels of field ``index`` (each object the store was created with)."""
        for name, value in (("nuclei", nuclei), ("cells", cells)):
            if value is not None:
                self.arrays[name][index] = value

    def finish(self, fields: pd.DataFrame | Store, attrs: Mapping[str, Any]) -> None:
        """Write the field table (a DataFrame, or the table of an opened store, copied byte for byte) and the
        root attributes, which must name the ``source`` and list the ``objects``."""
        if "source" not in attrs or list(attrs.get("objects", [])) != self.objects:
            raise _error(self.target, f"{self.kind} attrs need 'source' and 'objects' = {self.objects}")
        self._write_fields(fields)
        self._finish(attrs)


class _GatherWriter(_Writer):
    """Writes the store gathered from shard stores: the arrays of the first shard, at the full length."""

    def __init__(self, tmp: Path, target: Path, kind: str, n: int, arrays: Mapping[str, tuple[tuple[int, ...], Any]]):
        super().__init__(tmp, target)
        self.kind = kind
        for name, (shape, dtype) in arrays.items():
            self._create(name, (n, *shape), str(dtype))


def gather_stores(
    shards: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    fields: pd.DataFrame,
    attrs: Mapping[str, Any],
    key: Sequence[str] = ("plate", "field"),
) -> Path:
    """Write the store at ``out`` (atomically) whose rows are ``fields``, in order, from shard stores of one kind
    that each hold some of those rows (:mod:`cellresdm.shards`).

    Every shard must have the same arrays (name, per-field shape, dtype); a field's arrays are copied from the
    shard whose field table lists its ``key``. ``fields`` becomes the field table and ``attrs`` the attributes.

    Raises:
        CellResDMError: naming ``out`` or the shard: arrays that differ between shards, a field in two shards or
            in none, or a shard field that ``fields`` does not list.
    """
    out = Path(out)
    position = {k: i for i, k in enumerate(zip(*(fields[c].astype(str) for c in key), strict=True))}
    groups, layouts, covered = [], None, np.zeros(len(fields), dtype=bool)
    for path in map(Path, shards):
        group = _open_group(path, "shard store")
        # the arrays are the member folders (listing the group's members would complain about the tables)
        names = sorted(p.name for p in path.iterdir() if (p / _GROUP_FILE).is_file())
        arrays = {name: (tuple(group[name].shape[1:]), group[name].dtype) for name in names}
        if layouts is None:
            layouts = arrays
        elif arrays != layouts:
            raise _error(path, f"shard arrays {arrays} differ from the first shard's {layouts}")
        table = _table(path, "shard store", _FIELDS, key)
        rows = [position.get(k) for k in zip(*(table[c].astype(str) for c in key), strict=True)]
        unknown = [r is None for r in rows]
        if any(unknown):
            extra = table.loc[unknown, list(key)].head().to_dict("records")
            raise _error(path, f"shard lists fields that {out} does not, e.g. {extra}")
        if covered[rows].any():
            raise _error(path, f"shard repeats fields of another shard of {out}")
        covered[rows] = True
        groups.append((group, rows))
    if not covered.all():
        missing = fields.loc[~covered, list(key)].head().to_dict("records")
        raise _error(out, f"{int((~covered).sum())} fields are in no shard, e.g. {missing}")
    if layouts is None:
        raise _error(out, "no shard stores to gather")
    with _writing(out, _GatherWriter, "gathered store", len(fields), layouts) as writer:
        for group, rows in groups:
            for name in layouts:
                source = group[name]
                for j, row in enumerate(rows):
                    writer.arrays[name][row] = source[j]
        writer._write_fields(fields.reset_index(drop=True))
        writer._finish(attrs)
    return out


def create_dataset(
    path: str | os.PathLike, n: int, shape: tuple[int, int]
) -> contextlib.AbstractContextManager[DatasetWriter]:
    """Context manager writing a dataset store of ``n`` fields of ``shape`` (H, W) at ``path`` (atomically):
    fill it with :meth:`DatasetWriter.write_field` and end with :meth:`DatasetWriter.finish`."""
    return _writing(path, DatasetWriter, n, tuple(shape))


def create_predictions(
    path: str | os.PathLike, n: int, shape: tuple[int, int], with_std: bool
) -> contextlib.AbstractContextManager[PredictionWriter]:
    """Context manager writing a prediction store of ``n`` fields of ``shape`` (H, W) at ``path`` (atomically),
    with the ``*_std`` arrays when ``with_std``; end with :meth:`PredictionWriter.finish`."""
    return _writing(path, PredictionWriter, n, tuple(shape), with_std)


def create_instances(
    path: str | os.PathLike, objects: Sequence[str], n: int, shape: tuple[int, int]
) -> contextlib.AbstractContextManager[InstanceWriter]:
    """Context manager writing an instance store with arrays ``objects`` (some of nuclei, cells) of ``n`` fields
    of ``shape`` (H, W) at ``path`` (atomically); end with :meth:`InstanceWriter.finish`."""
    return _writing(path, InstanceWriter, list(objects), n, tuple(shape))


def _objects_in_order(path: Path, names: Sequence[str]) -> list[str]:
    """Object names of an instance store in the canonical order; CellResDMError naming ``path`` if unknown."""
    unknown = sorted(set(names) - set(layout.OBJECT_CHANNELS))
    if unknown:
        raise _error(path, f"instance arrays must be named from {list(layout.OBJECT_CHANNELS)}, got {unknown}")
    objects = [name for name in layout.OBJECT_CHANNELS if name in names]
    if not objects:
        raise _error(path, f"an instance store needs at least one of {list(layout.OBJECT_CHANNELS)}")
    return objects


def write_instances(
    path: str | os.PathLike,
    source: str,
    arrays: Mapping[str, np.ndarray],
    fields: pd.DataFrame,
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write a whole instance store atomically (replacing an older one).

    Args:
        path: the store, e.g. ``segmentation/{source}_instances.zarr``.
        source: the method or baseline that made the instances (attrs ``source``).
        arrays: {"nuclei": (N, H, W), "cells": (N, H, W)} non-negative integer labels (one or both), written as
            int32.
        fields: the field table of the N fields (row i describes field i).
        attrs: further attributes, e.g. ``seconds_per_field`` (float) and ``settings`` (dict).

    Returns:
        The store's path.
    """
    path = Path(path)
    objects = _objects_in_order(path, list(arrays))
    shapes = {name: np.shape(arrays[name]) for name in objects}
    first = shapes[objects[0]]
    if len(first) != 3 or any(s != first for s in shapes.values()):
        raise _error(path, f"instance arrays must all be (N, H, W) of one shape, got {shapes}")
    if first[0] != len(fields):
        raise _error(path, f"{first[0]} label images but {len(fields)} rows in the field table")
    for name in objects:
        a = np.asarray(arrays[name])
        if not np.issubdtype(a.dtype, np.integer) or (a.size and (a.min() < 0 or a.max() > np.iinfo(np.int32).max)):
            raise _error(path, f"instance array '{name}' must hold non-negative int32 labels, got {a.dtype}")
    with create_instances(path, objects, first[0], first[1:]) as writer:
        for name in objects:
            writer.arrays[name][...] = np.asarray(arrays[name], dtype=np.int32)
        writer.finish(fields, {**(attrs or {}), "source": source, "objects": objects})
    return path
