from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from commgraph.demo import heating_site
from commgraph.export import LABEL_COLOURS, service_view, to_dot, to_graphml, to_json
from commgraph.phases import LearningSettings
from commgraph.replay import replay
from commgraph.store import Store


def demo_rows(tmp_path: Path) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    with Store(tmp_path / "x.db") as store:
        replay(
            (e.to_json() for e in heating_site()),
            store.load_engine(LearningSettings(duration=600.0)),
            store,
        )
        return store.vertices(), store.edges()


def test_graphml_has_every_vertex_and_edge(tmp_path: Path) -> None:
    vertices, edges = demo_rows(tmp_path)
    root = ET.fromstring(to_graphml(vertices, edges))
    ns = {"g": "http://graphml.graphdrawing.org/xmlns"}
    assert len(root.findall(".//g:node", ns)) == len(vertices)
    found = root.findall(".//g:edge", ns)
    assert len(found) == len(edges)
    labels = [e.find("g:data[@key='label']", ns).text for e in found]  # type: ignore[union-attr]
    assert labels.count("pending") == 1


def test_dot_colours_pending_red_and_json_roundtrips(tmp_path: Path) -> None:
    vertices, edges = demo_rows(tmp_path)
    dot = to_dot(vertices, edges)
    assert dot.startswith("digraph commgraph {")
    assert dot.count(LABEL_COLOURS["pending"]) == 1
    assert dot.count(" -> ") == len(edges)
    data = json.loads(to_json(vertices, edges))
    assert len(data["vertices"]) == len(vertices) and len(data["edges"]) == len(edges)


def test_names_with_quotes_are_escaped() -> None:
    vertices = [
        {"id": 1, "name": 'a"b', "kind": "service", "owner": None},
        {"id": 2, "name": "<t&>", "kind": "topic", "owner": None},
    ]
    edges = [
        {
            "id": 1,
            "src": 'a"b',
            "dst": "<t&>",
            "relation": "publish",
            "label": "learned",
            "count": 1,
            "src_id": 1,
            "dst_id": 2,
        }
    ]
    assert 'label="a\\"b"' in to_dot(vertices, edges)
    ET.fromstring(to_graphml(vertices, edges))


def test_service_view_folds_topics_and_keeps_the_most_urgent_label() -> None:
    def edge(
        src: str, dst: str, relation: str, label: str = "learned", count: int = 1
    ) -> dict[str, object]:
        return {"src": src, "dst": dst, "relation": relation, "label": label, "count": count}

    rows = service_view(
        [
            edge("thermo", "home/t", "publish"),
            edge("home/t", "controller", "deliver", count=5),
            edge("home/t", "logger", "deliver", "pending", 2),
            edge("controller", "home/+/t", "subscribe"),
            edge("controller", "valves/set", "publish", "denied"),
            edge("valves/set", "valve", "deliver"),
            edge("controller", "home/t", "publish"),
            edge("home/t", "controller", "deliver"),  # hears itself: not an edge
            edge("hub", "10.0.0.9", "tcp/8883"),
        ]
    )
    by_pair = {(r["src"], r["dst"]): r for r in rows}
    assert by_pair[("thermo", "controller")]["label"] == "learned"
    assert by_pair[("thermo", "controller")]["topics"] == ["home/t"]
    assert by_pair[("thermo", "logger")]["label"] == "pending"
    assert by_pair[("controller", "valve")]["label"] == "denied"
    assert by_pair[("controller", "logger")]["label"] == "pending"
    assert ("controller", "controller") not in by_pair
    assert by_pair[("hub", "10.0.0.9")]["relation"] == "tcp/8883"
    assert all(r["relation"] != "subscribe" for r in rows)


def test_service_view_folds_http_routes_into_caller_to_callee() -> None:
    def edge(src: str, dst: str, relation: str, label: str = "learned") -> dict[str, object]:
        return {"src": src, "dst": dst, "relation": relation, "label": label, "count": 3}

    rows = service_view(
        [
            edge("heating", "GET rooms/rooms/{id}", "http"),
            edge("GET rooms/rooms/{id}", "rooms", "serve"),
            edge("hub", "POST rooms/unlock", "http", "pending"),
            edge("POST rooms/unlock", "rooms", "serve"),
            edge("heating", "GET other/x", "http"),  # no callee side seen: no service edge
        ]
    )
    by_pair = {(r["src"], r["dst"]): r for r in rows}
    assert set(by_pair) == {("heating", "rooms"), ("hub", "rooms")}
    assert by_pair[("heating", "rooms")]["relation"] == "via routes"
    assert by_pair[("heating", "rooms")]["routes"] == ["GET rooms/rooms/{id}"]
    assert by_pair[("hub", "rooms")]["label"] == "pending"
