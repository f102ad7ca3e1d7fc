"""Shared fixtures: the read-only ../shared folder is optional (a user's clone has none)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
