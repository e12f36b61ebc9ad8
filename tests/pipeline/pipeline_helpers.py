"""Helpers for the end-to-end tests: which model folder to serve."""

from __future__ import annotations

import os
from pathlib import Path

from common.settings import DEFAULT_MODEL_URI


def model_dir() -> Path:
    """The bundled model (what users get), unless FASHION_TEST_MODEL_DIR names another trained folder.

    The override exists for developing the pipeline before the bundled model is trained; CI uses
    the bundled one.
    """
    return Path(os.environ.get("FASHION_TEST_MODEL_DIR") or DEFAULT_MODEL_URI)
