"""Site models computed from a database without a running node: versioning, import, and the
name a node publishes under."""

from __future__ import annotations

from pathlib import Path

from commgraph.events import Event
from commgraph.model import ModelEdge, ServiceModel, sign_model
from commgraph.phases import LearningSettings
from commgraph.signing import generate_keypair, key_id, load_private, load_trusted
from commgraph.site_models import (
    adopt_kept,
    export_model,
    import_model,
    model_view,
    own_node,
    unverified,
)
from commgraph.store import Store

T = 1_700_000_000.0


def _keys(tmp_path: Path) -> tuple[bytes, Path]:
    private, public = generate_keypair()
    (tmp_path / "site.key").write_bytes(private)
    (tmp_path / "site.pub").write_bytes(public)
    return private, tmp_path / "site.pub"


def _thermo(version: int, node: str = "node-b") -> ServiceModel:
    return ServiceModel(
        service="thermo",
        version=version,
        node=node,
        issued_at=T + version,
        edges=(
            ModelEdge(relation="publish", peer="home/+/temp", direction="out", label="learned"),
        ),
    )


def test_export_is_one_version_above_the_highest_kept(tmp_path: Path) -> None:
    private, pub = _keys(tmp_path)
    trusted = dict(load_trusted([pub]))
    with Store(tmp_path / "n.db") as store:
        engine = store.load_engine(LearningSettings(duration=60.0))
        engine.observe(Event(ts=T, src="thermo", dst="home/kitchen/temp", relation="publish"))
        engine.tick(T + 120)
        store.write_changes(engine, engine.take_changes())
        store.save_model("thermo", "node-b", sign_model(_thermo(4), private), at=T, source="sync")
        assert own_node(store) == "node"  # nothing of its own published yet
        model, envelope = export_model(
            engine,
            store.models("thermo"),
            "thermo",
            node="node-a",
            private=load_private(tmp_path / "site.key"),
            trusted=trusted,
            now=T + 200,
        )
    assert (model.version, model.node, model.issued_at) == (5, "node-a", T + 200)
    assert unverified(envelope)[1] == model
    assert model_view(envelope, trusted)["status"] == "verified"
    assert model_view(envelope, None)["status"] == "not verified"


def test_import_keeps_a_trusted_model_once_and_never_an_older_one(tmp_path: Path) -> None:
    private, pub = _keys(tmp_path)
    trusted = dict(load_trusted([pub]))
    newer, older = sign_model(_thermo(2), private), sign_model(_thermo(1), private)
    with Store(tmp_path / "n.db") as store:
        first = import_model(store, newer, "a.json", trusted, by="me", reason="", now=T)
        again = import_model(store, newer, "a.json", trusted, by="me", reason="", now=T)
        old = import_model(store, older, "b.json", trusted, by="me", reason="", now=T)
        assert (first.kept, first.signer) == (True, key_id(pub.read_bytes()))
        assert (again.kept, again.newer) == (False, None)
        assert old.kept is False and old.newer is not None and old.newer.version == 2
        assert [row["envelope"] for row in store.models("thermo")] == [newer]
        assert [d["action"] for d in store.decisions()] == ["model-kept"]


def test_adopting_tells_which_kept_models_are_left_out(tmp_path: Path) -> None:
    private, pub = _keys(tmp_path)
    stranger, _ = generate_keypair()
    with Store(tmp_path / "n.db") as store:
        store.save_model("thermo", "node-b", sign_model(_thermo(1), private), at=T, source="sync")
        store.save_model(
            "thermo", "node-c", sign_model(_thermo(1, "node-c"), stranger), at=T, source="import"
        )
        left_out: list[str] = []
        adopted = adopt_kept(
            store.load_engine(),
            store.models(),
            dict(load_trusted([pub])),
            lambda row, exc: left_out.append(f"{row['node']}: {exc.reason}"),
        )
    assert [row["node"] for row, _ in adopted] == ["node-b"]
    assert left_out == ["node-c: unknown-key"]
