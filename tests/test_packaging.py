"""The wheel: it ships the package's data files (the config schema, the CellProfiler templates), and an install of
it outside the repository validates a config, writes a CellProfiler pipeline and runs the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: What the installed package checks: the config validates, the ground-truth template fills, where it runs from.
CHECK = """
import sys
import cellresdm
from cellresdm.config import load_config, schema_path
from cellresdm.cppipe import make_groundtruth_pipeline
from cellresdm.groundtruth import GroundTruthSettings

config = load_config(sys.argv[1])
assert "IdentifyPrimaryObjects" in make_groundtruth_pipeline(GroundTruthSettings.from_config(config["groundtruth"]))
print(cellresdm.__file__)
print(schema_path())
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the package (building in the repository would leave build/ there)."""
    source = tmp_path_factory.mktemp("source")
    shutil.copy(REPO / "pyproject.toml", source)
    shutil.copytree(REPO / "cellresdm", source / "cellresdm", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(source)]
    subprocess.run(pip, check=True, capture_output=True, timeout=120)
    (built,) = out.glob("cellresdm-*.whl")
    return built


def test_the_wheel_ships_every_data_file_of_the_package(wheel):
    data = {
        path.relative_to(REPO).as_posix()
        for path in (REPO / "cellresdm").rglob("*")
        if path.is_file() and path.suffix not in {".py", ".pyc"} and "__pycache__" not in path.parts
    }
    assert {"cellresdm/schemas/config.schema.yaml", "cellresdm/cppipe/groundtruth.cppipe"} <= data
    names = set(zipfile.ZipFile(wheel).namelist())
    assert data <= names, f"missing from the wheel: {sorted(data - names)}"


def test_an_install_of_the_wheel_outside_the_repository_works(wheel, tmp_path):
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=120)
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    shutil.copy(REPO / "configs" / "cpg0000.yaml", run_dir / "paper.yaml")
    # -S: no site processing, so the repository's editable install is out of sight; the venv's site-packages
    # (for the dependencies) is a plain path after the installed wheel
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]])}

    def run(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-S", *args], cwd=run_dir, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    package, schema = run("-c", CHECK, "paper.yaml").splitlines()
    assert Path(package).parent == target / "cellresdm"
    assert Path(schema) == target / "cellresdm" / "schemas" / "config.schema.yaml"
    assert run("-m", "cellresdm.cli", "--help").startswith("usage: cellresdm")
