"""Shared library of the Fashion-MNIST pipeline: contract, messaging, model store, predictor.

Both Cloud Functions and the Kafka adapter import this package; the packaging step copies it into
each function's upload so that every deployment carries the same code.
"""
