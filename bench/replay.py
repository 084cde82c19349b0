"""Benchmark of ``commgraph replay`` end to end: file -> adapter -> engine -> SQLite.

Prints one JSON object, each rate the median of 3 replays into a fresh database through the
same path as the command (``open_recording`` + ``replay_records``), commits included:

- ``events_per_s``: JSON-lines events of a generated site; ``parse_per_s``:
  ``parse_event_line`` alone (the part of the cost that is JSON);
- ``pcap_packets_per_s``: the real Lockly hub capture written out 5 times over, shifted in
  time (every record counts, ARP included); see ``bench/pcap.py`` for where the time goes;
- ``connlog_rows_per_s``: the real IoT-23 8-1 conn.log (CSV) 10 times over, a day apart,
  read, sorted by time and replayed; see ``bench/connlog.py`` for the breakdown.

``--quick`` for smaller files.
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

import connlog
import pcap
from commgraph.adapters.recorded import open_recording
from commgraph.events import parse_event_line
from commgraph.phases import LearningSettings
from commgraph.replay import replay, replay_records
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


def recorded_rate(path: Path, count: int, tmp: Path, name: str) -> list[float]:
    """``count`` records (packets, rows) per second of 3 replays of ``path`` as the command
    does it, each into a fresh database."""
    rates = []
    for run in range(3):
        with Store(tmp / f"{name}{run}.db") as store:
            engine = store.load_engine(LearningSettings(duration=3600.0))
            started = time.perf_counter()
            with open_recording(
                path, on_dns=lambda a, e=engine: e.learn_name(a.ip, a.name)
            ) as recording:
                summary = replay_records(recording.records, engine, store)
            rates.append(count / (time.perf_counter() - started))
            assert summary.events > 0 and summary.skipped == 0
    return rates


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
        capture, conn_log = Path(tmp) / "lockly.pcap", Path(tmp) / "conn.csv"
        packets = pcap.make_capture(capture, 1 if args.quick else 5)
        rows = connlog.make_file(conn_log, 1 if args.quick else 10)
        pcap_rates = recorded_rate(capture, packets, Path(tmp), "pcap")
        connlog_rates = recorded_rate(conn_log, rows, Path(tmp), "connlog")
    result = {
        "events_per_s": round(statistics.median(rates)),
        "events_per_s_runs": [round(r) for r in rates],
        "parse_per_s": round(parse_rate),
        "pcap_packets_per_s": round(statistics.median(pcap_rates)),
        "pcap_packets_per_s_runs": [round(r) for r in pcap_rates],
        "pcap_packets": packets,
        "connlog_rows_per_s": round(statistics.median(connlog_rates)),
        "connlog_rows_per_s_runs": [round(r) for r in connlog_rates],
        "connlog_rows": rows,
        "events": n,
        "edges": edges,
        "quick": args.quick,
        "python": platform.python_version(),
    }
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
