from __future__ import annotations

import random
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from commgraph.alerts import Action
from commgraph.daemon import replay
from commgraph.demo import heating_site
from commgraph.engine import Engine
from commgraph.errors import StoreError
from commgraph.events import Event
from commgraph.phases import LearningSettings, Mode
from commgraph.store import MIGRATIONS, SCHEMA_VERSION, Store

SETTINGS = LearningSettings(duration=600.0, mode=Mode.PROTECT)


def site_lines(seed: int = 7) -> list[str]:
    """The demo's heating site plus a second, noisier site with late arrivals and anomalies."""
    events = list(heating_site(minutes=50))
    rng = random.Random(seed)
    start = events[0].ts
    for _ in range(1500):
        ts = start + rng.uniform(0, 50 * 60)
        device = f"dev-{rng.randrange(12)}"
        if rng.random() < 0.5:
            events.append(
                Event(
                    ts=ts,
                    src=device,
                    dst=f"site/{device}/{rng.choice('ab')}",
                    relation="publish",
                    size=rng.randrange(1, 90),
                )
            )
        else:
            host = f"10.0.0.{rng.randrange(1, 6)}"
            events.append(
                Event(ts=ts, src=device, dst=host, relation=f"tcp/{rng.choice([80, 443, 8883])}")
            )
    events.sort(key=lambda e: e.ts)
    return [e.to_json() + "\n" for e in events]


def snapshot(store: Store) -> dict[str, Any]:
    status = store.status()
    del status["db"]
    return {
        "status": status,
        "vertices": store.vertices(),
        "edges": store.edges(),
        "alerts": store.alerts(),
        "services": store.services(),
        "timeline": store.timeline(),
    }


def run(db: Path, lines: list[str], *, split: int | None = None) -> dict[str, Any]:
    parts = [lines] if split is None else [lines[:split], lines[split:]]
    for part in parts:
        with Store(db) as store:
            engine = store.load_engine(SETTINGS)
            replay(part, engine, store)
    with Store(db) as store:
        return snapshot(store)


@pytest.mark.parametrize("fraction", [0.13, 0.5, 0.77])
def test_restart_gives_identical_results(tmp_path: Path, fraction: float) -> None:
    lines = site_lines()
    whole = run(tmp_path / "whole.db", lines)
    split = run(tmp_path / "split.db", lines, split=int(len(lines) * fraction))
    assert whole["status"]["events"] == len(lines)
    assert whole["alerts"], "the scenario must raise alerts for the comparison to mean much"
    assert split == whole


def test_restart_resumes_deadlines_labels_and_pending_alerts(tmp_path: Path) -> None:
    db = tmp_path / "site.db"
    t0 = 1_700_000_000.0
    settings = replace(SETTINGS, site=900.0)  # b joins within the site's bootstrap
    with Store(db) as store:
        engine = store.load_engine(settings)
        engine.observe(Event(ts=t0, src="a", dst="t/1", relation="publish"))
        engine.observe(Event(ts=t0 + 700, src="a", dst="t/2", relation="publish"))  # alert
        late = Event(ts=t0 + 650, src="b", dst="t/3", relation="publish")  # b learns to +1250
        engine.observe(late)
        store.flush(engine)
    with Store(db) as store:
        engine = store.load_engine(settings)
        b_phase = engine.phases.states[engine.graph.vertex(*_svc("b"))]  # type: ignore[index]
        assert b_phase.ends_at == t0 + 650 + 600
        assert [a.state.value for a in engine.alerts.by_id.values()] == ["pending"]
        # still learning: a new edge of b is learned, not an alert
        assert not engine.observe(
            Event(ts=t0 + 1200, src="b", dst="t/4", relation="publish")
        ).anomalous
        # the pending edge repeats: same alert, count 2, blocked in protect mode
        verdict = engine.observe(Event(ts=t0 + 1201, src="a", dst="t/2", relation="publish"))
        assert verdict.block and verdict.alert is None
        assert engine.alerts.by_id[1].count == 2


def _svc(name: str) -> tuple[Any, str]:
    from commgraph.events import VertexKind

    return VertexKind.SERVICE, name


def test_wal_mode_and_schema_version(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    Store(db).close()
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    raw.close()
    with Store(db) as store:  # opening again migrates nothing and keeps the data
        assert store.schema_version == SCHEMA_VERSION


def test_database_from_a_newer_commgraph_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    Store(db).close()
    raw = sqlite3.connect(db)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="newer commgraph"):
        Store(db)


def test_a_file_that_is_not_a_database_is_named(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("shopping list\n" * 100)
    with pytest.raises(StoreError, match=r"notes\.txt"):
        Store(bogus)


def test_decision_is_durable_before_returning(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    t0 = 1_700_000_000.0
    with Store(db) as store:
        engine = store.load_engine(LearningSettings(duration=10.0))
        engine.observe(Event(ts=t0, src="a", dst="t/1", relation="publish"))
        engine.observe(Event(ts=t0 + 60, src="a", dst="t/2", relation="publish"))
        store.flush(engine)
        engine.decide(1, Action.DENY, by="owner", at=t0 + 61, reason="no")
        store.write_changes(engine, engine.take_changes())
        # another connection (another process would do the same) sees it at once
        other = sqlite3.connect(db)
        assert other.execute("SELECT label FROM edges WHERE id = 2").fetchone() == ("denied",)
        assert other.execute("SELECT action, by, reason FROM decisions").fetchall() == [
            ("deny", "owner", "no")
        ]
        other.close()


def test_counters_never_overwrite_labels_or_modes(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    t0 = 1_700_000_000.0
    with Store(db) as store:
        engine = store.load_engine(LearningSettings(duration=10.0))
        engine.observe(Event(ts=t0, src="a", dst="t/1", relation="publish"))
        store.flush(engine)
        # someone else (the CLI) approves the edge and sets a mode meanwhile
        other = sqlite3.connect(db)
        other.execute("UPDATE edges SET label = 'approved' WHERE id = 1")
        other.execute("UPDATE services SET mode = 'protect'")
        other.commit()
        other.close()
        for i in range(1, 5):
            engine.observe(Event(ts=t0 + i, src="a", dst="t/1", relation="publish"))
        engine.tick(t0 + 100)  # ends a's phase: a structural write of the service row
        store.flush(engine)
        row = store.edges()[0]
        assert (row["label"], row["count"]) == ("approved", 5)
        assert store.services()[0]["mode"] == "protect"
        assert store.services()[0]["phase"] == "active"


def test_settings_are_remembered(tmp_path: Path) -> None:
    with Store(tmp_path / "x.db") as store:
        assert store.settings() is None
        settings = LearningSettings(
            duration=90.0,
            durations={"x": 5.0},
            min_events=3,
            mode=Mode.LEARN,
            modes={"y": Mode.PROTECT},
            block_pending=False,
        )
        store.save_settings(settings)
        assert store.settings() == settings


def test_timeline_counts_learning_anomalies_and_decisions(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    with Store(db) as store:
        engine = store.load_engine(LearningSettings(duration=600.0))
        lines = [e.to_json() for e in heating_site(minutes=30)]
        replay(lines, engine, store)
        engine.decide(1, Action.APPROVE, by="me", at=2_000_000_000.0)
        store.flush(engine)
        rows = store.timeline()
    assert rows[0]["learned"] > 0 and rows[0]["learning"] == 5
    assert sum(r["anomalies"] for r in rows) == 2  # "is the bedroom sensor yours?", the valve
    assert [r["decisions"] for r in rows if r["decisions"]] == [1]
    assert rows[-1]["ts"] == 2_000_000_000.0 // 60 * 60
    assert max(r["learning"] for r in rows if r["ts"] >= heating_site_minute(15)) == 1


def heating_site_minute(minute: int) -> float:
    first = next(iter(heating_site(minutes=1))).ts
    return (first // 60 + minute) * 60


def test_engine_can_be_loaded_without_a_store_roundtrip_loss(tmp_path: Path) -> None:
    """Every column of an edge survives a flush and load bit for bit."""
    db = tmp_path / "x.db"
    with Store(db) as store:
        engine: Engine = store.load_engine(LearningSettings(duration=1e9))
        for i in range(50):
            engine.observe(
                Event(
                    ts=1e9 + i * 1.37 + (i % 3) * 0.11,
                    src="s",
                    dst="t",
                    relation="publish",
                    size=i % 7 or None,
                )
            )
        store.flush(engine)
        before = engine.graph.stats(0)
    with Store(db) as store:
        after = store.load_engine().graph.stats(0)
    assert after == before


def test_an_old_database_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    db = tmp_path / "v1.db"
    raw = sqlite3.connect(db)
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            raw.execute(statement)
    raw.execute("INSERT INTO meta (key, value) VALUES ('kept', 'yes')")
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()
    with Store(db) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.meta("kept") == "yes"
        assert store.use_token("n-1", 1.0) is True
        assert store.use_token("n-1", 2.0) is False  # single use, also across processes
