"""Fixtures of the predict tests: a real tiny model, real test images, a real storage emulator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fm_gcs import PrivateEmulator, client_for
from fm_support import make_settings
from fm_synth import load_idx
from fm_tiny_model import tiny_model_dir

from common.predictor import FMPredictor


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The tiny CNN trained for these tests (cached outside the clone across runs)."""
    return tiny_model_dir()


@pytest.fixture(scope="session")
def fashion_test() -> tuple[np.ndarray, np.ndarray]:
    return load_idx("t10k")


@pytest.fixture(scope="session")
def gcs_endpoint(request: pytest.FixtureRequest) -> Iterator[str]:
    """The session's Cloud Storage emulator (tests/conftest.py's ``gcs_emulator`` when present)."""
    try:
        emulator = request.getfixturevalue("gcs_emulator")
    except pytest.FixtureLookupError:
        emulator = None
    if emulator is not None:
        yield str(emulator.endpoint)
        return
    with PrivateEmulator() as own:
        yield own.endpoint


@pytest.fixture(scope="session")
def gcs_client(gcs_endpoint: str) -> Any:
    return client_for(gcs_endpoint)


@pytest.fixture(scope="session")
def predictor(tiny_model: Path, gcs_client: Any) -> FMPredictor:
    return FMPredictor(str(tiny_model), settings=make_settings(max_images_per_request=1000),
                       storage_client=gcs_client)
