"""``commgraph demo``: Mosquitto, a node with its dashboard, and the simulated heating site."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from commgraph.config import NotifySettings
from commgraph.daemon import Daemon, event_loop_runner
from commgraph.demo.site import (
    DemoClock,
    Pace,
    RoomService,
    SimulatedSite,
    free_port,
    live_config,
    start_broker,
)
from commgraph.notify import Message, Sender
from commgraph.store import Store
from commgraph.web.auth import load_or_create

__all__ = ["run_live_demo"]


def run_live_demo(
    out_dir: Path,
    *,
    seconds: float | None = None,
    pace: Pace | None = None,
    api_port: int | None = 8080,
    notify_urls: tuple[str, ...] = (),
    say: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """``commgraph demo``: Mosquitto, the proxy and dashboard, and a simulated site.

    Runs until Ctrl-C (or for ``seconds`` of the demo's clock, which the site moves step by
    step: a slow machine takes longer, and its story is the same), stops everything it
    started, and returns the alerts the site raised.
    """
    pace = pace or Pace()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("demo.db", "demo.db-wal", "demo.db-shm", "demo.credentials"):
        (out_dir / name).unlink(missing_ok=True)
    broker, broker_port = start_broker(out_dir)
    site: SimulatedSite | None = None
    rooms: RoomService | None = None
    try:
        rooms = RoomService()
        config = live_config(
            out_dir,
            broker_port,
            pace=pace,
            api_port=None if api_port is None else free_port(api_port),
            notify_urls=notify_urls,
            rooms_port=rooms.port,
        )
        assert config.db is not None and config.mqtt.listen is not None
        sidecar_port = config.http.routes[0].listen.port
        clock = DemoClock(time.time())
        with Store(config.db) as store:
            daemon = Daemon(config, store, clock=clock)
            daemon.notifiers.append(
                daemon.notifier(
                    NotifySettings(urls=("console",), per_minute=10), _console(daemon, say)
                )
            )

            async def main() -> None:
                nonlocal site
                loop = asyncio.get_running_loop()
                serving = loop.create_task(daemon.run())
                await asyncio.wait_for(daemon.started.wait(), 15)
                _banner(daemon, pace, say)

                lines = _narration(pace)

                def narrate(elapsed: float) -> None:  # the site's thread, before a step acts
                    # queued before the step's packets exist: said before what they cause
                    while lines and lines[0][0] <= elapsed:
                        at, text = lines.pop(0)
                        with contextlib.suppress(RuntimeError):  # the loop is already closed
                            loop.call_soon_threadsafe(say, f"[{at:5.1f} s] {text}")

                def done() -> None:  # the site's thread took its last step
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(daemon.stop)

                site = SimulatedSite(
                    "127.0.0.1",
                    config.mqtt.listen.port,  # type: ignore[union-attr]
                    pace,
                    clock,
                    steps=None if seconds is None else round(seconds / pace.tick),
                    on_step=narrate,
                    done=done,
                    http_port=sidecar_port,
                )
                await asyncio.to_thread(site.start)
                if seconds is not None:  # a stalled site does not keep the demo running
                    loop.call_later(seconds * _SLOWEST + 30, daemon.stop)
                await serving

            event_loop_runner()(main())
            alerts = store.alerts()
        say(f"Stopped. The database stays in {config.db} (commgraph --db {config.db} alerts).")
        return alerts
    finally:
        if site is not None:
            site.stop()
        if rooms is not None:
            rooms.stop()
        broker.terminate()
        try:
            broker.wait(10)
        except subprocess.TimeoutExpired:
            broker.kill()


def _banner(daemon: Daemon, pace: Pace, say: Callable[[str], None]) -> None:
    api = daemon.config.api.listen
    say("")
    say("commgraph live demo: a heating site behind the commgraph MQTT proxy")
    if api is not None:
        credentials = load_or_create(daemon.credentials_path())
        say(f"  dashboard  http://{api}/   (log in with the token below)")
        say(f"  API token  {credentials.api_token}")
    say(f"  database   {daemon.store.path}")
    mqtt = daemon.config.mqtt
    say(f"  broker     Mosquitto on {mqtt.upstream}, proxy on {mqtt.listen}")
    for route in daemon.config.http.routes:
        say(f"  REST       {route.service} on {route.upstream}, HTTP sidecar on {route.listen}")
    say("  Ctrl-C stops everything the demo started.")
    say("")


# How many times slower than its clock a bounded live demo may run before it is stopped.
_SLOWEST = 10


def _narration(pace: Pace) -> list[tuple[float, str]]:
    """What the viewer is told, and when on the demo's clock."""
    return [
        (
            0.0,
            f"Two sensors, a heating controller and two valves connect, and the controller "
            f"polls a room service over HTTP (GET /rooms/{{id}}/temperature) through a "
            f"sidecar; each learns for {pace.learning:g} s.",
        ),
        (pace.learning + 1, "Learning is over: from now on anything new is an anomaly."),
        (
            pace.bedroom_at,
            "A bedroom sensor is installed: it gets its own learning phase, and "
            "you are asked once whether it is yours.",
        ),
        (
            pace.anomaly_at,
            "The kitchen sensor starts commanding the kitchen valve, and the controller "
            "calls POST /locks/front/unlock on the room service...",
        ),
    ]


def _console(daemon: Daemon, say: Callable[[str], None]) -> Sender:
    """A sender that shows the phone's notification on the console."""

    async def show(url: str, message: Message) -> None:
        say("")
        say(f"*** {message.title}: {message.text}")
        for button in message.buttons:
            say(f"    {button.label}: {button.page}")
        for alert in message.alerts:
            say(f"    or: commgraph --db {daemon.store.path} approve {alert}")
        say("")

    return show
