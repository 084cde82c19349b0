from __future__ import annotations

import itertools
import statistics
from collections import Counter, defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commgraph.events import VertexKind, endpoint_kinds
from commgraph.graph import LABEL_TRANSITIONS, Graph, Label, namespace_of

T0 = 1_700_000_000.0
ALL_PAIRS = [(a, b) for a in Label for b in Label if a is not b]
ALLOWED = [(a, b) for a, b in ALL_PAIRS if b in LABEL_TRANSITIONS[a]]
FORBIDDEN = [(a, b) for a, b in ALL_PAIRS if b not in LABEL_TRANSITIONS[a]]


class Feeder:
    """Feeds (src, dst, relation, ts, size) into a graph the way the engine does."""

    def __init__(self) -> None:
        self.graph = Graph()

    def ids(self, src: str, dst: str, relation: str) -> tuple[int, int, int]:
        src_kind, dst_kind = endpoint_kinds(relation)
        return (
            self.vertex(src_kind, src),
            self.vertex(dst_kind, dst),
            self.graph.relation_id(relation),
        )

    def vertex(self, kind: VertexKind, name: str) -> int:
        vid = self.graph.vertex(kind, name)
        return self.graph.add_vertex(kind, name, T0) if vid is None else vid

    def feed(
        self,
        src: str,
        dst: str,
        relation: str = "publish",
        ts: float = T0,
        size: int | None = None,
        label: Label = Label.LEARNED,
    ) -> int:
        s, d, r = self.ids(src, dst, relation)
        e = self.graph.record(s, d, r, ts, size)
        if e < 0:
            e = self.graph.add_edge(s, d, r, label, ts, size)
        return e

    def find(self, src: str, dst: str, relation: str = "publish") -> int:
        return self.graph.find(*self.ids(src, dst, relation))


# -- vertices and relations -----------------------------------------------------------------


def test_vertices_get_dense_ids_from_one() -> None:
    graph = Graph()
    assert graph.vertex_count == 0
    a = graph.add_vertex(VertexKind.SERVICE, "thermo-1", T0)
    t = graph.add_vertex(VertexKind.TOPIC, "home/kitchen/temp", T0 + 1)
    assert (a, t) == (1, 2)
    assert graph.vertex_count == 2
    assert graph.vertex(VertexKind.SERVICE, "thermo-1") == a
    assert graph.vertex(VertexKind.TOPIC, "home/kitchen/temp") == t
    assert graph.vertex(VertexKind.TOPIC, "thermo-1") is None
    assert graph.kind(t) is VertexKind.TOPIC
    assert graph.first_seen[t] == T0 + 1
    assert list(graph.vertices(VertexKind.TOPIC)) == [t]
    assert list(graph.vertices()) == [a, t]


def test_services_and_hosts_share_a_namespace() -> None:
    graph = Graph()
    vid = graph.add_vertex(VertexKind.HOST, "10.0.0.5", T0)
    assert graph.vertex(VertexKind.SERVICE, "10.0.0.5") == vid
    graph.set_kind(vid, VertexKind.SERVICE)
    assert graph.kind(vid) is VertexKind.SERVICE
    assert namespace_of(VertexKind.SERVICE) == namespace_of(VertexKind.HOST) == "endpoint"
    assert namespace_of(VertexKind.TOPIC) != namespace_of(VertexKind.ROUTE)


def test_relation_ids_are_stable() -> None:
    graph = Graph()
    assert graph.relation_id("publish") == 0
    assert graph.relation_id("deliver") == 1
    assert graph.relation_id("publish") == 0
    assert graph.relations == ["publish", "deliver"]


# -- edges ----------------------------------------------------------------------------------


def test_add_find_record() -> None:
    f = Feeder()
    g = f.graph
    assert f.find("thermo-1", "home/kitchen/temp") == -1
    s, d, r = f.ids("thermo-1", "home/kitchen/temp", "publish")
    assert g.record(s, d, r, T0, 10) == -1
    assert g.edge_count == 0
    e = g.add_edge(s, d, r, Label.LEARNED, T0, 10)
    assert e == 0
    assert g.find(s, d, r) == e
    assert g.endpoints(e) == (s, d, r)
    assert g.record(s, d, r, T0 + 5, 20) == e
    stats = g.stats(e)
    assert (stats.src, stats.dst, stats.relation) == ("thermo-1", "home/kitchen/temp", "publish")
    assert stats.count == 2
    assert stats.bytes == 30
    assert (stats.first_seen, stats.last_seen) == (T0, T0 + 5)
    assert (stats.size_min, stats.size_max) == (10, 20)
    assert stats.label is Label.LEARNED


def test_edges_differ_by_relation_and_direction() -> None:
    f = Feeder()
    a = f.feed("thermo-1", "home/kitchen/temp", "publish")
    b = f.feed("thermo-1", "home/kitchen/temp", "subscribe")
    c = f.feed("home/kitchen/temp", "thermo-1", "deliver")
    assert len({a, b, c}) == 3
    assert f.graph.edge_count == 3
    assert f.find("thermo-1", "home/kitchen/temp", "subscribe") == b


def test_welford_matches_direct_computation() -> None:
    f = Feeder()
    times = [T0, T0 + 10, T0 + 12.5, T0 + 30, T0 + 31, T0 + 61.25, T0 + 90]
    for ts in times:
        e = f.feed("thermo-1", "home/kitchen/temp", ts=ts)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    stats = f.graph.stats(e)
    assert stats.count == len(times)
    assert stats.interval_mean == pytest.approx(statistics.fmean(gaps))
    assert stats.interval_m2 == pytest.approx(statistics.pvariance(gaps) * len(gaps))
    assert stats.interval_stdev is not None and stats.interval_stdev > 0


def test_welford_with_one_or_two_events() -> None:
    f = Feeder()
    e = f.feed("a", "t")
    assert f.graph.stats(e).interval_mean == 0.0
    assert f.graph.stats(e).interval_stdev is None
    f.feed("a", "t", ts=T0 + 7)
    stats = f.graph.stats(e)
    assert stats.interval_mean == pytest.approx(7.0)
    assert stats.interval_m2 == pytest.approx(0.0)
    assert stats.interval_stdev is None


def test_out_of_order_event_counts_as_zero_gap_and_keeps_last_seen() -> None:
    f = Feeder()
    e = f.feed("a", "t", ts=T0 + 10)
    f.feed("a", "t", ts=T0)
    stats = f.graph.stats(e)
    assert stats.last_seen == T0 + 10
    assert stats.first_seen == T0 + 10
    assert stats.count == 2
    assert stats.interval_mean == 0.0


def test_size_range_with_unknown_sizes() -> None:
    f = Feeder()
    e = f.feed("a", "t", size=None)
    stats = f.graph.stats(e)
    assert (stats.size_min, stats.size_max, stats.bytes) == (None, None, 0)
    f.feed("a", "t", size=None)
    assert f.graph.stats(e).size_min is None
    f.feed("a", "t", size=40)
    f.feed("a", "t", size=None)
    f.feed("a", "t", size=7)
    f.feed("a", "t", size=0)
    f.feed("a", "t", size=100)
    stats = f.graph.stats(e)
    assert (stats.size_min, stats.size_max) == (0, 100)
    assert stats.bytes == 147
    assert stats.count == 7


def test_size_range_from_first_known_size() -> None:
    f = Feeder()
    e = f.feed("a", "t", size=50)
    f.feed("a", "t", size=None)
    stats = f.graph.stats(e)
    assert (stats.size_min, stats.size_max, stats.bytes) == (50, 50, 50)


def test_table_grows_past_several_resizes() -> None:
    f = Feeder()
    g = f.graph
    keys = [(f"svc-{i % 97}", f"topic/{i}", "publish" if i % 3 else "tcp/80") for i in range(5000)]
    edges = [f.feed(src, dst, rel, ts=T0 + i) for i, (src, dst, rel) in enumerate(keys)]
    assert edges == list(range(5000))
    assert g.edge_count == 5000
    for e, (src, dst, rel) in enumerate(keys):
        assert f.find(src, dst, rel) == e
        stats = g.stats(e)
        assert (stats.src, stats.dst, stats.relation, stats.count) == (src, dst, rel, 1)
    assert f.find("svc-1", "topic/0", "publish") == -1
    # recording after growth still hits the right rows
    for e, (src, dst, rel) in enumerate(keys[::250]):
        assert f.feed(src, dst, rel, ts=T0 + 10_000) == e * 250
        assert g.count[e * 250] == 2


def test_take_dirty() -> None:
    f = Feeder()
    g = f.graph
    a = f.feed("a", "t1")
    b = f.feed("b", "t2")
    assert g.take_dirty() == [a, b]
    assert g.take_dirty() == []
    f.feed("b", "t2", ts=T0 + 1)
    f.feed("b", "t2", ts=T0 + 2)
    c = f.feed("c", "t3")
    f.feed("a", "t1", ts=T0 + 3)
    assert g.take_dirty() == [a, b, c]
    assert g.take_dirty() == []
    assert f.find("a", "t1") == a  # finding does not dirty
    assert g.take_dirty() == []


@pytest.mark.parametrize(("before", "after"), ALLOWED)
def test_allowed_label_transitions(before: Label, after: Label) -> None:
    f = Feeder()
    e = f.feed("a", "t", label=before)
    f.graph.set_label(e, after)
    assert f.graph.stats(e).label is after


@pytest.mark.parametrize(("before", "after"), FORBIDDEN)
def test_forbidden_label_transitions(before: Label, after: Label) -> None:
    f = Feeder()
    e = f.feed("a", "t", label=before)
    with pytest.raises(ValueError, match=f"from {before.text} to {after.text}"):
        f.graph.set_label(e, after)
    assert f.graph.stats(e).label is before


def test_named_forbidden_transitions() -> None:
    assert (Label.APPROVED, Label.PENDING) in FORBIDDEN
    assert (Label.DENIED, Label.LEARNED) in FORBIDDEN
    assert (Label.PENDING, Label.APPROVED) in ALLOWED
    assert (Label.DENIED, Label.APPROVED) in ALLOWED


def test_label_text_and_parse() -> None:
    for label in Label:
        assert Label.parse(label.text) is label
    assert Label.PENDING.text == "pending"
    assert Label.LEARNED < Label.APPROVED < Label.PENDING < Label.DENIED


def test_stats_reads_one_edge() -> None:
    f = Feeder()
    f.feed("x", "y")
    e = f.feed("thermo-1", "10.0.0.5", "tcp/443", ts=T0 + 1, size=3, label=Label.PENDING)
    stats = f.graph.stats(e)
    assert stats.id == e == 1
    assert (stats.src, stats.dst, stats.relation) == ("thermo-1", "10.0.0.5", "tcp/443")
    assert stats.label is Label.PENDING
    assert (stats.count, stats.bytes, stats.size_min, stats.size_max) == (1, 3, 3, 3)
    assert stats.first_seen == stats.last_seen == T0 + 1


def test_huge_size_does_not_break_the_edge_table() -> None:
    f = Feeder()
    e = f.feed("a", "t", size=2**64)
    assert f.graph.stats(e).count == 1
    assert len(f.graph.key) == len(f.graph.bytes) == 1


# -- properties -----------------------------------------------------------------------------

observations = st.lists(
    st.tuples(
        st.sampled_from(["thermo-1", "thermo-2", "controller"]),
        st.sampled_from(["home/kitchen/temp", "valves/set", "10.0.0.5"]),
        st.sampled_from(["publish", "subscribe", "tcp/80"]),
        st.floats(min_value=0, max_value=1000, allow_nan=False),
        st.none() | st.integers(min_value=0, max_value=10_000),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(observations)
def test_counts_and_bytes_match_the_events(
    events: list[tuple[str, str, str, float, int | None]],
) -> None:
    f = Feeder()
    per_key: Counter[tuple[str, str, str]] = Counter()
    bytes_per_key: defaultdict[tuple[str, str, str], int] = defaultdict(int)
    for src, dst, rel, ts, size in events:
        f.feed(src, dst, rel, T0 + ts, size)
        per_key[(src, dst, rel)] += 1
        bytes_per_key[(src, dst, rel)] += size or 0
    g = f.graph
    assert g.edge_count == len(per_key)
    assert sum(g.count) == len(events)
    for key, count in per_key.items():
        e = f.find(*key)
        assert e >= 0
        stats = g.stats(e)
        assert (stats.src, stats.dst, stats.relation) == key
        assert stats.count == count
        assert stats.bytes == bytes_per_key[key]
        sizes = [s for (a, b, r, _, s) in events if (a, b, r) == key and s is not None]
        assert stats.size_min == (min(sizes) if sizes else None)
        assert stats.size_max == (max(sizes) if sizes else None)
        assert stats.interval_m2 >= -1e-6
    assert g.take_dirty() == sorted(range(len(per_key)))


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(Label)),
    st.lists(st.sampled_from(sorted(Label)), max_size=20),
)
def test_label_moves_follow_the_table(start: Label, moves: list[Label]) -> None:
    f = Feeder()
    e = f.feed("a", "t", label=start)
    current = start
    decided = False
    for target in moves:
        try:
            f.graph.set_label(e, target)
        except ValueError:
            assert target is not current
            assert target not in LABEL_TRANSITIONS[current]
            assert f.graph.stats(e).label is current
        else:
            assert target is current or target in LABEL_TRANSITIONS[current]
            current = target
            assert f.graph.stats(e).label is current
        # once decided, an edge never returns to learned or pending
        decided = decided or current in (Label.APPROVED, Label.DENIED)
        if decided:
            assert current in (Label.APPROVED, Label.DENIED)
