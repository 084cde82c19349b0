from __future__ import annotations

from pathlib import Path

import pytest

from commgraph.config import Config
from commgraph.daemon import Daemon
from commgraph.demo import heating_site
from commgraph.errors import EventDecodeError
from commgraph.model import ModelEdge, ServiceModel, sign_model
from commgraph.phases import LearningSettings
from commgraph.replay import replay
from commgraph.signing import generate_keypair
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
    from commgraph.demo import DEMO_START

    return DEMO_START


# -- site models in a node ---------------------------------------------------------------------


def _model_node(tmp_path: Path) -> tuple[Daemon, Store, bytes]:
    private, public = generate_keypair()
    (tmp_path / "site.pub").write_bytes(public)
    config = Config(node="node-a", trusted_keys=(tmp_path / "site.pub",))
    store = Store(tmp_path / "n.db")
    return Daemon(config, store), store, private


def _thermo(version: int, *peers: str) -> ServiceModel:
    return ServiceModel(
        service="thermo",
        version=version,
        node="node-b",
        issued_at=1_700_000_000.0 + version,
        edges=tuple(
            ModelEdge(relation="publish", peer=peer, direction="out", label="learned")
            for peer in peers
        ),
    )


def test_an_older_model_is_merged_but_never_replaces_the_kept_newer_one(tmp_path: Path) -> None:
    daemon, store, private = _model_node(tmp_path)
    with store:
        newer = sign_model(_thermo(2, "home/+/temp"), private)
        older = sign_model(_thermo(1, "home/+/old"), private)
        assert daemon.model_received("thermo", "node-b", newer, source="sync")
        assert not daemon.model_received("thermo", "node-b", newer, source="sync")  # again
        assert not daemon.model_received("thermo", "node-b", older, source="sync")
        (row,) = store.models("thermo")
        assert row["envelope"] == newer
        site = daemon.engine.models["thermo"].model
        assert [edge.peer for edge in site.edges] == ["home/+/old", "home/+/temp"]
        assert daemon.models_kept == 1 and daemon.models_rejected == 0


def test_a_model_on_another_nodes_topic_is_refused_and_audited_once(tmp_path: Path) -> None:
    daemon, store, private = _model_node(tmp_path)
    with store:
        envelope = sign_model(_thermo(1, "home/+/temp"), private)
        for _ in range(2):
            assert not daemon.model_received("thermo", "node-x", envelope, source="sync")
        assert not daemon.model_received("lamp", "node-b", envelope, source="sync")
        refusals = [d for d in store.decisions() if d["action"] == "model-rejected"]
        assert [(d["service"], d["detail"]) for d in refusals] == [
            ("thermo", "malformed; from node node-x"),
            ("lamp", "malformed; from node node-b"),
        ]
        assert store.models() == [] and daemon.engine.models == {}
        assert daemon.models_rejected == 3


def test_the_daemon_does_not_import_the_demo() -> None:
    import subprocess
    import sys

    code = (
        "import sys, commgraph.daemon, commgraph.cli; "
        "print(sorted(m for m in sys.modules if m.startswith('commgraph.demo')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"
