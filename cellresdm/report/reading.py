"""Readers of the report's input files, each failing with one error that names the file (the zarr stores are
read through :mod:`cellresdm.stores`)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellresdm.errors import CellResDMError
from cellresdm.stores import store_exists


def read_table(path: str | os.PathLike, what: str) -> pd.DataFrame:
    """A CSV, TSV or parquet table; one clear error naming the file when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CellResDMError(f"{path}: {what} is missing")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
    except Exception as exc:  # pandas/pyarrow raise many types for a damaged file
        raise CellResDMError(f"{path}: unreadable {what} ({type(exc).__name__}: {exc})") from exc


def require_columns(table: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    """Raise naming ``where`` and the columns ``table`` lacks."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise CellResDMError(f"{where}: lacks column(s) {', '.join(missing)}")


def read_json(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """A JSON object from ``path``; one clear error naming the file when missing, unreadable or not an object."""
    path = Path(path)
    if not path.is_file():
        raise CellResDMError(f"{path}: {what} is missing")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CellResDMError(f"{path}: unreadable {what} ({exc})") from exc
    if not isinstance(record, dict):
        raise CellResDMError(f"{path}: {what} must be a JSON object")
    return record


def size_text(value: Any) -> str:
    """'HxW' from a [H, W] list or shape tuple; '' when unknown."""
    if value is None:
        return ""
    if isinstance(value, list | tuple | np.ndarray) and len(value) >= 2:
        return f"{int(value[-2])}x{int(value[-1])}"
    return str(value)


def exists(path: str | os.PathLike | None, zarr_store: bool = False) -> bool:
    """Whether the file (or, with ``zarr_store``, the zarr store) at ``path`` exists; False for None."""
    if path is None:
        return False
    return store_exists(path) if zarr_store else Path(path).is_file()
