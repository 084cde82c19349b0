"""The engine <-> store contract without SQLite: deltas out, a snapshot back in."""

from __future__ import annotations

from dataclasses import replace

import pytest

from commgraph.alerts import Action
from commgraph.engine import Engine
from commgraph.phases import LearningSettings, Mode
from commgraph.state import Delta, EdgeRow, Snapshot, VertexRow

T0 = 1_700_000_000.0


class Kept:
    """What a store would keep: the latest value of every row the deltas named."""

    def __init__(self) -> None:
        self.vertices: dict[int, VertexRow] = {}
        self.relations: dict[int, str] = {}
        self.edges: dict[int, EdgeRow] = {}
        self.services: dict[int, object] = {}
        self.alerts: dict[int, object] = {}
        self.instances: set[tuple[int, str]] = set()
        self.decided: list[tuple[str, str, str, float, str]] = []

    def write(self, delta: Delta) -> None:
        self.vertices.update((v.id, v) for v in delta.vertices)
        self.relations.update(delta.relations)
        for row in delta.edges:
            self.edges[row.counts.id] = row
        self.services.update(delta.services)
        self.alerts.update((a.id, a) for a in delta.alerts)
        self.instances.update(delta.instances)
        self.decided += [(*d.edge, d.at, d.by) for d in delta.decisions if d.edge]

    def snapshot(self) -> Snapshot:
        return Snapshot(
            vertices=[self.vertices[k] for k in sorted(self.vertices)],
            relations=sorted(self.relations.items()),
            edges=[self.edges[k] for k in sorted(self.edges)],
            services=sorted(self.services.items()),  # type: ignore[arg-type]
            alerts=[self.alerts[k] for k in sorted(self.alerts)],  # type: ignore[misc]
            instances=sorted(self.instances),
            decided=self.decided,
        )


def site(engine: Engine, kept: Kept) -> int:
    for minute in range(6):
        ts = T0 + minute * 60
        engine.observe_fields(ts, "thermo", "home/kitchen/temp", "publish", 12)
        engine.observe_fields(ts, "home/kitchen/temp", "heater", "deliver", 12)
        engine.tick(ts)
        kept.write(engine.delta(engine.take_changes()))
    verdict = engine.observe_fields(T0 + 400, "thermo", "valves/kitchen/set", "publish", 3)
    assert verdict.alert is not None
    kept.write(engine.delta(engine.take_changes()))
    return verdict.alert


def test_an_engine_resumed_from_its_deltas_judges_as_the_original() -> None:
    settings = LearningSettings(duration=300, mode=Mode.PROTECT)
    original, kept = Engine(settings, node="a"), Kept()
    alert = site(original, kept)
    original.decide(alert, Action.DENY, by="owner", at=T0 + 401)
    kept.write(original.delta(original.take_changes()))
    for counters in (original.take_counters(),):  # counters written behind
        for c in counters.edges:
            kept.edges[c.id] = replace(kept.edges[c.id], counts=c)

    resumed = Engine(settings, node="a")
    resumed.restore(kept.snapshot())
    for engine in (original, resumed):
        known = engine.observe_fields(T0 + 500, "thermo", "home/kitchen/temp", "publish", 12)
        denied = engine.observe_fields(T0 + 500, "thermo", "valves/kitchen/set", "publish", 3)
        new = engine.observe_fields(T0 + 500, "thermo", "valves/hall/set", "publish", 3)
        assert (known.block, denied.block, new.block) == (False, True, True)
    a, b = original.graph, resumed.graph
    assert [a.stats(e) for e in range(a.edge_count)] == [b.stats(e) for e in range(b.edge_count)]
    assert resumed.decided == original.decided
    assert sorted(resumed.alerts.by_id) == sorted(original.alerts.by_id)


def test_what_the_engine_hands_out_does_not_change_under_the_store() -> None:
    engine, kept = Engine(LearningSettings(duration=300), node="a"), Kept()
    alert = site(engine, kept)
    written = kept.alerts[alert]
    engine.observe_fields(T0 + 450, "thermo", "valves/kitchen/set", "publish", 3)
    assert written.count == 1  # type: ignore[attr-defined]
    assert engine.alerts.by_id[alert].count == 2


def test_a_snapshot_with_a_gap_in_its_ids_is_refused() -> None:
    engine, kept = Engine(LearningSettings(duration=300), node="a"), Kept()
    site(engine, kept)
    snapshot = kept.snapshot()
    snapshot.vertices = list(snapshot.vertices)[1:]
    with pytest.raises(ValueError, match="not contiguous"):
        Engine(LearningSettings(duration=300)).restore(snapshot)
