"""Reading for people: the listings the CLI, the API and the dashboard show."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from commgraph.alerts import AlertKind, AlertState
from commgraph.detectors import figures_from
from commgraph.graph import SIZE_UNKNOWN, Label
from commgraph.phases import LearningSettings, Phase
from commgraph.store.connection import Connection
from commgraph.store.engine_state import service_phase

__all__ = ["Listings"]

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


class Listings(Connection):
    """Services, edges, alerts, decisions, models and the timeline, as rows of plain values."""

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
            state = service_phase(
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
