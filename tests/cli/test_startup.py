"""What ``commgraph status --json`` loads: the CLI imports a command's heavy parts when that
command runs (the start-up time itself is a bench figure: bench/cli_startup.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import json, sys
from commgraph.cli import main
try:
    main(sys.argv[1:])
finally:
    sys.stderr.write("\\n" + json.dumps(sorted(sys.modules)))
"""


def _cli(*args: str) -> tuple[str, set[str]]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    modules = json.loads(done.stderr.strip().splitlines()[-1])
    return done.stdout, {name.split(".")[0] for name in modules} | set(modules)


def test_status_as_json_loads_no_network_notification_or_plot_library(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(
        "\n".join(
            json.dumps(
                {
                    "ts": 1_700_000_000 + i,
                    "src": f"svc-{i % 3}",
                    "dst": f"t/{i % 5}",
                    "relation": "publish",
                    "size": 10,
                }
            )
            for i in range(30)
        )
        + "\n"
    )
    db = tmp_path / "site.db"
    _cli("--db", str(db), "replay", str(events))
    out, modules = _cli("--db", str(db), "status", "--json")
    assert json.loads(out)["services"] == 3
    loaded = modules & {"aiohttp", "apprise", "paho", "matplotlib", "uvloop", "commgraph.daemon"}
    assert not loaded, loaded
