from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from commgraph.alerts import Action
from commgraph.demo import heating_site
from commgraph.engine import Engine
from commgraph.errors import StoreError
from commgraph.events import Event
from commgraph.phases import LearningSettings, Mode
from commgraph.replay import replay
from commgraph.store import MIGRATIONS, SCHEMA_VERSION, Store
from conftest import seed_alerts, seeded_state

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


# -- listings of a node with many alerts ------------------------------------------------------

MANY = 20_000


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A store of 20,000 alerts (read only: built once for the module)."""
    db = tmp_path_factory.mktemp("many") / "many.db"
    seed_alerts(db, MANY)
    with Store(db) as store:
        yield store


def ids(rows: list[dict[str, Any]]) -> list[int]:
    return [row["id"] for row in rows]


def test_the_seeded_store_loads_like_an_engine_written_one(many: Store) -> None:
    engine = many.load_engine()
    assert len(engine.alerts.by_id) == MANY
    assert len(engine.alerts.open_alerts) == many.count_alerts("pending")
    assert engine.take_changes().alerts == set()


def test_alert_pages_are_the_limit_after_the_offset(many: Store) -> None:
    assert ids(many.alerts(limit=100)) == list(range(1, 101))
    assert ids(many.alerts(limit=100, offset=MANY - 100)) == list(range(MANY - 99, MANY + 1))
    assert ids(many.alerts(limit=3, newest_first=True)) == [MANY, MANY - 1, MANY - 2]
    assert ids(many.alerts(limit=2, offset=MANY - 1)) == [MANY]
    assert many.alerts(limit=10, offset=MANY) == []
    assert many.alerts(limit=0) == []
    pending = [i for i in range(MANY, 0, -1) if seeded_state(i) == "pending"]
    assert (
        ids(many.alerts(state="pending", limit=50, offset=100, newest_first=True))
        == (pending[100:150])
    )
    for state in ("pending", "approved", "denied"):
        expected = sum(seeded_state(i) == state for i in range(1, MANY + 1))
        assert many.count_alerts(state) == expected
    assert many.count_alerts() == MANY
    assert many.count_alerts("nonsense") == 0
    with pytest.raises(ValueError, match="negative"):
        many.alerts(limit=-1)
    with pytest.raises(ValueError, match="negative"):
        many.alerts(offset=-5)


def test_one_alert_by_its_id(many: Store) -> None:
    last = many.alert(MANY)
    assert last is not None
    assert (last["id"], last["src"], last["dst"], last["relation"], last["state"]) == (
        MANY,
        "svc-0",
        f"site/svc-0/t{MANY}",
        "publish",
        "pending",
    )
    assert last == many.alerts(limit=1, newest_first=True)[0]
    first = many.alert(1)
    assert first is not None
    assert (first["state"], first["decided_by"], first["reason"]) == (
        "approved",
        "owner",
        "seeded 1",
    )
    assert many.alert(0) is None and many.alert(MANY + 1) is None
    assert many.alert(2**64) is None and many.alert(-(2**64)) is None


def plans(store: Store, call: Callable[[], object]) -> list[str]:
    """The query plan of each statement ``call`` runs on ``store``'s connection."""
    statements: list[str] = []
    connection = store._db  # the only way to see the statements a Store runs
    connection.set_trace_callback(statements.append)
    try:
        call()
    finally:
        connection.set_trace_callback(None)
    return [
        "\n".join(row[3] for row in connection.execute("EXPLAIN QUERY PLAN " + sql))
        for sql in statements
    ]


def test_listing_queries_are_bounded_by_the_page(many: Store) -> None:
    # The page's ids come from the alerts alone (by the (state, id) index, or by id), in
    # order, without sorting; only then are the page's rows joined, by primary keys.
    [page] = plans(
        many, lambda: many.alerts(state="pending", limit=100, offset=11_000, newest_first=True)
    )
    choice, _, joins = page.partition("\nSCAN page\n")
    assert choice.splitlines() == [
        "MATERIALIZE page",
        "SEARCH alerts USING COVERING INDEX alerts_by_state (state=?)",
    ]
    for alias in ("a", "e", "vs", "vd", "r", "d"):
        assert f"SEARCH {alias} USING INTEGER PRIMARY KEY (rowid=?)" in joins, page
    assert "SCAN" not in joins, page
    [page] = plans(many, lambda: many.alerts(limit=100, offset=19_000))
    assert page.partition("\nSCAN page\n")[0].splitlines() == ["MATERIALIZE page", "SCAN alerts"]
    [one] = plans(many, lambda: many.alert(MANY))
    assert one.splitlines()[0] == "SEARCH a USING INTEGER PRIMARY KEY (rowid=?)"
    [count] = plans(many, lambda: many.count_alerts("pending"))
    assert count == "SEARCH alerts USING COVERING INDEX alerts_by_state (state=?)"


def test_the_listing_index_lets_an_alert_find_its_decision_by_index(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    seed_alerts(db, 10)
    with Store(db) as store:  # schema 5 has decisions_by_alert
        [page] = plans(store, lambda: store.alerts(limit=5))
        assert "SEARCH decisions USING COVERING INDEX decisions_by_alert (alert=?)" in page
        assert store.alert(1) == store.alerts(limit=1)[0]


def test_pages_are_slices_of_the_whole_listing(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    seed_alerts(db, 300, services=7)
    with Store(db) as store:
        for state in (None, "pending", "approved", "denied"):
            whole = store.alerts(state=state)
            assert len(whole) == store.count_alerts(state)
            newest = whole[::-1]
            for offset, limit in ((0, 7), (13, 40), (len(whole) - 3, 10)):
                page = store.alerts(state=state, limit=limit, offset=offset)
                assert page == whole[offset : offset + limit]
                page = store.alerts(state=state, limit=limit, offset=offset, newest_first=True)
                assert page == newest[offset : offset + limit]
        assert [store.alert(row["id"]) for row in whole] == whole


def test_services_count_their_edges_and_pending_alerts(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    seed_alerts(db, 300, services=7)
    with Store(db) as store:
        edges, pending = store.edges(), store.alerts(state="pending")
        for row in store.services():
            name = row["name"]
            assert row["edges"] == sum(name in (e["src"], e["dst"]) for e in edges)
            assert row["pending_alerts"] == sum(name in (a["src"], a["dst"]) for a in pending)
            assert row["pending_alerts"] > 0


def test_recent_decisions_newest_first(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    seed_alerts(db, 30)
    with Store(db) as store:
        whole = store.decisions()
        assert len(whole) == 12
        assert store.decisions(limit=3, newest_first=True) == whole[::-1][:3]
        assert store.decisions(limit=3) == whole[:3]
