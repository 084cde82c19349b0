"""Parts plugged into a node as hooks: a failing one is logged and counted, never fatal."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from commgraph.config import parse_config
from commgraph.daemon import Daemon
from commgraph.hooks import Hooks
from commgraph.notify import AlertNotice
from commgraph.store import Store

T = 1_700_000_000.0


class Broken:
    """A part whose every hook fails."""

    def __init__(self) -> None:
        self.calls = 0

    def on_alert(self, notice: AlertNotice) -> None:
        self.calls += 1
        raise RuntimeError("the phone is off")

    async def stop(self) -> None:
        raise RuntimeError("cannot stop")


class Listening:
    def __init__(self) -> None:
        self.alerts: list[int] = []

    def on_alert(self, notice: AlertNotice) -> None:
        self.alerts.append(notice.id)


def test_safecall_logs_counts_and_swallows(caplog: pytest.LogCaptureFixture) -> None:
    hooks = Hooks()

    def fail(x: int) -> int:
        raise ValueError(f"bad {x}")

    with caplog.at_level(logging.ERROR, logger="commgraph"):
        assert hooks.safecall("sync", fail, 3) is None
        assert hooks.safecall("sync", lambda: 7) == 7
    assert hooks.failures == {"sync": 1}
    assert "sync: fail failed" in caplog.text and "bad 3" in caplog.text


async def test_a_failing_part_is_counted_and_the_others_still_hear(tmp_path: Path) -> None:
    config = parse_config({"node": {"name": "node-a"}, "learning": {"duration": "1s"}})
    with Store(tmp_path / "n.db") as store:
        daemon = Daemon(config, store)
        broken, listening = Broken(), Listening()
        daemon.hooks.add("broken", broken)
        daemon.hooks.add("listening", listening)
        daemon.observe(T, "thermo", "home/kitchen/temp", "publish", 12)
        assert daemon.observe(T + 10, "thermo", "home/evil", "publish", 5).alert == 1
        assert daemon.observe(T + 11, "thermo", "home/worse", "publish", 5).alert == 2
        await asyncio.sleep(0)  # new structure (and its alerts) is handled right after
        assert listening.alerts == [1, 2]
        assert broken.calls == 2
        counters = daemon.counters()
        assert counters["failures_broken"] == 2.0
        assert counters["failures_listening"] == 0.0
        assert counters["failures_tick"] == 0.0
        await daemon.hooks.stop()  # a failing stop is counted too, and the others stop
        assert daemon.counters()["failures_broken"] == 3.0
        assert store.status()["alerts_by_state"]["pending"] == 2  # observation went on
