"""Compact vertex and edge tables with fixed-size per-edge statistics.

Vertices have integer ids (0 is reserved) and live in per-namespace name indexes: services and
hosts share the ``endpoint`` namespace (a host that starts initiating becomes a service),
topics and routes have their own. An edge ``(src, dst, relation)`` is packed into one 64-bit
key and found through an open-addressing table kept in two ``array`` columns: a dict of int
keys would cost ~110 bytes per edge before any statistics. Statistics are columns too, so an
edge is a row index and observing a known edge allocates nothing of ours.

Edge labels move only along :data:`LABEL_TRANSITIONS`.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

from commgraph.errors import GraphFullError
from commgraph.events import VertexKind

__all__ = [
    "LABEL_TRANSITIONS",
    "EdgeStats",
    "Graph",
    "GraphFullError",
    "Label",
    "namespace_of",
]

_SRC_SHIFT = 41
_DST_SHIFT = 18
_VERTEX_LIMIT = 1 << 23
_RELATION_LIMIT = 1 << 18
_DST_MASK = _VERTEX_LIMIT - 1
_REL_MASK = _RELATION_LIMIT - 1
_SMALL_SLOTS = 0xFFFF  # a 2-byte slot holds edge ids + 1 up to this
_HASH_MUL = 0x9E3779B97F4A7C15  # Fibonacci hashing: the top bits of key * MUL mod 2**64
_M64 = (1 << 64) - 1
SIZE_UNKNOWN = 0xFFFFFFFF
_SIZE_CAP = 0xFFFFFFFE
_BYTES_CAP = (1 << 64) - 1  # the byte counter saturates rather than wrapping


class Label(IntEnum):
    """An edge's label; the order matters: everything above APPROVED needs a look."""

    LEARNED = 1
    APPROVED = 2
    PENDING = 3
    DENIED = 4

    @property
    def text(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Label:
        return cls[text.upper()]


# Which label an edge may get next. New edges start LEARNED or PENDING; only the owner's
# decisions move them afterwards, and nothing returns to PENDING or LEARNED.
LABEL_TRANSITIONS: dict[Label, frozenset[Label]] = {
    Label.LEARNED: frozenset({Label.APPROVED, Label.DENIED}),
    Label.PENDING: frozenset({Label.APPROVED, Label.DENIED}),
    Label.APPROVED: frozenset({Label.DENIED}),
    Label.DENIED: frozenset({Label.APPROVED}),
}

_KIND_CODES = {kind: code for code, kind in enumerate(VertexKind)}
_KINDS = list(VertexKind)


def namespace_of(kind: VertexKind) -> str:
    """Services and hosts share one namespace: a host can turn out to be a service."""
    return "endpoint" if kind in (VertexKind.SERVICE, VertexKind.HOST) else kind.value


@dataclass(frozen=True, slots=True)
class EdgeStats:
    """One edge, read out of the columns (for listings, never on the hot path)."""

    id: int
    src: str
    dst: str
    relation: str
    label: Label
    count: int
    bytes: int
    first_seen: float
    last_seen: float
    interval_mean: float
    interval_m2: float
    size_min: int | None
    size_max: int | None

    @property
    def interval_stdev(self) -> float | None:
        intervals = self.count - 1
        if intervals < 2:
            return None
        return float((self.interval_m2 / intervals) ** 0.5)


class Graph:
    """Vertex and edge tables. Ids are dense: vertex 1.., edge 0.. in creation order."""

    def __init__(self) -> None:
        self.names: list[str] = [""]
        self.kinds = bytearray(b"\xff")
        self.owner = array("I", [0])  # topic -> the service that first published to it
        self.first_seen = array("d", [0.0])
        self.events = array("Q", [0])  # events per service, as the subject of an edge
        self._index: dict[str, dict[str, int]] = {"endpoint": {}, "topic": {}, "route": {}}
        self.relations: list[str] = []
        self._relation_ids: dict[str, int] = {}
        # edge columns, row = edge id
        self.key = array("Q")
        self.count = array("Q")
        self.bytes = array("Q")
        self.first = array("d")
        self.last = array("d")
        self.ia_mean = array("d")
        self.ia_m2 = array("d")
        self.size_min = array("I")
        self.size_max = array("I")
        self.label = bytearray()
        # edges whose counters moved since the last take (written behind by the store)
        self._dirty = bytearray()
        self._dirty_list: list[int] = []
        self.gap = 0.0  # the interval the last record() counted
        # open addressing, linear probing: slot -> edge id + 1 (0 = empty); the key column
        # tells whether a probed edge is the one sought. It starts at 8 slots of 2 bytes and
        # doubles (4-byte slots past 65,534 edges): a small site pays for a small table.
        self._bits = 3
        self._shift = 64 - self._bits
        self._mask = (1 << self._bits) - 1
        self._slots = array("H", bytes(2 << self._bits))

    # -- vertices -------------------------------------------------------------------------

    @property
    def vertex_count(self) -> int:
        return len(self.names) - 1

    def vertex(self, kind: VertexKind, name: str) -> int | None:
        """The id of a vertex by kind and name, or None."""
        return self._index[namespace_of(kind)].get(name)

    def add_vertex(self, kind: VertexKind, name: str, ts: float) -> int:
        """Create a vertex (caller checked it does not exist in its namespace)."""
        vid = len(self.names)
        if vid >= _VERTEX_LIMIT:
            raise GraphFullError(f"the graph holds at most {_VERTEX_LIMIT - 1} vertices")
        self.names.append(name)
        self.kinds.append(_KIND_CODES[kind])
        self.owner.append(0)
        self.first_seen.append(ts)
        self.events.append(0)
        self._index[namespace_of(kind)][name] = vid
        return vid

    def rename(self, vid: int, name: str) -> None:
        """Give a vertex another name in its namespace (caller checked the name is free)."""
        index = self._index[namespace_of(self.kind(vid))]
        del index[self.names[vid]]
        index[name] = vid
        self.names[vid] = name

    def vertex_ids(self, name: str) -> list[int]:
        """The ids of every vertex called ``name``, whatever its namespace."""
        return [vid for index in self._index.values() if (vid := index.get(name)) is not None]

    def name_index(self, kind: VertexKind) -> dict[str, int]:
        """The live name -> id dict of a kind's namespace (shared, not a copy)."""
        return self._index[namespace_of(kind)]

    def kind(self, vid: int) -> VertexKind:
        return _KINDS[self.kinds[vid]]

    def set_kind(self, vid: int, kind: VertexKind) -> None:
        self.kinds[vid] = _KIND_CODES[kind]

    def vertices(self, kind: VertexKind | None = None) -> Iterator[int]:
        code = None if kind is None else _KIND_CODES[kind]
        for vid in range(1, len(self.names)):
            if code is None or self.kinds[vid] == code:
                yield vid

    # -- relations ------------------------------------------------------------------------

    def relation_id_of(self, relation: str) -> int | None:
        """The id of a known relation, or None (never adds one)."""
        return self._relation_ids.get(relation)

    def relation_id(self, relation: str) -> int:
        rid = self._relation_ids.get(relation)
        if rid is None:
            rid = len(self.relations)
            if rid >= _RELATION_LIMIT:
                raise GraphFullError(f"the graph holds at most {_RELATION_LIMIT} relations")
            self.relations.append(relation)
            self._relation_ids[relation] = rid
        return rid

    # -- edges ----------------------------------------------------------------------------

    @property
    def edge_count(self) -> int:
        return len(self.key)

    @staticmethod
    def pack(src: int, dst: int, rid: int) -> int:
        return (src << _SRC_SHIFT) | (dst << _DST_SHIFT) | rid

    def endpoints(self, edge: int) -> tuple[int, int, int]:
        """``(src vertex, dst vertex, relation id)`` of an edge."""
        key = self.key[edge]
        return key >> _SRC_SHIFT, (key >> _DST_SHIFT) & _DST_MASK, key & _REL_MASK

    def find(self, src: int, dst: int, rid: int) -> int:
        """The edge id, or -1."""
        key = (src << _SRC_SHIFT) | (dst << _DST_SHIFT) | rid
        slot = ((key * _HASH_MUL) & _M64) >> self._shift
        slots, keys = self._slots, self.key
        e = slots[slot]
        while e:
            if keys[e - 1] == key:
                return e - 1
            slot = (slot + 1) & self._mask
            e = slots[slot]
        return -1

    def record(self, src: int, dst: int, rid: int, ts: float, size: int | None) -> int:
        """Count one event on a known edge and return its id; -1 if the edge is new.

        The hot path: one probe of the table and a handful of column updates (Welford's
        running mean and M2 of inter-arrival times, size range). The probe repeats
        :meth:`find` on purpose: one call less per event.
        """
        key = (src << _SRC_SHIFT) | (dst << _DST_SHIFT) | rid
        slot = ((key * _HASH_MUL) & _M64) >> self._shift
        slots, keys = self._slots, self.key
        e = slots[slot]
        while e:
            if keys[e - 1] == key:
                break
            slot = (slot + 1) & self._mask
            e = slots[slot]
        else:
            return -1
        e -= 1
        if not self._dirty[e]:
            self._dirty[e] = 1
            self._dirty_list.append(e)
        n = self.count[e]
        self.count[e] = n + 1
        last = self.last[e]
        if ts > last:
            self.last[e] = ts
            gap = ts - last
        else:
            gap = 0.0  # out-of-order or simultaneous: an interval of zero
        self.gap = gap  # for the detectors, right after
        mean = self.ia_mean[e]
        delta = gap - mean
        mean += delta / n  # n intervals now
        self.ia_mean[e] = mean
        self.ia_m2[e] += delta * (gap - mean)
        if size is not None:
            total = self.bytes[e] + size
            self.bytes[e] = total if total <= _BYTES_CAP else _BYTES_CAP
            if size > _SIZE_CAP:
                size = _SIZE_CAP
            if size < self.size_min[e]:
                self.size_min[e] = size
            if size > self.size_max[e]:
                self.size_max[e] = size
        return e

    def add_edge(
        self, src: int, dst: int, rid: int, label: Label, ts: float, size: int | None
    ) -> int:
        """Create an edge with its first event counted; returns its id."""
        e = len(self.key)
        key = (src << _SRC_SHIFT) | (dst << _DST_SHIFT) | rid
        self.key.append(key)
        self.count.append(1)
        self.bytes.append(min(size or 0, _BYTES_CAP))
        self.first.append(ts)
        self.last.append(ts)
        self.ia_mean.append(0.0)
        self.ia_m2.append(0.0)
        capped = SIZE_UNKNOWN if size is None else min(size, _SIZE_CAP)
        self.size_min.append(capped)
        self.size_max.append(0 if size is None else capped)
        self.label.append(label)
        self._dirty.append(1)
        self._dirty_list.append(e)
        self._insert(key, e)
        return e

    def restore_edge(
        self,
        src: int,
        dst: int,
        rid: int,
        *,
        label: Label,
        count: int,
        nbytes: int,
        first: float,
        last: float,
        ia_mean: float,
        ia_m2: float,
        size_min: int | None,
        size_max: int | None,
    ) -> int:
        """Re-create an edge from stored statistics (restart); returns its id."""
        e = self.add_edge(src, dst, rid, label, first, None)
        self.count[e] = count
        self.bytes[e] = nbytes
        self.last[e] = last
        self.ia_mean[e] = ia_mean
        self.ia_m2[e] = ia_m2
        self.size_min[e] = SIZE_UNKNOWN if size_min is None else size_min
        self.size_max[e] = 0 if size_max is None else size_max
        return e

    def touch(self, e: int) -> None:
        """Have edge ``e``'s counters (and figures) written at the next take."""
        if not self._dirty[e]:
            self._dirty[e] = 1
            self._dirty_list.append(e)

    def take_dirty(self) -> list[int]:
        """Edges whose counters moved since the last call, in id order; clears the marks."""
        taken, self._dirty_list = self._dirty_list, []
        dirty = self._dirty
        for e in taken:
            dirty[e] = 0
        taken.sort()
        return taken

    def set_label(self, edge: int, label: Label) -> None:
        """Move an edge's label; raises ValueError for a transition the table forbids."""
        current = Label(self.label[edge])
        if label is not current and label not in LABEL_TRANSITIONS[current]:
            raise ValueError(f"an edge cannot go from {current.text} to {label.text}")
        self.label[edge] = label

    def stats(self, edge: int) -> EdgeStats:
        src, dst, rid = self.endpoints(edge)
        smin = self.size_min[edge]
        return EdgeStats(
            id=edge,
            src=self.names[src],
            dst=self.names[dst],
            relation=self.relations[rid],
            label=Label(self.label[edge]),
            count=self.count[edge],
            bytes=self.bytes[edge],
            first_seen=self.first[edge],
            last_seen=self.last[edge],
            interval_mean=self.ia_mean[edge],
            interval_m2=self.ia_m2[edge],
            size_min=None if smin == SIZE_UNKNOWN else smin,
            size_max=None if smin == SIZE_UNKNOWN else self.size_max[edge],
        )

    def _insert(self, key: int, edge: int) -> None:
        # Kept at most 2/3 full: probes stay short (about 2 on a miss), 3 to 6 bytes/edge.
        if len(self.key) * 3 > (2 << self._bits):
            self._grow()
        else:
            self._place(self._slots, key, edge)

    def _place(self, slots: array[int], key: int, edge: int) -> None:
        slot = ((key * _HASH_MUL) & _M64) >> self._shift
        while slots[slot]:
            slot = (slot + 1) & self._mask
        slots[slot] = edge + 1

    def _grow(self) -> None:
        self._bits += 1
        self._shift = 64 - self._bits
        self._mask = (1 << self._bits) - 1
        slots = (
            array("H", bytes(2 << self._bits))
            if (2 << self._bits) // 3 < _SMALL_SLOTS  # the edges it holds before it grows
            else array("I", bytes(4 << self._bits))
        )
        for edge, key in enumerate(self.key):
            self._place(slots, key, edge)
        self._slots = slots
