"""The engine's state as plain values: what the store writes, and what it reads back.

This is the whole contract between the engine and the store. The engine hands out a
:class:`Delta` (the structure changed since the last take, written at once) and
:class:`Counters` (counters moved, written behind), and resumes from a :class:`Snapshot`.
The store never reads the engine's tables itself; the engine never touches SQLite.

Ids are the engine's own: vertex ids from 1, edge ids from 0 (the store keeps edges from 1),
relation ids from 0. Rows are frozen; alerts are copies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from commgraph.alerts import Alert, Decision
from commgraph.events import VertexKind
from commgraph.graph import Label
from commgraph.phases import PhaseChange, ServicePhase

__all__ = ["Counters", "Delta", "EdgeCounts", "EdgeRow", "Snapshot", "TimelineRow", "VertexRow"]


@dataclass(frozen=True, slots=True)
class TimelineRow:
    """One minute of the site's life (written once per minute of event time)."""

    minute: int  # epoch minute: floor(ts / 60)
    vertices: int
    services: int
    edges: int
    learned: int  # edges learned during this minute
    anomalies: int  # alerts raised during this minute
    learning: int  # services in their learning phase at the end of the minute


@dataclass(frozen=True, slots=True)
class VertexRow:
    id: int
    name: str
    kind: VertexKind
    owner: int  # the service a topic belongs to; 0: none
    first_seen: float
    events: int


@dataclass(frozen=True, slots=True)
class EdgeCounts:
    """What moves on an edge with every event it carries."""

    id: int
    count: int
    nbytes: int
    first_seen: float
    last_seen: float
    ia_mean: float
    ia_m2: float
    size_min: int
    size_max: int
    figures: bytes | None  # the detectors' packed figures; None: none yet


@dataclass(frozen=True, slots=True)
class EdgeRow:
    """An edge: its endpoints, label and counters, and the instance that created it."""

    src: int
    dst: int
    relation: int
    label: Label
    counts: EdgeCounts
    instance: str | None = None


@dataclass(slots=True)
class Delta:
    """Structure changed since the last take, as values; empty when nothing changed."""

    relations: list[tuple[int, str]] = field(default_factory=list)
    vertices: list[VertexRow] = field(default_factory=list)
    instances: list[tuple[int, str]] = field(default_factory=list)  # (service, instance)
    edges: list[EdgeRow] = field(default_factory=list)
    services: list[tuple[int, ServicePhase]] = field(default_factory=list)
    modes: list[tuple[int, ServicePhase]] = field(default_factory=list)  # mode set on these
    quiet: list[tuple[int, float]] = field(default_factory=list)  # (service, quiet since)
    alerts: list[Alert] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    phase_changes: list[PhaseChange] = field(default_factory=list)
    timeline: list[TimelineRow] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(
            (
                self.relations,
                self.vertices,
                self.instances,
                self.edges,
                self.services,
                self.modes,
                self.quiet,
                self.alerts,
                self.decisions,
                self.phase_changes,
                self.timeline,
            )
        )


@dataclass(slots=True)
class Counters:
    """Counters moved since the last take (written behind, batched)."""

    edges: list[EdgeCounts] = field(default_factory=list)
    vertices: list[tuple[int, int]] = field(default_factory=list)  # (vertex, events)
    alerts: list[Alert] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.edges or self.vertices or self.alerts)


@dataclass(slots=True, kw_only=True)
class Snapshot:
    """Stored state to resume from, in id order; any part may be a lazy iterable."""

    vertices: Iterable[VertexRow] = ()
    relations: Iterable[tuple[int, str]] = ()
    edges: Iterable[EdgeRow] = ()
    services: Iterable[tuple[int, ServicePhase]] = ()
    alerts: Iterable[Alert] = ()
    instances: Iterable[tuple[int, str]] = ()
    # (src, dst, relation, at, by) of the owner's decisions on edges, oldest first
    decided: Iterable[tuple[str, str, str, float, str]] = ()
    last_minute: TimelineRow | None = None
