"""Pictures for the dashboard as inline SVG: the communication graph and its timeline.

Pure functions from the rows the store lists to an SVG string; no I/O, no clock. Every name
that comes from the network is escaped here, so the caller can put the result into a page
as it is.

The graph is drawn in layered columns, left to right in the direction messages flow:
services that send | topics, hosts and routes | services that receive. A service that both
sends and receives appears in both outer columns (one ``<g class="vertex">`` holding both
boxes), so every edge runs left to right and nothing is drawn on top of a box.
"""

from __future__ import annotations

import html
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from commgraph.export import LABEL_COLOURS

__all__ = [
    "GraphEdge",
    "GraphVertex",
    "full_graph",
    "graph_svg",
    "service_graph",
    "timeline_svg",
]

Row = Mapping[str, Any]

# Geometry of the graph picture, in px (font 12 px: about 7 px per character).
ROW = 24
BOX_H = 18
CHAR_W = 7.0
MAX_CHARS = 36
GAP = 180
MARGIN = 12
TOP = 56  # room for the legend and column titles
URGENCY = {"pending": 4, "denied": 3, "approved": 2, "learned": 1}
KIND_FILL = {"service": "#dbe8f7", "topic": "#fdf3d0", "host": "#e6e6e6", "route": "#eadcf5"}

# XML 1.0 cannot carry these characters at all, escaped or not.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _esc(text: object) -> str:
    """Text for SVG element content or a double-quoted attribute."""
    return html.escape(_NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text)), quote=True)


def _short(name: str, limit: int = MAX_CHARS) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


@dataclass(frozen=True, slots=True, kw_only=True)
class GraphVertex:
    key: str  # unique in one picture (vertex id, or the name in the service view)
    name: str
    kind: str  # service | topic | host | route


@dataclass(frozen=True, slots=True, kw_only=True)
class GraphEdge:
    src: str  # vertex keys
    dst: str
    relation: str
    label: str  # learned | approved | pending | denied
    count: int = 0


def full_graph(
    vertices: Sequence[Row], edges: Sequence[Row]
) -> tuple[list[GraphVertex], list[GraphEdge]]:
    """The store's ``vertices()`` and ``edges()`` rows as picture input (keys: vertex ids)."""
    return (
        [GraphVertex(key=str(v["id"]), name=str(v["name"]), kind=str(v["kind"])) for v in vertices],
        [
            GraphEdge(
                src=str(e["src_id"]),
                dst=str(e["dst_id"]),
                relation=str(e["relation"]),
                label=str(e["label"]),
                count=int(e["count"]),
            )
            for e in edges
        ],
    )


def service_graph(rows: Sequence[Row]) -> tuple[list[GraphVertex], list[GraphEdge]]:
    """Rows of :func:`commgraph.export.service_view` as picture input (keys: names).

    Endpoints that are not services there (hosts reached over ``tcp/443``...) keep the kind
    ``host``; everything else is a service.
    """
    kinds: dict[str, str] = {}
    for row in rows:
        kinds.setdefault(str(row["src"]), "service")
    for row in rows:
        dst = str(row["dst"])
        if row["relation"] == "via topics":
            kinds[dst] = "service"
        else:
            kinds.setdefault(dst, "host")
    vertices = [GraphVertex(key=name, name=name, kind=kind) for name, kind in sorted(kinds.items())]
    edges = [
        GraphEdge(
            src=str(r["src"]),
            dst=str(r["dst"]),
            relation=str(r["relation"]),
            label=str(r["label"]),
            count=int(r["count"]),
        )
        for r in rows
    ]
    return vertices, edges


# -- the graph --------------------------------------------------------------------------------


def _keep(vertices: Sequence[GraphVertex], edges: Sequence[GraphEdge], limit: int) -> set[str]:
    """The ``limit`` vertices worth showing: ends of pending edges first, then by degree."""
    degree: dict[str, int] = {}
    urgent: set[str] = set()
    for e in edges:
        for key in (e.src, e.dst):
            degree[key] = degree.get(key, 0) + 1
        if e.label == "pending":
            urgent.update((e.src, e.dst))
    ranked = sorted(
        vertices, key=lambda v: (v.key not in urgent, -degree.get(v.key, 0), v.name, v.key)
    )
    return {v.key for v in ranked[:limit]}


def graph_svg(
    vertices: Sequence[GraphVertex],
    edges: Sequence[GraphEdge],
    *,
    max_vertices: int = 300,
    title: str = "communication graph",
) -> str:
    """The graph as one ``<svg>``: a ``<g class="vertex">`` per vertex, a ``<path
    class="edge">`` per edge (colour by label, pending red and thick, denied dashed).

    Beyond ``max_vertices`` the least connected vertices (never an end of a pending edge) and
    their edges are left out, and the picture says how many.
    """
    omitted_vertices = max(0, len(vertices) - max_vertices)
    if omitted_vertices:
        shown = _keep(vertices, edges, max_vertices)
        vertices = [v for v in vertices if v.key in shown]
    by_key = {v.key: v for v in vertices}
    edges = [e for e in edges if e.src in by_key and e.dst in by_key]

    if not vertices:
        return (
            '<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="480" height="80"'
            ' viewBox="0 0 480 80" role="img" aria-label="empty communication graph">'
            f"<title>{_esc(title)}</title>"
            '<text x="16" y="44" class="empty">No communication seen yet.</text></svg>'
        )

    # Columns: 0 senders, 1 counterparts (topics, hosts, routes), 2 receivers.
    sends = {e.src for e in edges}
    receives = {e.dst for e in edges}
    columns: list[list[str]] = [[], [], []]
    for v in vertices:
        if v.kind != "service":
            columns[1].append(v.key)
            continue
        if v.key in sends or v.key not in receives:
            columns[0].append(v.key)
        if v.key in receives:
            columns[2].append(v.key)
    _order(columns, edges, by_key)
    row_of = [{key: i for i, key in enumerate(col)} for col in columns]

    widths = [
        max((len(_short(by_key[k].name)) for k in col), default=0) * CHAR_W + 16 for col in columns
    ]
    used = [i for i in range(3) if columns[i]]
    xs: dict[int, float] = {}
    x = float(MARGIN)
    for i in used:
        xs[i] = x
        x += widths[i] + GAP
    width = max(x - GAP + MARGIN, 480.0)
    rows = max(len(col) for col in columns)
    height = TOP + rows * ROW + MARGIN

    def anchor(key: str, side: str) -> tuple[float, float] | None:
        """Where an edge leaves (side "out": right edge) or enters (side "in": left edge)."""
        order = (0, 1, 2) if side == "out" else (2, 1, 0)
        for col in order:
            if key in row_of[col]:
                y = TOP + row_of[col][key] * ROW + BOX_H / 2
                return (xs[col] + widths[col], y) if side == "out" else (xs[col], y)
        return None

    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="{width:.0f}"'
        f' height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img"'
        f' aria-label="{_esc(title)}" font-family="sans-serif" font-size="12">',
        f"<title>{_esc(title)}</title>",
        "<defs>",
    ]
    for label, colour in LABEL_COLOURS.items():
        out.append(
            f'<marker id="arrow-{label}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7"'
            f' markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"'
            f' fill="{colour}"/></marker>'
        )
    out.append("</defs>")
    out.extend(_legend(width))
    titles = ("sends", "topics · hosts · routes", "receives")
    for i in used:
        out.append(
            f'<text class="column" x="{xs[i]:.0f}" y="{TOP - 8}" fill="#444"'
            f' font-weight="bold">{titles[i]}</text>'
        )
    if omitted_vertices:
        out.append(
            f'<text class="omitted" x="{width - MARGIN:.0f}" y="{TOP - 8}" text-anchor="end"'
            f' fill="#a00">{omitted_vertices} least connected vertices not shown</text>'
        )

    # Edges under the boxes; the most urgent drawn last, on top.
    out.append('<g class="edges" fill="none">')
    for e in sorted(edges, key=lambda e: URGENCY.get(e.label, 0)):
        start, end = anchor(e.src, "out"), anchor(e.dst, "in")
        if start is None or end is None:
            continue
        (x1, y1), (x2, y2) = start, end
        if x2 > x1:
            c1, c2 = (x1 + (x2 - x1) / 2, y1), (x2 - (x2 - x1) / 2, y2)
        else:  # same column (topic -> topic): a loop out to the right and back
            loop = 40 + abs(y2 - y1) / 4
            x2 = x1
            c1, c2 = (x1 + loop, y1), (x1 + loop, y2)
        d = f"M{x1:.1f},{y1:.1f} C{c1[0]:.1f},{c1[1]:.1f} {c2[0]:.1f},{c2[1]:.1f} {x2:.1f},{y2:.1f}"
        colour = LABEL_COLOURS.get(e.label, "#000000")
        stroke = 3.0 if e.label == "pending" else 1.4
        dash = ' stroke-dasharray="5,4"' if e.label == "denied" else ""
        opacity = "" if e.label == "pending" else ' stroke-opacity="0.75"'
        src, dst = by_key[e.src].name, by_key[e.dst].name
        out.append(
            f'<path class="edge edge-{_esc(e.label)}" data-label="{_esc(e.label)}"'
            f' data-src="{_esc(src)}" data-dst="{_esc(dst)}" data-relation="{_esc(e.relation)}"'
            f' d="{d}" stroke="{colour}" stroke-width="{stroke}"{dash}{opacity}'
            f' marker-end="url(#arrow-{_esc(e.label)})">'
            f"<title>{_esc(src)} {_esc(e.relation)} {_esc(dst)}: {_esc(e.label)},"
            f" {e.count} messages</title></path>"
        )
    out.append("</g>")

    out.append('<g class="vertices">')
    for v in vertices:
        boxes = []
        for col in range(3):
            if v.key not in row_of[col]:
                continue
            bx, by = xs[col], TOP + row_of[col][v.key] * ROW
            fill = KIND_FILL.get(v.kind, "#ffffff")
            radius = 9 if v.kind == "topic" else 3
            boxes.append(
                f'<rect x="{bx:.0f}" y="{by:.0f}" width="{widths[col]:.0f}" height="{BOX_H}"'
                f' rx="{radius}" fill="{fill}" stroke="#8a8a8a"/>'
                f'<text x="{bx + 8:.0f}" y="{by + 13:.0f}" fill="#111">'
                f"{_esc(_short(v.name))}</text>"
            )
        out.append(
            f'<g class="vertex vertex-{_esc(v.kind)}" data-name="{_esc(v.name)}">'
            f"<title>{_esc(v.kind)}: {_esc(v.name)}</title>{''.join(boxes)}</g>"
        )
    out.append("</g></svg>")
    return "\n".join(out)


def _order(
    columns: list[list[str]], edges: Sequence[GraphEdge], by_key: Mapping[str, GraphVertex]
) -> None:
    """Order each column to keep edges short: the middle by kind and name, the outer ones by
    the mean row of their neighbours, then the middle again by its neighbours (twice)."""
    neighbours: dict[str, list[str]] = {}
    for e in edges:
        neighbours.setdefault(e.src, []).append(e.dst)
        neighbours.setdefault(e.dst, []).append(e.src)
    columns[1].sort(key=lambda k: (by_key[k].kind, by_key[k].name, k))
    if not columns[1]:
        for i in (0, 2):
            columns[i].sort(key=lambda k: (by_key[k].name, k))

    def mean_row(key: str, rows: Mapping[str, int]) -> float:
        found = [rows[n] for n in neighbours.get(key, ()) if n in rows]
        return sum(found) / len(found) if found else math.inf

    for _ in range(2):
        if not columns[1]:
            break
        middle = {k: i for i, k in enumerate(columns[1])}
        for i in (0, 2):
            columns[i].sort(key=lambda k: (mean_row(k, middle), by_key[k].name, k))
        outer = {k: i for i, k in enumerate(columns[0])}
        outer.update({k: i for i, k in enumerate(columns[2]) if k not in outer})
        columns[1].sort(key=lambda k: (mean_row(k, outer), by_key[k].name, k))
    if not columns[1] and columns[0]:
        left = {k: i for i, k in enumerate(columns[0])}
        columns[2].sort(key=lambda k: (mean_row(k, left), by_key[k].name, k))


def _legend(width: float) -> Iterable[str]:
    x = float(MARGIN)
    yield '<g class="legend">'
    for label, colour in LABEL_COLOURS.items():
        stroke = 3 if label == "pending" else 2
        dash = ' stroke-dasharray="5,4"' if label == "denied" else ""
        yield (
            f'<line x1="{x:.0f}" y1="14" x2="{x + 24:.0f}" y2="14" stroke="{colour}"'
            f' stroke-width="{stroke}"{dash}/>'
            f'<text x="{x + 30:.0f}" y="18" fill="#333">{label}</text>'
        )
        x += 40 + len(label) * CHAR_W
    for kind, fill in KIND_FILL.items():
        if x + 60 > width:
            break
        yield (
            f'<rect x="{x:.0f}" y="6" width="16" height="14" rx="3" fill="{fill}"'
            f' stroke="#8a8a8a"/><text x="{x + 22:.0f}" y="18" fill="#333">{kind}</text>'
        )
        x += 34 + len(kind) * CHAR_W
    yield "</g>"


# -- the timeline -----------------------------------------------------------------------------

# (row key, caption, colour): lines in the upper panel, bars per minute in the lower one.
LINES = (
    ("vertices", "vertices", "#1f4e8c"),
    ("edges", "edges", "#2a9d8f"),
    ("learning", "services learning", "#e08a00"),
)
BARS = (
    ("anomalies", "anomalies per minute", "#d62728"),
    ("decisions", "decisions per minute", "#2e8b57"),
)


def _nice_ticks(top: float, count: int = 4) -> list[float]:
    """Round tick values from 0 to at least ``top``."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    step = max(step, 1.0)
    return [i * step for i in range(math.ceil(top / step) + 1)]


def _clock(ts: float, with_date: bool) -> str:
    fmt = "%m-%d %H:%M" if with_date else "%H:%M"
    return time.strftime(fmt, time.gmtime(ts))


def timeline_svg(rows: Sequence[Row], *, width: int = 960) -> str:
    """The graph changing over time (the paper's figure), from ``Store.timeline()`` rows.

    Upper panel: vertices, edges and services learning as step lines; lower panel: anomalies
    and decisions per minute as bars. Times on the axis are UTC. With more minutes than
    pixels, minutes are merged (lines keep the last value, bars add up).
    """
    if not rows:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{width}"'
            f' height="80" viewBox="0 0 {width} 80" role="img" aria-label="empty timeline">'
            "<title>graph changes over time</title>"
            '<text x="16" y="44" class="empty">No timeline yet: nothing observed.</text></svg>'
        )
    left, right, top = 56, 16, 34
    upper_h, gap, lower_h, bottom = 200, 44, 90, 30
    height = top + upper_h + gap + lower_h + bottom
    plot_w = width - left - right
    first = float(rows[0]["ts"])
    last = float(rows[-1]["ts"]) + 60.0  # the end of the last minute
    span = max(last - first, 60.0)

    def x_of(ts: float) -> float:
        return left + (ts - first) / span * plot_w

    # Merge minutes that fall on the same pixel column.
    buckets: list[dict[str, float]] = []
    for row in rows:
        ts = float(row["ts"])
        column = int((ts - first) / span * plot_w)
        if buckets and int(buckets[-1]["column"]) == column:
            merged = buckets[-1]
            for key, _, _ in LINES:
                merged[key] = float(row[key])
            for key, _, _ in BARS:
                merged[key] += float(row[key])
        else:
            buckets.append(
                {"column": float(column), "ts": ts}
                | {key: float(row[key]) for key, _, _ in LINES}
                | {key: float(row[key]) for key, _, _ in BARS}
            )

    upper_ticks = _nice_ticks(max(max(b[k] for b in buckets) for k, _, _ in LINES))
    lower_ticks = _nice_ticks(max(max(b[k] for b in buckets) for k, _, _ in BARS), 2)
    upper_base, lower_base = top + upper_h, top + upper_h + gap + lower_h

    def y_upper(value: float) -> float:
        return upper_base - value / upper_ticks[-1] * upper_h

    def y_lower(value: float) -> float:
        return lower_base - value / lower_ticks[-1] * lower_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{width}"'
        f' height="{height}" viewBox="0 0 {width} {height}" role="img"'
        ' aria-label="graph changes over time" font-family="sans-serif" font-size="12">',
        "<title>graph changes over time</title>",
    ]
    # Legend.
    x = float(left)
    for _key, caption, colour in (*LINES, *BARS):
        out.append(
            f'<rect x="{x:.0f}" y="8" width="14" height="10" fill="{colour}"/>'
            f'<text x="{x + 19:.0f}" y="17" fill="#333">{caption}</text>'
        )
        x += 34 + len(caption) * CHAR_W
    # Grids and axes.
    for ticks, y_of in ((upper_ticks, y_upper), (lower_ticks, y_lower)):
        for value in ticks:
            y = y_of(value)
            out.append(
                f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}"'
                f' stroke="#e3e3e3"/><text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end"'
                f' fill="#555">{value:g}</text>'
            )
    with_date = span > 86400 or time.gmtime(first).tm_yday != time.gmtime(last).tm_yday
    for i in range(7):
        ts = first + span * i / 6
        xx = x_of(ts)
        anchor = "start" if i == 0 else "end" if i == 6 else "middle"
        out.append(
            f'<line x1="{xx:.1f}" y1="{lower_base}" x2="{xx:.1f}" y2="{lower_base + 4}"'
            f' stroke="#555"/><text class="tick" x="{xx:.1f}" y="{lower_base + 18}"'
            f' text-anchor="{anchor}" fill="#555">{_clock(ts, with_date)}</text>'
        )
    out.append(
        f'<text x="{left + plot_w}" y="{height - 1}" text-anchor="end" fill="#777"'
        ' font-size="10">UTC</text>'
    )
    # Step lines, one path per series; the last value is held to the end.
    for key, caption, colour in LINES:
        points = [(x_of(b["ts"]), y_upper(b[key])) for b in buckets]
        d = f"M{points[0][0]:.1f},{points[0][1]:.1f}"
        for nx, ny in points[1:]:
            d += f" H{nx:.1f} V{ny:.1f}"
        d += f" H{left + plot_w:.1f}"
        out.append(
            f'<path class="series series-{key}" d="{d}" fill="none" stroke="{colour}"'
            f' stroke-width="2"><title>{caption}</title></path>'
        )
    # Bars: one rect per minute (or merged minutes) with something in it.
    bar_w = max(plot_w / (span / 60.0), 1.0)
    half = bar_w / 2 if len(BARS) > 1 else bar_w
    for offset, (key, caption, colour) in enumerate(BARS):
        for b in buckets:
            if b[key] <= 0:
                continue
            bx = x_of(b["ts"]) + offset * half
            by = y_lower(b[key])
            out.append(
                f'<rect class="bar bar-{key}" x="{bx:.1f}" y="{by:.1f}" width="{half:.1f}"'
                f' height="{lower_base - by:.1f}" fill="{colour}"><title>{_clock(b["ts"], True)}'
                f" UTC: {b[key]:g} {caption}</title></rect>"
            )
    out.append("</svg>")
    return "\n".join(out)
