"""The `cellresdm` CLI runs steps without Snakemake and reports bad input in one line."""

from __future__ import annotations

import pandas as pd
import yaml

from cellresdm.cli import main

CONFIG = {
    "plates": [{"id": "CLI0001", "cell_line": "A549", "split": "train"}],
    "demo": {"field_size": 96, "wells": ["B02", "B03"], "sites": 1, "black_if_wells": [], "missing_fields": []},
}


def test_synth_download_filter_for_one_plate(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    results = tmp_path / "results"
    common = ["--config", str(config), "--results", str(results)]
    assert main([*common, "synth", "CLI0001"]) == 0
    assert main([*common, "download", "CLI0001"]) == 0
    assert main([*common, "--log", str(tmp_path / "filter.log"), "filter", "CLI0001"]) == 0
    table = pd.read_parquet(results / "fields" / "CLI0001.parquet")
    assert table["keep"].tolist() == [True, True]
    assert (results / "fields" / "CLI0001_platemap.png").exists()
    assert "CLI0001" in (tmp_path / "filter.log").read_text()


def test_errors_are_one_line_naming_the_problem(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "plate": []}))
    assert main(["--config", str(config), "synth", "CLI0001"]) == 1
    assert "unknown config key 'plate'" in capsys.readouterr().err
    config.write_text(yaml.safe_dump(CONFIG))
    assert main(["--config", str(config), "synth", "OTHER01"]) == 1
    assert "plate 'OTHER01' is not in the config's plates (CLI0001)" in capsys.readouterr().err
    # download before the demo gallery exists: the missing root is named, without a traceback
    assert main(["--config", str(config), "--results", str(tmp_path / "r"), "download", "CLI0001"]) == 1
    err = capsys.readouterr().err
    assert "r/demo_gallery' is neither s3://BUCKET nor an existing local directory" in err
    assert "Traceback" not in err
