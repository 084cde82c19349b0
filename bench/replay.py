"""Benchmark of ``commgraph replay`` end to end: JSON lines -> parse -> engine -> SQLite.

Prints one JSON object: ``events_per_s`` (median of 3 replays of a generated file into a
fresh database, commits included), ``parse_per_s`` (``parse_event_line`` alone, the part of
the cost that is JSON), ``events``, ``edges``. ``--quick`` for a smaller file.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from commgraph.daemon import replay
from commgraph.events import parse_event_line
from commgraph.phases import LearningSettings
from commgraph.store import Store

T0 = 1_700_000_000.0


def make_file(path: Path, n: int) -> None:
    """A site of 300 devices, 8 topics each, 100 messages/s in event time."""
    rng = random.Random(5)
    with path.open("w", encoding="utf-8") as out:
        for i in range(n):
            device = rng.randrange(300)
            record = {
                "ts": T0 + i * 0.01,
                "src": f"dev-{device}",
                "dst": f"site/{device}/metric-{rng.randrange(8)}",
                "relation": "publish",
                "size": rng.randrange(10, 100),
            }
            out.write(json.dumps(record) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller run (smoke test)")
    args = parser.parse_args(argv)
    n = 20_000 if args.quick else 300_000
    with tempfile.TemporaryDirectory() as tmp:
        events_file = Path(tmp) / "site.jsonl"
        make_file(events_file, n)
        lines = events_file.read_bytes().splitlines()
        started = time.perf_counter()
        for line in lines:
            parse_event_line(line)
        parse_rate = n / (time.perf_counter() - started)
        rates, edges = [], 0
        for run in range(3):
            with Store(Path(tmp) / f"run{run}.db") as store:
                engine = store.load_engine(LearningSettings(duration=600.0))
                with events_file.open("rb") as stream:
                    summary = replay(stream, engine, store)
                rates.append(summary.events_per_s)
                edges = engine.graph.edge_count
                assert summary.events == n and store.status()["events"] == n
    result = {
        "events_per_s": round(statistics.median(rates)),
        "events_per_s_runs": [round(r) for r in rates],
        "parse_per_s": round(parse_rate),
        "events": n,
        "edges": edges,
        "quick": args.quick,
        "python": platform.python_version(),
    }
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
