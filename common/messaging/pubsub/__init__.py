"""Google Cloud Pub/Sub implementation of the messaging API (publisher, listener, admin)."""
