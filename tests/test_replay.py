"""The event-time driver: replays of JSON lines through the engine into a store."""

from __future__ import annotations

from pathlib import Path

import pytest

from commgraph.demo import DEMO_START, heating_site
from commgraph.errors import EventDecodeError
from commgraph.phases import LearningSettings
from commgraph.replay import replay
from commgraph.store import Store


def lines_with_errors() -> list[str]:
    good = [e.to_json() for e in heating_site(minutes=12)]
    return [*good[:2], "{not json", *good[2:4], '{"ts": 1, "src": "a"}', *good[4:]]


def test_replay_skips_and_counts_bad_lines(tmp_path: Path) -> None:
    lines = lines_with_errors()
    with Store(tmp_path / "x.db") as store:
        engine = store.load_engine(LearningSettings(duration=600.0))
        summary = replay(lines, engine, store)
        assert summary.events == len(lines) - 2
        assert summary.skipped == 2
        assert [e.line for e in summary.errors] == [3, 6]
        assert "missing field 'dst', 'relation'" in str(summary.errors[1])
        assert store.status()["events"] == summary.events


def test_strict_replay_stops_at_the_first_bad_line_and_keeps_what_came_before(
    tmp_path: Path,
) -> None:
    with Store(tmp_path / "x.db") as store:
        engine = store.load_engine(LearningSettings(duration=600.0))
        with pytest.raises(EventDecodeError, match="line 3"):
            replay(lines_with_errors(), engine, store, strict=True)
        assert store.status()["events"] == 2


def test_progress_is_reported_with_line_numbers(tmp_path: Path) -> None:
    seen: list[int] = []
    lines = [e.to_json() for e in heating_site(minutes=40)]
    with Store(tmp_path / "x.db") as store:
        replay(lines, store.load_engine(), store, progress=seen.append)
    assert seen and seen[-1] == len(lines)
    assert seen == sorted(seen)


def test_demo_site_raises_exactly_the_scripted_alert(tmp_path: Path) -> None:
    with Store(tmp_path / "x.db") as store:
        engine = store.load_engine(LearningSettings(duration=600.0))
        summary = replay((e.to_json() for e in heating_site()), engine, store)
        alerts = store.alerts()
        services = {s["name"]: s for s in store.services()}
    assert len(summary.new_alerts) == 2
    assert [(a["kind"], a["src"], a["dst"], a["relation"], a["state"]) for a in alerts] == [
        ("new-service", "thermo-bedroom", "this node", "new-service", "pending"),
        ("new-edge", "thermo-kitchen", "valves/kitchen/set", "publish", "pending"),
    ]
    assert alerts[1]["count"] == 8  # every 2 minutes from minute 25 to 39: one alert
    bedroom = services["thermo-bedroom"]
    assert bedroom["learning_started_at"] == pytest.approx(heating_start() + 15 * 60 + 3)
    assert bedroom["phase"] == "active"


def heating_start() -> float:
    return DEMO_START
