"""The .cppipe text of the ground-truth and feature pipelines (cellresdm.cppipe) is exactly the text the stages
wrote before the writer moved here: any change to it changes CellProfiler's labels and features, so it must be
deliberate (then update the hashes)."""

from __future__ import annotations

import hashlib

import pytest

from cellresdm import config
from cellresdm.cppipe import make_groundtruth_pipeline, make_measurement_pipeline, module, num, px, yes
from cellresdm.features import FeatureSettings
from cellresdm.groundtruth import GroundTruthSettings


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _groundtruth(**overrides) -> GroundTruthSettings:
    return GroundTruthSettings.from_config(config.section("groundtruth", overrides))


def _features(**overrides) -> FeatureSettings:
    return FeatureSettings.from_config(
        config.section("features", overrides), segmentation=config.section("groundtruth")
    )


@pytest.mark.parametrize(
    ("overrides", "digest"),
    [
        ({}, "66cc3ee437cffe2404b412c32192517ae500f499be32132840c5bf549f1ea706"),
        (
            {"pixel_size_um": 0.299, "nuclei_threshold_method": "Otsu", "declump_method": "Intensity"},
            "c0cb1a3dcb18201ab505edb6e18db538dc4299ee00df4bbdb9b86b05138f253a",
        ),
    ],
)
def test_groundtruth_pipeline_text_is_unchanged(overrides: dict, digest: str) -> None:
    assert _sha256(make_groundtruth_pipeline(_groundtruth(**overrides))) == digest


def test_feature_pipeline_text_is_unchanged() -> None:
    defaults = _features()
    assert _sha256(make_measurement_pipeline(defaults)) == (
        "d52c1e8f43270a86312f223f6f6f3eea87bff403f6aeb77842f8f99d3e6ff312"
    )
    assert _sha256(make_measurement_pipeline(defaults.at_pixel_size(1.196))) == (
        "0852613e65f288e9cf1ea8b26ffe8c7185b7eb3dc52df59c4e3690f5e53f9e6a"
    )
    assert _sha256(make_measurement_pipeline(defaults, measure=False)) == (
        "59fb8a841e7176ed5a6e68101bb06f7f1f66ddcc9f9eca4aa1c1fbdd5968c2a8"
    )
    tiny = _features(texture_scales=[3], texture_gray_levels=16, zernike=False)  # the tiny end-to-end run's
    assert _sha256(make_measurement_pipeline(tiny)) == (
        "e03d4f77d21c62d6fd91c87f701d3ee0511d09e1be44d3a40c77fb00973cceb5"
    )


def test_setting_writers() -> None:
    assert (yes(True), yes(False)) == ("Yes", "No")
    assert (px(10, 0.5), px(0.2, 1.0), px(0.2, 1.0, minimum=0)) == (5, 1, 0)
    assert (num(1.0), num(0.0140000001), num(1.25)) == ("1", "0.014", "1.25")
    text = module("MeasureTexture", 7, [("Hidden", 2), ("Texture scale to measure", 3)], notes="n")
    assert text.startswith("MeasureTexture:[module_num:{num}|svn_version:'Unknown'|variable_revision_number:7|")
    assert "notes:['n']" in text and text.endswith("\n    Hidden:2\n    Texture scale to measure:3")
