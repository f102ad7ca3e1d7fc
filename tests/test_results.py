"""The results layout (cellresdm.results): one place that spells every output path, and the design page from it."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from cellresdm import results
from cellresdm.results import OUTPUTS, REPORT_ITEMS, ResultsLayout, data_stage_folders, markdown_table

REPO = Path(__file__).resolve().parents[1]
#: The top-level output folders of a results folder.
OUTPUT_FOLDERS = sorted({o.template.split("/")[0] for o in OUTPUTS} | {"results"})
#: A folder name at the start of a string literal followed by "/", or a string joined onto a path with "/".
SPELLED = re.compile(r"""["'](?:{0})/|/\s*["'](?:{0})["']""".format("|".join(re.escape(f) for f in OUTPUT_FOLDERS)))


def _accessor_call(layout: ResultsLayout, output: results.Output) -> str:
    wildcards = {w: f"<{w}>" for w in output.wildcards}
    if output.name.startswith("report_"):
        return layout.report(output.name.removeprefix("report_"))
    return getattr(layout, output.name)(**wildcards)


def test_every_output_has_an_accessor_that_fills_its_template():
    layout = ResultsLayout("out")
    for output in OUTPUTS:
        expected = "out/" + output.template.format(**{w: f"<{w}>" for w in output.wildcards})
        assert _accessor_call(layout, output) == expected, output.name


def test_wildcard_patterns_are_snakemake_patterns():
    layout = ResultsLayout()
    assert layout.fields("{plate}") == "results/fields/{plate}.parquet"
    assert layout.log("train", "{method}") == "results/logs/train/{method}.log"
    assert layout.report("html") == "results/reports/report.html"
    assert "html" in REPORT_ITEMS and "fig4" in REPORT_ITEMS


def test_outputs_are_unique_and_unknown_names_fail():
    templates = [o.template for o in OUTPUTS]
    assert len(set(templates)) == len(templates)
    assert len({o.name for o in OUTPUTS}) == len(OUTPUTS)
    with pytest.raises(KeyError):
        ResultsLayout().path("no_such_output")
    with pytest.raises(KeyError):
        ResultsLayout().path("fields")  # wildcard plate missing


def test_every_writer_exists():
    for output in OUTPUTS:
        if not output.writer.startswith("cellresdm."):
            continue
        module_name, _, attribute = output.writer.rpartition(".")
        module = importlib.import_module(module_name)
        assert hasattr(module, attribute), f"{output.name}: {output.writer} does not exist"


def test_design_page_section_5_is_the_layout():
    page = (REPO / "docs" / "design.md").read_text()
    table = page.split(results.DESIGN_BEGIN, 1)[1].split(results.DESIGN_END, 1)[0]
    assert table == markdown_table(), "docs/design.md is stale: run `make docs`"


def test_update_design_page_rewrites_only_the_table(tmp_path):
    page = tmp_path / "design.md"
    page.write_text(f"# head\n{results.DESIGN_BEGIN}old\n{results.DESIGN_END}\ntail\n")
    results.update_design_page(str(page))
    assert page.read_text() == f"# head\n{results.DESIGN_BEGIN}{markdown_table()}{results.DESIGN_END}\ntail\n"


def test_no_other_file_spells_a_results_path():
    """Rules, scripts, the CLI and the library take every output path from cellresdm/results.py."""
    files = [REPO / "Snakefile", *(REPO / "rules").glob("*.smk"), *(REPO / "workflow_scripts").glob("*.py")]
    files += [p for p in (REPO / "cellresdm").rglob("*.py") if p.name != "results.py"]
    offenders = []
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if SPELLED.search(code):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "results paths spelled outside cellresdm/results.py:\n" + "\n".join(offenders)


def test_the_search_finds_a_spelled_path():
    assert SPELLED.search('out = "results/fields/x.parquet"')
    assert SPELLED.search('root / "datasets" / "test.zarr"')
    assert not SPELLED.search('config["segmentation"]["taus"]')


def test_file_names_written_inside_a_step_folder_agree_with_the_layout():
    """The trainer and ground truth name files inside the folder they are given; the layout must say the same."""
    from cellresdm import groundtruth, synth, train

    layout = ResultsLayout()
    assert layout.model("m") == f"{layout.model_dir('m')}/{train.MODEL_NAME}"
    assert layout.train_log("m") == f"{layout.model_dir('m')}/{train.LOG_NAME}"
    assert layout.groundtruth_index("P1") == f"{layout.groundtruth_dir('P1')}/{groundtruth.INDEX_NAME}"
    assert layout.demo_wells("P1") == f"{layout.demo_truth('P1')}/{synth.WELLS_NAME}"
    assert layout.load_data("P1").rsplit("/", 1)[0] == layout.raw_images("P1").rsplit("/", 1)[0]
    assert results.field_labels_name("r02c02f01") == "r02c02f01_labels.tiff"
    launch = next(o for o in results.OUTPUTS if o.name == "model_dir")
    assert results.LAUNCH_CONFIG_NAME in launch.content  # the launcher's file, named where the folder is


def test_data_stage_folders_hold_what_training_does_not_change():
    folders = data_stage_folders()
    assert folders[:2] == ["demo_gallery", "demo_truth"] and "datasets" in folders and "groundtruth" in folders
    assert not {"models", "predictions", "metrics", "features", "logs", "benchmarks"} & set(folders)
