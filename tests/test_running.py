"""A node says in its store that it runs and how far it applied the audit log; a CLI decision
the running node refuses is one error line and exit status 1, not a DEBUG log line."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from commgraph.config import parse_config
from commgraph.daemon import Daemon
from commgraph.events import Event
from commgraph.running import announce, record_applied, retire, running_node, wait_applied
from commgraph.store import Store

COMMGRAPH = Path(sys.executable).parent / "commgraph"
T = 1_700_000_000.0


def test_no_node_runs_on_a_fresh_database(tmp_path: Path) -> None:
    with Store(tmp_path / "n.db") as store:
        assert running_node(store) is None
        assert wait_applied(store, 1) is None


def test_a_running_node_answers_for_each_decision(tmp_path: Path) -> None:
    with Store(tmp_path / "n.db") as store:
        announce(store, "node-a")
        assert running_node(store) is not None
        record_applied(store, 3, {2: "there is no service 'x'"})
        taken, refused = wait_applied(store, 3), wait_applied(store, 2)
        assert taken is not None and taken.taken is True
        assert refused is not None and (refused.taken, refused.reason) == (
            False,
            "there is no service 'x'",
        )
        ticks = iter(range(100))
        late = wait_applied(store, 4, timeout=3, clock=lambda: next(ticks), pause=lambda _: None)
        assert late is not None and late.taken is None  # not seen within the wait
        retire(store)
        assert running_node(store) is None


def test_a_node_gone_without_saying_so_is_not_running(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    with Store(tmp_path / "n.db") as store:
        announce(store, "node-a")
        text = store.meta("running")
        assert text is not None
        store.set_meta("running", text.replace(f'"pid": {__import__("os").getpid()}',
                                               f'"pid": {int(gone.stdout)}'))  # fmt: skip
        assert running_node(store) is None


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Daemon]:
    """A real node (no proxy: events handed in) running on tmp_path/n.db, with alert 1."""
    config = parse_config({"node": {"name": "node-a"}, "learning": {"duration": "1s"}})
    store = Store(tmp_path / "n.db")
    daemon = Daemon(config, store)
    daemon.observe(T, "thermo", "home/kitchen/temp", "publish", 12)
    assert daemon.observe(T + 10, "thermo", "home/evil", "publish", 5).alert == 1
    serving = asyncio.get_running_loop().create_task(daemon.run())
    await asyncio.wait_for(daemon.started.wait(), 30)
    try:
        yield daemon
    finally:
        daemon.stop()
        await asyncio.wait_for(serving, 30)
        store.close()


async def commgraph(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The console script, in a thread: the node's loop goes on meanwhile."""
    return await asyncio.to_thread(
        subprocess.run,
        [str(COMMGRAPH), "--db", str(db), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_a_decision_the_running_node_takes_succeeds(node: Daemon) -> None:
    done = await commgraph(node.store.path, "approve", "1", "--by", "owner")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert node.engine.alerts.by_id[1].state.value == "approved"  # in effect in the node


async def test_a_decision_the_running_node_refuses_is_an_error(node: Daemon) -> None:
    # Another writer put a service into the database the running node does not know.
    with Store(node.store.path) as other:
        engine = other.load_engine()
        engine.observe(Event(ts=T, src="stranger", dst="home/x", relation="publish"))
        other.write_changes(engine, engine.take_changes())
    done = await commgraph(node.store.path, "mode", "stranger", "protect")
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "recorded in" in lines[0] and "did not take it" in lines[0]
    assert "there is no service 'stranger'" in lines[0]
    assert node.counters()["failures_tick"] == 0.0
