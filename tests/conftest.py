"""Shared fixtures: the read-only ../shared folder and CellProfiler (.venv-cp) are optional (a clone may lack them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellresdm.cellprofiler import DEFAULT_CELLPROFILER

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture
def shared_dir() -> Path:
    """The project's ../shared folder; tests that need it skip cleanly where it is absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not present (only the development machines have it)")
    return SHARED


@pytest.fixture
def repo_dir() -> Path:
    return REPO


@pytest.fixture(scope="session")
def cellprofiler() -> str:
    """The CellProfiler executable ``make setup`` installs (.venv-cp); tests that need it skip where it is absent."""
    executable = REPO / DEFAULT_CELLPROFILER
    if not executable.is_file():
        pytest.skip(f"CellProfiler is not installed at {executable} (run `make setup`)")
    return str(executable)
