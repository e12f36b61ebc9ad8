"""The ingest Cloud Function (deployed as its own folder; see main.py)."""
