"""Small shared pieces of the predict tests (kept out of conftest.py so tests can import them)."""

from __future__ import annotations

from typing import Any

from common.settings import Settings

ALLOWED_BUCKET = "user-images"


def make_settings(**overrides: Any) -> Settings:
    """Settings independent of the caller's environment, with the test bucket allowed."""
    return Settings.from_env({}, allowed_buckets=(ALLOWED_BUCKET,), **overrides)
