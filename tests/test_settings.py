"""Settings come from the environment, in one place, and wrong values fail at start-up."""

from __future__ import annotations

import pytest

from common.errors import ConfigurationError
from common.settings import ENV_VARS, Settings


def test_environment_values_are_typed_and_overrides_win() -> None:
    env = {"BROKER": "kafka", "ALLOWED_BUCKETS": " a-bucket, b-bucket ,", "MAX_IMAGE_SIDE": "512",
           "PUBLISH_TIMEOUT_S": "2.5", "RESULTS_TOPIC": "res"}
    settings = Settings.from_env(env, results_topic="override")
    assert settings.broker == "kafka"
    assert settings.allowed_buckets == ("a-bucket", "b-bucket")
    assert settings.max_image_side == 512
    assert settings.publish_timeout_s == 2.5
    assert settings.results_topic == "override"


def test_every_field_has_exactly_one_environment_variable() -> None:
    from dataclasses import fields

    assert {f.name for f in fields(Settings)} == set(ENV_VARS)
    assert len(set(ENV_VARS.values())) == len(ENV_VARS)


@pytest.mark.parametrize(("env", "names"), [
    ({"BROKER": "rabbitmq"}, "BROKER"),
    ({"MODEL_RUNTIME": "onnx"}, "MODEL_RUNTIME"),
    ({"MAX_IMAGES_PER_REQUEST": "many"}, "MAX_IMAGES_PER_REQUEST"),
    ({"MAX_IMAGE_SIDE": "0"}, "MAX_IMAGE_SIDE"),
    ({"ERRORS_TOPIC": "e"}, "ERRORS_TOPIC"),
])
def test_wrong_values_fail_at_start_up_naming_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigurationError, match=names):
        Settings.from_env(env)


def test_readme_documents_every_environment_variable() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text("utf-8")
    missing = [name for name in ENV_VARS.values() if f"`{name}`" not in readme]
    assert not missing, f"README's configuration table lacks {missing}"
