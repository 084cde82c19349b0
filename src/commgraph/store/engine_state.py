"""Engine state in and out: the values :mod:`commgraph.state` defines, as rows.

Two write paths, as the engine hands them over:
- :meth:`EngineState.write_changes`: structure (vertices, edges and their labels, phases,
  alerts, decisions, timeline), committed before the caller goes on;
- :meth:`EngineState.write_counters`: edge and alert counters, written behind in batches (the
  caller does it about once a second, so a crash loses at most that much statistics).

Counters never touch labels or modes, and modes are written only when the owner changes one,
so a writer never puts back state that another process changed meanwhile.
"""

from __future__ import annotations

import json
from typing import Any

from commgraph.alerts import NO_EDGE, Alert, AlertKind, AlertState
from commgraph.detectors import DetectorSettings
from commgraph.detectors.guardrails import GuardrailSettings
from commgraph.engine import Changes, Engine
from commgraph.errors import StoreError
from commgraph.events import VertexKind
from commgraph.graph import Label
from commgraph.identity import Identity
from commgraph.phases import LearningSettings, Mode, Phase, ServicePhase
from commgraph.state import Counters, Delta, EdgeCounts, EdgeRow, Snapshot, TimelineRow, VertexRow
from commgraph.store.connection import Connection
from commgraph.templates import Templates

__all__ = ["EngineState", "service_phase"]


class EngineState(Connection):
    """Reads an engine back from the database and writes what it hands out."""

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
                (row[0], service_phase(*row[1:]))
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


def service_phase(
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
