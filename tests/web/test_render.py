from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from typing import Any

from commgraph.export import LABEL_COLOURS, service_view
from commgraph.web.render import (
    GraphEdge,
    GraphVertex,
    full_graph,
    graph_svg,
    service_graph,
    timeline_svg,
)

SVG = "{http://www.w3.org/2000/svg}"
LABELS = ("learned", "approved", "pending", "denied")


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return root


def classes(el: ET.Element) -> set[str]:
    return set(el.get("class", "").split())


def find(root: ET.Element, cls: str, tag: str = "*") -> list[ET.Element]:
    return [el for el in root.iter(f"{SVG}{tag}" if tag != "*" else tag) if cls in classes(el)]


def edge_row(eid: int, src: int, dst: int, names: dict[int, str], **extra: Any) -> dict[str, Any]:
    return {
        "id": eid,
        "src_id": src,
        "dst_id": dst,
        "src": names[src],
        "dst": names[dst],
        "relation": extra.get("relation", "publish"),
        "label": extra.get("label", "learned"),
        "count": extra.get("count", 3),
    }


def small_site() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    names = {1: "thermo-kitchen", 2: "home/kitchen/temp", 3: "controller", 4: "valves/kitchen/set"}
    kinds = {1: "service", 2: "topic", 3: "service", 4: "topic"}
    vertices = [{"id": i, "name": n, "kind": kinds[i], "owner": None} for i, n in names.items()]
    edges = [
        edge_row(1, 1, 2, names),
        edge_row(2, 2, 3, names, relation="deliver"),
        edge_row(3, 3, 4, names, label="approved"),
        edge_row(4, 1, 4, names, label="pending"),
    ]
    return vertices, edges


def test_one_element_per_vertex_and_edge() -> None:
    vertices, edges = small_site()
    root = parse(graph_svg(*full_graph(vertices, edges)))
    shown = find(root, "vertex", "g")
    assert sorted(v.get("data-name") for v in shown) == sorted(v["name"] for v in vertices)
    paths = find(root, "edge", "path")
    assert len(paths) == len(edges)
    assert {(p.get("data-src"), p.get("data-dst"), p.get("data-label")) for p in paths} == {
        (e["src"], e["dst"], e["label"]) for e in edges
    }


def test_pending_edge_is_red_and_thick_denied_dashed() -> None:
    vertices, edges = small_site()
    edges[0]["label"] = "denied"
    root = parse(graph_svg(*full_graph(vertices, edges)))
    by_label = {p.get("data-label"): p for p in find(root, "edge", "path")}
    pending = by_label["pending"]
    assert pending.get("stroke") == LABEL_COLOURS["pending"]
    assert float(pending.get("stroke-width", "0")) > float(
        by_label["approved"].get("stroke-width", "0")
    )
    assert by_label["approved"].get("stroke") == LABEL_COLOURS["approved"]
    assert by_label["denied"].get("stroke-dasharray")


def test_every_edge_runs_left_to_right_between_boxes() -> None:
    vertices, edges = small_site()
    root = parse(graph_svg(*full_graph(vertices, edges)))
    for path in find(root, "edge", "path"):
        d = path.get("d", "")
        start = float(d.split()[0][1:].split(",")[0])
        end = float(d.split()[-1].split(",")[0])
        assert end > start, d


def test_empty_graph() -> None:
    root = parse(graph_svg([], []))
    assert find(root, "vertex") == []
    assert "No communication" in "".join(root.itertext())


def test_names_are_escaped() -> None:
    nasty = "a<b>&\"c'\x01"
    vertices = [
        GraphVertex(key="1", name=nasty, kind="service"),
        GraphVertex(key="2", name="t", kind="topic"),
    ]
    edges = [GraphEdge(src="1", dst="2", relation='x"<&>', label="pending")]
    svg = graph_svg(vertices, edges)
    assert "<b>" not in svg
    root = parse(svg)
    [vertex] = [v for v in find(root, "vertex", "g") if v.get("data-name") != "t"]
    assert vertex.get("data-name") == nasty.replace("\x01", "\\x01")
    [edge] = find(root, "edge", "path")
    assert edge.get("data-relation") == 'x"<&>'


def test_boxes_of_a_column_never_overlap_at_200_vertices() -> None:
    names = {i: (f"svc-{i}" if i < 60 else f"site/area-{i}/sensor/value") for i in range(200)}
    vertices = [
        {"id": i, "name": n, "kind": "service" if i < 60 else "topic", "owner": None}
        for i, n in names.items()
    ]
    edges = [
        edge_row(len(names) + i, i % 60, 60 + (i * 7) % 140, names, label=LABELS[i % 4])
        for i in range(300)
    ]
    root = parse(graph_svg(*full_graph(vertices, edges)))
    assert len(find(root, "vertex", "g")) == 200
    assert len(find(root, "edge", "path")) == 300
    boxes = sorted(
        (float(r.get("x", 0)), float(r.get("y", 0)), float(r.get("height", 0)))
        for g in find(root, "vertex", "g")
        for r in g.iter(f"{SVG}rect")
    )
    for (x1, y1, h1), (x2, y2, _) in itertools.pairwise(boxes):
        if x1 == x2:
            assert y2 >= y1 + h1, "boxes overlap"
    assert float(root.get("height", 0)) >= 140 * 18


def test_cap_keeps_pending_ends_and_says_how_many_are_left_out() -> None:
    vertices = [GraphVertex(key=str(i), name=f"v{i}", kind="topic") for i in range(50)]
    vertices.append(GraphVertex(key="s", name="sensor", kind="service"))
    edges = [GraphEdge(src="s", dst="49", relation="publish", label="pending")]
    root = parse(graph_svg(vertices, edges, max_vertices=10))
    names = {g.get("data-name") for g in find(root, "vertex", "g")}
    assert len(names) == 10
    assert {"sensor", "v49"} <= names
    assert "41 least connected" in "".join(root.itertext())


def test_service_view_picture() -> None:
    _vertices, edges = small_site()
    rows = service_view(edges)
    root = parse(graph_svg(*service_graph(rows)))
    [edge] = find(root, "edge", "path")
    assert (edge.get("data-src"), edge.get("data-dst")) == ("thermo-kitchen", "controller")
    assert {g.get("data-name") for g in find(root, "vertex", "g")} == {
        "thermo-kitchen",
        "controller",
    }


def timeline_row(minute: int, **values: int) -> dict[str, Any]:
    row = {"ts": 1_700_000_000.0 + 60 * minute, "vertices": 4, "services": 2, "edges": 3}
    row |= {"learned": 0, "anomalies": 0, "learning": 2, "decisions": 0}
    return row | values


def test_timeline_empty() -> None:
    root = parse(timeline_svg([]))
    assert find(root, "series") == []
    assert "No timeline" in "".join(root.itertext())


def test_timeline_one_row() -> None:
    root = parse(timeline_svg([timeline_row(0, anomalies=1)]))
    series = {p.get("class") for p in find(root, "series", "path")}
    assert series == {"series series-vertices", "series series-edges", "series series-learning"}
    assert len(find(root, "bar-anomalies", "rect")) == 1


def test_timeline_many_rows_are_merged_to_the_width() -> None:
    rows = [
        timeline_row(m, vertices=4 + m // 100, edges=3 + m // 50, anomalies=m % 7 == 0)
        for m in range(5000)
    ]
    rows[10]["decisions"] = 2
    width = 800
    root = parse(timeline_svg(rows, width=width))
    bars = find(root, "bar-anomalies", "rect")
    assert 0 < len(bars) <= width
    assert len(find(root, "bar-decisions", "rect")) == 1
    for path in find(root, "series", "path"):
        assert path.get("d", "").count("H") <= width + 1
    for el in root.iter():
        for attr in ("x", "y", "width", "height"):
            if el.get(attr) is not None:
                assert float(el.get(attr, 0)) >= 0, (el.tag, attr)
