"""Benchmark of a Zeek conn.log replay end to end: CSV -> flows -> engine -> SQLite.

Input: the real IoT-23 scenario 8-1 (10,403 flows over 24 h, ``../shared/data``), repeated
10 times (104,030 rows; ``--quick``: 2 times), each copy shifted by one more day, rows left
in Zeek's write order. Prints one JSON object:

- ``connlog_rows_per_s``: rows / (``seconds_parse`` + ``seconds_engine`` + ``seconds_store``),
  median of 3 runs, each into a fresh database on a temporary file;
- ``seconds_parse``: :func:`flows_in_time_order` (read, decode, sort);
  ``seconds_engine``: the replay loop, ``commgraph.replay.replay_records``: fields made
  by :func:`flow_fields` as it goes, ``Engine.tick`` per event-time minute,
  ``Engine.observe_fields`` per flow; ``seconds_store``: ``Store.flush``, about every 0.5 s
  of wall time and at the end; all three from the median run;
- ``parse_rows_per_s``: :func:`read_flows` alone (bytes -> FlowRecord), median of 3;
- ``read_sort_rows_per_s``: read + sort + :func:`flow_fields` for the original 10,403-row
  file, median of 5; ``read_sort_event_rows_per_s``: the same with :func:`flow_events`
  (Events, the generic path) instead;
- ``split_rows_per_s``: the floor of any Python conn.log reader: ``bytes.split(b",")`` of
  every line of the same file and nothing else; ``csv_rows_per_s``: ``csv.reader`` alone;
  each measured before each end-to-end run (interleaved, same load), medians;
  ``connlog_over_parse_only`` = ``connlog_rows_per_s`` / ``split_rows_per_s``;
- ``rows``, ``copies``, ``edges``, ``alerts`` (learning lasts 1 h; the C&C starts at 69 min).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from commgraph.adapters.zeek import (
    FlowRecord,
    flow_events,
    flow_fields,
    flows_in_time_order,
    read_flows,
)
from commgraph.engine import Engine
from commgraph.phases import LearningSettings
from commgraph.replay import replay_records
from commgraph.store import Store
from shared_data import data_dir

DATA = data_dir()
SOURCE = DATA / "iot23_CTU-Malware-Capture-8-1-labeled.csv"
DAY = 86_400
LEARNING = LearningSettings(duration=3600.0)


def make_file(path: Path, copies: int) -> int:
    """``copies`` of SOURCE one after the other, each a day later; returns the row count."""
    header, *rows = SOURCE.read_bytes().splitlines()
    split = [row.split(b".", 1) for row in rows]  # "1533042911.474174,..." -> seconds, rest
    with path.open("wb") as out:
        out.write(header + b"\n")
        for copy in range(copies):
            shift = copy * DAY
            out.writelines(b"%d.%s\n" % (int(seconds) + shift, rest) for seconds, rest in split)
    return copies * len(rows)


def replay_flows(
    records: list[FlowRecord], engine: Engine, store: Store
) -> tuple[float, float, int, int]:
    """Run the records' fields through the engine with ``commgraph.replay``'s driver.

    Returns (seconds, of which in ``Store.flush``, events, alerts raised).
    """
    summary = replay_records(enumerate(flow_fields(records), 1), engine, store)
    return summary.seconds, summary.store_seconds, summary.events, len(summary.new_alerts)


def run(conn_log: Path, db: Path) -> dict[str, float | int]:
    """One end-to-end replay of ``conn_log`` into a fresh database at ``db``."""
    started = time.perf_counter()
    records, errors = flows_in_time_order(conn_log)
    seconds_parse = time.perf_counter() - started
    assert not errors, errors[:3]
    with Store(db) as store:
        engine = store.load_engine(LEARNING)
        seconds_loop, seconds_store, events, alerts = replay_flows(records, engine, store)
        assert events == len(records) == store.status()["events"]
        edges = engine.graph.edge_count
    return {
        "rows_per_s": events / (seconds_parse + seconds_loop),
        "seconds_parse": seconds_parse,
        "seconds_engine": seconds_loop - seconds_store,
        "seconds_store": seconds_store,
        "edges": edges,
        "alerts": alerts,
    }


def split_only(path: Path) -> int:
    """Rows of ``path`` split into fields and nothing else (the parse-only floor)."""
    rows = 0
    with path.open("rb") as stream:
        next(stream)  # the header
        for line in stream:
            line.split(b",")
            rows += 1
    return rows


def csv_only(path: Path) -> int:
    """Rows of ``path`` read by ``csv.reader`` and nothing else."""
    with path.open(newline="") as stream:
        reader = csv.reader(stream)
        next(reader)
        return sum(1 for _ in reader)


def rows_per_s(count: int, action: Callable[[], object], repeat: int) -> float:
    """Median rate of ``count`` rows handled by ``action()``, over ``repeat`` runs."""
    rates = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        rates.append(count / (time.perf_counter() - started))
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller run (smoke test)")
    args = parser.parse_args(argv)
    copies = 2 if args.quick else 10
    with tempfile.TemporaryDirectory() as tmp:
        conn_log = Path(tmp) / "conn.csv"
        rows = make_file(conn_log, copies)
        parse_rate = rows_per_s(rows, lambda: sum(1 for _ in read_flows(conn_log)), 3)
        original = sum(1 for _ in read_flows(SOURCE))

        def read_sort() -> None:
            records, _ = flows_in_time_order(SOURCE)
            for _ in flow_fields(records):
                pass

        def read_sort_event() -> None:
            records, _ = flows_in_time_order(SOURCE)
            for _ in flow_events(records):
                pass

        read_sort_rate = rows_per_s(original, read_sort, 5)
        read_sort_event_rate = rows_per_s(original, read_sort_event, 5)
        runs, split_rates, csv_rates = [], [], []
        for i in range(3):  # the baselines interleaved with the runs: the same machine load
            split_rates.append(rows_per_s(rows, lambda: split_only(conn_log), 1))
            csv_rates.append(rows_per_s(rows, lambda: csv_only(conn_log), 1))
            runs.append(run(conn_log, Path(tmp) / f"run{i}.db"))
    runs.sort(key=lambda r: r["rows_per_s"])
    median = runs[1]
    split_rate = statistics.median(split_rates)
    result = {
        "connlog_over_parse_only": round(median["rows_per_s"] / split_rate, 3),
        "connlog_rows_per_s": round(median["rows_per_s"]),
        "split_rows_per_s": round(split_rate),
        "csv_rows_per_s": round(statistics.median(csv_rates)),
        "connlog_rows_per_s_runs": [round(r["rows_per_s"]) for r in runs],
        "parse_rows_per_s": round(parse_rate),
        "read_sort_rows_per_s": round(read_sort_rate),
        "read_sort_event_rows_per_s": round(read_sort_event_rate),
        "seconds_parse": round(median["seconds_parse"], 3),
        "seconds_engine": round(median["seconds_engine"], 3),
        "seconds_store": round(median["seconds_store"], 3),
        "rows": rows,
        "copies": copies,
        "edges": median["edges"],
        "alerts": median["alerts"],
        "quick": args.quick,
        "python": platform.python_version(),
    }
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
