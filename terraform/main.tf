# The Fashion-MNIST pipeline on Google Cloud: ingest (HTTP) -> requests topic -> predict -> results / errors.
#
# Delivery to predict is a push subscription this configuration owns, not the function's built-in
# Eventarc trigger: the subscription an Eventarc trigger creates cannot be given a dead-letter policy
# from Terraform (hashicorp/terraform-provider-google#25069), and without one a poison message would be
# redelivered until it expires. functions-framework turns the push body into the same
# google.cloud.pubsub.topic.v1.messagePublished CloudEvent that Eventarc would deliver, so
# functions/predict/main.py is the same code either way (and the same path the local emulator setup uses).

provider "google" {
  project = var.project
  region  = var.region
}

data "google_project" "this" {
  project_id = var.project
}

locals {
  bucket_location   = var.bucket_location != "" ? var.bucket_location : upper(var.region)
  model_bucket      = var.model_bucket_name != "" ? var.model_bucket_name : "${var.project}-${var.name_prefix}-models"
  source_bucket     = var.source_bucket_name != "" ? var.source_bucket_name : "${var.project}-${var.name_prefix}-sources"
  source_dir        = var.function_source_dir != "" ? var.function_source_dir : "${path.module}/../build/functions"
  bundled_model_dir = var.bundled_model_dir != "" ? var.bundled_model_dir : "${path.module}/../models/fashion-cnn"
  bundled_prefix    = "fashion-cnn/bundled"
  model_uri         = "gs://${local.model_bucket}/${var.model_path}"

  # Role names of the topics; the defaults (fashion-requests, ...) match common/settings.py.
  topics = {
    requests    = "${var.name_prefix}-requests"
    results     = "${var.name_prefix}-results"
    errors      = "${var.name_prefix}-errors"
    dead_letter = "${var.name_prefix}-dead-letter"
  }

  # One zip per function, built by pipeline/packaging.py before plan. The object is named by the zip's
  # MD5, so a code change uploads a new object and redeploys the function; no change, no redeploy.
  function_zips = {
    ingest  = "${local.source_dir}/ingest.zip"
    predict = "${local.source_dir}/predict.zip"
  }

  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"

  # Environment of the functions: only names that common/settings.py reads (ENV_VARS); emulator hosts
  # are local-only and never set here. tests/deploy/ checks both.
  common_env = {
    BROKER            = "pubsub"
    GCP_PROJECT       = var.project
    LOG_LEVEL         = var.log_level
    MAX_REQUEST_BYTES = tostring(var.max_request_bytes)
    # Both functions validate the same contract, so both apply the same limits.
    MAX_IMAGES_PER_REQUEST = tostring(var.max_images_per_request)
    MODEL_NAME             = var.model_name
    # Predict loads this model; ingest reports it in its health answer.
    MODEL_URI     = local.model_uri
    MODEL_RUNTIME = var.model_runtime
    # Ingest refuses gs:// URIs off this list at the edge; predict checks again before reading.
    ALLOWED_BUCKETS = join(",", var.allowed_buckets)
  }
  ingest_only_env = {
    REQUESTS_TOPIC = google_pubsub_topic.topics["requests"].name
  }
  predict_only_env = {
    RESULTS_TOPIC = google_pubsub_topic.topics["results"].name
    ERRORS_TOPIC  = google_pubsub_topic.topics["errors"].name
  }
}

# --- APIs ----------------------------------------------------------------------------------------

resource "google_project_service" "apis" {
  for_each = var.enable_apis ? toset([
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "storage.googleapis.com",
  ]) : toset([])

  project = var.project
  service = each.value
  # Other workloads in the project may use these APIs too.
  disable_on_destroy = false
}

# --- buckets -------------------------------------------------------------------------------------

resource "google_storage_bucket" "models" {
  #checkov:skip=CKV_GCP_62:Object reads are recorded by Cloud Audit Logs (Data Access); a second usage-log bucket adds cost, not insight.
  name                        = local.model_bucket
  project                     = var.project
  location                    = local.bucket_location
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy_buckets
  labels                      = var.labels

  # A model version overwritten by mistake can be restored.
  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      num_newer_versions = var.model_noncurrent_versions_kept
      with_state         = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket" "sources" {
  #checkov:skip=CKV_GCP_62:Only Terraform and Cloud Build touch this bucket; Cloud Audit Logs cover it.
  name                        = local.source_bucket
  project                     = var.project
  location                    = local.bucket_location
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy_buckets
  labels                      = var.labels

  # Objects are named by content hash and never overwritten; versioning only guards deletes.
  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 30
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket_object" "function_sources" {
  for_each = local.function_zips

  bucket = google_storage_bucket.sources.name
  name   = "functions/${each.key}-${fileexists(each.value) ? filemd5(each.value) : "missing"}.zip"
  source = each.value

  lifecycle {
    precondition {
      condition     = fileexists(each.value)
      error_message = "${each.value} does not exist: build the function packages first with `make package` (python -m pipeline.packaging --out build/functions)."
    }
  }
}

# The repo's bundled model, so the default model_path serves right after the first apply.
resource "google_storage_bucket_object" "bundled_model" {
  for_each = var.upload_bundled_model ? fileset(local.bundled_model_dir, "**") : toset([])

  bucket = google_storage_bucket.models.name
  name   = "${local.bundled_prefix}/${each.value}"
  source = "${local.bundled_model_dir}/${each.value}"
}

# --- topics and subscriptions --------------------------------------------------------------------

resource "google_pubsub_topic" "topics" {
  #checkov:skip=CKV_GCP_83:Messages are encrypted at rest with Google-managed keys; a customer-managed key is an organisation decision this module does not make.
  for_each = local.topics

  name    = each.value
  project = var.project
  labels  = var.labels

  depends_on = [google_project_service.apis]
}

# Readers of results and errors pull from these (gcloud pubsub subscriptions pull, pipeline listeners).
resource "google_pubsub_subscription" "pull" {
  for_each = toset(["results", "errors", "dead_letter"])

  name    = "${local.topics[each.key]}-pull"
  project = var.project
  topic   = google_pubsub_topic.topics[each.key].id
  labels  = var.labels

  ack_deadline_seconds       = 60
  message_retention_duration = var.message_retention_duration

  # Never delete the subscription for inactivity: a quiet week must not lose results.
  expiration_policy {
    ttl = ""
  }
}

# Delivers each request to predict. A delivery that fails (transient fault, crash, timeout) is retried
# with backoff; after predict_max_delivery_attempts it goes to the dead-letter topic.
resource "google_pubsub_subscription" "predict_push" {
  name    = "${local.topics["requests"]}-predict"
  project = var.project
  topic   = google_pubsub_topic.topics["requests"].id
  labels  = var.labels

  ack_deadline_seconds       = var.predict_timeout_seconds
  message_retention_duration = var.message_retention_duration

  push_config {
    push_endpoint = google_cloudfunctions2_function.predict.service_config[0].uri

    # Pub/Sub signs each push with the trigger service account, the only identity allowed to invoke predict.
    oidc_token {
      service_account_email = google_service_account.trigger.email
      audience              = google_cloudfunctions2_function.predict.service_config[0].uri
    }
  }

  retry_policy {
    minimum_backoff = var.predict_retry_minimum_backoff
    maximum_backoff = var.predict_retry_maximum_backoff
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.topics["dead_letter"].id
    max_delivery_attempts = var.predict_max_delivery_attempts
  }

  expiration_policy {
    ttl = ""
  }

  depends_on = [
    google_pubsub_topic_iam_member.dead_letter_publisher,
    google_cloud_run_v2_service_iam_member.predict_invoker,
  ]
}

# Dead-lettering is done by the Pub/Sub service agent: it must publish to the dead-letter topic and
# subscribe to (acknowledge on) the source subscription.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  project = var.project
  topic   = google_pubsub_topic.topics["dead_letter"].name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  project      = var.project
  subscription = google_pubsub_subscription.predict_push.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

# --- service accounts (one per role, least privilege) --------------------------------------------

resource "google_service_account" "ingest" {
  project      = var.project
  account_id   = "${var.name_prefix}-ingest"
  display_name = "Fashion pipeline ingest function"
  description  = "Runs ingest: may publish to the requests topic, nothing else."
}

resource "google_service_account" "predict" {
  project      = var.project
  account_id   = "${var.name_prefix}-predict"
  display_name = "Fashion pipeline predict function"
  description  = "Runs predict: reads the model bucket (and allow-listed image buckets), publishes results and errors."
}

resource "google_service_account" "trigger" {
  project      = var.project
  account_id   = "${var.name_prefix}-trigger"
  display_name = "Fashion pipeline predict trigger"
  description  = "Identity of the push subscription: may invoke predict, nothing else."
}

resource "google_service_account" "build" {
  project      = var.project
  account_id   = "${var.name_prefix}-build"
  display_name = "Fashion pipeline function builds"
  description  = "Builds the function images from the packaged sources (instead of the broad default compute account)."
}

resource "google_pubsub_topic_iam_member" "ingest_publishes_requests" {
  project = var.project
  topic   = google_pubsub_topic.topics["requests"].name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.ingest.member
}

resource "google_pubsub_topic_iam_member" "predict_publishes" {
  for_each = toset(["results", "errors"])

  project = var.project
  topic   = google_pubsub_topic.topics[each.key].name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.predict.member
}

resource "google_storage_bucket_iam_member" "predict_reads_models" {
  bucket = google_storage_bucket.models.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.predict.member
}

# gs:// image URIs are only allowed on these buckets, so predict may read them and nothing else.
resource "google_storage_bucket_iam_member" "predict_reads_images" {
  for_each = toset(var.allowed_buckets)

  bucket = each.value
  role   = "roles/storage.objectViewer"
  member = google_service_account.predict.member
}

# Before April 2021 projects needed this for Pub/Sub to mint the push OIDC token; scoped to the trigger account.
resource "google_service_account_iam_member" "pubsub_signs_as_trigger" {
  service_account_id = google_service_account.trigger.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent
}

# Cloud Functions copies the source into its own gcf-v2-sources-<number>-<region> bucket and the build
# fetches it from there, so the build account reads that bucket; the condition keeps it to that bucket.
resource "google_project_iam_member" "build_reads_staged_sources" {
  project = var.project
  role    = "roles/storage.objectViewer"
  member  = google_service_account.build.member

  condition {
    title       = "gcf-v2-sources bucket only"
    description = "Function sources staged by Cloud Functions for the build."
    expression  = "resource.name.startsWith(\"projects/_/buckets/gcf-v2-sources-${data.google_project.this.number}-${var.region}\")"
  }
}

resource "google_storage_bucket_iam_member" "build_reads_sources" {
  bucket = google_storage_bucket.sources.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.build.member
}

# The function builder writes images to the gcf-artifacts repository it creates and logs the build.
resource "google_project_iam_member" "build" {
  for_each = toset(["roles/artifactregistry.writer", "roles/logging.logWriter"])

  project = var.project
  role    = each.value
  member  = google_service_account.build.member
}

# --- functions -----------------------------------------------------------------------------------

resource "google_cloudfunctions2_function" "ingest" {
  #checkov:skip=CKV_GCP_124:Ingest is the public entry point, so it accepts traffic from anywhere; IAM (roles/run.invoker, granted only to ingest_invokers) decides who may call it.
  name        = "${var.name_prefix}-ingest"
  project     = var.project
  location    = var.region
  description = "Validates prediction requests and publishes them to ${local.topics["requests"]}."
  labels      = var.labels

  build_config {
    runtime         = var.function_runtime
    entry_point     = "ingest"
    service_account = google_service_account.build.id
    source {
      storage_source {
        bucket = google_storage_bucket.sources.name
        object = google_storage_bucket_object.function_sources["ingest"].name
      }
    }
  }

  service_config {
    available_memory                 = var.ingest_memory
    available_cpu                    = var.ingest_cpu
    timeout_seconds                  = var.ingest_timeout_seconds
    min_instance_count               = var.ingest_min_instances
    max_instance_count               = var.ingest_max_instances
    max_instance_request_concurrency = var.ingest_concurrency
    service_account_email            = google_service_account.ingest.email
    # Reachable from the internet, but every call needs an identity with run.invoker (ingest_invokers).
    ingress_settings               = "ALLOW_ALL"
    all_traffic_on_latest_revision = true
    environment_variables          = merge(local.common_env, local.ingest_only_env)
  }

  depends_on = [
    google_project_service.apis,
    google_project_iam_member.build,
    google_project_iam_member.build_reads_staged_sources,
    google_storage_bucket_iam_member.build_reads_sources,
  ]
}

resource "google_cloudfunctions2_function" "predict" {
  name        = "${var.name_prefix}-predict"
  project     = var.project
  location    = var.region
  description = "Predicts Fashion-MNIST classes for each request pushed from ${local.topics["requests"]}."
  labels      = var.labels

  build_config {
    runtime         = var.function_runtime
    entry_point     = "predict"
    service_account = google_service_account.build.id
    source {
      storage_source {
        bucket = google_storage_bucket.sources.name
        object = google_storage_bucket_object.function_sources["predict"].name
      }
    }
  }

  service_config {
    available_memory                 = var.predict_memory
    available_cpu                    = var.predict_cpu
    timeout_seconds                  = var.predict_timeout_seconds
    min_instance_count               = var.predict_min_instances
    max_instance_count               = var.predict_max_instances
    max_instance_request_concurrency = var.predict_concurrency
    service_account_email            = google_service_account.predict.email
    # Pub/Sub push from this project counts as internal traffic; nothing else needs to reach predict.
    ingress_settings               = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision = true
    environment_variables          = merge(local.common_env, local.predict_only_env)
  }

  depends_on = [
    google_project_service.apis,
    google_project_iam_member.build,
    google_project_iam_member.build_reads_staged_sources,
    google_storage_bucket_iam_member.build_reads_sources,
    google_storage_bucket_iam_member.predict_reads_models,
  ]
}

# Gen2 functions are Cloud Run services of the same name: invoking one needs roles/run.invoker on it.
resource "google_cloud_run_v2_service_iam_member" "predict_invoker" {
  project  = var.project
  location = var.region
  name     = google_cloudfunctions2_function.predict.name
  role     = "roles/run.invoker"
  member   = google_service_account.trigger.member
}

resource "google_cloud_run_v2_service_iam_member" "ingest_invokers" {
  for_each = toset(var.ingest_invokers)

  project  = var.project
  location = var.region
  name     = google_cloudfunctions2_function.ingest.name
  role     = "roles/run.invoker"
  member   = each.value
}
