"""Fixtures of the dashboard tests (the files they write are built in `helpers.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import build_runs


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    return build_runs(tmp_path / "runs")
