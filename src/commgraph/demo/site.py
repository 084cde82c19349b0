"""A small heating site: generated events for replays, and a live site for ``commgraph demo``.

Two temperature sensors publish every 30 s, a heating controller subscribes to them and sets
two valves once a minute. Everything starts at minute 0 and learns for ``learning`` seconds.
A bedroom sensor is installed at minute 15, after the site has learned: it gets its own
learning phase and the owner is asked once whether it is theirs. At minute 25 the kitchen
sensor starts publishing to the kitchen valve's command topic: never seen before, so the
owner is asked. The live site also has a room service behind an HTTP sidecar: the controller
GETs ``/rooms/{id}/temperature`` every step, and at the anomaly it POSTs
``/locks/front/unlock``, a route never seen before.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from commgraph.config import Config, parse_config
from commgraph.errors import CommgraphError
from commgraph.events import Event

__all__ = [
    "DEMO_START",
    "DemoClock",
    "Pace",
    "RoomService",
    "SimulatedSite",
    "free_port",
    "heating_site",
    "live_config",
    "start_broker",
]

DEMO_START = 1_767_600_000.0  # 2026-01-05 08:00 UTC: fixed, so every run tells the same story
SENSOR_PERIOD = 30.0
VALVE_PERIOD = 60.0


def heating_site(minutes: int = 40, *, start: float = DEMO_START) -> Iterator[Event]:
    """Yield the site's events in time order."""
    rooms = {"kitchen": 0.0, "living": 0.0}
    events: list[Event] = []

    def add(at: float, src: str, dst: str, relation: str, size: int | None = None) -> None:
        events.append(Event(ts=start + at, src=src, dst=dst, relation=relation, size=size))

    add(0.5, "heating-controller", "home/+/temperature", "subscribe")
    for room in rooms:
        add(0.7, f"valve-{room}", f"valves/{room}/set", "subscribe")

    def sensor(room: str, since: float) -> None:
        at = since
        while at < minutes * 60:
            topic = f"home/{room}/temperature"
            add(at, f"thermo-{room}", topic, "publish", 5)
            add(at + 0.01, topic, "heating-controller", "deliver", 5)
            at += SENSOR_PERIOD

    sensor("kitchen", 1.0)
    sensor("living", 2.0)
    sensor("bedroom", 15 * 60 + 3.0)  # installed at minute 15

    at = 10.0
    while at < minutes * 60:
        for room in rooms:
            topic = f"valves/{room}/set"
            add(at, "heating-controller", topic, "publish", 9)
            add(at + 0.02, topic, f"valve-{room}", "deliver", 9)
        at += VALVE_PERIOD

    # Minute 25: the kitchen sensor starts driving the kitchen valve.
    at = 25 * 60 + 4.0
    while at < minutes * 60:
        add(at, "thermo-kitchen", "valves/kitchen/set", "publish", 11)
        add(at + 0.02, "valves/kitchen/set", "valve-kitchen", "deliver", 11)
        at += 120.0

    events.sort(key=lambda e: e.ts)
    yield from events


# -- the live demo ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pace:
    """The demo's compressed clock, in real seconds."""

    tick: float = 1.0  # sensors publish every tick, the controller every 2 ticks
    learning: float = 20.0  # each service's learning phase
    bedroom_at: float = 30.0  # a sensor is installed
    anomaly_at: float = 55.0  # the kitchen sensor starts commanding the kitchen valve


class DemoClock:
    """The live demo's clock: it moves by one tick when the simulated site takes a step, and
    only then. The node reads it instead of the wall clock, so what the engine measures
    (learning, rates, silences) is the script's, however slowly a busy machine runs it."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.now = start  # written by the site's thread only, one float at a time

    def __call__(self) -> float:
        return self.now

    @property
    def elapsed(self) -> float:
        return self.now - self.start


class _RoomHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the controller polls on one connection

    def do_GET(self) -> None:
        parts = self.path.split("/")
        if len(parts) == 4 and parts[1] == "rooms" and parts[3] == "temperature":
            self._answer(200, {"room": parts[2], "celsius": 21.0})
        else:
            self._answer(404, {"error": "no such room"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path.startswith("/locks/") and self.path.endswith("/unlock"):
            self._answer(200, {"lock": self.path.split("/")[2], "locked": False})
        else:
            self._answer(404, {"error": "no such lock"})

    def _answer(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # quiet: the demo narrates
        pass


class RoomService:
    """The site's REST service: room temperatures and the front door's lock, served by
    ``http.server`` on a free loopback port until :meth:`stop`."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _RoomHandler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="room-service", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


# How long a step waits for the proxy to have seen its messages (their PUBACKs) before the
# clock moves on; only a stalled proxy or broker makes it wait this long.
_ACK_TIMEOUT = 10.0


class SimulatedSite:
    """Real paho MQTT clients of a small heating site, talking through the proxy.

    Step ``n`` sets ``clock`` to ``n`` ticks after its start, calls ``on_step`` with that
    many seconds (once with 0 before the first step), publishes, and waits until the proxy
    has acknowledged every publish of the step: each message is seen at its scripted time.
    It takes ``steps`` steps (None: until stopped), then calls ``done``. Both callbacks run
    in the site's thread. With ``http_port`` (the room service's sidecar) the controller also
    GETs each room's temperature every step and waits for the answer, as HTTP Basic user
    ``heating-controller``; from ``anomaly_at`` on it POSTs ``/locks/front/unlock`` every
    third step.
    """

    def __init__(
        self,
        host: str,
        port: int,
        pace: Pace,
        clock: DemoClock,
        *,
        steps: int | None = None,
        on_step: Callable[[float], None] | None = None,
        done: Callable[[], None] | None = None,
        http_port: int | None = None,
    ) -> None:
        self.host, self.port, self.pace, self.clock = host, port, pace, clock
        self.http_port = http_port
        self.http_answers: dict[int, int] = {}  # HTTP status -> how many the controller got
        self._http: http.client.HTTPConnection | None = None
        self.steps, self.on_step, self.done = steps, on_step, done
        self.clients: dict[str, mqtt.Client] = {}
        self.received: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="simulated-site", daemon=True)

    def _client(self, name: str, subscribe: str | None = None) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name)
        connected = threading.Event()

        def on_connect(c: mqtt.Client, u: object, f: object, reason: object, p: object) -> None:
            if subscribe is not None:
                c.subscribe(subscribe, qos=1)
            connected.set()

        def on_message(c: mqtt.Client, u: object, message: mqtt.MQTTMessage) -> None:
            self.received[name] = self.received.get(name, 0) + 1

        client.on_connect = on_connect
        client.on_message = on_message
        client.connect(self.host, self.port, keepalive=30)
        client.loop_start()
        if not connected.wait(10):
            raise ConnectionError(f"{name} could not connect to the proxy")
        self.clients[name] = client
        return client

    def start(self) -> None:
        self._client("heating-controller", "home/+/temperature")
        self._client("valve-kitchen", "valves/kitchen/set")
        self._client("valve-living", "valves/living/set")
        for room in ("kitchen", "living"):
            self._client(f"thermo-{room}")
        self._thread.start()

    def _run(self) -> None:
        try:
            self._steps()
        finally:
            if self.done is not None and not self._stop.is_set():
                self.done()

    def _steps(self) -> None:
        pace, clock, step, on_step = self.pace, self.clock, 0, self.on_step
        rng = random.Random(7)
        if on_step is not None:
            on_step(0.0)
        while (self.steps is None or step < self.steps) and not self._stop.wait(pace.tick):
            step += 1
            clock.now = clock.start + step * pace.tick
            elapsed = step * pace.tick
            if on_step is not None:
                on_step(elapsed)
            if elapsed >= pace.bedroom_at and "thermo-bedroom" not in self.clients:
                self._client("thermo-bedroom")
            sent: list[mqtt.MQTTMessageInfo] = []
            for name, client in list(self.clients.items()):
                if name.startswith("thermo-"):
                    room = name.split("-", 1)[1]
                    temp = f"{20 + rng.random() * 2:.1f}".encode()
                    sent.append(client.publish(f"home/{room}/temperature", temp, qos=1))
            controller = self.clients["heating-controller"]
            if step % 2 == 0:
                for room in ("kitchen", "living"):
                    sent.append(controller.publish(f"valves/{room}/set", b"open=35", qos=1))
            if elapsed >= pace.anomaly_at and step % 3 == 0:
                kitchen = self.clients["thermo-kitchen"]
                sent.append(kitchen.publish("valves/kitchen/set", b"open=100", qos=1))
            if self.http_port is not None:
                for room_id in (1, 2):
                    self._call("GET", f"/rooms/{room_id}/temperature")
                if elapsed >= pace.anomaly_at and step % 3 == 0:
                    self._call("POST", "/locks/front/unlock", b"{}")
            for info in sent:
                if info.rc == mqtt.MQTT_ERR_SUCCESS:  # else not connected (refused, say)
                    with contextlib.suppress(RuntimeError):  # the connection went since
                        info.wait_for_publish(_ACK_TIMEOUT)

    def _call(self, method: str, path: str, body: bytes | None = None) -> None:
        """One request of the controller through the sidecar, answered before it returns."""
        assert self.http_port is not None
        token = base64.b64encode(b"heating-controller:demo").decode()
        headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
        for attempt in (1, 2):  # a kept-alive connection the other end closed: once more
            if self._http is None:
                self._http = http.client.HTTPConnection(self.host, self.http_port, timeout=10)
            try:
                self._http.request(method, path, body=body, headers=headers)
                answer = self._http.getresponse()
                answer.read()
            except (OSError, http.client.HTTPException):
                self._http.close()
                self._http = None
                if attempt == 2:
                    self.http_answers[0] = self.http_answers.get(0, 0) + 1
                continue
            self.http_answers[answer.status] = self.http_answers.get(answer.status, 0) + 1
            if answer.will_close:
                self._http.close()
                self._http = None
            return

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        if self._http is not None:
            self._http.close()
        for client in self.clients.values():
            client.disconnect()
        # Each network thread sleeps up to a second between looks: stop them side by side.
        with ThreadPoolExecutor(max_workers=len(self.clients) or 1) as pool:
            list(pool.map(lambda client: client.loop_stop(), self.clients.values()))


def free_port(preferred: int | None = None) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred or 0))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_mosquitto() -> str:
    """The Mosquitto binary, or an error that says how to install it."""
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        raise CommgraphError(
            "the live demo needs Mosquitto: sudo apt-get install -y mosquitto (or run make demo)"
        )
    return found


def start_broker(out_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A private Mosquitto on a free loopback port, logging into ``out_dir``."""
    port = free_port()
    conf = out_dir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    with (out_dir / "mosquitto.log").open("wb") as log_file:
        broker = subprocess.Popen(
            [find_mosquitto(), "-c", str(conf)], stdout=log_file, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return broker, port
        if broker.poll() is not None or time.monotonic() > deadline:
            broker.kill()
            raise CommgraphError(f"Mosquitto did not start (see {out_dir / 'mosquitto.log'})")
        time.sleep(0.05)


def live_config(
    out_dir: Path,
    broker_port: int,
    *,
    pace: Pace,
    api_port: int | None,
    notify_urls: tuple[str, ...],
    rooms_port: int | None = None,
) -> Config:
    """The demo node's configuration (no dashboard when ``api_port`` is None; a sidecar in
    front of the room service on ``rooms_port`` when given)."""
    proxy_port = free_port()
    sections: dict[str, Any] = {
        "node": {"name": "demo-node", "db": "demo.db"},
        "learning": {"duration": pace.learning},
        "modes": {"default": "monitor"},
        "mqtt": {"listen": f"127.0.0.1:{proxy_port}", "upstream": f"127.0.0.1:{broker_port}"},
        "notify": {"urls": list(notify_urls)},
    }
    if rooms_port is not None:
        sections["http"] = {
            "routes": [
                {
                    "listen": f"127.0.0.1:{free_port()}",
                    "upstream": f"127.0.0.1:{rooms_port}",
                    "service": "room-service",
                }
            ]
        }
    if api_port is not None:
        sections["api"] = {"listen": f"127.0.0.1:{api_port}", "credentials": "demo.credentials"}
        sections["notify"]["link_base"] = f"http://127.0.0.1:{api_port}"
    return parse_config(sections, "<demo>", out_dir)
