"""The database sink of the results follower: one row per request id, in any SQLAlchemy database.

Kept apart from ``pipeline.results`` so that following and printing need no database driver;
SQLAlchemy (2.x) is imported only when ``--db`` is used.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import Column, DateTime, Float, Integer, MetaData, String, Table, Text, create_engine, insert, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from pipeline.results import Outcome, now

log = logging.getLogger(__name__)

DEFAULT_DB_URL = "sqlite:///results.db"

metadata = MetaData()
outcomes_table = Table(
    "prediction_outcomes",
    metadata,
    Column("request_id", String(128), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("model", String(64)),
    Column("model_version", String(128)),
    Column("images", Integer, nullable=False),
    Column("top_label", String(64)),
    Column("top_class_id", Integer),
    Column("top_score", Float),
    Column("error_code", String(64)),
    Column("error_message", Text),
    Column("payload", Text, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)


class DatabaseSink:
    """Stores one row per request id in any SQLAlchemy database; writing the same id again updates it."""

    def __init__(self, url: str = DEFAULT_DB_URL, *, engine: Engine | None = None) -> None:
        self.engine = engine or create_engine(url)
        metadata.create_all(self.engine)

    def write(self, outcome: Outcome) -> None:
        if outcome.request_id is None:
            log.warning("not stored: %s has no request id", outcome.message_id)
            return
        row = _row(outcome)
        # Update first, insert if absent: portable across dialects (no vendor upsert syntax), and a
        # concurrent insert of the same id is caught and turned into the update it should have been.
        for _ in range(2):
            with self.engine.begin() as conn:
                result = conn.execute(
                    update(outcomes_table).where(outcomes_table.c.request_id == outcome.request_id).values(**row)
                )
                if result.rowcount:
                    return
                try:
                    conn.execute(insert(outcomes_table).values(request_id=outcome.request_id, **row))
                    return
                except IntegrityError:
                    conn.rollback()

    def close(self) -> None:
        self.engine.dispose()


def _row(outcome: Outcome) -> dict[str, Any]:
    first = outcome.predictions[0] if outcome.predictions else {}
    err = outcome.error
    return {
        "kind": outcome.kind,
        "model": outcome.payload.get("model"),
        "model_version": outcome.payload.get("model_version"),
        "images": len(outcome.predictions),
        "top_label": first.get("label"),
        "top_class_id": first.get("class_id"),
        "top_score": first.get("score"),
        "error_code": err.get("code"),
        "error_message": err.get("message"),
        "payload": json.dumps(outcome.payload),
        "received_at": now(),
    }
