"""SQLite persistence: the only module that imports sqlite3.

One file per node, WAL mode, ``synchronous=FULL`` so a committed decision survives a power
cut. The schema is versioned with ``PRAGMA user_version`` and upgraded by :data:`MIGRATIONS`.

Two write paths, as the engine hands them over:
- :meth:`Store.write_changes`: structure (vertices, edges and their labels, phases, alerts,
  decisions, timeline), committed before the caller goes on;
- :meth:`Store.write_counters`: edge and alert counters, written behind in batches (the caller
  does it about once a second, so a crash loses at most that much statistics).

Counters never touch labels or modes, and modes are written only when the owner changes one,
so a writer never puts back state that another process changed meanwhile.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from commgraph.alerts import NO_EDGE, Action, Alert, AlertKind, AlertState, Decision
from commgraph.detectors import DetectorSettings, figures_from
from commgraph.detectors.guardrails import GuardrailSettings
from commgraph.engine import Changes, Engine
from commgraph.errors import StoreError
from commgraph.events import VertexKind
from commgraph.graph import SIZE_UNKNOWN, Label
from commgraph.identity import Identity
from commgraph.phases import Admission, LearningSettings, Mode, Phase, ServicePhase
from commgraph.state import Counters, Delta, EdgeCounts, EdgeRow, Snapshot, TimelineRow, VertexRow
from commgraph.templates import Templates

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Store"]

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE vertices (
        id INTEGER PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL,
        owner INTEGER, first_seen REAL NOT NULL, events INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE relations (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
    CREATE TABLE instances (
        service INTEGER NOT NULL, instance TEXT NOT NULL, PRIMARY KEY (service, instance));
    CREATE TABLE edges (
        id INTEGER PRIMARY KEY, src INTEGER NOT NULL, dst INTEGER NOT NULL,
        relation INTEGER NOT NULL, label TEXT NOT NULL,
        count INTEGER NOT NULL, bytes INTEGER NOT NULL,
        first_seen REAL NOT NULL, last_seen REAL NOT NULL,
        ia_mean REAL NOT NULL, ia_m2 REAL NOT NULL, size_min INTEGER, size_max INTEGER,
        UNIQUE (src, dst, relation));
    CREATE INDEX edges_by_label ON edges (label);
    CREATE TABLE services (
        vertex INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, phase TEXT NOT NULL,
        started_at REAL, ends_at REAL, learned_at REAL,
        events_at_start INTEGER NOT NULL DEFAULT 0, mode TEXT);
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY, edge INTEGER NOT NULL, kind TEXT NOT NULL,
        state TEXT NOT NULL, count INTEGER NOT NULL,
        first_seen REAL NOT NULL, last_seen REAL NOT NULL, node TEXT);
    CREATE INDEX alerts_by_state ON alerts (state);
    CREATE TABLE decisions (
        id INTEGER PRIMARY KEY, action TEXT NOT NULL, by TEXT NOT NULL, at REAL NOT NULL,
        reason TEXT NOT NULL DEFAULT '', alert INTEGER, service TEXT,
        src TEXT, dst TEXT, relation TEXT, detail TEXT NOT NULL DEFAULT '');
    CREATE TABLE phase_log (
        id INTEGER PRIMARY KEY, service TEXT NOT NULL, before TEXT, after TEXT NOT NULL,
        at REAL NOT NULL, why TEXT NOT NULL);
    CREATE TABLE timeline (
        minute INTEGER PRIMARY KEY, vertices INTEGER NOT NULL, services INTEGER NOT NULL,
        edges INTEGER NOT NULL, learned INTEGER NOT NULL, anomalies INTEGER NOT NULL,
        learning INTEGER NOT NULL);
    """,
    # 2: notification links are single use
    """
    CREATE TABLE used_tokens (nonce TEXT PRIMARY KEY, used_at REAL NOT NULL);
    """,
    # 3: site models (signed envelopes as received), adopted models, the instance of an edge
    """
    CREATE TABLE models (
        service TEXT NOT NULL, node TEXT NOT NULL, envelope BLOB NOT NULL,
        received_at REAL NOT NULL, source TEXT NOT NULL, PRIMARY KEY (service, node));
    ALTER TABLE services ADD COLUMN model_from TEXT;
    ALTER TABLE edges ADD COLUMN instance TEXT;
    """,
    # 4: per-edge figures of the rate, periodicity and size detectors (packed)
    """
    ALTER TABLE edges ADD COLUMN figures BLOB;
    """,
    # 5: alerts about a service, an address or the site (no edge), with what is known
    """
    CREATE TABLE alerts_5 (
        id INTEGER PRIMARY KEY, edge INTEGER, kind TEXT NOT NULL,
        state TEXT NOT NULL, count INTEGER NOT NULL,
        first_seen REAL NOT NULL, last_seen REAL NOT NULL, node TEXT,
        subject INTEGER NOT NULL DEFAULT 0, detail TEXT NOT NULL DEFAULT '{}');
    INSERT INTO alerts_5 (id, edge, kind, state, count, first_seen, last_seen, node)
        SELECT id, edge, kind, state, count, first_seen, last_seen, node FROM alerts;
    DROP TABLE alerts;
    ALTER TABLE alerts_5 RENAME TO alerts;
    CREATE INDEX alerts_by_state ON alerts (state);
    CREATE INDEX alerts_by_edge ON alerts (edge);
    CREATE INDEX alerts_by_subject ON alerts (subject);
    CREATE INDEX decisions_by_alert ON decisions (alert);
    """,
    # 6: who set a service's mode and when, and since when it is quiet (promote_after); for
    # a database made before, both from the audit log, the alerts and the learning phases
    """
    ALTER TABLE services ADD COLUMN mode_by TEXT;
    ALTER TABLE services ADD COLUMN mode_at REAL;
    ALTER TABLE services ADD COLUMN quiet_since REAL;
    UPDATE services SET
        mode_by = (SELECT by FROM decisions d WHERE d.action = 'mode'
            AND d.service = services.name ORDER BY d.id DESC LIMIT 1),
        mode_at = (SELECT at FROM decisions d WHERE d.action = 'mode'
            AND d.service = services.name ORDER BY d.id DESC LIMIT 1);
    UPDATE services SET quiet_since = NULLIF(MAX(
        COALESCE(learned_at, -1),
        COALESCE((SELECT MAX(first_seen) FROM alerts a WHERE a.subject = services.vertex), -1),
        COALESCE((SELECT MAX(d.at) FROM decisions d JOIN alerts a ON a.id = d.alert
            WHERE a.subject = services.vertex), -1)), -1)
        WHERE phase = 'active';
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

# Indexes the alert listings rely on, for the next migration to create. An alert's decision
# is looked up by its alert column (without this index, every alert shown scans the whole
# audit log). The listings pick a page on alerts_by_state, which holds (state, id): re-create
# it if a migration rebuilds the alerts table.

# A row per alert of {source} (a FROM item that calls the alerts ``a``), with its latest
# decision.
# One alert as listed. An alert about a service, an address or the site has no edge: its
# ``src`` is the subject's name, ``dst`` the node and ``relation`` its kind; ``detail`` (JSON)
# says what is known of it (client id, address, examples, counts).
_ALERT_ROW = (
    "SELECT a.id, a.kind,"
    " COALESCE(vs.name, va.name, 'site') AS src,"
    " COALESCE(vd.name, a.node, 'this node') AS dst,"
    " COALESCE(r.name, a.kind) AS relation,"
    " a.state, a.count, a.first_seen, a.last_seen, a.node, a.edge,"
    " va.name AS subject, a.detail,"
    " d.by AS decided_by, d.at AS decided_at, d.reason"
    " FROM {source} LEFT JOIN edges e ON e.id = a.edge"
    " LEFT JOIN vertices vs ON vs.id = e.src LEFT JOIN vertices vd ON vd.id = e.dst"
    " LEFT JOIN relations r ON r.id = e.relation"
    " LEFT JOIN vertices va ON va.id = a.subject AND a.subject != 0"
    " LEFT JOIN decisions d ON d.id = (SELECT MAX(id) FROM decisions WHERE alert = a.id)"
)


def _with_detail(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for row in rows:
        row["detail"] = json.loads(row["detail"] or "{}")
    return rows


class Store:
    """An open commgraph database. Not thread-safe: one Store per thread or process."""

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

    def __enter__(self) -> Store:
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

    # -- settings -------------------------------------------------------------------------

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

    # -- loading --------------------------------------------------------------------------

    def load_engine(
        self,
        settings: LearningSettings | None = None,
        identity: Identity | None = None,
        *,
        node: str | None = None,
        templates: Templates | None = None,
        detectors: DetectorSettings | None = None,
        guardrails: GuardrailSettings | None = None,
    ) -> Engine:
        """An engine resumed exactly where the stored one stopped (site models apart: the
        caller checks their signatures and adopts them)."""
        engine = Engine(
            settings or self.settings() or LearningSettings(),
            identity,
            node=node,
            templates=templates,
            detectors=detectors,
            guardrails=guardrails,
        )
        db = self._db
        last = db.execute(
            "SELECT minute, vertices, services, edges, learned, anomalies, learning"
            " FROM timeline ORDER BY minute DESC LIMIT 1"
        ).fetchone()
        snapshot = Snapshot(
            vertices=(
                VertexRow(vid, name, VertexKind(kind), owner or 0, first_seen, events)
                for vid, name, kind, owner, first_seen, events in db.execute(
                    "SELECT id, name, kind, owner, first_seen, events FROM vertices ORDER BY id"
                )
            ),
            relations=db.execute("SELECT id, name FROM relations ORDER BY id").fetchall(),
            edges=(
                EdgeRow(
                    src,
                    dst,
                    rid,
                    Label.parse(label),
                    EdgeCounts(
                        eid - 1,
                        count,
                        nbytes,
                        first,
                        last_seen,
                        ia_mean,
                        ia_m2,
                        size_min,
                        size_max,
                        None if figures is None else bytes(figures),
                    ),
                    instance,
                )
                for (
                    eid,
                    src,
                    dst,
                    rid,
                    label,
                    count,
                    nbytes,
                    first,
                    last_seen,
                    ia_mean,
                    ia_m2,
                    size_min,
                    size_max,
                    figures,
                    instance,
                ) in db.execute(
                    "SELECT id, src, dst, relation, label, count, bytes, first_seen, last_seen,"
                    " ia_mean, ia_m2, size_min, size_max, figures, instance FROM edges ORDER BY id"
                )
            ),
            services=[
                (row[0], _service_phase(*row[1:]))
                for row in db.execute(
                    "SELECT vertex, name, phase, started_at, ends_at, learned_at,"
                    " events_at_start, mode, model_from, mode_by, mode_at, quiet_since"
                    " FROM services"
                )
            ],
            alerts=(
                Alert(
                    id=aid,
                    edge=NO_EDGE if edge is None else edge - 1,
                    kind=AlertKind(kind),
                    state=AlertState(state),
                    count=count,
                    first_seen=first,
                    last_seen=last_seen,
                    node=node_name,
                    subject=subject,
                    detail=json.loads(detail),
                )
                for aid, edge, kind, state, count, first, last_seen, node_name, subject, detail in (
                    db.execute(
                        "SELECT id, edge, kind, state, count, first_seen, last_seen, node,"
                        " subject, detail FROM alerts ORDER BY id"
                    )
                )
            ),
            instances=db.execute("SELECT service, instance FROM instances").fetchall(),
            decided=db.execute(
                "SELECT src, dst, relation, at, by FROM decisions"
                " WHERE action IN ('approve', 'deny') AND src IS NOT NULL ORDER BY id"
            ).fetchall(),
            last_minute=TimelineRow(*last) if last is not None else None,
        )
        try:
            engine.restore(snapshot)
        except ValueError as exc:
            raise StoreError(f"{self.path}: {exc}") from None
        return engine

    # -- writing --------------------------------------------------------------------------

    def write_changes(self, engine: Engine, changes: Changes) -> list[int]:
        """Commit structural changes (one transaction) before the caller goes on.

        Decisions are fsynced before this returns; returns the ids they got in the audit log.
        """
        return self.write_delta(engine.delta(changes)) if changes else []

    def write_delta(self, changes: Delta) -> list[int]:
        """:meth:`write_changes`, for the engine's changes as values."""
        if not changes:
            return []
        decision_ids: list[int] = []
        with self._transaction(durable=bool(changes.decisions)) as db:
            db.executemany(
                "INSERT OR IGNORE INTO relations (id, name) VALUES (?, ?)", changes.relations
            )
            db.executemany(
                "INSERT INTO vertices (id, name, kind, owner, first_seen, events)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE"
                " SET name = excluded.name, kind = excluded.kind, owner = excluded.owner",
                [
                    (v.id, v.name, v.kind.value, v.owner or None, v.first_seen, v.events)
                    for v in changes.vertices
                ],
            )
            db.executemany(
                "INSERT OR IGNORE INTO instances (service, instance) VALUES (?, ?)",
                changes.instances,
            )
            db.executemany(
                "INSERT INTO edges (id, src, dst, relation, label, count, bytes, first_seen,"
                " last_seen, ia_mean, ia_m2, size_min, size_max, figures, instance)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET label = excluded.label",
                [
                    (
                        r.counts.id + 1,
                        r.src,
                        r.dst,
                        r.relation,
                        r.label.text,
                        *_counted(r.counts),
                        r.instance,
                    )
                    for r in changes.edges
                ],
            )
            db.executemany(
                "INSERT INTO services (vertex, name, phase, started_at, ends_at, learned_at,"
                " events_at_start, mode, model_from, mode_by, mode_at, quiet_since)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (vertex) DO UPDATE SET phase = excluded.phase,"
                " started_at = excluded.started_at, ends_at = excluded.ends_at,"
                " learned_at = excluded.learned_at, events_at_start = excluded.events_at_start,"
                " model_from = excluded.model_from",
                [
                    (
                        vid,
                        s.service,
                        s.phase.value,
                        s.started_at,
                        s.ends_at,
                        s.learned_at,
                        s.events_at_start,
                        _mode_text(s.mode),
                        s.model_from,
                        s.mode_by,
                        s.mode_at,
                        s.quiet_since,
                    )
                    for vid, s in changes.services
                ],
            )
            db.executemany(
                "UPDATE services SET mode = ?, mode_by = ?, mode_at = ? WHERE vertex = ?",
                [(_mode_text(s.mode), s.mode_by, s.mode_at, vid) for vid, s in changes.modes],
            )
            # Only ever forward: a process holding an older view cannot restart the count.
            db.executemany(
                "UPDATE services SET quiet_since = MAX(COALESCE(quiet_since, ?1), ?1)"
                " WHERE vertex = ?2",
                [(quiet, vid) for vid, quiet in changes.quiet],
            )
            db.executemany(
                "INSERT INTO alerts (id, edge, kind, state, count, first_seen, last_seen, node,"
                " subject, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE"
                " SET state = excluded.state, count = excluded.count,"
                " last_seen = excluded.last_seen, detail = excluded.detail",
                [
                    (
                        a.id,
                        None if a.edge == NO_EDGE else a.edge + 1,
                        a.kind.value,
                        a.state.value,
                        a.count,
                        a.first_seen,
                        a.last_seen,
                        a.node,
                        a.subject,
                        json.dumps(a.detail, sort_keys=True),
                    )
                    for a in changes.alerts
                ],
            )
            for d in changes.decisions:
                cursor = db.execute(
                    "INSERT INTO decisions (action, by, at, reason, alert, service, src, dst,"
                    " relation, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        d.action.value,
                        d.by,
                        d.at,
                        d.reason,
                        d.alert,
                        d.service,
                        *(d.edge or (None, None, None)),
                        d.detail,
                    ),
                )
                assert cursor.lastrowid is not None
                decision_ids.append(cursor.lastrowid)
            db.executemany(
                "INSERT INTO phase_log (service, before, after, at, why) VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        c.service,
                        c.before.value if c.before else None,
                        c.after.value,
                        c.at,
                        c.why.value,
                    )
                    for c in changes.phase_changes
                ],
            )
            db.executemany(
                "INSERT OR REPLACE INTO timeline (minute, vertices, services, edges, learned,"
                " anomalies, learning) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (r.minute, r.vertices, r.services, r.edges, r.learned, r.anomalies, r.learning)
                    for r in changes.timeline
                ],
            )
        return decision_ids

    def write_counters(self, counters: Counters) -> None:
        """Write edge, vertex and alert counters behind (never labels or states)."""
        if not counters:
            return
        with self._transaction(durable=False) as db:
            db.executemany(
                "UPDATE edges SET count = ?, bytes = ?, first_seen = ?, last_seen = ?,"
                " ia_mean = ?, ia_m2 = ?, size_min = ?, size_max = ?, figures = ? WHERE id = ?",
                [(*_counted(c), c.id + 1) for c in counters.edges],
            )
            db.executemany(
                "UPDATE vertices SET events = ? WHERE id = ?",
                [(events, v) for v, events in counters.vertices],
            )
            db.executemany(
                "UPDATE alerts SET count = ?, last_seen = ?, detail = ? WHERE id = ?",
                [
                    (a.count, a.last_seen, json.dumps(a.detail, sort_keys=True), a.id)
                    for a in counters.alerts
                ],
            )

    def flush(self, engine: Engine) -> None:
        """Write everything the engine holds back: structure first, then counters."""
        self.write_changes(engine, engine.take_changes())
        self.write_counters(engine.take_counters())

    # -- reading for people ---------------------------------------------------------------

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        cursor = self._db.execute(sql, params)
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]

    def services(self, settings: LearningSettings | None = None) -> list[dict[str, Any]]:
        """Services with phase, mode (where it comes from, who set it and when), learning
        progress, counts, and with ``promote_after`` when each will be protected
        (``promote_at``; ``promotion`` is ``counting``, ``waiting`` on open questions, or
        None when it is not on its way)."""
        settings = settings or self.settings() or LearningSettings()
        rows = self._rows(
            "SELECT s.name, s.phase, s.mode AS owner_mode, s.started_at AS learning_started_at,"
            " s.ends_at AS learning_ends_at, s.learned_at, s.model_from, v.events, v.first_seen,"
            " s.events_at_start, s.mode_by AS mode_set_by, s.mode_at AS mode_set_at,"
            " s.quiet_since,"
            " COALESCE(n.edges, 0) AS edges, COALESCE(p.alerts, 0) AS pending_alerts,"
            " (SELECT group_concat(instance, ' ') FROM instances i WHERE i.service = s.vertex)"
            "   AS instances"
            " FROM services s JOIN vertices v ON v.id = s.vertex"
            # counted in one pass each, not once per service: an edge counts for both ends
            " LEFT JOIN (SELECT vertex, COUNT(*) AS edges FROM"
            "   (SELECT src AS vertex FROM edges UNION ALL SELECT dst FROM edges WHERE dst <> src)"
            "   GROUP BY vertex) n ON n.vertex = s.vertex"
            # the questions about the service: on its edges, or about itself (a newcomer)
            " LEFT JOIN (SELECT subject AS vertex, COUNT(*) AS alerts FROM alerts"
            "   WHERE state = 'pending' GROUP BY subject) p ON p.vertex = s.vertex"
            " ORDER BY s.name"
        )
        for row in rows:
            state = _service_phase(
                row["name"],
                row["phase"],
                row["learning_started_at"],
                row["learning_ends_at"],
                row["learned_at"],
                row.pop("events_at_start"),
                row.pop("owner_mode"),
                row["model_from"],
                row["mode_set_by"],
                row["mode_set_at"],
                row["quiet_since"],
            )
            mode, source = settings.mode_of(state.service, state.mode, state.mode_by)
            row["mode"], row["mode_source"] = mode.value, source.value
            # when it will be promoted to protect; None while a question about it is open
            # (the one this listing can count: about it or on its edges) or when not counting
            promote_at = settings.promote_at(state)
            row["promote_at"] = None if row["pending_alerts"] else promote_at
            row["promotion"] = (
                None if promote_at is None else "waiting" if row["pending_alerts"] else "counting"
            )
            row["instances"] = sorted((row["instances"] or "").split())
        return rows

    def edges(
        self, *, service: str | None = None, label: str | None = None
    ) -> list[dict[str, Any]]:
        where, params = [], []
        if service is not None:
            where.append("(vs.name = ? OR vd.name = ?)")
            params += [service, service]
        if label is not None:
            where.append("e.label = ?")
            params.append(label)
        rows = self._rows(
            "SELECT e.id, vs.name AS src, vd.name AS dst, r.name AS relation, e.label,"
            " e.count, e.bytes, e.first_seen, e.last_seen, e.ia_mean, e.ia_m2,"
            " e.size_min, e.size_max, e.figures, e.src AS src_id, e.dst AS dst_id,"
            " vs.kind AS src_kind, vd.kind AS dst_kind"
            " FROM edges e JOIN vertices vs ON vs.id = e.src JOIN vertices vd ON vd.id = e.dst"
            " JOIN relations r ON r.id = e.relation"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY e.id",
            tuple(params),
        )
        for row in rows:
            intervals = row["count"] - 1
            mean, m2 = row.pop("ia_mean"), row.pop("ia_m2")
            row["interval_mean_s"] = mean if intervals >= 1 else None
            row["interval_stdev_s"] = (m2 / intervals) ** 0.5 if intervals >= 2 else None
            if row["size_min"] == SIZE_UNKNOWN:
                row["size_min"] = row["size_max"] = None
            figures = figures_from(row.pop("figures"))
            row["period_s"] = figures.period_s
            row["jitter_s"] = figures.jitter_s
            row["rate_per_min"] = figures.rate_per_min
        return rows

    def alerts(
        self,
        *,
        state: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        newest_first: bool = False,
    ) -> list[dict[str, Any]]:
        """Alerts (optionally in one state) by id, oldest first unless ``newest_first``: the
        ``limit`` (None: all) after skipping ``offset``. The page is chosen on the alerts'
        own index before any join, so a page costs the same wherever it lies."""
        if offset < 0 or (limit is not None and limit < 0):
            raise ValueError(f"limit and offset must not be negative (got {limit}, {offset})")
        order = "DESC" if newest_first else "ASC"
        page = (
            "SELECT id FROM alerts"
            + (" WHERE state = ?" if state else "")
            + f" ORDER BY id {order} LIMIT ? OFFSET ?"
        )
        params = (*((state,) if state else ()), -1 if limit is None else limit, offset)
        return _with_detail(
            self._rows(
                _ALERT_ROW.format(source=f"({page}) AS page JOIN alerts a ON a.id = page.id")
                + f" ORDER BY a.id {order}",
                params,
            )
        )

    def alert(self, alert_id: int) -> dict[str, Any] | None:
        """One alert, as :meth:`alerts` lists it; None if there is no such alert."""
        if not -(2**63) <= alert_id < 2**63:  # beyond any SQLite integer
            return None
        rows = self._rows(_ALERT_ROW.format(source="alerts a") + " WHERE a.id = ?", (alert_id,))
        return _with_detail(rows)[0] if rows else None

    def count_alerts(self, state: str | None = None) -> int:
        """How many alerts :meth:`alerts` would list without a limit, counted on the index."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM alerts" + (" WHERE state = ?" if state else ""),
            (state,) if state else (),
        ).fetchone()
        return int(row[0])

    def decisions(
        self, *, limit: int | None = None, newest_first: bool = False
    ) -> list[dict[str, Any]]:
        """The audit log by id, oldest first unless ``newest_first``; ``limit`` (None: all)."""
        return self._rows(
            "SELECT id, action, by, at, reason, alert, service, src, dst, relation, detail"
            f" FROM decisions ORDER BY id {'DESC' if newest_first else 'ASC'} LIMIT ?",
            (-1 if limit is None else limit,),
        )

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

    # -- site models ----------------------------------------------------------------------

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

    def models(self, service: str | None = None) -> list[dict[str, Any]]:
        """Kept model envelopes: service, node, envelope (bytes), received_at, source."""
        rows = self._rows(
            "SELECT service, node, envelope, received_at, source FROM models"
            + (" WHERE service = ?" if service is not None else "")
            + " ORDER BY service, node",
            (service,) if service is not None else (),
        )
        for row in rows:
            row["envelope"] = bytes(row["envelope"])
        return rows

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

    def vertices(self) -> list[dict[str, Any]]:
        return self._rows(
            "SELECT v.id, v.name, v.kind, o.name AS owner, v.first_seen, v.events"
            " FROM vertices v LEFT JOIN vertices o ON o.id = v.owner ORDER BY v.id"
        )

    def timeline(self) -> list[dict[str, Any]]:
        """Per-minute rows (``ts`` = start of the minute) with the decisions made in it."""
        rows = self._rows(
            "SELECT minute * 60.0 AS ts, vertices, services, edges, learned, anomalies,"
            " learning, 0 AS decisions FROM timeline ORDER BY minute"
        )
        decided: dict[float, int] = {}
        for minute, count in self._db.execute(
            "SELECT CAST(at / 60 AS INTEGER), COUNT(*) FROM decisions GROUP BY 1"
        ):
            decided[minute * 60.0] = count
        by_ts = {row["ts"]: row for row in rows}
        last: dict[str, Any] | None = None
        for ts in sorted(set(by_ts) | set(decided)):
            row = by_ts.get(ts)
            if row is None:  # a minute with decisions only: the graph as it last was
                row = {**(last or _EMPTY_ROW), "ts": ts, "learned": 0, "anomalies": 0}
                by_ts[ts] = row
            row["decisions"] = decided.get(ts, 0)
            last = row
        return [by_ts[ts] for ts in sorted(by_ts)]

    def status(self) -> dict[str, Any]:
        db = self._db
        labels = dict(db.execute("SELECT label, COUNT(*) FROM edges GROUP BY label").fetchall())
        states = dict(db.execute("SELECT state, COUNT(*) FROM alerts GROUP BY state").fetchall())
        kinds = dict(db.execute("SELECT kind, COUNT(*) FROM alerts GROUP BY kind").fetchall())
        phases = dict(db.execute("SELECT phase, COUNT(*) FROM services GROUP BY phase").fetchall())
        events, first, last = db.execute(
            "SELECT COALESCE(SUM(count), 0), MIN(first_seen), MAX(last_seen) FROM edges"
        ).fetchone()
        return {
            "db": str(self.path),
            "schema": self.schema_version,
            "events": events,
            "first_event": first,
            "last_event": last,
            "services": sum(phases.values()),
            "services_learning": phases.get("learning", 0),
            "vertices": db.execute("SELECT COUNT(*) FROM vertices").fetchone()[0],
            "edges": sum(labels.values()),
            "edges_by_label": {label.text: labels.get(label.text, 0) for label in Label},
            "alerts_by_state": {s.value: states.get(s.value, 0) for s in AlertState},
            "alerts_by_kind": {k.value: kinds.get(k.value, 0) for k in AlertKind},
            "services_by_phase": {p.value: phases.get(p.value, 0) for p in Phase},
            "decisions": db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0],
        }


_EMPTY_ROW: Mapping[str, Any] = {
    "vertices": 0,
    "services": 0,
    "edges": 0,
    "learned": 0,
    "anomalies": 0,
    "learning": 0,
}


def _service_phase(
    name: str,
    phase: str,
    started: float | None,
    ends: float | None,
    learned: float | None,
    at_start: int,
    mode: str | None,
    model_from: str | None,
    mode_by: str | None,
    mode_at: float | None,
    quiet_since: float | None,
) -> ServicePhase:
    """A service's state from its row (the columns of ``services`` in their order)."""
    return ServicePhase(
        service=name,
        phase=Phase(phase),
        started_at=started,
        ends_at=ends,
        learned_at=learned,
        events_at_start=at_start,
        mode=Mode(mode) if mode else None,
        model_from=model_from,
        mode_by=mode_by,
        mode_at=mode_at,
        quiet_since=quiet_since,
    )


def _mode_text(mode: Mode | None) -> str | None:
    return None if mode is None else mode.value


def _counted(c: EdgeCounts) -> tuple[Any, ...]:
    """An edge's counters in the order of the edges table's columns."""
    return (
        c.count,
        c.nbytes,
        c.first_seen,
        c.last_seen,
        c.ia_mean,
        c.ia_m2,
        c.size_min,
        c.size_max,
        c.figures,
    )
