"""Boundaries to instances (cellresdm.segment): exact on true boundaries, robust to gaps, checked input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.morphology import convex_hull_image
from stardist.matching import matching

from cellresdm import segment
from cellresdm.config import section
from cellresdm.errors import CellResDMError, ConfigError
from cellresdm.masks import boundaries_from_labels
from cellresdm.segment import InstanceSettings, instances_from_boundaries
from cellresdm.synth import Treatment, make_field

SIZE = 256


def synthetic(cell_line: str, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True labels (2, H, W) int32 [nuclei, cells] of a synthetic field and its two boundary masks (float32)."""
    _, labels = make_field(cell_line, size, np.random.default_rng(seed), Treatment())
    labels = labels.astype(np.int32)
    bounds = np.stack([boundaries_from_labels(labels[k], thickness=2) for k in range(2)]).astype(np.float32)
    return labels, bounds[0], bounds[1]


@pytest.fixture(scope="module")
def fields() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return [synthetic(line, seed) for line in ("A549", "U2OS") for seed in (0, 1)]


# ----------------------------------------------------------------------------------------------- true boundaries


def test_true_boundaries_reproduce_the_labels(fields):
    """Measured on these fields: nuclei and cells F1 1.0, mean IoU of matches >= 0.997 (the 2-px band is split
    between touching cells about its middle, which costs a pixel here and there)."""
    for labels, nuc_b, cell_b in fields:
        nuclei, cells = instances_from_boundaries(nuc_b, cell_b)
        assert nuclei.dtype == np.int32 and cells.dtype == np.int32 and nuclei.shape == labels[0].shape
        m_nuc = matching(labels[0], nuclei, thresh=0.5)
        m_cell = matching(labels[1], cells, thresh=0.5)
        assert m_nuc.f1 >= 0.95 and m_nuc.mean_matched_score >= 0.99
        assert m_cell.f1 >= 0.95 and m_cell.mean_matched_score >= 0.98
        # nucleus k lies in cell k, and matched true pairs (synth: nucleus k in cell k) map to pred pairs
        for k in range(1, int(nuclei.max()) + 1):
            assert np.mean(cells[nuclei == k] == k) == 1.0
        pairs = dict(matching(labels[0], nuclei, thresh=0.5, report_matches=True).matched_pairs)
        cell_pairs = dict(matching(labels[1], cells, thresh=0.5, report_matches=True).matched_pairs)
        agree = [cell_pairs.get(t) == p for t, p in pairs.items()]
        assert np.mean(agree) >= 0.95


def test_nuclei_and_cells_are_numbered_like_cellprofiler(fields):
    labels, nuc_b, cell_b = fields[0]
    nuclei, cells = instances_from_boundaries(nuc_b, cell_b)
    n = int(nuclei.max())
    assert set(np.unique(nuclei)) == set(range(n + 1))  # 1..N without gaps
    assert set(np.unique(cells)) <= set(range(n + 1))  # every cell holds a nucleus by default
    assert not np.any((nuclei > 0) & (cells == 0))  # nuclei lie inside cells


def test_touching_cells_with_a_missing_line_are_split_by_their_nuclei(fields):
    labels, nuc_b, cell_b = fields[0]
    cells_true = labels[1]
    # erase the boundary between the two touching cells that share the longest border
    right = cells_true[:, :-1] != cells_true[:, 1:]
    pairs = np.stack([cells_true[:, :-1][right], cells_true[:, 1:][right]], 1)
    pairs = pairs[(pairs > 0).all(1)]
    a, b = max(set(map(tuple, pairs.tolist())), key=lambda p: int(np.sum((pairs == p).all(1))))
    joint = np.where(np.isin(cells_true, [a, b]), a, cells_true)
    cut = boundaries_from_labels(joint, 2).astype(np.float32)
    _, split = instances_from_boundaries(nuc_b, cut)
    assert matching(cells_true, split, thresh=0.5).f1 >= 0.95
    _, merged = instances_from_boundaries(nuc_b, cut, _settings(split_cells=False))
    m = matching(cells_true, merged, thresh=0.5)
    assert m.fp == 0 and m.fn >= 1  # the merged area went to one of the two nuclei


def _ring(size: int = 96, radius: float = 14, width: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    """(nucleus outline, cell outline) of one round cell in the middle of the field, float32."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    nucleus = ((r >= radius - width) & (r < radius)).astype(np.float32)
    cell = ((r >= 2.2 * radius - width) & (r < 2.2 * radius)).astype(np.float32)
    return nucleus, cell


def test_outlines_with_gaps_are_closed():
    nucleus, cell = _ring()
    full, _ = instances_from_boundaries(nucleus, cell)
    assert full.max() == 1
    area = np.count_nonzero(full)
    # a 9-px gap (closed by the closing radii), and a 90-degree gap (a C: its convex hull)
    for cut, tolerance in (((slice(44, 53), slice(58, None)), 0.05), ((slice(38, 58), slice(57, None)), 0.15)):
        broken = nucleus.copy()
        broken[cut] = 0
        nuclei, cells = instances_from_boundaries(broken, cell)
        assert nuclei.max() == 1 and cells.max() == 1
        assert abs(np.count_nonzero(nuclei) - area) < tolerance * area
        assert np.all(cells[nuclei == 1] == 1)
    open_cell = cell.copy()
    open_cell[44:53, 75:] = 0  # a gap in the cell outline towards the background
    nuclei, cells = instances_from_boundaries(nucleus, open_cell)
    assert cells.max() == 1 and np.count_nonzero(cells) < 1.15 * np.pi * (2.2 * 14) ** 2


def test_predicted_like_boundaries_still_segment(fields):
    """Noisy boundaries with dropped pixels (a stand-in for a generator's output) keep the objects
    (measured: mean F1 0.99 over nuclei and cells)."""
    rng = np.random.default_rng(3)
    f1 = []
    for labels, nuc_b, cell_b in fields:
        noisy = []
        for b in (nuc_b, cell_b):
            p = np.clip(np.where(rng.random(b.shape) < 0.1, 0, b) * 0.9 + 0.15 * rng.random(b.shape), 0, 1)
            noisy.append(p.astype(np.float32))
        nuclei, cells = instances_from_boundaries(*noisy)
        f1 += [matching(labels[0], nuclei, thresh=0.5).f1, matching(labels[1], cells, thresh=0.5).f1]
    assert np.mean(f1) >= 0.95


def test_cells_without_nucleus_are_numbered_after_the_nuclei():
    nucleus, cell = _ring(size=128)
    cell[:, 100:103] = 1  # a closed strip on the right: an area with no nucleus
    cell[:, 123:] = 1
    nuclei, cells = instances_from_boundaries(nucleus, cell)
    assert nuclei.max() == 1 and set(np.unique(cells)) == {0, 1}
    nuclei, cells = instances_from_boundaries(nucleus, cell, _settings(cells_need_nucleus=False))
    assert set(np.unique(cells)) == {0, 1, 2}
    assert np.all(cells[nuclei == 1] == 1)


def _damaged(boundary: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A generator-like probability map: blurred, with gaps of ~7 px in the lines and background noise (on these
    fields it takes every path: gap closing, solidity, open outlines, split cells)."""
    p = ndi.gaussian_filter(boundary, 1.0) * 1.6
    p[ndi.binary_dilation(rng.random(boundary.shape) < 3e-4, iterations=3)] *= 0.1
    p += 0.25 * ndi.gaussian_filter(rng.standard_normal(boundary.shape).astype(np.float32), 1.5)
    return np.clip(p, 0, 1).astype(np.float32)


def test_wide_label_ids_give_the_same_instances(fields, monkeypatch):
    """Label images hold 16-bit ids while they fit and int32 ids beyond (a noisy field can have more than 65535
    areas): both paths give the same instances."""
    rng = np.random.default_rng(7)
    maps = [(_damaged(nuc_b, rng), _damaged(cell_b, rng)) for _, nuc_b, cell_b in fields]
    expected = [instances_from_boundaries(*m) for m in maps]
    monkeypatch.setattr(segment, "_UINT16_IDS", 1)
    for m, (nuclei, cells) in zip(maps, expected, strict=True):
        got = instances_from_boundaries(*m)
        np.testing.assert_array_equal(got[0], nuclei)
        np.testing.assert_array_equal(got[1], cells)
    # and for real: a checkerboard has 180300 one-pixel areas
    yy, xx = np.mgrid[:600, :601]
    board = ((yy + xx) % 2 == 0).astype(np.float32)
    nuclei, cells = instances_from_boundaries(board, board)
    assert nuclei.max() == cells.max() == 0  # all below the minimum areas
    nuclei, cells = instances_from_boundaries(board, board, _settings(min_nucleus_area=0, min_cell_area=0))
    assert nuclei.max() == np.count_nonzero(board == 0) and np.array_equal(cells, nuclei)


def test_labelling_and_hulls_match_scipy_and_skimage():
    """The OpenCV building blocks reproduce scipy.ndimage.label (numbering included: it decides ties) and
    skimage's convex_hull_image, and the octagon of a group's extents holds its hull."""
    rng = np.random.default_rng(0)
    for _ in range(100):
        mask = rng.random(tuple(rng.integers(1, 50, 2))) < rng.uniform(0.02, 0.7)
        for connectivity in (4, 8):
            labels, count = segment._label(mask, connectivity)
            expected, n = ndi.label(mask, ndi.generate_binary_structure(2, connectivity // 4))
            assert count == n and np.array_equal(labels, expected)
        if mask.any():
            rows, cols = np.nonzero(mask)
            hull = segment._hull_image(rows, cols, mask.shape)
            np.testing.assert_array_equal(hull, convex_hull_image(mask))
            group = np.ones(rows.size, dtype=np.int64)
            lo, hi = segment._extents(group, 1, rows, cols, rows + cols, rows - cols)
            assert segment._octagon_pixels(lo, hi, np.array([1]))[0] >= np.count_nonzero(hull)


# ----------------------------------------------------------------------------------------------- bad input


def test_empty_and_all_foreground_predictions_give_no_objects():
    for value in (0.0, 1.0):
        field = np.full((64, 80), value, dtype=np.float32)
        nuclei, cells = instances_from_boundaries(field, field)
        assert nuclei.shape == (64, 80) and nuclei.dtype == np.int32
        assert nuclei.max() == 0 and cells.max() == 0
    nuclei, cells = instances_from_boundaries(np.zeros((1, 1)), np.zeros((1, 1)))
    assert nuclei.max() == cells.max() == 0


@pytest.mark.parametrize(
    ("nuclei", "cells", "message"),
    [
        (np.full((8, 8), np.nan), np.zeros((8, 8)), "r01c01f01: nuclei boundary holds 64 NaN"),
        (np.zeros((8, 8)), np.where(np.eye(8) > 0, np.inf, 0), "r01c01f01: cell boundary holds 8 NaN/inf"),
        (np.zeros((2, 8, 8)), np.zeros((8, 8)), r"2-D \(H, W\) array, got shape \(2, 8, 8\)"),
        (np.zeros((0, 8)), np.zeros((0, 8)), "non-empty"),
        (np.zeros((8, 8)), np.zeros((8, 9)), r"\(8, 8\) and cell boundary \(8, 9\) differ"),
        (np.array([["a"]]), np.zeros((1, 1)), "must be real numbers"),
    ],
)
def test_bad_input_names_the_field(nuclei, cells, message):
    with pytest.raises(CellResDMError, match=message):
        instances_from_boundaries(nuclei, cells, field="r01c01f01")


def _settings(**overrides) -> InstanceSettings:
    return InstanceSettings.from_config(section("instances", overrides))


def test_settings_validation_and_config():
    s = _settings(threshold=0.4, nuclei_closing_radii=[3, 5])
    assert s.threshold == 0.4 and s.nuclei_closing_radii == (3, 5)
    assert json.loads(json.dumps(s.to_dict()))["nuclei_closing_radii"] == [3, 5]
    default = _settings()
    assert default.threshold == 0.5 and default.cells_closing_radii == (3, 6)  # the schema's defaults
    for bad, key in (
        ({"threshold": 1.5}, "instances.threshold"),
        ({"grow": -1}, "instances.grow"),
        ({"cells_closing_radii": [6, 3]}, "instances.cells_closing_radii"),
        ({"max_cell_area": 10}, "instances.max_cell_area"),
        ({"split_cells": "yes"}, "instances.split_cells"),
        ({"min_enclosure": 2}, "instances.min_enclosure"),
        ({"taus": [0.5]}, "instances.taus"),
    ):
        with pytest.raises(ConfigError, match=key):
            _settings(**bad)
    with pytest.raises(ConfigError, match="lacks instances.grow"):
        InstanceSettings.from_config({k: v for k, v in section("instances").items() if k != "grow"})
