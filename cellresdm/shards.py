"""Shards of the per-field stages: blocks of wells of one plate, each run as its own job (docs/design.md section 4).

Ground truth, sampling, boundaries-to-instances and features treat every field on its own, so a plate is cut
into blocks of ``rows x columns`` wells (config ``shards.well_block``) and each block is one Snakemake job; a
gather job puts the shards together in the order of the unsharded output. Blocks are aligned to the plate
grid (rows A-B, C-D, ... for a block of 2 rows) and named by their corner wells (``A01-B03``), so the list of
shards follows from the config alone (the plate format, the wells of the run and the edge ring the filter
drops): Snakemake knows every job before any image is read, dry runs included. A block whose fields were all
dropped by the filter is a shard of zero fields (its outputs are empty).

A whole-plate block (``well_block: null``) is the single shard ``A01-P24``: the same jobs and outputs, unsharded.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cellresdm import layout
from cellresdm.errors import ConfigError

_SHARD_PATTERN = re.compile(r"^([A-Z])(\d{2})-([A-Z])(\d{2})$")


@dataclass(frozen=True)
class WellBlock:
    """A rectangle of wells, 1-based inclusive rows ``row0..row1`` and columns ``col0..col1``."""

    row0: int
    col0: int
    row1: int
    col1: int

    @property
    def name(self) -> str:
        """The shard's name: its corner wells, ``A01-B03``."""
        return f"{layout.well_name(self.row0, self.col0)}-{layout.well_name(self.row1, self.col1)}"

    @classmethod
    def parse(cls, name: str) -> WellBlock:
        """The block of a shard name (``B01-C03``); ConfigError naming it when it is not one."""
        match = _SHARD_PATTERN.match(name)
        if not match:
            raise ConfigError(f"shard {name!r} is not a block of wells like 'A01-B03'")
        row0, col0 = layout.parse_well(match.group(1) + match.group(2))
        row1, col1 = layout.parse_well(match.group(3) + match.group(4))
        if row0 > row1 or col0 > col1:
            raise ConfigError(f"shard {name!r}: its first well must lie above and left of its last")
        return cls(row0, col0, row1, col1)

    def contains(self, wells: Iterable[str]) -> np.ndarray:
        """Whether each well lies in the block, (N,) bool."""
        rows_cols = [layout.parse_well(str(w)) for w in wells]
        return np.array([self.row0 <= r <= self.row1 and self.col0 <= c <= self.col1 for r, c in rows_cols], dtype=bool)


def whole_plate() -> WellBlock:
    """The block of every well of a 384-well plate (the single shard of an unsharded run)."""
    return WellBlock(1, 1, layout.N_ROWS, layout.N_COLS)


def plate_blocks(wells: Iterable[str], well_block: Sequence[int] | None) -> list[str]:
    """Names of the blocks of ``well_block`` = (rows, columns) that hold at least one of ``wells``, in plate
    order (row blocks, then column blocks); ``[whole plate]`` when ``well_block`` is None.

    Raises:
        ConfigError: a block size below 1.
    """
    if well_block is None:
        return [whole_plate().name]
    rows, cols = (int(v) for v in well_block)
    if rows < 1 or cols < 1:
        raise ConfigError(f"shards.well_block must be two sizes >= 1, got {list(well_block)}")
    blocks = set()
    for well in wells:
        row, col = layout.parse_well(well)
        r, c = (row - 1) // rows, (col - 1) // cols
        blocks.add((r, c))
    return [
        WellBlock(
            r * rows + 1, c * cols + 1, min((r + 1) * rows, layout.N_ROWS), min((c + 1) * cols, layout.N_COLS)
        ).name
        for r, c in sorted(blocks)
    ]


def shard_rows(fields: pd.DataFrame, plate: str, shard: str, plate_column: str, well_column: str) -> np.ndarray:
    """Row positions (int64, ascending) of the fields of ``plate`` in the wells of ``shard``."""
    block = WellBlock.parse(shard)
    if not len(fields):
        return np.zeros(0, dtype=np.int64)
    mask = (fields[plate_column].astype(str).to_numpy() == plate) & block.contains(fields[well_column])
    return np.flatnonzero(mask).astype(np.int64)


def store_shard_rows(store: str | os.PathLike, plate: str, shard: str) -> np.ndarray:
    """Row positions of an image store (dataset or predictions, :mod:`cellresdm.stores`) that hold the fields of
    ``plate`` in the wells of ``shard``."""
    from cellresdm.stores import open_if_images

    return shard_rows(open_if_images(store).fields, plate, shard, "plate", "well")


def shard_runtime(n_fields: int, seconds_per_field: float, margin: float, minimum: int) -> int:
    """Minutes of wall time to ask for a shard: ``minimum`` (start-up, queue latency) plus ``margin`` times the
    measured cost of its fields."""
    return int(minimum + math.ceil(margin * n_fields * seconds_per_field / 60.0))


def sampling_evaluations(section: Mapping[str, Any]) -> int:
    """Network evaluations per sample of a method, from its validated config section: its sampling steps
    (``sample_steps`` of the DDPMs, ``steps`` of CellResDM), 1 for the one-pass baselines."""
    return int(section.get("sample_steps") or section.get("steps") or 1)
