"""The database a node keeps: engine state, listings, the audit log and the site models."""

from __future__ import annotations

import sqlite3

from commgraph.alerts import Action, Decision
from commgraph.store.engine_state import EngineState
from commgraph.store.listings import Listings

__all__ = ["Store"]


class Store(EngineState, Listings):
    """An open commgraph database. Not thread-safe: one Store per thread or process."""

    def use_token(self, nonce: str, at: float) -> bool:
        """Record that an action token was used; False if it had been used before."""
        try:
            with self._transaction() as db:
                db.execute("INSERT INTO used_tokens (nonce, used_at) VALUES (?, ?)", (nonce, at))
        except sqlite3.IntegrityError:
            return False
        return True

    def audit(self, decision: Decision) -> int:
        """Write one audit-log entry that is no engine change (a model received or refused),
        durably; returns its id."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO decisions (action, by, at, reason, alert, service, src, dst,"
                " relation, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    decision.action.value,
                    decision.by,
                    decision.at,
                    decision.reason,
                    decision.alert,
                    decision.service,
                    *(decision.edge or (None, None, None)),
                    decision.detail,
                ),
            )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def save_model(
        self, service: str, node: str, envelope: bytes, *, at: float, source: str
    ) -> bool:
        """Keep a trusted model envelope (the latest per service and issuing node), durably.
        Returns False if the same envelope was already kept."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT envelope FROM models WHERE service = ? AND node = ?", (service, node)
            ).fetchone()
            if row is not None and bytes(row[0]) == envelope:
                return False
            db.execute(
                "INSERT OR REPLACE INTO models (service, node, envelope, received_at, source)"
                " VALUES (?, ?, ?, ?, ?)",
                (service, node, envelope, at, source),
            )
        return True

    def last_decision_id(self) -> int:
        return int(self._db.execute("SELECT COALESCE(MAX(id), 0) FROM decisions").fetchone()[0])

    def decisions_since(self, last_id: int) -> list[Decision]:
        """Audit-log entries after ``last_id``, oldest first, with their ids (for a daemon
        to apply what the CLI decided)."""
        rows = self._db.execute(
            "SELECT id, action, by, at, reason, alert, service, src, dst, relation, detail"
            " FROM decisions WHERE id > ? ORDER BY id",
            (last_id,),
        ).fetchall()
        return [
            Decision(
                id=row[0],
                action=Action(row[1]),
                by=row[2],
                at=row[3],
                reason=row[4],
                alert=row[5],
                service=row[6],
                edge=(row[7], row[8], row[9]) if row[7] is not None else None,
                detail=row[10],
            )
            for row in rows
        ]
