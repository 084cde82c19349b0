"""The communication graph in formats other tools read: Graphviz DOT, GraphML, JSON.

Pure functions over the rows the store lists (vertices, edges); nothing here reads a file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["LABEL_COLOURS", "service_view", "to_dot", "to_graphml", "to_json"]

Row = Mapping[str, Any]

# Edge colours by label: pending in red, denied dark, learned/approved calm.
LABEL_COLOURS = {
    "learned": "#4a7ab5",
    "approved": "#2e8b57",
    "pending": "#d62728",
    "denied": "#555555",
}
_SHAPES = {"service": "box", "host": "ellipse", "topic": "note", "route": "cds"}


# XML 1.0 cannot carry these at all, escaped or not: they are written as \xNN text instead.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def escape(text: str) -> str:
    """Text for an XML element: markup escaped, characters XML cannot hold spelled out."""
    # what xml.sax.saxutils.escape does, without its import of urllib (CLI start-up)
    spelled = _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return spelled.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_json(vertices: Sequence[Row], edges: Sequence[Row]) -> str:
    """``{"vertices": [...], "edges": [...]}``, vertices by name and kind."""
    return json.dumps(
        {
            "vertices": [
                {"id": v["id"], "name": v["name"], "kind": v["kind"], "owner": v["owner"]}
                for v in vertices
            ],
            "edges": [
                {
                    "src": e["src"],
                    "dst": e["dst"],
                    "relation": e["relation"],
                    "label": e["label"],
                    "count": e["count"],
                }
                for e in edges
            ],
        },
        indent=2,
    )


def _dot_id(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(vertices: Sequence[Row], edges: Sequence[Row]) -> str:
    """A Graphviz digraph: shapes by vertex kind, edge colour by label.

    Edge rows carry ``src_id``/``dst_id`` (names alone are ambiguous: a topic and a service
    may share one).
    """
    lines = [
        "digraph commgraph {",
        "  rankdir=LR;",
        '  node [fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=9];',
    ]
    for v in vertices:
        key = f"v{v['id']}"
        shape = _SHAPES.get(v["kind"], "ellipse")
        lines.append(f"  {key} [label={_dot_id(v['name'])}, shape={shape}];")
    for e in edges:
        src, dst = e["src_id"], e["dst_id"]
        colour = LABEL_COLOURS.get(e["label"], "#000000")
        style = ", style=bold" if e["label"] == "pending" else ""
        style += ", style=dashed" if e["label"] == "denied" else ""
        lines.append(
            f"  v{src} -> v{dst} [label={_dot_id(e['relation'])}, color={_dot_id(colour)}{style}];"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_graphml(vertices: Sequence[Row], edges: Sequence[Row]) -> str:
    """GraphML with vertex kind and edge relation, label and count as data keys."""
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<graphml xmlns="http://graphml.graphdrawing.org/xmlns">',
        '  <key id="name" for="node" attr.name="name" attr.type="string"/>',
        '  <key id="kind" for="node" attr.name="kind" attr.type="string"/>',
        '  <key id="relation" for="edge" attr.name="relation" attr.type="string"/>',
        '  <key id="label" for="edge" attr.name="label" attr.type="string"/>',
        '  <key id="count" for="edge" attr.name="count" attr.type="long"/>',
        '  <graph id="commgraph" edgedefault="directed">',
    ]
    for v in vertices:
        out.append(f'    <node id="v{v["id"]}">')
        out.append(f'      <data key="name">{escape(v["name"])}</data>')
        out.append(f'      <data key="kind">{escape(v["kind"])}</data>')
        out.append("    </node>")
    for e in edges:
        src, dst = e["src_id"], e["dst_id"]
        out.append(f'    <edge id="e{int(e["id"])}" source="v{src}" target="v{dst}">')
        out.append(f'      <data key="relation">{escape(e["relation"])}</data>')
        out.append(f'      <data key="label">{escape(e["label"])}</data>')
        out.append(f'      <data key="count">{int(e["count"])}</data>')
        out.append("    </edge>")
    out += ["  </graph>", "</graphml>"]
    return "\n".join(out) + "\n"


# How much an edge's label asks for the owner's eye, for merged edges: the most urgent wins.
_URGENCY = {"pending": 4, "denied": 3, "approved": 2, "learned": 1}
_THROUGH_TOPICS = frozenset({"publish", "deliver", "subscribe", "http", "serve"})


def service_view(edges: Sequence[Row]) -> list[dict[str, Any]]:
    """The graph as service -> service edges, topics folded away.

    ``S publish T`` and ``T deliver R`` make ``S -> R`` via T (label: the most urgent of the
    two, e.g. pending if either is); ``C http R`` and ``R serve S`` (an HTTP route) make
    ``C -> S`` "via routes" likewise, the routes listed in ``routes``; edges that do not pass
    through a topic or route (``tcp/443`` to a host) are kept as they are. Subscriptions
    describe interest, not traffic, and are left out. Rows: ``src, dst, relation ("via
    topics", "via routes" or the original), label, count, topics`` (and ``routes``).
    """
    publishers: dict[str, list[Row]] = {}
    callers: dict[str, list[Row]] = {}
    for edge in edges:
        if edge["relation"] == "publish":
            publishers.setdefault(edge["dst"], []).append(edge)
        elif edge["relation"] == "http":
            callers.setdefault(edge["dst"], []).append(edge)
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for edge in edges:
        if edge["relation"] == "serve":
            for call in callers.get(edge["src"], ()):
                row = merged.setdefault(
                    (call["src"], edge["dst"] + " via routes"),
                    {
                        "src": call["src"],
                        "dst": edge["dst"],
                        "relation": "via routes",
                        "label": "learned",
                        "count": 0,
                        "topics": [],
                        "routes": [],
                    },
                )
                row["routes"].append(edge["src"])
                row["count"] += call["count"]
                for label in (call["label"], edge["label"]):
                    if _URGENCY[label] > _URGENCY[row["label"]]:
                        row["label"] = label
            continue
        if edge["relation"] == "deliver":
            for pub in publishers.get(edge["src"], ()):
                if pub["src"] == edge["dst"]:
                    continue  # a service hearing its own messages
                row = merged.setdefault(
                    (pub["src"], edge["dst"]),
                    {
                        "src": pub["src"],
                        "dst": edge["dst"],
                        "relation": "via topics",
                        "label": "learned",
                        "count": 0,
                        "topics": [],
                    },
                )
                row["topics"].append(edge["src"])
                row["count"] += edge["count"]
                for label in (pub["label"], edge["label"]):
                    if _URGENCY[label] > _URGENCY[row["label"]]:
                        row["label"] = label
        elif edge["relation"] not in _THROUGH_TOPICS:
            merged[(edge["src"], edge["dst"] + " " + edge["relation"])] = {
                "src": edge["src"],
                "dst": edge["dst"],
                "relation": edge["relation"],
                "label": edge["label"],
                "count": edge["count"],
                "topics": [],
            }
    for row in merged.values():
        row["topics"] = sorted(set(row["topics"]))
        if "routes" in row:
            row["routes"] = sorted(set(row["routes"]))
    return sorted(merged.values(), key=lambda r: (r["src"], r["dst"], r["relation"]))
