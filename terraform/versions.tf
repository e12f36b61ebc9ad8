terraform {
  # Cross-variable validation (min <= max instances) needs Terraform 1.9.
  required_version = ">= 1.9, < 2.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.0, < 8.0"
    }
  }

  # State is local by default, so `terraform init && terraform apply` works on a laptop. Cloud Build
  # writes a backend.tf with `backend "gcs" {}` and passes the bucket with -backend-config
  # (see cloudbuild.yaml and docs/DEPLOY.md).
}
