"""Event and relation names: the one currency between adapters and the engine.

An :class:`Event` is one observed communication. Its ``relation`` says what kind of
counterpart ``src`` and ``dst`` are (see :func:`endpoint_kinds`): for ``publish`` the
destination is an MQTT topic, for ``deliver`` the source is a topic and the destination the
receiving service, for ``tcp/443`` both are network endpoints.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from commgraph.detectors.guardrails import SignalNote
from commgraph.errors import EventDecodeError

__all__ = [
    "Event",
    "EventFields",
    "Record",
    "VertexKind",
    "describe_edge",
    "endpoint_kinds",
    "iter_event_lines",
    "parse_event_line",
]


class VertexKind(StrEnum):
    """What a vertex of the communication graph stands for."""

    SERVICE = "service"
    HOST = "host"
    TOPIC = "topic"
    ROUTE = "route"


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One observed communication; validates itself, immutable."""

    ts: float
    src: str
    dst: str
    relation: str
    size: int | None = None
    node: str | None = None

    def __post_init__(self) -> None:
        problem = _problem(self.ts, self.src, self.dst, self.relation, self.size, self.node)
        if problem:
            raise EventDecodeError(problem)

    def to_json(self) -> str:
        """The event as one JSON line (without newline), optional fields only when set."""
        record: dict[str, Any] = {
            "ts": self.ts,
            "src": self.src,
            "dst": self.dst,
            "relation": self.relation,
        }
        if self.size is not None:
            record["size"] = self.size
        if self.node is not None:
            record["node"] = self.node
        return json.dumps(record, separators=(",", ":"))


# Bounds that keep every column of the graph valid: year 5138, and 1 TiB per event.
MAX_TS = 1e11
MAX_SIZE = 1 << 40


def _clip(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _problem(
    ts: object, src: object, dst: object, relation: object, size: object, node: object
) -> str:
    """What is wrong with these fields, or "" (the common, valid case is checked first)."""
    if (
        type(ts) is float
        and 0.0 <= ts <= MAX_TS  # NaN fails every comparison
        and type(src) is str
        and type(dst) is str
        and type(relation) is str
        and src
        and dst
        and relation
        and not (src.isspace() or dst.isspace() or relation.isspace())
        and (size is None or (type(size) is int and 0 <= size <= MAX_SIZE))
        and (node is None or type(node) is str)
    ):
        return ""
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        return f"'ts' must be a number of epoch seconds, not {type(ts).__name__}"
    try:
        finite = math.isfinite(ts)
    except OverflowError:  # an int too large for a float
        finite = False
    if not finite or ts < 0 or ts > MAX_TS:
        return f"'ts' must be epoch seconds between 0 and {MAX_TS:g}, not {_clip(ts)}"
    for name, value in (("src", src), ("dst", dst), ("relation", relation)):
        if not isinstance(value, str):
            return f"'{name}' must be a string, not {type(value).__name__}"
        if not value or value.isspace():
            return f"'{name}' must not be empty"
    if size is not None and (
        isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_SIZE
    ):
        return f"'size' must be an integer from 0 to {MAX_SIZE} bytes, not {_clip(size)}"
    if node is not None and not isinstance(node, str):
        return f"'node' must be a string, not {type(node).__name__}"
    return ""


# Relation -> (kind of src, kind of dst). Exact names first, then prefixes; anything else is
# network-like: an initiating service towards a host.
_EXACT_KINDS: dict[str, tuple[VertexKind, VertexKind]] = {
    "publish": (VertexKind.SERVICE, VertexKind.TOPIC),
    "subscribe": (VertexKind.SERVICE, VertexKind.TOPIC),
    "deliver": (VertexKind.TOPIC, VertexKind.SERVICE),
    "http": (VertexKind.SERVICE, VertexKind.ROUTE),
    "serve": (VertexKind.ROUTE, VertexKind.SERVICE),
}
_DEFAULT_KINDS = (VertexKind.SERVICE, VertexKind.HOST)


def describe_edge(src: str, dst: str, relation: str) -> str:
    """One line a person reads: ``thermo-kitchen publishes to valves/kitchen/set``."""
    if relation == "publish":
        return f"{src} publishes to {dst}"
    if relation == "subscribe":
        return f"{src} subscribes to {dst}"
    if relation == "deliver":
        return f"{dst} receives messages on {src}"
    if relation == "http":
        return f"{src} calls {dst}"
    if relation == "serve":
        return f"{dst} serves {src}"
    if relation.startswith("http:"):
        return f"{src} calls {relation[5:]} on {dst}"
    return f"{src} connects to {dst} ({relation})"


EventFields = tuple[float, str, str, str, int | None]
"""An event's checked fields ``(ts, src, dst, relation, size)``, as adapters on the hot path
hand them to :meth:`commgraph.engine.Engine.observe_fields`."""

Record = Event | EventFields | EventDecodeError | SignalNote
"""What an adapter yields per position (line, packet): an event, its fields, an error, or
a protocol signal (:class:`~commgraph.detectors.guardrails.SignalNote`)."""


def endpoint_kinds(relation: str) -> tuple[VertexKind, VertexKind]:
    """What ``src`` and ``dst`` of an event with this relation are.

    ``publish``/``subscribe``: service -> topic (or filter); ``deliver``: topic -> service;
    ``http``: service -> route; ``serve``: route -> the service behind it; everything else
    (``tcp/443``, ``udp/123``, ``icmp``, ``http:GET /rooms/{id}``): service -> host.
    """
    return _EXACT_KINDS.get(relation, _DEFAULT_KINDS)


_decode = json.JSONDecoder().decode


def parse_event_line(line: str | bytes, *, line_no: int | None = None) -> Event:
    """Parse one JSON-lines record; raises :class:`EventDecodeError` only."""
    try:
        record = _decode(line.decode("utf-8") if isinstance(line, bytes) else line)
    except (ValueError, RecursionError) as exc:  # bad JSON and bad UTF-8 are ValueErrors
        raise EventDecodeError(f"not valid JSON ({_short(exc)})", line=line_no) from None
    if type(record) is not dict:
        raise EventDecodeError(f"expected a JSON object, got {type(record).__name__}", line=line_no)
    try:
        ts, src, dst, relation = record["ts"], record["src"], record["dst"], record["relation"]
    except KeyError:
        missing = [name for name in ("ts", "src", "dst", "relation") if name not in record]
        raise EventDecodeError(
            f"missing field {', '.join(map(repr, missing))}", line=line_no
        ) from None
    size = record.get("size")
    if type(size) is float and size.is_integer() and 0 <= size <= MAX_SIZE:
        size = int(size)
    if type(ts) is int and 0 <= ts <= MAX_TS:
        ts = float(ts)
    try:
        return Event(ts=ts, src=src, dst=dst, relation=relation, size=size, node=record.get("node"))
    except EventDecodeError as exc:
        raise EventDecodeError(exc.reason, line=line_no) from None


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 80 else text[:77] + "..."


def iter_event_lines(
    lines: Iterable[str | bytes],
) -> Iterator[tuple[int, Event | EventDecodeError]]:
    """Yield ``(line_no, event or error)`` for each non-blank line; never raises for bad data.

    The caller decides whether a bad record stops the run (``--strict``) or is skipped and
    counted; either way it knows the 1-based line number.
    """
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield line_no, parse_event_line(line, line_no=line_no)
        except EventDecodeError as exc:
            yield line_no, exc
