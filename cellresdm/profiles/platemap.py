"""Plate maps of the profiles stage: one table per plate mapping wells to treatments (JUMP-Target-1 layout:
``well_position``, ``broad_sample``, ...; negative controls where ``broad_sample`` is empty), and the optional
treatment metadata joined on the treatment column (``target``, ``pert_iname``, ...)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from cellresdm.errors import CellResDMError
from cellresdm.profiles.settings import ProfileSettings


def read_table(path: str | os.PathLike, what: str) -> pd.DataFrame:
    """A CSV (``.csv``) or tab-separated (``.tsv``, ``.txt``) table as strings; empty cells stay ``""``.

    Raises:
        CellResDMError: naming ``what`` and the file, when it cannot be read.
    """
    path = Path(path)
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise CellResDMError(f"cannot read the {what} {path}: {exc}") from exc


def read_platemap(path: str | os.PathLike, plate: str, settings: ProfileSettings) -> pd.DataFrame:
    """The plate map of ``plate``: every column of the file as strings, one row per well.

    Raises:
        CellResDMError: naming the plate and the file, when the file cannot be read, lacks the well or the
            treatment column, lists a well twice, or has no negative-control well (no row whose treatment is
            ``settings.control_value``).
    """
    table = read_table(path, f"plate map of plate {plate}")
    well, treatment = settings.platemap_well_column, settings.treatment_column
    lacking = [c for c in (well, treatment) if c not in table.columns]
    if lacking:
        raise CellResDMError(
            f"plate map {path} of plate {plate} lacks the column(s) {lacking} "
            f"(profiles.platemap_well_column / profiles.treatment_column); it has {list(table.columns)}"
        )
    table[well] = table[well].str.strip()
    repeated = sorted(set(table.loc[table[well].duplicated(), well]))
    if repeated:
        raise CellResDMError(f"plate map {path} of plate {plate} lists wells more than once: {', '.join(repeated)}")
    if not (table[treatment].str.strip() == settings.control_value).any():
        raise CellResDMError(
            f"plate map {path} of plate {plate} has no negative-control well: no row with "
            f"{treatment} = {settings.control_value!r} (profiles.control_value)"
        )
    return table


def read_treatment_metadata(path: str | os.PathLike, settings: ProfileSettings) -> pd.DataFrame:
    """The treatment metadata table (one row per treatment), as strings.

    Raises:
        CellResDMError: the file cannot be read or lacks the treatment column.
    """
    table = read_table(path, "treatment metadata")
    if settings.treatment_column not in table.columns:
        raise CellResDMError(
            f"treatment metadata {path} lacks the treatment column {settings.treatment_column!r} "
            f"(profiles.treatment_column); it has {list(table.columns)}"
        )
    return table.drop_duplicates(subset=[settings.treatment_column])
