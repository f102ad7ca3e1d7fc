"""Benchmarks reuse the test suite's local S3 server (moto) fixtures."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from s3_fixtures import moto_s3  # noqa: E402,F401  (a pytest fixture, used by name)
