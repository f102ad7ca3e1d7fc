"""Config schema: defaults, unknown keys, bad plate ids, cross-key checks."""

from __future__ import annotations

import pytest
import yaml

from cellresdm.config import (
    config_origin,
    load_config,
    load_schema,
    plates_in_split,
    section,
    splits,
    validate_config,
    write_resolved_config,
)
from cellresdm.errors import ConfigError


def test_empty_config_gets_every_default():
    config = validate_config({})
    assert config["source"] == "demo"
    assert [p["split"] for p in config["plates"]].count("test") >= 1
    assert config["demo"]["field_size"] == 256
    assert config["gallery"]["root"] == "s3://cellpainting-gallery"
    assert config["filter"]["edge_ring"] == 1
    assert config["dataset"]["norm_scope"] == "plate"
    assert config["groundtruth"]["qc_min_f1_nuclei"] == 0.9


def test_nested_defaults_fill_partial_sections():
    config = validate_config({"filter": {"edge_ring": 2}})
    assert config["filter"] == {"edge_ring": 2, "black_if_percentile": 99.9, "black_if_min_ratio": 1.5}


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"sorce": "demo"}, "'sorce'"),
        ({"filter": {"edge_rings": 1}}, "'filter.edge_rings'"),
        ({"plates": [{"id": "P1", "cell_line": "A549", "split": "train", "wells": []}]}, "'plates.0.wells'"),
    ],
)
def test_unknown_key_is_named(config, named):
    with pytest.raises(ConfigError, match="unknown config key") as err:
        validate_config(config)
    assert named in str(err.value)


@pytest.mark.parametrize("bad_id", ["BR 00116991", "BR/001", "plate.1", ""])
def test_plate_id_must_be_a_barcode(bad_id):
    with pytest.raises(ConfigError, match=r"plates\.0\.id"):
        validate_config({"plates": [{"id": bad_id, "cell_line": "A549", "split": "train"}]})


def test_bad_split_and_source_are_named():
    with pytest.raises(ConfigError, match=r"plates\.0\.split"):
        validate_config({"plates": [{"id": "P1", "cell_line": "A549", "split": "training"}]})
    with pytest.raises(ConfigError, match="'source'"):
        validate_config({"source": "s3"})


def test_duplicate_plate_ids_rejected():
    plate = {"id": "P1", "cell_line": "A549", "split": "train"}
    with pytest.raises(ConfigError, match="more than once: P1"):
        validate_config({"plates": [plate, dict(plate)]})


def test_reference_must_be_an_enabled_method_and_ttest_tau_a_tau():
    with pytest.raises(ConfigError, match="config key 'reference': 'palette' is not an enabled method"):
        validate_config({"methods": ["cellresdm", "unet"], "reference": "palette"})
    with pytest.raises(ConfigError, match="'segmentation_scores.ttest_tau': 0.55 is not one of"):
        validate_config({"segmentation_scores": {"ttest_tau": 0.55}})
    assert validate_config({"methods": ["unet"], "reference": "unet"})["reference"] == "unet"


def test_unknown_method_is_rejected_with_the_key():
    with pytest.raises(ConfigError, match="methods"):
        validate_config({"methods": ["cellresdm", "stylegan"]})


def test_demo_cell_line_must_be_known_to_the_generator():
    with pytest.raises(ConfigError, match=r"plates\.0\.cell_line.*HeLa"):
        validate_config({"plates": [{"id": "P1", "cell_line": "HeLa", "split": "train"}]})
    # a real gallery may hold any cell line
    validate_config({"source": "gallery", "plates": [{"id": "P1", "cell_line": "HeLa", "split": "train"}]})


def test_demo_wells_consistency():
    with pytest.raises(ConfigError, match="demo.black_if_wells"):
        validate_config({"demo": {"wells": ["B02"], "black_if_wells": ["B03"], "missing_fields": []}})
    with pytest.raises(ConfigError, match=r"demo\.missing_fields\.0"):
        validate_config({"demo": {"sites": 1, "missing_fields": [{"well": "B02", "site": 2}]}})


def test_repo_configs_are_valid(repo_dir):
    demo = load_config(repo_dir / "config.yaml")
    assert splits(demo) == ["train", "val", "test"]
    paper = load_config(repo_dir / "configs" / "cpg0000.yaml")
    assert paper["source"] == "gallery"
    # the paper's train/test plates (docs/design.md section 3)
    assert plates_in_split(paper, "train") == ["BR00116991", "BR00116992", "BR00116995", "BR00117024"]
    assert plates_in_split(paper, "test") == ["BR00116994", "BR00117026"]


def test_unreadable_config_file_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("plates: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(path)
    path.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


@pytest.mark.parametrize("section", ["cellresdm", "cellresdm_latent"])
def test_swin_embed_dim_must_split_into_the_heads(section):
    assert validate_config({section: {"swin_embed_dim": 192}})[section]["swin_embed_dim"] == 192
    with pytest.raises(ConfigError, match=f"'{section}.swin_embed_dim': 10 is not a multiple of 4"):
        validate_config({section: {"swin_embed_dim": 10}})


def test_renamed_sections_name_their_new_key():
    with pytest.raises(ConfigError, match="'segment' is now 'instances'"):
        validate_config({"segment": {"threshold": 0.4}})
    with pytest.raises(ConfigError, match="'segmentation' is now 'segmentation_scores'"):
        validate_config({"segmentation": {"taus": [0.5]}})


def test_section_gives_the_schema_defaults_with_overrides():
    train = section("train", {"steps": 6})
    assert train["steps"] == 6 and train["lr"] == load_schema()["properties"]["train"]["properties"]["lr"]["default"]
    with pytest.raises(ConfigError, match="not a config section"):
        section("methods")
    with pytest.raises(ConfigError, match="train.steps"):
        section("train", {"steps": 0})


def test_resolved_config_is_a_complete_config_naming_its_origin(tmp_path, repo_dir):
    config = load_config(repo_dir / "configs" / "cpg0000.yaml")
    origin = config_origin(["configs/cpg0000.yaml"], ["methods"])
    assert origin == "schema defaults + configs/cpg0000.yaml + --config methods"
    path = tmp_path / "config.resolved.yaml"
    write_resolved_config(config, path, origin)
    text = path.read_text()
    assert text.splitlines()[0] == f"# The resolved configuration of this run: {origin}."
    assert list(yaml.safe_load(text)) == [key for key in load_schema()["properties"] if key in config]
    assert load_config(path) == config  # feeding it back repeats the run's settings
    assert "channel_mult: [1, 2, 2, 4]" in text  # lists of values on one line, as configs are written
