"""Shards of the per-field stages (cellresdm.shards): blocks of wells from the config alone."""

from __future__ import annotations

import pandas as pd
import pytest

from cellresdm.errors import ConfigError
from cellresdm.layout import N_COLS, N_ROWS, well_name
from cellresdm.shards import WellBlock, plate_blocks, shard_rows, shard_runtime, whole_plate

ALL_WELLS = [well_name(r, c) for r in range(1, N_ROWS + 1) for c in range(1, N_COLS + 1)]


def test_blocks_of_a_full_plate_cover_every_well_once():
    blocks = plate_blocks(ALL_WELLS, (2, 3))
    assert len(blocks) == 64 and blocks[:3] == ["A01-B03", "A04-B06", "A07-B09"] and blocks[-1] == "O22-P24"
    owners = [[b for b in blocks if WellBlock.parse(b).contains([w])[0]] for w in ALL_WELLS]
    assert all(len(o) == 1 for o in owners)


def test_blocks_follow_the_wells_of_the_run():
    assert plate_blocks(["B02", "B03", "C02"], (1, 1)) == ["B02-B02", "B03-B03", "C02-C02"]
    assert plate_blocks(["B02", "B03", "C02"], (2, 3)) == ["A01-B03", "C01-D03"]
    # blocks at the plate's end are cut at its border
    assert plate_blocks(["P24"], (3, 5)) == ["P21-P24"]
    assert plate_blocks(["B02"], None) == [whole_plate().name] == ["A01-P24"]
    with pytest.raises(ConfigError, match="well_block"):
        plate_blocks(["B02"], (0, 2))


def test_shard_names_parse_and_bad_ones_are_named():
    assert WellBlock.parse("B04-C06") == WellBlock(2, 4, 3, 6)
    assert WellBlock.parse("B04-C06").name == "B04-C06"
    for bad in ("B4-C6", "C06-B04", "all"):
        with pytest.raises(ConfigError, match=repr(bad)):
            WellBlock.parse(bad)


def test_shard_rows_select_a_plates_fields_in_the_block():
    fields = pd.DataFrame({"plate": ["P1", "P1", "P2", "P1"], "well": ["B02", "C05", "B02", "A03"]})
    assert shard_rows(fields, "P1", "A01-B03", "plate", "well").tolist() == [0, 3]
    assert shard_rows(fields, "P2", "A01-B03", "plate", "well").tolist() == [2]
    assert shard_rows(fields.iloc[:0], "P1", "A01-B03", "plate", "well").tolist() == []


def test_runtime_is_the_measured_cost_with_margin_and_start_up():
    assert shard_runtime(54, 33.0, 3.0, 15) == 15 + 90  # 54 x 33 s x 3 = 89.1 min
    assert shard_runtime(0, 33.0, 3.0, 15) == 15
