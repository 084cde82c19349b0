"""How the engine's cost grows with the site: events/s and bytes/edge at 10^2 .. 10^6 edges.

For each size, a fresh engine grows to ``edges`` edges shaped like an MQTT site (bench/engine.py's
``site_event``: 1,000 services, each topic published by one and delivered to two), traced by
tracemalloc (whole engine, outboxes emptied); then ``observe()`` runs over known edges in
shuffled order after every learning phase ended (median of 3 runs, with the plain-dict
baseline of bench/engine.py interleaved). Prints one JSON object on one line:

- ``sizes``: one object per size: ``edges``, ``vertices``, ``bytes_per_edge``,
  ``events_per_s``, ``events_per_s_plain_dict``, ``engine_over_plain``, ``seconds``;
- ``skipped``: sizes left out because the time budget (``--budget``, seconds) was spent;
- ``plot``: the PNG written with ``--plot PATH`` (matplotlib), else null.

``--quick``: sizes 10^2 .. 10^4. Not measured here yet: the proxy at 10, 100 and 1,000
concurrent clients (see the README).
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
from pathlib import Path
from typing import Any

from commgraph.phases import LearningSettings
from engine import (  # bench/engine.py, this folder
    SEED,
    engine_memory,
    plain_dict_observe,
    site_event,
    steady_events,
    time_observe,
)

SIZES = (100, 1_000, 10_000, 100_000, 1_000_000)
STEADY_EVENTS = 200_000


def measure(n: int, rng: random.Random) -> dict[str, Any]:
    """One size: memory while growing, then steady-state rates."""
    began = time.perf_counter()
    per_edge, engine = engine_memory(n, site_event)
    specs = []
    for i in range(n):
        event = site_event(i)
        specs.append((event.src, event.dst, event.relation, event.size or 0))
    start = site_event(n - 1).ts + 2 * LearningSettings().duration
    events = steady_events(specs, min(STEADY_EVENTS, max(10 * n, 20_000)), start, rng)
    del specs
    rates, plain = [], []
    for _ in range(3):  # interleaved with the baseline: the same machine load
        rates.append(len(events) / time_observe(engine, events))
        plain.append(len(events) / plain_dict_observe(events))
    assert engine.graph.edge_count == n, "steady state must not grow the graph"
    vertices = engine.graph.vertex_count
    del engine, events
    gc.collect()
    rate, plain_rate = statistics.median(rates), statistics.median(plain)
    return {
        "edges": n,
        "vertices": vertices,
        "bytes_per_edge": round(per_edge, 1),
        "events_per_s": round(rate),
        "events_per_s_plain_dict": round(plain_rate),
        "engine_over_plain": round(rate / plain_rate, 3),
        "seconds": round(time.perf_counter() - began, 1),
    }


def plot(sizes: list[dict[str, Any]], path: Path, machine: str) -> None:
    """Two panels over the edge count (log scale): events/s and bytes per edge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = [s["edges"] for s in sizes]
    figure, (rate_ax, bytes_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    rate_ax.plot(edges, [s["events_per_s"] / 1e3 for s in sizes], "o-", label="engine")
    rate_ax.plot(
        edges, [s["events_per_s_plain_dict"] / 1e3 for s in sizes], "s--", label="plain dict"
    )
    rate_ax.set(xscale="log", xlabel="edges", ylabel="thousand events/s", ylim=(0, None))
    rate_ax.set_title("observe() on known edges")
    rate_ax.legend()
    bytes_ax.plot(edges, [s["bytes_per_edge"] for s in sizes], "o-", label="whole engine")
    bytes_ax.axhline(117, color="grey", linestyle=":", label="paper: 117 B")
    bytes_ax.set(xscale="log", xlabel="edges", ylabel="bytes per edge", ylim=(0, None))
    bytes_ax.set_title("memory (tracemalloc)")
    bytes_ax.legend()
    figure.suptitle(f"commgraph engine scaling ({machine})", fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes 10^2 .. 10^4 only")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds for all sizes")
    parser.add_argument("--plot", type=Path, help="write the curves to this PNG")
    args = parser.parse_args(argv)
    sizes = SIZES[:3] if args.quick else SIZES
    began = time.perf_counter()
    rng = random.Random(SEED)
    done: list[dict[str, Any]] = []
    skipped: list[int] = []
    for n in sizes:
        spent = time.perf_counter() - began
        # the next size takes about ten times the last one: start it only if that fits
        if done and spent + 10 * done[-1]["seconds"] > args.budget:
            skipped.append(n)
            continue
        print(f"{n} edges", file=sys.stderr, flush=True)
        done.append(measure(n, rng))
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, CPython {platform.python_version()}"
    if args.plot is not None:
        plot(done, args.plot, machine)
    result = {
        "sizes": done,
        "skipped": skipped,
        "plot": str(args.plot) if args.plot is not None else None,
        "quick": args.quick,
        "machine": machine,
        "elapsed_s": round(time.perf_counter() - began, 1),
    }
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
