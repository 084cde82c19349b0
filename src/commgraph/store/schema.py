"""The database schema: one migration per version (``PRAGMA user_version``), oldest first."""

from __future__ import annotations

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

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
