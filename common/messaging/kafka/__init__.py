"""Apache Kafka implementation of the messaging API (publisher, listener, admin) on kafka-python."""
