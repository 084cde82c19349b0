"""Benchmark of the pure engine: ``Engine.observe`` throughput and memory per edge.

Prints exactly one JSON object on one line to stdout:

- ``events_per_s``: ``observe()`` on a steady-state graph (500 services, 10,000 known edges:
  MQTT publish/subscribe/deliver plus tcp/udp host edges), events cycling over the known edges
  in shuffled order with increasing timestamps; median of 5 runs. The Event objects are built
  before timing (that is the adapter's cost). Their strings are the very objects the engine
  cached, so dict lookups hit the identity fast path; ``events_per_s_fresh_strings`` is the
  same with freshly allocated strings (unhashed, as a JSON decoder would hand them over);
  ``events_per_s_fan_in``: one service receiving from 1,000 topics (a ``#`` subscriber).
- ``new_edges_per_s``: a fresh engine; every event creates a new edge (and a new topic);
  median of 3.
- ``bytes_per_edge``: tracemalloc, a fresh engine grown to ``edges`` edges shaped like an
  MQTT site (1,000 services; each topic has one publisher and is delivered to two
  subscribers, so ~3 edges per topic vertex), vertices, names and caches included, outboxes
  emptied; ``bytes_per_edge_one_vertex_per_edge``: the worst case, every edge to a topic of
  its own; ``bytes_per_edge_graph_only``: ``Graph.add_edge`` alone between existing vertices
  (edge columns + hash table: what the paper's ~117 B/edge counts).

- ``events_per_s_plain_dict``: the same pre-built events through a plain ``dict`` keyed by
  ``(src, dst, relation)`` updating count, bytes and last seen: the least any Python monitor
  does per event. Runs interleaved with the engine's (same run, same load); medians.
  ``engine_over_plain`` = ``events_per_s`` / ``events_per_s_plain_dict`` (learning, alerts and
  detectors on in the engine).
- ``bytes_seed_scenario``: tracemalloc, the whole engine (graph, phases, statistics and
  detector figures) after the paper's graph: 20 services with 10 service-to-service edges
  each, each edge seen 50 times, outboxes emptied as the store empties them
  (``baseline_paper.bytes_seed_scenario``: the paper's 33.7 KB). ``bytes_empty_engine``: a
  fresh ``Engine()``.

``--quick``: 50,000 steady-state events and 10,000 new edges (smoke test).
Standard library and commgraph only.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from commgraph.engine import ALLOW_LEARNED, Engine
from commgraph.events import Event, VertexKind
from commgraph.graph import Graph, Label
from commgraph.phases import LearningSettings

SEED = 20240601
T0 = 1_700_000_000.0  # event time of the first event (epoch seconds)
STEADY_SERVICES = 500
STEADY_EDGES = 10_000
STEADY_ROOMS = 25
HOSTS = 200
GROW_SERVICES = 1_000
FAN_IN = 1_000
PAPER_SEED_BYTES = 33_700  # the paper: 20 services with 10 relationships each

KINDS = ("thermo", "lock", "camera", "light", "motion", "hvac", "meter", "gateway", "door", "blind")
METRICS = ("temperature", "humidity", "battery", "state", "power", "rssi", "status", "setpoint")
NET_RELATIONS = ("tcp/443", "tcp/8883", "tcp/5432", "udp/123", "udp/53")

# (src, dst, relation, typical payload size)
EdgeSpec = tuple[str, str, str, int]


@contextmanager
def _no_gc() -> Iterator[None]:
    """Collect, then keep the cyclic collector out of the timed section."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- workloads ------------------------------------------------------------------------------


def steady_edges(rng: random.Random) -> list[EdgeSpec]:
    """A realistic IoT-ish edge set: 40% publish, 45% deliver, 5% subscribe, 10% host edges."""
    services = [f"{KINDS[i % len(KINDS)]}-{i:03d}" for i in range(STEADY_SERVICES)]
    room = {s: f"room-{rng.randrange(STEADY_ROOMS):02d}" for s in services}
    hosts = [
        f"10.0.{i // 250}.{i % 250 + 1}" if i % 2 else f"host-{i:03d}.lan" for i in range(HOSTS)
    ]
    n_publish = STEADY_EDGES * 40 // 100
    n_deliver = STEADY_EDGES * 45 // 100
    n_subscribe = STEADY_EDGES * 5 // 100
    n_net = STEADY_EDGES - n_publish - n_deliver - n_subscribe

    topics: list[str] = []
    edges: list[EdgeSpec] = []
    for i in range(n_publish):  # every service publishes its metrics
        service = services[i % STEADY_SERVICES]
        metric = METRICS[(i // STEADY_SERVICES) % len(METRICS)]
        topic = f"site/{room[service]}/{service}/{metric}"
        topics.append(topic)
        edges.append((service, topic, "publish", rng.randrange(16, 512)))
    seen: set[tuple[str, str, str]] = set()

    def add_unique(count: int, make: Callable[[], EdgeSpec]) -> None:
        added = 0
        while added < count:
            spec = make()
            if spec[:3] not in seen:
                seen.add(spec[:3])
                edges.append(spec)
                added += 1

    add_unique(
        n_deliver,
        lambda: (rng.choice(topics), rng.choice(services), "deliver", rng.randrange(16, 512)),
    )
    add_unique(
        n_subscribe,
        lambda: (
            rng.choice(services),
            f"site/room-{rng.randrange(STEADY_ROOMS):02d}/+/{rng.choice(METRICS)}",
            "subscribe",
            rng.randrange(40, 80),
        ),
    )
    add_unique(
        n_net,
        lambda: (
            rng.choice(services),
            rng.choice(hosts),
            rng.choice(NET_RELATIONS),
            rng.randrange(60, 1500),
        ),
    )
    return edges


def _fresh(text: str) -> str:
    """An equal string that is a new object without a cached hash (as a decoder makes it)."""
    return (text + "\x00")[:-1]


def steady_events(
    edges: list[EdgeSpec], n: int, start: float, rng: random.Random, *, fresh: bool = False
) -> list[Event]:
    """``n`` events over known edges, each pass in a new shuffled order, 1 ms apart."""
    order = list(range(len(edges)))
    events: list[Event] = []
    i = 0
    while i < n:
        rng.shuffle(order)
        for k in order[: n - i]:
            src, dst, relation, size = edges[k]
            if fresh:
                src, dst, relation = _fresh(src), _fresh(dst), _fresh(relation)
            events.append(
                Event(ts=start + i * 0.001, src=src, dst=dst, relation=relation, size=size + i % 7)
            )
            i += 1
    return events


def site_event(i: int) -> Event:
    """Event ``i`` of a growing MQTT site: topic ``i // 3`` is published by one service and
    delivered to two others; every event is a new edge, every third a new topic."""
    topic_no, part = divmod(i, 3)
    publisher = topic_no % GROW_SERVICES
    topic = f"site/room-{publisher % 40:02d}/svc-{publisher:04d}/metric-{topic_no:05d}"
    if part == 0:
        return Event(
            ts=T0 + i * 0.001, src=f"svc-{publisher:04d}", dst=topic, relation="publish", size=64
        )
    subscriber = (publisher + 1 + part * 37) % GROW_SERVICES
    return Event(
        ts=T0 + i * 0.001, src=topic, dst=f"svc-{subscriber:04d}", relation="deliver", size=64
    )


def growing_event(i: int) -> Event:
    """Event ``i`` of a growing graph: 1,000 services, each event a new topic (a new edge)."""
    service = i % GROW_SERVICES
    return Event(
        ts=T0 + i * 0.001,
        src=f"svc-{service:04d}",
        dst=f"site/room-{service % 40:02d}/svc-{service:04d}/metric-{i // GROW_SERVICES:04d}",
        relation="publish",
        size=64 + i % 200,
    )


def build_steady_engine(edges: list[EdgeSpec]) -> Engine:
    """Every edge seen once inside the learning phase (all LEARNED), outboxes emptied."""
    engine = Engine(LearningSettings())
    for i, (src, dst, relation, size) in enumerate(edges):
        engine.observe(Event(ts=T0 + i * 0.01, src=src, dst=dst, relation=relation, size=size))
    engine.take_changes()
    engine.take_counters()
    graph = engine.graph
    assert graph.edge_count == len(edges), graph.edge_count
    assert all(label == Label.LEARNED for label in graph.label)
    return engine


# -- measurements ---------------------------------------------------------------------------


def time_observe(engine: Engine, events: list[Event]) -> float:
    """Seconds for ``observe`` over ``events`` (collector off, outboxes emptied first)."""
    engine.take_changes()
    engine.take_counters()
    observe = engine.observe
    with _no_gc():
        t0 = time.perf_counter()
        for event in events:
            observe(event)
        elapsed = time.perf_counter() - t0
    return elapsed


def steady_state(
    engine: Engine, edges: list[EdgeSpec], n_events: int, runs: int, rng: random.Random
) -> tuple[list[float], list[float], list[float]]:
    """events/s of ``runs`` runs over one pre-built list, of runs over fresh strings, and of
    the plain-dict baseline over the same list (interleaved with the engine's runs)."""
    start = T0 + 2 * LearningSettings().duration  # well after every learning phase
    events = steady_events(edges, n_events, start, rng)
    edges_before = engine.graph.edge_count
    rates, plain_rates = [], []
    for _ in range(runs):  # interleaved: both see the same machine load
        rates.append(n_events / time_observe(engine, events))
        plain_rates.append(n_events / plain_dict_observe(events))
    assert engine.observe(events[0]) is ALLOW_LEARNED
    del events
    fresh_rates = []
    for _ in range(max(1, runs // 2)):  # a new list per run: a string's hash is cached once
        events = steady_events(edges, n_events, start, rng, fresh=True)
        fresh_rates.append(n_events / time_observe(engine, events))
        del events
    assert engine.graph.edge_count == edges_before, "steady state must not grow the graph"
    assert engine.alerts.next_id == 1, "steady state must not raise alerts"
    return rates, fresh_rates, plain_rates


def fan_in(n_topics: int, n_events: int, rng: random.Random) -> float:
    """events/s when one service (a historian subscribed to ``#``) gets ``n_topics`` topics.

    All its deliver edges share destination and relation; a table that hashes those bits only
    probes O(fan-in) slots per event. One run (it is a guard, not the headline number).
    """
    edges: list[EdgeSpec] = [
        (f"site/room-{i % STEADY_ROOMS:02d}/svc-{i:04d}/temperature", "historian", "deliver", 90)
        for i in range(n_topics)
    ]
    engine = build_steady_engine(edges)
    events = steady_events(edges, n_events, T0 + 2 * LearningSettings().duration, rng)
    return n_events / time_observe(engine, events)


def new_edges(n: int, runs: int) -> list[float]:
    """new edges/s: a fresh engine, each event a new edge (and a new topic vertex)."""
    events = [growing_event(i) for i in range(n)]
    rates = []
    for _ in range(runs):
        engine = Engine(LearningSettings())
        rates.append(n / time_observe(engine, events))
        assert engine.graph.edge_count == n, engine.graph.edge_count
        del engine
    return rates


def plain_dict_observe(events: list[Event]) -> float:
    """Seconds for the plain-dict baseline over ``events``: count, bytes, last seen per key."""
    table: dict[tuple[str, str, str], list[float]] = {}
    get = table.get
    with _no_gc():
        t0 = time.perf_counter()
        for event in events:
            key = (event.src, event.dst, event.relation)
            row = get(key)
            if row is None:
                table[key] = [1, event.size or 0, event.ts]
            else:
                row[0] += 1
                row[1] += event.size or 0
                row[2] = event.ts
        elapsed = time.perf_counter() - t0
    return elapsed


SEED_SERVICES = 20
SEED_EDGES_PER_SERVICE = 10
SEED_MESSAGES = 50


def seed_scenario() -> Iterator[Event]:
    """The paper's graph: 20 services, 10 service-to-service edges each, 50 messages per
    edge, round-robin over the edges 10 ms apart (all inside the learning phase)."""
    i = 0
    for _ in range(SEED_MESSAGES):
        for s in range(SEED_SERVICES):
            for k in range(SEED_EDGES_PER_SERVICE):
                d = (s + 1 + k) % SEED_SERVICES
                yield Event(
                    ts=T0 + i * 0.01,
                    src=f"svc-{s:02d}",
                    dst=f"svc-{d:02d}",
                    relation="tcp/443",
                    size=100 + i % 7,
                )
                i += 1


def seed_memory() -> tuple[int, int]:
    """Traced bytes of an empty engine and of the engine after :func:`seed_scenario`.

    Events are made inside the traced window and dropped (the strings the engine keeps
    count, the events do not); the outboxes the store drains (changes, counters, dirty
    edges) are emptied before the reading.
    """
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    engine = Engine(LearningSettings())
    gc.collect()
    empty = tracemalloc.get_traced_memory()[0] - before
    observe = engine.observe
    for event in seed_scenario():
        observe(event)
        del event
    engine.take_changes()
    engine.take_counters()
    engine.graph.take_dirty()
    gc.collect()
    seeded = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert engine.graph.edge_count == SEED_SERVICES * SEED_EDGES_PER_SERVICE
    return empty, seeded


def engine_memory(n: int, make: Callable[[int], Event]) -> tuple[float, Engine]:
    """Traced bytes per edge of an engine grown to ``n`` edges, outboxes emptied.

    Each event is made inside the traced window and dropped, so the strings the engine keeps
    (vertex names, cache keys) are counted and the Event objects themselves are not.
    """
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    engine = Engine(LearningSettings())
    observe = engine.observe
    for i in range(n):
        event = make(i)
        observe(event)
        del event
    engine.take_changes()
    engine.take_counters()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert engine.graph.edge_count == n
    return (after - before) / n, engine


def graph_memory(n: int) -> float:
    """Traced bytes per edge of ``Graph.add_edge`` alone (vertices exist before tracing)."""
    graph = Graph()
    srcs = [graph.add_vertex(VertexKind.SERVICE, f"svc-{i:04d}", T0) for i in range(GROW_SERVICES)]
    dsts = [graph.add_vertex(VertexKind.TOPIC, f"topic-{i:06d}", T0) for i in range(n)]
    rid = graph.relation_id("publish")
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        graph.add_edge(srcs[i % GROW_SERVICES], dsts[i], rid, Label.LEARNED, T0 + i, 100)
    graph.take_dirty()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert graph.edge_count == n
    return (after - before) / n


def breakdown(engine: Engine) -> dict[str, float]:
    """Where an engine's bytes go, per edge (sys.getsizeof of its structures)."""
    graph = engine.graph
    n = graph.edge_count
    size = sys.getsizeof
    columns = (
        graph.key,
        graph.count,
        graph.bytes,
        graph.first,
        graph.last,
        graph.ia_mean,
        graph.ia_m2,
        graph.size_min,
        graph.size_max,
    )
    vids = {id(v): v for cache in engine._caches.values() for v in cache.values()}
    parts = {
        "edge_columns": sum(size(c) for c in columns) + size(graph.label),
        "edge_hash_table": size(graph._slots),
        "edge_dirty_marks": size(graph._dirty) + size(graph._dirty_list),
        "vertex_columns": size(graph.names)
        + size(graph.kinds)
        + size(graph.owner)
        + size(graph.first_seen)
        + size(graph.events),
        "vertex_name_strs": sum(size(name) for name in graph.names),
        "vertex_name_index": sum(size(d) for d in graph._index.values()),
        "address_caches_own": sum(
            size(engine._caches[kind]) for kind in (VertexKind.SERVICE, VertexKind.HOST)
        ),
        "vertex_id_ints": sum(size(v) for v in vids.values() if not -5 <= v <= 256),
        "phases": size(engine.phases.states) + sum(size(s) for s in engine.phases.states.values()),
        "detector_figures": features_bytes(engine),
    }
    return {name: round(value / n, 1) for name, value in parts.items()}


def features_bytes(engine: Engine) -> int:
    """Bytes of the detectors' per-edge figures (rate, period, sizes, baselines)."""
    return engine.features.nbytes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller run (smoke test)")
    args = parser.parse_args(argv)
    quick: bool = args.quick
    n_steady = 50_000 if quick else 500_000
    n_new = 10_000 if quick else 100_000
    n_mem = 10_000 if quick else 100_000
    n_fan_in = 5_000 if quick else 20_000
    steady_runs, new_runs = 5, 3

    began = time.perf_counter()
    rng = random.Random(SEED)

    _log(f"building the steady-state graph ({STEADY_EDGES} edges)")
    edges = steady_edges(rng)
    engine = build_steady_engine(edges)
    steady_vertices = engine.graph.vertex_count
    _log(f"timing observe() over {n_steady} events x {steady_runs}")
    rates, fresh_rates, plain_rates = steady_state(engine, edges, n_steady, steady_runs, rng)
    del engine, edges

    _log(f"timing fan-in of {FAN_IN} topics into one service")
    fan_in_rate = fan_in(FAN_IN, n_fan_in, rng)

    _log(f"timing {n_new} new edges x {new_runs}")
    new_rates = new_edges(n_new, new_runs)

    _log(f"memory at {n_mem} edges")
    per_edge, grown = engine_memory(n_mem, site_event)
    vertices = grown.graph.vertex_count
    parts = breakdown(grown)
    figures_per_edge = features_bytes(grown) / grown.graph.edge_count
    del grown
    per_edge_worst, worst = engine_memory(n_mem, growing_event)
    vertices_worst = worst.graph.vertex_count
    del worst
    per_edge_graph = graph_memory(n_mem)
    _log("memory at the paper's scale (20 services x 10 edges x 50 messages)")
    bytes_empty, bytes_seed = seed_memory()

    events_per_s = statistics.median(rates)
    plain_per_s = statistics.median(plain_rates)
    result = {
        "engine_over_plain": round(events_per_s / plain_per_s, 3),
        "bytes_seed_scenario": bytes_seed,
        "bytes_seed_over_paper": round(bytes_seed / PAPER_SEED_BYTES, 3),
        "events_per_s": round(events_per_s),
        "events_per_s_runs": [round(r) for r in rates],
        "events_per_s_plain_dict": round(plain_per_s),
        "events_per_s_plain_dict_runs": [round(r) for r in plain_rates],
        "bytes_empty_engine": bytes_empty,
        "ns_per_event": round(1e9 / events_per_s, 1),
        "ms_per_message": round(1e3 / events_per_s, 6),
        "events_per_s_fresh_strings": round(statistics.median(fresh_rates)),
        "events_per_s_fresh_strings_runs": [round(r) for r in fresh_rates],
        "steady_events": n_steady,
        "steady_edges": STEADY_EDGES,
        "steady_vertices": steady_vertices,
        "events_per_s_fan_in": round(fan_in_rate),
        "fan_in": FAN_IN,
        "new_edges_per_s": round(statistics.median(new_rates)),
        "new_edges_per_s_runs": [round(r) for r in new_rates],
        "new_edge_events": n_new,
        "bytes_per_edge": round(per_edge, 1),
        "bytes_per_edge_core": round(per_edge - figures_per_edge, 1),
        "bytes_per_edge_features": round(figures_per_edge, 1),
        "bytes_per_edge_one_vertex_per_edge": round(per_edge_worst, 1),
        "vertices_one_vertex_per_edge": vertices_worst,
        "bytes_per_edge_graph_only": round(per_edge_graph, 1),
        "bytes_breakdown_per_edge": parts,
        "edges": n_mem,
        "vertices": vertices,
        "baseline_paper": {
            "bytes_per_edge": 117,
            "ms_per_message": 6,
            "bytes_seed_scenario": PAPER_SEED_BYTES,
        },
        "targets": {
            "events_per_s": 500_000,
            "bytes_per_edge": 150,
            "engine_over_plain": 0.35,
            "bytes_seed_scenario": PAPER_SEED_BYTES,
        },
        "quick": quick,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "elapsed_s": round(time.perf_counter() - began, 1),
    }
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
