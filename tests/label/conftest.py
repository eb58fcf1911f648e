"""Fixtures for the labelling app's tests (helpers in ``helpers.py``)."""

from pathlib import Path

import pytest

from .helpers import make_store


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return make_store(tmp_path / "feedback.sqlite")
