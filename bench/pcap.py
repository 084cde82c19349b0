"""Benchmark of pcap replay end to end: capture file -> packet decoder -> engine -> SQLite.

The capture is the real Lockly hub pcap (``../shared/data/oconnor_lockly-hub-01.pcap``, read
by path) written out again in a temporary directory as many times as it takes to reach the
packet count, each copy shifted in time to follow the one before.

Prints one JSON object:

- ``pcap_packets_per_s``: packets (every record of the file, ARP included) per second of a
  replay into a real Engine and Store on a temporary file, driven by
  ``commgraph.replay.replay_records`` (``engine.tick`` at every event-time minute, ``store.flush``
  every 0.5 s of wall time and at the end); median of 3 runs, each into a fresh database;
- ``parse_packets_per_s``: ``read_packets`` alone (file reading and decoding, no engine);
- ``seconds``: where one end-to-end run's time goes: ``decode`` (the reader's share, from
  the parse-only run), ``engine`` (``observe_fields`` and ``tick``), ``store`` (flushes);
- ``packets``, ``events``, ``edges``, ``quick``, ``python``.

``--quick``: one copy of the capture (46,656 packets) instead of five (233,280).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

from commgraph.adapters.pcap import read_packets
from commgraph.phases import LearningSettings
from commgraph.replay import replay_records
from commgraph.store import Store
from shared_data import data_dir

DATA = data_dir()
CAPTURE = DATA / "oconnor_lockly-hub-01.pcap"


def make_capture(path: Path, copies: int) -> int:
    """The capture ``copies`` times over, each copy one minute after the previous; returns
    the number of packets written."""
    if not CAPTURE.exists():
        raise SystemExit(f"the Lockly capture is not at {CAPTURE}")
    data = CAPTURE.read_bytes()
    if data[:4] != b"\xd4\xc3\xb2\xa1":
        raise SystemExit(f"{CAPTURE} is not a little-endian microsecond pcap")
    record = struct.Struct("<IIII")
    offsets = []
    pos = 24
    while pos + 16 <= len(data):
        offsets.append(pos)
        pos += 16 + record.unpack_from(data, pos)[2]
    first = record.unpack_from(data, offsets[0])[0]
    last = record.unpack_from(data, offsets[-1])[0]
    span = last - first + 60
    with path.open("wb") as out:
        out.write(data[:24])
        for copy in range(copies):
            shift = copy * span
            for offset in offsets:
                sec, usec, caplen, wirelen = record.unpack_from(data, offset)
                out.write(record.pack(sec + shift, usec, caplen, wirelen))
                out.write(data[offset + 16 : offset + 16 + caplen])
    return len(offsets) * copies


def parse_only(path: Path) -> tuple[float, int, int]:
    """Seconds to read the whole file, packets read, flow and topic events."""
    started = time.perf_counter()
    events = packets = 0
    for number, item in read_packets(path):
        packets = number
        if type(item) is tuple:
            events += 1
    return time.perf_counter() - started, packets, events


def replay(path: Path, db: Path) -> dict[str, float | int]:
    """One end-to-end replay through ``commgraph.replay``'s driver, as the command does."""
    reached = [0]
    with Store(db) as store:
        engine = store.load_engine(LearningSettings(duration=3600.0))
        summary = replay_records(
            read_packets(path), engine, store, progress=lambda n: reached.__setitem__(0, n)
        )
        assert store.status()["events"] == summary.events
        return {
            "seconds": summary.seconds,
            "store_s": summary.store_seconds,
            "packets": reached[0],
            "events": summary.events,
            "errors": summary.skipped,
            "edges": engine.graph.edge_count,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one copy of the capture")
    args = parser.parse_args(argv)
    copies = 1 if args.quick else 5
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lockly-repeated.pcap"
        packets = make_capture(path, copies)
        gc.collect()
        parse_runs = [parse_only(path) for _ in range(3)]
        parse_s = statistics.median(run[0] for run in parse_runs)
        runs = [replay(path, Path(tmp) / f"run{i}.db") for i in range(3)]
    assert all(run["packets"] == packets and run["errors"] == 0 for run in runs)
    middle = sorted(runs, key=lambda run: run["seconds"])[1]
    seconds = float(middle["seconds"])
    store_s = float(middle["store_s"])
    result = {
        "pcap_packets_per_s": round(packets / seconds),
        "pcap_packets_per_s_runs": [round(packets / float(run["seconds"])) for run in runs],
        "parse_packets_per_s": round(packets / parse_s),
        "seconds": {
            "total": round(seconds, 3),
            "decode": round(parse_s, 3),
            "engine": round(max(seconds - parse_s - store_s, 0.0), 3),
            "store": round(store_s, 3),
        },
        "packets": packets,
        "events": middle["events"],
        "edges": middle["edges"],
        "quick": args.quick,
        "python": platform.python_version(),
    }
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
