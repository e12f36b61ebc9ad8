"""Fixtures of the reliability tests: the model every scenario serves."""

from __future__ import annotations

from pathlib import Path

import pytest
from rel_support import model_dir


@pytest.fixture(scope="session")
def serving_model() -> Path:
    """The bundled model when present, else the predict tests' tiny one (see rel_support.model_dir)."""
    return model_dir()
