from __future__ import annotations

import logging
from pathlib import Path

import pytest

from commgraph.config import Config, parse_config
from commgraph.daemon import Daemon
from commgraph.model import ModelEdge, ServiceModel, sign_model
from commgraph.signing import generate_keypair
from commgraph.store import Store

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


def test_the_site_config_owns_the_learning_settings_and_a_change_is_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "n.db"
    first = parse_config({"learning": {"duration": "1h"}}, source="site.toml")
    with Store(db) as store:
        Daemon(first, store)
    assert not [r for r in caplog.records if "learning settings changed" in r.getMessage()]
    second = parse_config(
        {"learning": {"duration": "2h"}, "modes": {"default": "protect"}}, source="site.toml"
    )
    with caplog.at_level(logging.WARNING), Store(db) as store:
        Daemon(second, store)
        assert store.settings() == second.learning  # the config wins
    [said] = [
        r.getMessage() for r in caplog.records if "learning settings changed" in r.getMessage()
    ]
    assert "(site.toml wins)" in said
    assert "duration: 3600.0 -> 7200.0" in said and "mode: monitor -> protect" in said
