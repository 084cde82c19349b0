"""Rate, periodicity and size on known edges, as scripted event -> verdict sequences.

A sensor sends a heartbeat every 60 s while it learns (30 min); afterwards a flood, a
silence and oversized messages each raise exactly one alert, and jitter within what was
learned raises nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from commgraph.alerts import Action, AlertKind, AlertState
from commgraph.detectors import DetectorSettings, Features, figures_from
from commgraph.engine import Engine
from commgraph.events import Event
from commgraph.graph import Label
from commgraph.phases import LearningSettings, Mode
from commgraph.store import Store

T0 = 1_700_000_000.0
LEARN = 30 * 60.0


def ev(ts: float, size: int = 20, dst: str = "home/hall/temp") -> Event:
    return Event(ts=T0 + ts, src="sensor", dst=dst, relation="publish", size=size)


def heartbeat(
    engine: Engine, start: float, end: float, *, every: float = 60.0, size: int = 20
) -> list[int | None]:
    """A message every ``every`` seconds in [start, end); the alert ids of the verdicts."""
    alerts = []
    ts = start
    while ts < end:
        engine.tick(T0 + ts)
        alerts.append(engine.observe(ev(ts, size)).alert)
        ts += every
    return alerts


def learned(mode: Mode = Mode.MONITOR, **detectors: object) -> Engine:
    engine = Engine(
        LearningSettings(duration=LEARN, mode=mode),
        detectors=DetectorSettings(**detectors),  # type: ignore[arg-type]
    )
    assert heartbeat(engine, 0, LEARN + 60) == [None] * 31
    return engine


def kinds(engine: Engine) -> list[AlertKind]:
    return [alert.kind for alert in engine.alerts.by_id.values()]


def test_a_heartbeat_is_learned_with_its_period() -> None:
    engine = learned()
    figures = engine.features.figures(0)
    assert figures.baseline and figures.period_s == pytest.approx(60.0, abs=0.5)
    assert figures.jitter_s is not None and figures.jitter_s < 1.0
    assert engine.features.periodic == {0}
    assert engine.graph.label[0] == Label.LEARNED


def test_jitter_within_what_was_learned_raises_nothing() -> None:
    engine = learned()
    ts = LEARN + 60
    for n in range(200):
        ts += 60 + (7 if n % 2 else -7)  # +-7 s around the minute
        engine.tick(T0 + ts)
        assert engine.observe(ev(ts, size=20 + n % 5)).alert is None
    assert kinds(engine) == []


def test_a_tenfold_flood_raises_one_rate_alert() -> None:
    engine = learned()
    alerts = heartbeat(engine, LEARN + 120, LEARN + 1320, every=6.0)  # 20 min at 10x
    raised = [a for a in alerts if a is not None]
    assert len(raised) == 1 and kinds(engine) == [AlertKind.RATE]
    alert = engine.alerts.by_id[raised[0]]
    assert alert.count > 100  # the rest of the flood counted on it
    # the engine lets the messages through: a rate alert asks, it does not block
    assert engine.observe(ev(LEARN + 1330)).label is Label.LEARNED


def test_a_heartbeat_that_stops_raises_one_periodicity_alert_via_tick() -> None:
    engine = learned()
    last = LEARN  # the last heartbeat (at 30 min)
    engine.tick(T0 + last + 2.5 * 60)
    assert kinds(engine) == []  # two and a half periods: not yet
    for minutes in (4, 10, 60, 600):
        engine.tick(T0 + last + minutes * 60)
    assert kinds(engine) == [AlertKind.PERIODICITY]
    (alert,) = engine.alerts.by_id.values()
    # raised when the silence became three periods (and three jitters) long
    assert T0 + last + 3 * 60 <= alert.first_seen < T0 + last + 3.2 * 60


def test_oversized_messages_raise_one_size_alert() -> None:
    engine = learned()
    alerts = heartbeat(engine, LEARN + 120, LEARN + 600, size=200)
    assert [a for a in alerts if a is not None] == [1]
    assert kinds(engine) == [AlertKind.SIZE]
    assert engine.alerts.by_id[1].count == len(alerts)


def test_approving_widens_the_learned_figure() -> None:
    engine = learned()
    heartbeat(engine, LEARN + 120, LEARN + 600, size=200)
    engine.decide(1, Action.APPROVE, by="owner", at=T0 + LEARN + 700)
    assert heartbeat(engine, LEARN + 720, LEARN + 1200, size=200) == [None] * 8
    heartbeat(engine, LEARN + 1260, LEARN + 2460, every=6.0)
    rate = [a for a in engine.alerts.by_id.values() if a.kind is AlertKind.RATE]
    assert len(rate) == 1
    engine.decide(rate[0].id, Action.APPROVE, by="owner", at=T0 + LEARN + 2500)
    assert [a for a in heartbeat(engine, LEARN + 2520, LEARN + 3720, every=6.0) if a] == []
    # a silence approved: the edge is no longer expected like a clock
    engine.tick(T0 + LEARN + 20_000)
    silence = [a for a in engine.alerts.by_id.values() if a.kind is AlertKind.PERIODICITY]
    engine.decide(silence[0].id, Action.APPROVE, by="owner", at=T0 + LEARN + 20_001)
    engine.tick(T0 + LEARN + 90_000)
    assert len([a for a in engine.alerts.by_id.values() if a.state is AlertState.PENDING]) == 0


def test_denying_a_figure_alert_blocks_the_edge_in_protect_mode() -> None:
    engine = learned(Mode.PROTECT)
    heartbeat(engine, LEARN + 120, LEARN + 300, size=500)
    engine.decide(1, Action.DENY, by="owner", at=T0 + LEARN + 400)
    assert engine.observe(ev(LEARN + 420)).block


def test_learn_mode_keeps_quiet_and_sparse_edges_do_not_alarm() -> None:
    quiet = learned(Mode.LEARN)
    heartbeat(quiet, LEARN + 120, LEARN + 1320, every=6.0, size=900)
    quiet.tick(T0 + LEARN + 90_000)
    assert kinds(quiet) == []
    # twice as often as learned, or a handful of messages in a burst: no alarm
    engine = learned()
    heartbeat(engine, LEARN + 120, LEARN + 3600, every=30.0)
    for n in range(5):
        engine.observe(ev(LEARN + 3600 + n * 0.2))
    assert AlertKind.RATE not in kinds(engine)


def test_request_answer_pairs_find_the_period_between_bursts() -> None:
    features = Features()
    for n in range(30):
        features.update(0, 3600.0 if n else 0.0, 300)  # a DHCP renewal every hour
        features.update(0, 0.05, 310)  # and its answer
    assert features.figures(0).period_s == pytest.approx(3600.0, rel=0.01)


def test_figures_stay_fixed_in_size_and_survive_the_store(tmp_path: Path) -> None:
    engine = learned()
    size = engine.features.nbytes()
    heartbeat(engine, LEARN + 60, LEARN + 60 * 500, every=60.0)
    assert engine.features.nbytes() == size
    with Store(tmp_path / "x.db") as store:
        store.flush(engine)
        again = store.load_engine(LearningSettings(duration=LEARN))
        assert again.features.pack(0) == engine.features.pack(0)
        assert again.features.periodic == {0}
        # the silence of a reloaded periodic edge is still noticed
        again.tick(T0 + LEARN + 60 * 500 + 600)
        assert kinds(again) == [AlertKind.PERIODICITY]
        (row,) = store.edges()
        assert row["period_s"] == pytest.approx(60.0, abs=0.5)
        assert row["rate_per_min"] == pytest.approx(1.0, rel=0.2)
    assert figures_from(None).period_s is None


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown detector 'speed'"):
        DetectorSettings(kinds=frozenset({"speed"}))
    with pytest.raises(ValueError, match="rate_factor must be at least 1"):
        DetectorSettings(rate_factor=0.5)


def test_learned_figures_travel_in_the_model_and_are_enforced_elsewhere() -> None:
    engine = learned()
    model = engine.model_of("sensor", node="a", issued_at=T0 + LEARN + 60, version=1)
    (edge,) = model.edges
    assert edge.figures["period_s"] == pytest.approx(60.0, abs=0.5)
    assert edge.figures["size_min"] == edge.figures["size_max"] == 20
    assert edge.figures["rate_per_min"] >= 1.0
    elsewhere = Engine(LearningSettings(duration=LEARN))
    elsewhere.adopt(model, "a")
    start = LEARN * 10
    assert heartbeat(elsewhere, start, start + 300) == [None] * 5  # adopted: no learning
    heartbeat(elsewhere, start + 300, start + 1500, every=6.0)  # a flood at once
    heartbeat(elsewhere, start + 1500, start + 1800, size=400)
    elsewhere.tick(T0 + start + 10_000)  # and it falls silent
    assert kinds(elsewhere) == [AlertKind.RATE, AlertKind.SIZE, AlertKind.PERIODICITY]
