"""Benchmark of CLI start-up: ``commgraph status --json`` against ``python -c pass``.

Both are whole processes (interpreter start, imports, the command, exit) run by the same
interpreter of this environment, interleaved one after the other so both see the same load
of a shared machine. The database is a temporary file made by ``commgraph replay`` from a
few generated events before timing. Prints one JSON object on one line:

- ``cli_status_over_python``: median ``commgraph status --json`` seconds / median
  ``python -c pass`` seconds (target <= 1.5);
- ``cli_status_s``, ``python_pass_s``: those medians; ``*_runs``: every run;
- ``cli_status_modules``: modules ``status --json`` has imported when it exits, and
  ``cli_status_heavy``: which of aiohttp, apprise, paho, matplotlib, rich, uvloop are among
  them (none of them is needed to print a database's status as JSON).

``--quick``: 5 runs of each instead of 21. Standard library only (it runs the CLI).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("aiohttp", "apprise", "paho", "matplotlib", "rich", "uvloop")
STATUS = "from commgraph.cli import main; main(['--db', {db!r}, 'status', '--json'])"
REPLAY = "from commgraph.cli import main; main(['--db', {db!r}, 'replay', {events!r}])"
MODULES = (
    "import sys, atexit, json\n"
    "atexit.register(lambda: sys.stderr.write(json.dumps(sorted(sys.modules))))\n"
    "from commgraph.cli import main\n"
    "main(['--db', {db!r}, 'status', '--json'])\n"
)


def _run(args: list[str]) -> float:
    """Seconds of one whole process; it must succeed."""
    t0 = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def make_db(folder: Path) -> Path:
    """A database with a few services, made by ``commgraph replay``."""
    events = folder / "events.jsonl"
    lines = []
    for i in range(200):
        service = f"svc-{i % 10}"
        lines.append(
            json.dumps(
                {
                    "ts": 1_700_000_000 + i,
                    "src": service,
                    "dst": f"site/{service}/metric-{i % 4}",
                    "relation": "publish",
                    "size": 40 + i % 9,
                }
            )
        )
    events.write_text("\n".join(lines) + "\n")
    db = folder / "site.db"
    subprocess.run(
        [sys.executable, "-c", REPLAY.format(db=str(db), events=str(events))],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return db


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 runs of each (smoke test)")
    args = parser.parse_args(argv)
    runs = 5 if args.quick else 21
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="commgraph-cli-bench-") as tmp:
        db = make_db(Path(tmp))
        status = [sys.executable, "-c", STATUS.format(db=str(db))]
        bare = [sys.executable, "-c", "pass"]
        _run(status)  # warm the file cache and the bytecode once
        _run(bare)
        cli_runs, bare_runs = [], []
        for _ in range(runs):  # interleaved: the same load for both
            cli_runs.append(_run(status))
            bare_runs.append(_run(bare))
        listed = subprocess.run(
            [sys.executable, "-c", MODULES.format(db=str(db))],
            check=True,
            capture_output=True,
            text=True,
        )
        modules: list[str] = json.loads(listed.stderr.strip().splitlines()[-1])
    cli_s, bare_s = statistics.median(cli_runs), statistics.median(bare_runs)
    heavy = sorted({name.split(".")[0] for name in modules} & set(HEAVY))
    result = {
        "cli_status_over_python": round(cli_s / bare_s, 3),
        "cli_status_s": round(cli_s, 4),
        "python_pass_s": round(bare_s, 4),
        "cli_status_runs": [round(r, 4) for r in cli_runs],
        "python_pass_runs": [round(r, 4) for r in bare_runs],
        "cli_status_modules": len(modules),
        "cli_status_heavy": heavy,
        "targets": {"cli_status_over_python": 1.5},
        "runs": runs,
        "quick": args.quick,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "elapsed_s": round(time.perf_counter() - began, 1),
    }
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
