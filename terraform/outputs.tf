output "ingest_url" {
  description = "HTTPS URL of the ingest function: POST a request here with an identity token of one of ingest_invokers."
  value       = google_cloudfunctions2_function.ingest.service_config[0].uri
}

output "predict_url" {
  description = "Internal URL of the predict function (only the push subscription may call it)."
  value       = google_cloudfunctions2_function.predict.service_config[0].uri
}

output "topics" {
  description = "Pub/Sub topic names by role: requests, results, errors, dead_letter."
  value       = { for role, topic in google_pubsub_topic.topics : role => topic.name }
}

output "requests_topic" {
  description = "Topic to publish requests to (gcloud pubsub topics publish)."
  value       = google_pubsub_topic.topics["requests"].name
}

output "results_subscription" {
  description = "Pull subscription with the results (gcloud pubsub subscriptions pull)."
  value       = google_pubsub_subscription.pull["results"].name
}

output "errors_subscription" {
  description = "Pull subscription with the structured errors."
  value       = google_pubsub_subscription.pull["errors"].name
}

output "dead_letter_subscription" {
  description = "Pull subscription with requests that failed every delivery attempt."
  value       = google_pubsub_subscription.pull["dead_letter"].name
}

output "predict_push_subscription" {
  description = "Push subscription that delivers requests to predict (retry and dead-letter policy live here)."
  value       = google_pubsub_subscription.predict_push.name
}

output "model_bucket" {
  description = "Bucket of the model versions."
  value       = google_storage_bucket.models.name
}

output "source_bucket" {
  description = "Bucket of the packaged function sources."
  value       = google_storage_bucket.sources.name
}

output "model_uri" {
  description = "MODEL_URI that predict serves."
  value       = local.model_uri
}

output "service_accounts" {
  description = "Service account emails by role: ingest, predict, trigger, build."
  value = {
    ingest  = google_service_account.ingest.email
    predict = google_service_account.predict.email
    trigger = google_service_account.trigger.email
    build   = google_service_account.build.email
  }
}
