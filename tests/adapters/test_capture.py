"""Live capture on the loopback interface: real paho clients talk to a real Mosquitto, the
capture is saved as a pcap and read back as topic-level events. Needs CAP_NET_RAW (root)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.client import CallbackAPIVersion, MQTTv5, MQTTv311

from commgraph.adapters.capture import (
    CaptureError,
    CaptureFilter,
    LiveCapture,
    capture,
    live_events,
    save_pcap,
)
from commgraph.adapters.pcap import (
    LinkType,
    PacketDecodeError,
    PacketDecoder,
    read_events,
    read_packets,
)
from commgraph.events import Event
from conftest import HOST, Broker, free_port, wait_until, write_toml

TIMEOUT = 10.0
COMMGRAPH = Path(sys.executable).parent / "commgraph"


def open_capture(capture_filter: CaptureFilter) -> LiveCapture:
    """A capture on ``lo``, or skip the test when the process may not capture."""
    try:
        return LiveCapture("lo", capture_filter)
    except CaptureError as exc:
        if "CAP_NET_RAW" in str(exc):
            pytest.skip(f"live capture needs the CAP_NET_RAW capability: {exc}")
        raise


class Client:
    """A paho 2.x client, connected, with what it received; every wait is bounded."""

    def __init__(self, broker: Broker, client_id: str, protocol: int) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.subscribed = threading.Event()
        self.connected = threading.Event()
        self.paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        self.paho.on_connect = lambda *args: self.connected.set()
        self.paho.on_subscribe = lambda *args: self.subscribed.set()
        self.paho.on_message = lambda _c, _u, message: self.received.append(
            (message.topic, message.payload)
        )
        self.paho.connect(broker.host, broker.port)
        self.paho.loop_start()
        if not self.connected.wait(TIMEOUT):
            self.close()
            pytest.fail(f"{client_id} did not connect within {TIMEOUT} s")

    def subscribe(self, filters: list[tuple[str, int]]) -> None:
        self.paho.subscribe(filters)
        assert self.subscribed.wait(TIMEOUT), "no SUBACK"

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        self.paho.publish(topic, payload, qos=qos).wait_for_publish(TIMEOUT)

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


@pytest.mark.integration
@pytest.mark.parametrize("protocol", [MQTTv311, MQTTv5], ids=["3.1.1", "5"])
def test_capture_of_real_clients_reads_back_as_topic_events(
    mosquitto: Broker, tmp_path: Path, protocol: int
) -> None:
    frames: list[tuple[float, bytes]] = []
    stop = threading.Event()
    with open_capture(CaptureFilter(ports=frozenset({mosquitto.port}))) as live:
        collector = threading.Thread(
            target=lambda: frames.extend(live.collect(60.0, stop=stop.is_set))
        )
        collector.start()
        try:
            panel = Client(mosquitto, "door-panel", protocol)
            lock = Client(mosquitto, "lock-7", protocol)
            panel.subscribe([("site/+/state", 1), ("site/door/events", 0)])
            lock.publish("site/door/state", b"locked", qos=1)
            lock.publish("site/door/events", b"opened", qos=0)
            lock.publish("site/garage/battery", b"87", qos=1)  # nobody listens
            wait_until(lambda: len(panel.received) == 2, TIMEOUT, what="two deliveries")
            panel.close()
            lock.close()
        finally:
            stop.set()
            collector.join(TIMEOUT)
        assert not collector.is_alive()
        stats = live.stats
    # Each loopback packet reached the socket twice; the leaving copy was dropped.
    assert stats.loopback_copies >= stats.frames == len(frames) > 0
    assert len({frame for _, frame in frames}) == len(frames)

    path = tmp_path / "lo.pcap"
    assert save_pcap(path, frames) == len(frames)
    # the broker listens on a free port, not 1883: tell the decoder
    decoder = PacketDecoder(mqtt_ports=frozenset({mosquitto.port}))
    events = [event for _, event in read_events(path, decoder=decoder)]
    assert all(isinstance(event, Event) for event in events), events
    topic_events = Counter(
        (e.src, e.dst, e.relation, e.size)
        for e in events
        if isinstance(e, Event) and e.relation in ("publish", "subscribe", "deliver")
    )
    assert topic_events == {
        ("door-panel", "site/+/state", "subscribe", None): 1,
        ("door-panel", "site/door/events", "subscribe", None): 1,
        ("lock-7", "site/door/state", "publish", 6): 1,
        ("lock-7", "site/door/events", "publish", 6): 1,
        ("lock-7", "site/garage/battery", "publish", 2): 1,
        ("site/door/state", "door-panel", "deliver", 6): 1,
        ("site/door/events", "door-panel", "deliver", 6): 1,
    }
    flows = {(e.src, e.dst, e.relation) for e in events if isinstance(e, Event)} - {
        (src, dst, relation) for src, dst, relation, _ in topic_events
    }
    assert flows == {(HOST, HOST, f"tcp/{mosquitto.port}")}


@pytest.mark.integration
async def test_asyncio_reader_and_live_events() -> None:
    server = socket.socket()
    server.bind((HOST, 0))
    server.listen()
    port = server.getsockname()[1]

    def exchange() -> None:
        with socket.create_connection((HOST, port), timeout=TIMEOUT) as client:
            peer, _ = server.accept()
            with peer:
                client.sendall(b"ping")
                peer.recv(16)

    with server, open_capture(CaptureFilter(ports=frozenset({port}))) as live:
        talk = asyncio.get_running_loop().run_in_executor(None, exchange)
        seen: list[tuple[int, Any]] = []

        async def first_events() -> None:
            async for number, item in live_events(live):
                seen.append((number, item))
                if len(seen) >= 3:  # the handshake
                    return

        await asyncio.wait_for(first_events(), TIMEOUT)
        await asyncio.wait_for(talk, TIMEOUT)
    assert [number for number, _ in seen] == [1, 2, 3]
    assert {item[1:4] for _, item in seen} == {(HOST, HOST, f"tcp/{port}")}


@pytest.mark.integration
def test_capture_and_save_without_a_filter_keeps_other_ports(tmp_path: Path) -> None:
    with open_capture(CaptureFilter()):
        pass  # skips when not allowed
    port = free_port()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sender:
        threading.Timer(0.3, lambda: sender.sendto(b"x" * 10, (HOST, port))).start()
        frames = capture("lo", 1.5, CaptureFilter(hosts=frozenset({HOST})))
    path = tmp_path / "udp.pcap"
    save_pcap(path, frames)
    flows = [item for _, item in read_packets(path) if not isinstance(item, PacketDecodeError)]
    assert (HOST, HOST, f"udp/{port}", 18) in {item[1:] for item in flows}


def test_missing_capability_is_named(tmp_path: Path) -> None:
    """Without CAP_NET_RAW the error says what to do (checked by dropping the capability)."""
    script = (
        "from commgraph.adapters.capture import LiveCapture, CaptureError\n"
        "try:\n    LiveCapture('lo')\nexcept CaptureError as exc:\n    print(exc)\n"
    )
    try:
        done = subprocess.run(
            [
                "setpriv",
                "--bounding-set=-net_raw",
                "--inh-caps=-net_raw",
                sys.executable,
                "-c",
                script,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except FileNotFoundError:
        pytest.skip("setpriv (util-linux) is not installed")
    if done.returncode != 0 and "setpriv" in done.stderr:
        pytest.skip(f"setpriv cannot drop the capability here: {done.stderr.strip()}")
    assert done.stdout.startswith(
        "live capture needs CAP_NET_RAW: run as root or `sudo setcap cap_net_raw+ep /"
    ), done.stdout + done.stderr


def test_unknown_interface_and_bad_filters() -> None:
    with pytest.raises(CaptureError, match="no network interface named 'nope0'"):
        LiveCapture("nope0")
    with pytest.raises(CaptureError, match="host 'lockhub' is not an IP address"):
        CaptureFilter(hosts=frozenset({"lockhub"}))
    with pytest.raises(CaptureError, match="port 70000"):
        CaptureFilter(ports=frozenset({70000}))


def frame4(src: str, dst: str, proto: int, sport: int, dport: int, *, vlan: bool = False) -> bytes:
    l4 = struct.pack("!HH", sport, dport) + bytes(16)
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(l4),
        0,
        0,
        64,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    tag = b"\x81\x00\x00\x64" if vlan else b""
    return bytes(12) + tag + b"\x08\x00" + ip + l4


def test_filter_on_ports_and_hosts() -> None:
    lock = frame4("192.168.1.128", "47.89.226.20", 6, 62304, 1883)
    dns = frame4("192.168.1.128", "192.168.1.1", 17, 1398, 53, vlan=True)
    arp = bytes(12) + b"\x08\x06" + bytes(28)
    v6 = (
        bytes(12)
        + b"\x86\xdd"
        + struct.pack("!IHBB", 0x60000000, 20, 6, 64)
        + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
        + socket.inet_pton(socket.AF_INET6, "2001:db8::2")
        + struct.pack("!HH", 50000, 8883)
        + bytes(16)
    )
    everything = CaptureFilter()
    assert all(everything.matches(f) for f in (lock, dns, arp, v6, b""))
    mqtt_ports = CaptureFilter(ports=frozenset({1883, 8883}))
    assert [mqtt_ports.matches(f) for f in (lock, dns, arp, v6)] == [True, False, False, True]
    router = CaptureFilter(hosts=frozenset({"192.168.1.1"}))
    assert [router.matches(f) for f in (lock, dns, arp, v6)] == [False, True, False, False]
    both = CaptureFilter(ports=frozenset({53}), hosts=frozenset({"192.168.1.128", "2001:db8::2"}))
    assert [both.matches(f) for f in (lock, dns, arp, v6)] == [False, True, False, False]
    raw = lock[14:]
    assert mqtt_ports.matches(raw, LinkType.RAW)
    assert not mqtt_ports.matches(lock[:30])  # too short to tell


def test_a_capture_of_proxied_traffic_gives_the_edges_the_proxy_records(
    tmp_path: Path, start_proxy: Any
) -> None:
    """The same traffic seen twice: by the proxy, and as packets on ``lo`` saved to a pcap
    and replayed. Publish, subscribe and deliver edges must be the same."""
    proxy = start_proxy(mode="monitor", learning="1h")
    live = open_capture(CaptureFilter(ports=frozenset({proxy.port})))
    stop = threading.Event()
    frames: list[Any] = []
    collector = threading.Thread(
        target=lambda: frames.extend(live.collect(30, stop=stop.is_set)), daemon=True
    )
    collector.start()
    clients: list[Client] = []
    try:
        at_proxy = Broker(HOST, proxy.port, proxy.process, proxy.stderr_path)  # type: ignore[arg-type]
        controller = Client(at_proxy, "controller", MQTTv311)
        lamp = Client(at_proxy, "lamp-kitchen", MQTTv5)
        sensor = Client(at_proxy, "sensor-1", MQTTv311)
        clients += [controller, lamp, sensor]
        controller.subscribe([("home/+/temp", 1), ("lamp/+/state", 0)])
        lamp.subscribe([("lamp/kitchen/cmd", 1)])
        for n in range(3):
            sensor.publish("home/kitchen/temp", f"{20 + n}".encode(), qos=1)
        controller.publish("lamp/kitchen/cmd", b"on", qos=1)
        lamp.publish("lamp/kitchen/state", b"on", qos=0)
        wait_until(lambda: len(controller.received) >= 4, TIMEOUT, what="deliveries")
        wait_until(lambda: lamp.received, TIMEOUT, what="the lamp's command")
    finally:
        for client in clients:
            client.close()
        stop.set()
        collector.join(TIMEOUT)
        live.close()
    pcap = tmp_path / "proxied.pcap"
    assert save_pcap(pcap, frames) == len(frames) > 0

    def mqtt_edges(db: Path) -> set[tuple[str, str, str]]:
        done = subprocess.run(
            [str(COMMGRAPH), "--db", str(db), "edges", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return {
            (row["src"], row["relation"], row["dst"])
            for row in json.loads(done.stdout)
            if row["relation"] in ("publish", "subscribe", "deliver")
        }

    wait_until(lambda: len(mqtt_edges(proxy.db)) >= 8, TIMEOUT, what="the proxy's edges")
    replayed = tmp_path / "replayed.db"
    done = subprocess.run(
        [
            str(COMMGRAPH),
            "--db",
            str(replayed),
            "replay",
            str(pcap),
            "--mqtt-port",
            str(proxy.port),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert (
        mqtt_edges(replayed)
        == mqtt_edges(proxy.db)
        == {
            ("controller", "subscribe", "home/+/temp"),
            ("controller", "subscribe", "lamp/+/state"),
            ("lamp-kitchen", "subscribe", "lamp/kitchen/cmd"),
            ("sensor-1", "publish", "home/kitchen/temp"),
            ("home/kitchen/temp", "deliver", "controller"),
            ("controller", "publish", "lamp/kitchen/cmd"),
            ("lamp/kitchen/cmd", "deliver", "lamp-kitchen"),
            ("lamp-kitchen", "publish", "lamp/kitchen/state"),
            ("lamp/kitchen/state", "deliver", "controller"),
        }
    )


def test_commgraph_run_observes_an_interface_without_a_proxy(
    tmp_path: Path, mosquitto: Broker
) -> None:
    open_capture(CaptureFilter()).close()  # skips without the capability
    db = tmp_path / "passive.db"
    config = tmp_path / "site.toml"
    write_toml(
        config,
        {
            "node": {"name": "sniffer", "db": str(db)},
            "learning": {"duration": "1h"},
            "capture": {
                "interface": "lo",
                "ports": [mosquitto.port],
                "mqtt_ports": [mosquitto.port],
            },
        },
    )
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(COMMGRAPH), "run", "--config", str(config)], stdout=out, stderr=out
        )
    clients: list[Client] = []
    try:
        wait_until(lambda: b"capturing on lo" in log.read_bytes(), TIMEOUT, what="the capture")
        sensor = Client(mosquitto, "sensor-9", MQTTv311)
        clients.append(sensor)
        sensor.publish("home/attic/temp", b"19", qos=1)

        def edges() -> set[tuple[str, str, str]]:
            done = subprocess.run(
                [str(COMMGRAPH), "--db", str(db), "edges", "--json"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if done.returncode != 0:
                return set()
            return {(r["src"], r["relation"], r["dst"]) for r in json.loads(done.stdout)}

        found = wait_until(
            lambda: ("sensor-9", "publish", "home/attic/temp") in edges() and edges(),
            TIMEOUT,
            what="the captured publish in the database",
        )
        assert ("127.0.0.1", f"tcp/{mosquitto.port}", "127.0.0.1") in found
    finally:
        for client in clients:
            client.close()
        process.terminate()
        assert process.wait(timeout=TIMEOUT) == 0, log.read_text()
