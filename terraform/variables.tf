# Inputs of the Fashion-MNIST pipeline deployment. Only `project` is required.

# --- where ---------------------------------------------------------------------------------------

variable "project" {
  type        = string
  description = "ID of the Google Cloud project to deploy into."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project))
    error_message = "project must be a project ID (6-30 lowercase letters, digits or hyphens), not a name or number."
  }
}

variable "region" {
  type        = string
  description = "Region of the functions and, unless bucket_location is set, of the buckets."
  default     = "us-central1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a Cloud region such as us-central1 or europe-west1 (not a zone)."
  }
}

variable "name_prefix" {
  type        = string
  description = "Prefix of every topic, subscription, function and service account name. The default matches the topic defaults of common/settings.py."
  default     = "fashion"

  validation {
    # Service account IDs are at most 30 characters and the longest suffix used is "-trigger".
    condition     = can(regex("^[a-z][a-z0-9-]{1,18}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 3-20 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "labels" {
  type        = map(string)
  description = "Labels added to every resource that takes labels."
  default     = { app = "fashion-pipeline" }
}

variable "enable_apis" {
  type        = bool
  description = "Enable the APIs the deployment needs. Set false when a platform team manages project services."
  default     = true
}

# --- buckets -------------------------------------------------------------------------------------

variable "bucket_location" {
  type        = string
  description = "Location of both buckets; empty means the region of the functions (cheapest, lowest latency for model loads)."
  default     = ""
}

variable "model_bucket_name" {
  type        = string
  description = "Name of the bucket that holds model versions; empty means <project>-<name_prefix>-models."
  default     = ""

  validation {
    condition     = var.model_bucket_name == "" || can(regex("^[a-z0-9][a-z0-9_.-]{1,61}[a-z0-9]$", var.model_bucket_name))
    error_message = "model_bucket_name must be a bucket name (3-63 lowercase characters), without gs://."
  }
}

variable "source_bucket_name" {
  type        = string
  description = "Name of the bucket that holds the packaged function sources; empty means <project>-<name_prefix>-sources."
  default     = ""

  validation {
    condition     = var.source_bucket_name == "" || can(regex("^[a-z0-9][a-z0-9_.-]{1,61}[a-z0-9]$", var.source_bucket_name))
    error_message = "source_bucket_name must be a bucket name (3-63 lowercase characters), without gs://."
  }
}

variable "force_destroy_buckets" {
  type        = bool
  description = "Let `terraform destroy` delete buckets that still hold objects (model versions included). Keep false in production."
  default     = false
}

variable "model_noncurrent_versions_kept" {
  type        = number
  description = "How many overwritten versions of each model object the versioned model bucket keeps, for rollback."
  default     = 5

  validation {
    condition     = var.model_noncurrent_versions_kept >= 1 && floor(var.model_noncurrent_versions_kept) == var.model_noncurrent_versions_kept
    error_message = "model_noncurrent_versions_kept must be a whole number of at least 1."
  }
}

# --- code and model ------------------------------------------------------------------------------

variable "function_source_dir" {
  type        = string
  description = "Folder with ingest.zip and predict.zip built by `python -m pipeline.packaging --out build/functions` (`make package`); empty means ../build/functions next to this module."
  default     = ""
}

variable "function_runtime" {
  type        = string
  description = "Cloud Functions runtime. The packaged requirements.txt is resolved for CPython 3.11 (pyproject.toml requires-python)."
  default     = "python311"

  validation {
    condition     = var.function_runtime == "python311"
    error_message = "function_runtime must be python311: the pinned wheels (numpy, ai-edge-litert, opencv) are resolved for CPython 3.11."
  }
}

variable "model_name" {
  type        = string
  description = "MODEL_NAME: the model name requests may ask for."
  default     = "fashion-cnn"

  validation {
    condition     = length(var.model_name) > 0
    error_message = "model_name must not be empty."
  }
}

variable "model_path" {
  type        = string
  description = "Folder inside the model bucket that predict serves (MODEL_URI = gs://<model bucket>/<model_path>). Point it at a new version and apply to roll out; point it back to roll back."
  default     = "fashion-cnn/bundled"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9._/-]*[A-Za-z0-9._-]$", var.model_path)) && !startswith(var.model_path, "gs://") && !strcontains(var.model_path, "//")
    error_message = "model_path must be a relative object prefix such as fashion-cnn/2026-11-26T1200Z-1a2b3c: no gs://, no leading or trailing slash."
  }
}

variable "upload_bundled_model" {
  type        = bool
  description = "Upload the repo's bundled model (models/fashion-cnn) to gs://<model bucket>/fashion-cnn/bundled, so the default model_path serves right after the first apply."
  default     = true
}

variable "bundled_model_dir" {
  type        = string
  description = "Folder of the bundled model artifacts; empty means ../models/fashion-cnn next to this module."
  default     = ""
}

variable "model_runtime" {
  type        = string
  description = "MODEL_RUNTIME of predict: litert (fast cold start, the default) or keras (needs TensorFlow, which the package does not ship)."
  default     = "litert"

  validation {
    condition     = var.model_runtime == "litert"
    error_message = "model_runtime must be litert: the deployed package carries no TensorFlow, so keras would fail at the first request."
  }
}

variable "allowed_buckets" {
  type        = list(string)
  description = "ALLOWED_BUCKETS: buckets that gs:// image URIs in requests may name. The predict service account gets read access to each."
  default     = []

  validation {
    condition     = alltrue([for b in var.allowed_buckets : can(regex("^[a-z0-9][a-z0-9_.-]{1,61}[a-z0-9]$", b))])
    error_message = "allowed_buckets must list bare bucket names (no gs://, no paths)."
  }
}

variable "log_level" {
  type        = string
  description = "LOG_LEVEL of both functions."
  default     = "INFO"

  validation {
    condition     = contains(["DEBUG", "INFO", "WARNING", "ERROR"], var.log_level)
    error_message = "log_level must be DEBUG, INFO, WARNING or ERROR."
  }
}

variable "max_request_bytes" {
  type        = number
  description = "MAX_REQUEST_BYTES: largest request ingest accepts and predict reads. Ingest republishes the request, so it must fit a Pub/Sub message (10 MB)."
  default     = 8388608

  validation {
    condition     = var.max_request_bytes >= 1024 && var.max_request_bytes <= 10000000
    error_message = "max_request_bytes must be between 1024 and 10000000 (Pub/Sub's message size limit)."
  }
}

variable "max_images_per_request" {
  type        = number
  description = "MAX_IMAGES_PER_REQUEST: most images in one request."
  default     = 256

  validation {
    condition     = var.max_images_per_request >= 1 && floor(var.max_images_per_request) == var.max_images_per_request
    error_message = "max_images_per_request must be a whole number of at least 1."
  }
}

# --- ingest (HTTP) -------------------------------------------------------------------------------

variable "ingest_invokers" {
  type        = list(string)
  description = "Principals allowed to call the ingest URL (roles/run.invoker), e.g. [\"user:me@example.com\", \"serviceAccount:sender@p.iam.gserviceaccount.com\"]. Empty keeps ingest private. Listing allUsers makes it public on purpose."
  default     = []

  validation {
    condition     = alltrue([for m in var.ingest_invokers : can(regex("^(user|group|serviceAccount|domain|principal|principalSet):.+$", m)) || m == "allUsers"])
    error_message = "ingest_invokers entries must be IAM members such as user:x@y, group:x@y, serviceAccount:x@y, domain:y, or allUsers."
  }
}

variable "ingest_memory" {
  type        = string
  description = "Memory of each ingest instance (Cloud Run quantity, e.g. 256Mi, 1Gi)."
  default     = "512Mi"

  validation {
    condition     = can(regex("^[0-9]+(Mi|Gi)$", var.ingest_memory))
    error_message = "ingest_memory must look like 512Mi or 1Gi."
  }
}

variable "ingest_cpu" {
  type        = string
  description = "vCPUs of each ingest instance (e.g. 0.5, 1, 2). Concurrency above 1 needs at least 1."
  default     = "1"

  validation {
    condition     = can(tonumber(var.ingest_cpu)) && tonumber(var.ingest_cpu) > 0 && tonumber(var.ingest_cpu) <= 8
    error_message = "ingest_cpu must be a number of vCPUs between 0.08 and 8."
  }
}

variable "ingest_timeout_seconds" {
  type        = number
  description = "Longest an ingest request may run."
  default     = 60

  validation {
    condition     = var.ingest_timeout_seconds >= 1 && var.ingest_timeout_seconds <= 3600
    error_message = "ingest_timeout_seconds must be between 1 and 3600."
  }
}

variable "ingest_min_instances" {
  type        = number
  description = "Instances of ingest kept warm; 0 scales to zero (no cost when idle, a cold start on the first request)."
  default     = 0

  validation {
    condition     = var.ingest_min_instances >= 0 && var.ingest_min_instances <= var.ingest_max_instances
    error_message = "ingest_min_instances must be between 0 and ingest_max_instances."
  }
}

variable "ingest_max_instances" {
  type        = number
  description = "Most instances of ingest; bounds cost and the publish rate."
  default     = 10

  validation {
    condition     = var.ingest_max_instances >= 1 && var.ingest_max_instances <= 1000
    error_message = "ingest_max_instances must be between 1 and 1000."
  }
}

variable "ingest_concurrency" {
  type        = number
  description = "Requests one ingest instance serves at once (validation and publishing are I/O bound)."
  default     = 16

  validation {
    # Cloud Run serves more than one request per instance only with at least one whole vCPU.
    condition     = var.ingest_concurrency >= 1 && var.ingest_concurrency <= 1000 && (var.ingest_concurrency == 1 || tonumber(var.ingest_cpu) >= 1)
    error_message = "ingest_concurrency must be between 1 and 1000, and 1 when ingest_cpu is below 1."
  }
}

# --- predict (Pub/Sub push) ----------------------------------------------------------------------

variable "predict_memory" {
  type        = string
  description = "Memory of each predict instance; holds the model, a batch of decoded images and the LiteRT runtime."
  default     = "1Gi"

  validation {
    condition     = can(regex("^[0-9]+(Mi|Gi)$", var.predict_memory))
    error_message = "predict_memory must look like 512Mi or 1Gi."
  }
}

variable "predict_cpu" {
  type        = string
  description = "vCPUs of each predict instance."
  default     = "1"

  validation {
    condition     = can(tonumber(var.predict_cpu)) && tonumber(var.predict_cpu) > 0 && tonumber(var.predict_cpu) <= 8
    error_message = "predict_cpu must be a number of vCPUs between 0.08 and 8."
  }
}

variable "predict_timeout_seconds" {
  type        = number
  description = "Longest one delivery may run. It is also the push subscription's ack deadline, which Pub/Sub caps at 600 s."
  default     = 120

  validation {
    condition     = var.predict_timeout_seconds >= 10 && var.predict_timeout_seconds <= 600
    error_message = "predict_timeout_seconds must be between 10 and 600 (the Pub/Sub ack deadline limit)."
  }
}

variable "predict_min_instances" {
  type        = number
  description = "Instances of predict kept warm (model loaded); 0 scales to zero."
  default     = 0

  validation {
    condition     = var.predict_min_instances >= 0 && var.predict_min_instances <= var.predict_max_instances
    error_message = "predict_min_instances must be between 0 and predict_max_instances."
  }
}

variable "predict_max_instances" {
  type        = number
  description = "Most instances of predict; bounds cost. Pub/Sub holds back deliveries when all are busy."
  default     = 10

  validation {
    condition     = var.predict_max_instances >= 1 && var.predict_max_instances <= 1000
    error_message = "predict_max_instances must be between 1 and 1000."
  }
}

variable "predict_concurrency" {
  type        = number
  description = "Deliveries one predict instance handles at once. 1 keeps each instance on one batch at a time, which suits a CPU-bound model."
  default     = 1

  validation {
    # Cloud Run serves more than one request per instance only with at least one whole vCPU.
    condition     = var.predict_concurrency >= 1 && var.predict_concurrency <= 1000 && (var.predict_concurrency == 1 || tonumber(var.predict_cpu) >= 1)
    error_message = "predict_concurrency must be between 1 and 1000, and 1 when predict_cpu is below 1."
  }
}

variable "predict_max_delivery_attempts" {
  type        = number
  description = "Deliveries of one request before Pub/Sub moves it to the dead-letter topic, so a poison message cannot loop."
  default     = 5

  validation {
    condition     = var.predict_max_delivery_attempts >= 5 && var.predict_max_delivery_attempts <= 100
    error_message = "predict_max_delivery_attempts must be between 5 and 100 (Pub/Sub's limits)."
  }
}

variable "predict_retry_minimum_backoff" {
  type        = string
  description = "Shortest wait before Pub/Sub redelivers a failed request (transient faults only: permanent ones are answered on the errors topic and acknowledged)."
  default     = "10s"

  validation {
    condition     = can(regex("^[0-9]+s$", var.predict_retry_minimum_backoff)) && tonumber(trimsuffix(var.predict_retry_minimum_backoff, "s")) <= 600
    error_message = "predict_retry_minimum_backoff must be seconds such as 10s, at most 600s."
  }
}

variable "predict_retry_maximum_backoff" {
  type        = string
  description = "Longest wait between redeliveries of a failed request."
  default     = "600s"

  validation {
    condition     = can(regex("^[0-9]+s$", var.predict_retry_maximum_backoff)) && tonumber(trimsuffix(var.predict_retry_maximum_backoff, "s")) <= 600
    error_message = "predict_retry_maximum_backoff must be seconds such as 600s, at most 600s."
  }
}

# --- subscriptions -------------------------------------------------------------------------------

variable "message_retention_duration" {
  type        = string
  description = "How long the results, errors and dead-letter subscriptions keep unread messages."
  default     = "604800s"

  validation {
    condition     = can(regex("^[0-9]+s$", var.message_retention_duration)) && tonumber(trimsuffix(var.message_retention_duration, "s")) >= 600 && tonumber(trimsuffix(var.message_retention_duration, "s")) <= 604800
    error_message = "message_retention_duration must be between 600s and 604800s (7 days)."
  }
}
