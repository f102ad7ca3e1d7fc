"""Benchmarks reuse the test suite's local S3 server (moto) fixtures and share helpers of this folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # shared helpers (call_timer)

from s3_fixtures import moto_s3  # noqa: E402,F401  (a pytest fixture, used by name)
