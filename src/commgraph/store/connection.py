"""The open database: WAL, durable transactions, migrations, and the node's settings."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

from commgraph.errors import StoreError
from commgraph.phases import Admission, LearningSettings, Mode
from commgraph.store.schema import MIGRATIONS, SCHEMA_VERSION

__all__ = ["Connection"]


class Connection:
    """An open commgraph database file. Not thread-safe: one per thread or process."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            if self.path.parent and not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
            self._db.execute("PRAGMA busy_timeout = 10000")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch the database to WAL mode")
            self._db.execute("PRAGMA synchronous = FULL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a usable commgraph database ({exc})") from None
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot open the database ({exc.strerror})") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction; ``durable`` commits with an fsync (decisions), otherwise the
        commit survives a crash of the process but maybe not a power cut (statistics)."""
        self._db.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: made by a newer commgraph (schema {version}, "
                f"this one knows {SCHEMA_VERSION})"
            )
        for number in range(version, SCHEMA_VERSION):
            with self._transaction() as db:
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {number + 1}")

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def save_settings(self, settings: LearningSettings) -> None:
        """Remember the learning settings, so later commands on this database use them."""
        self.set_meta(
            "learning",
            json.dumps(
                {
                    "duration": settings.duration,
                    "durations": dict(settings.durations),
                    "min_events": settings.min_events,
                    "mode": settings.mode.value,
                    "modes": {k: v.value for k, v in settings.modes.items()},
                    "block_pending": settings.block_pending,
                    "site": settings.site,
                    "admission": settings.admission.value if settings.admission else None,
                    "promote_after": settings.promote_after,
                },
                sort_keys=True,
            ),
        )

    def settings(self) -> LearningSettings | None:
        text = self.meta("learning")
        if text is None:
            return None
        data = json.loads(text)
        return LearningSettings(
            duration=float(data["duration"]),
            durations={k: float(v) for k, v in data["durations"].items()},
            min_events=int(data["min_events"]),
            mode=Mode(data["mode"]),
            modes={k: Mode(v) for k, v in data["modes"].items()},
            block_pending=bool(data["block_pending"]),
            site=None if data.get("site") is None else float(data["site"]),
            admission=Admission(data["admission"]) if data.get("admission") else None,
            promote_after=data.get("promote_after") or None,
        )
