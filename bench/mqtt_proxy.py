"""Benchmark of the MQTT proxy (``commgraph run``) against a real Mosquitto, on loopback.

Starts its own Mosquitto and the proxy (learning the whole run, so every edge is allowed:
the realistic steady path), then measures in the same run, alternating direct and proxied:

* RTT: publish one 32-byte QoS 0 message, time until the subscriber has it; one in flight;
  blocks of direct and proxied samples interleave so drift cancels out;
* the same RTT through a bare uvloop byte relay: ``added_over_relay_ratio`` =
  ``added_p50_ms`` / ``relay_added_p50_ms`` (commgraph against the extra hop alone);
* throughput: one publisher pushes QoS 0 messages as fast as it can, a subscriber on the same
  endpoint counts them; msgs/s = messages / (first send -> last receipt), best of two each.

The clients are lean blocking sockets (TCP_NODELAY) speaking MQTT 3.1.1 through commgraph's
codec, so that their own cost does not swamp a 0.1 ms signal. Prints one JSON object.
``--quick`` for a smoke-test sized run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from commgraph.adapters.mqtt.codec import (
    Connack,
    MQTTDecoder,
    Packet,
    Publish,
    Suback,
    encode_connect,
    encode_disconnect,
    encode_publish,
    encode_subscribe,
)

HOST = "127.0.0.1"
TARGETS = {
    "added_p50_ms": 0.15,
    "added_p99_ms": 1.0,
    "throughput_ratio": 0.5,
    "added_over_relay_ratio": 1.25,
}
BASELINE_PAPER = {"added_ms": 6}
RTT_TOPIC = "bench/rtt"
TP_TOPIC = "bench/tp"
RTT_PAYLOAD = 32
TP_PAYLOAD = 64
BATCH = 500  # PUBLISH frames per socket write in the throughput test
# At most this many messages between publisher and subscriber: deep enough to keep every hop
# busy, well below the broker's max_queued_messages (beyond it Mosquitto drops QoS 0).
WINDOW = 20_000
IDLE_S = 1.0  # the publisher is done and nothing arrived for this long: the rest is lost


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_accepting(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before accepting")
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} does not accept on port {port} after {timeout} s")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_us_per_msg(before: float | None, after: float | None, messages: int) -> float | None:
    if before is None or after is None or not messages:
        return None
    return round((after - before) / messages * 1e6, 1)


def stop(proc: subprocess.Popen[bytes], what: str) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log(f"{what} ignored SIGTERM: killing it")
            proc.kill()
            proc.wait()
    return proc.returncode


# -- a lean MQTT 3.1.1 client -------------------------------------------------------------


class Client:
    """One blocking TCP connection with TCP_NODELAY; reads through ``MQTTDecoder``."""

    def __init__(self, port: int, client_id: str, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = MQTTDecoder(from_client=False, protocol_level=4)
        self.pending: list[Packet] = []
        self.sock.sendall(encode_connect(client_id, keep_alive=0))
        connack = self.next_packet()
        if type(connack) is not Connack or connack.reason_code:
            raise RuntimeError(f"{client_id}: no successful CONNACK but {connack!r}")

    def next_packet(self) -> Packet:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            self.pending.extend(self.decoder.feed(data))
        return self.pending.pop(0)

    def subscribe(self, topic: str) -> None:
        self.sock.sendall(encode_subscribe(1, [(topic, 0)], v5=False))
        while True:
            packet = self.next_packet()
            if type(packet) is Suback:
                if packet.reason_codes != (0,):
                    raise RuntimeError(f"SUBSCRIBE {topic} refused: {packet.reason_codes}")
                return

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(encode_disconnect(v5=False))
        self.sock.close()


# -- RTT -----------------------------------------------------------------------------------


@dataclass
class RttPair:
    pub: Client
    sub: Client
    samples: list[float]
    lost: int = 0
    sent: int = 0  # warm-up included

    def sample(self, seq: int, *, keep: bool) -> None:
        payload = seq.to_bytes(8, "big") + bytes(RTT_PAYLOAD - 8)
        frame = encode_publish(RTT_TOPIC, payload, v5=False)
        sub = self.sub
        self.sent += 1
        started = time.perf_counter()
        self.pub.sock.sendall(frame)
        try:
            while True:
                packet = sub.next_packet()
                if type(packet) is Publish and packet.raw.endswith(payload):
                    break
        except TimeoutError:
            self.lost += 1
            return
        elapsed = time.perf_counter() - started
        if keep:
            self.samples.append(elapsed * 1000.0)


def rtt_pair(port: int, name: str) -> RttPair:
    sub = Client(port, f"bench-rtt-sub-{name}")
    sub.subscribe(RTT_TOPIC)
    pub = Client(port, f"bench-rtt-pub-{name}")
    sub.sock.settimeout(1.0)
    return RttPair(pub, sub, [])


def measure_rtt(ports: dict[str, int], samples: int, blocks: int) -> dict[str, RttPair]:
    pairs = {name: rtt_pair(port, name) for name, port in ports.items()}
    names = list(pairs)
    seq = 0
    try:
        for pair in pairs.values():  # warm-up: connections, caches, the engine's first edges
            for _ in range(max(50, samples // 20)):
                seq += 1
                pair.sample(seq, keep=False)
        per_block = -(-samples // blocks)
        for block in range(blocks):
            shift = block % len(names)  # rotate the order: no endpoint always goes first
            for name in names[shift:] + names[:shift]:
                pair = pairs[name]
                for _ in range(min(per_block, samples - len(pair.samples))):
                    seq += 1
                    pair.sample(seq, keep=True)
    finally:
        for pair in pairs.values():
            pair.pub.close()
            pair.sub.close()
    return pairs


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- throughput ----------------------------------------------------------------------------


@dataclass
class TpResult:
    msgs_per_s: float
    received: int
    lost: int


class Counter(threading.Thread):
    """Counts PUBLISH frames on ``sub`` until ``expected``, the deadline, or idleness.

    A header scan only: every frame of the stream is the same 3.1.1 QoS 0 PUBLISH, whose
    remaining length fits one byte; anything else is an error.
    """

    def __init__(self, sub: Client, expected: int, frame_len: int, deadline: float) -> None:
        super().__init__(daemon=True)
        self.sub = sub
        self.expected = expected
        self.frame_len = frame_len
        self.deadline = deadline
        self.count = 0
        self.last = 0.0  # perf_counter of the last receipt
        self.sender_done = 0.0  # monotonic time the publisher finished, 0 while it sends
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._count()
        except BaseException as exc:  # reported by the caller
            self.error = exc

    def _count(self) -> None:
        sock = self.sub.sock
        sock.settimeout(0.05)
        frame_len = self.frame_len
        carry = b""
        count = 0
        idle_since = time.monotonic()
        while count < self.expected:
            now = time.monotonic()
            if now > self.deadline:
                return
            try:
                chunk = sock.recv(1 << 20)
            except TimeoutError:
                if self.sender_done and now - max(idle_since, self.sender_done) > IDLE_S:
                    return
                continue
            if not chunk:
                raise ConnectionError("the server closed the subscriber's connection")
            idle_since = time.monotonic()
            data = carry + chunk if carry else chunk
            end = len(data)
            pos = 0
            while end - pos >= 2:
                total = 2 + data[pos + 1]
                if total != frame_len or data[pos] >> 4 != 3:
                    raise RuntimeError(f"unexpected packet 0x{data[pos]:02x} in the stream")
                if end - pos < total:
                    break
                pos += total
                count += 1
            carry = data[pos:]
            self.count = count
            self.last = time.perf_counter()


def measure_throughput(port: int, name: str, messages: int, deadline_s: float) -> TpResult:
    sub = Client(port, f"bench-tp-sub-{name}")
    sub.subscribe(TP_TOPIC)
    pub = Client(port, f"bench-tp-pub-{name}")
    frame = encode_publish(TP_TOPIC, b"x" * TP_PAYLOAD, v5=False)
    batch = frame * BATCH
    deadline = time.monotonic() + deadline_s
    counter = Counter(sub, messages, len(frame), deadline)
    counter.start()
    started = time.perf_counter()
    sent = 0
    psock = pub.sock
    while sent < messages and time.monotonic() < deadline and counter.is_alive():
        if sent - counter.count >= WINDOW:
            time.sleep(0.0002)
            continue
        n = min(BATCH, messages - sent)
        psock.sendall(batch if n == BATCH else frame * n)
        sent += n
    counter.sender_done = time.monotonic()
    counter.join(max(0.0, deadline - time.monotonic()) + 1.0)
    pub.close()
    sub.close()
    if counter.error is not None:
        raise counter.error
    received = counter.count
    elapsed = counter.last - started
    rate = received / elapsed if received and elapsed > 0 else 0.0
    return TpResult(rate, received, messages - received)


# -- the processes -------------------------------------------------------------------------


def commgraph_command() -> list[str]:
    beside = Path(sys.executable).parent / "commgraph"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("commgraph")
    if found:
        return [found]
    return [sys.executable, "-m", "commgraph.cli"]


def mosquitto_binary() -> str:
    if Path("/usr/sbin/mosquitto").exists():
        return "/usr/sbin/mosquitto"
    found = shutil.which("mosquitto")
    if found is None:
        raise SystemExit("mosquitto is not installed; install it with: apt-get install mosquitto")
    return found


def start_mosquitto(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    conf = tmp / "mosquitto.conf"
    conf.write_text(
        f"listener {port} {HOST}\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "max_queued_messages 100000\n"
        "max_inflight_messages 0\n"
        "log_dest stderr\n"
        "log_type error\n"
        "log_type warning\n"
    )
    return subprocess.Popen(
        [mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def start_proxy(tmp: Path, port: int, upstream: int) -> subprocess.Popen[bytes]:
    site = tmp / "site.toml"
    site.write_text(
        "[node]\n"
        'name = "bench"\n'
        f'db = "{tmp / "bench.db"}"\n'
        "[learning]\n"
        'duration = "1h"\n'
        "[modes]\n"
        'default = "monitor"\n'
        "[mqtt]\n"
        f'listen = "{HOST}:{port}"\n'
        f'upstream = "{HOST}:{upstream}"\n'
    )
    with (tmp / "proxy.log").open("wb") as logfile:
        return subprocess.Popen(
            [*commgraph_command(), "run", "--config", str(site)],
            stdout=subprocess.DEVNULL,
            stderr=logfile,
            cwd=tmp,
        )


# The floor: a relay that forwards bytes and does nothing else, on the same event loop
# (uvloop, TCP_NODELAY). What the proxy adds beyond it is commgraph's own work per message.
RELAY_SOURCE = """
import asyncio, socket, sys
import uvloop
LISTEN, UPSTREAM = int(sys.argv[1]), int(sys.argv[2])
class Side(asyncio.Protocol):
    def __init__(self, peer=None):
        self.peer, self.transport, self.early = peer, None, []
    def connection_made(self, transport):
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    def data_received(self, data):
        if self.peer is None or self.peer.transport is None:
            self.early.append(data)
        else:
            self.peer.transport.write(data)
    def connection_lost(self, exc):
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()
class ClientSide(Side):
    def connection_made(self, transport):
        super().connection_made(transport)
        self.task = asyncio.get_running_loop().create_task(self.open())
    async def open(self):
        loop = asyncio.get_running_loop()
        _, up = await loop.create_connection(lambda: Side(self), "127.0.0.1", UPSTREAM)
        self.peer = up
        for data in self.early:
            up.transport.write(data)
        self.early.clear()
async def main():
    await asyncio.get_running_loop().create_server(ClientSide, "127.0.0.1", LISTEN)
    await asyncio.Event().wait()
uvloop.run(main())
"""


def start_relay(port: int, upstream: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", RELAY_SOURCE, str(port), str(upstream)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller run (smoke test)")
    parser.add_argument("--samples", type=int, help="RTT samples per endpoint")
    parser.add_argument("--messages", type=int, help="messages per throughput run")
    parser.add_argument(
        "--hold", type=float, default=0.0, help="seconds to wait before measuring (to profile)"
    )
    args = parser.parse_args(argv)
    samples = args.samples or (300 if args.quick else 5000)
    messages = args.messages or (20_000 if args.quick else 200_000)
    blocks = 10 if args.quick else 50
    tp_deadline = 4.0 if args.quick else 12.0

    with tempfile.TemporaryDirectory(prefix="commgraph-bench-") as tmpdir:
        tmp = Path(tmpdir)
        broker_port, proxy_port, relay_port = free_port(), free_port(), free_port()
        broker = start_mosquitto(tmp, broker_port)
        proxy: subprocess.Popen[bytes] | None = None
        relay = start_relay(relay_port, broker_port)
        try:
            wait_accepting(broker_port, broker, "mosquitto", 10)
            wait_accepting(relay_port, relay, "the byte relay", 10)
            proxy = start_proxy(tmp, proxy_port, broker_port)
            wait_accepting(proxy_port, proxy, "commgraph run", 15)
            log(f"mosquitto on {broker_port}, proxy (pid {proxy.pid}) on {proxy_port}")
            if args.hold:
                time.sleep(args.hold)

            cpu0 = cpu_seconds(proxy.pid)
            ports = {"direct": broker_port, "relay": relay_port, "proxy": proxy_port}
            pairs = measure_rtt(ports, samples, blocks)
            cpu1 = cpu_seconds(proxy.pid)
            rtt_cpu = cpu_us_per_msg(cpu0, cpu1, pairs["proxy"].sent)
            direct, proxied = pairs["direct"].samples, pairs["proxy"].samples
            relayed = pairs["relay"].samples
            log(f"rtt done: {len(direct)} + {len(proxied)} samples")

            tp: dict[str, list[TpResult]] = {"direct": [], "proxy": []}
            tp_cpu: list[float | None] = []
            for attempt in range(2):
                order = ("direct", "proxy") if attempt == 0 else ("proxy", "direct")
                for name in order:
                    port = broker_port if name == "direct" else proxy_port
                    cpu0 = cpu_seconds(proxy.pid)
                    got = measure_throughput(port, f"{name}-{attempt}", messages, tp_deadline)
                    if name == "proxy":
                        tp_cpu.append(cpu_us_per_msg(cpu0, cpu_seconds(proxy.pid), got.received))
                    tp[name].append(got)
                    log(f"throughput {name}: {got.msgs_per_s:,.0f} msgs/s, lost {got.lost}")
        finally:
            relay.terminate()
            relay.wait(timeout=10)
            proxy_rc = stop(proxy, "commgraph run") if proxy is not None else None
            stop(broker, "mosquitto")
            if proxy_rc not in (0, None):
                log((tmp / "proxy.log").read_text(errors="replace")[-4000:])

    if proxy_rc != 0:
        log(f"commgraph run exited with {proxy_rc}")
        return 1
    best_direct = max(tp["direct"], key=lambda r: r.msgs_per_s)
    best_proxy = max(tp["proxy"], key=lambda r: r.msgs_per_s)
    d50, p50 = statistics.median(direct), statistics.median(proxied)
    d99, p99 = quantile(direct, 0.99), quantile(proxied, 0.99)
    ratio = best_proxy.msgs_per_s / best_direct.msgs_per_s if best_direct.msgs_per_s else 0.0
    relay_added = statistics.median(relayed) - d50
    # what commgraph adds, in units of what the extra hop alone adds (None: no hop cost seen)
    over_relay = round((p50 - d50) / relay_added, 3) if relay_added > 0 else None
    result = {
        "added_over_relay_ratio": over_relay,
        "rtt_direct_p50_ms": round(d50, 4),
        "rtt_proxy_p50_ms": round(p50, 4),
        "rtt_direct_p99_ms": round(d99, 4),
        "rtt_proxy_p99_ms": round(p99, 4),
        "added_p50_ms": round(p50 - d50, 4),
        "added_p99_ms": round(p99 - d99, 4),
        # the floor any asyncio relay pays, and commgraph's own share above it
        "rtt_relay_p50_ms": round(statistics.median(relayed), 4),
        "relay_added_p50_ms": round(statistics.median(relayed) - d50, 4),
        "added_over_relay_p50_ms": round(p50 - statistics.median(relayed), 4),
        "msgs_per_s_direct": round(best_direct.msgs_per_s),
        "msgs_per_s_proxy": round(best_proxy.msgs_per_s),
        "throughput_ratio": round(ratio, 3),
        # CPU time of the proxy process per proxied message (both directions, engine included)
        "proxy_cpu_us_per_msg": {
            "rtt": rtt_cpu,
            "throughput": min((c for c in tp_cpu if c is not None), default=None),
        },
        "rtt_samples": len(proxied),
        "rtt_lost": sum(pair.lost for pair in pairs.values()),
        "throughput_messages": messages,
        "lost": {name: [r.lost for r in runs] for name, runs in tp.items()},
        "payload_bytes": {"rtt": RTT_PAYLOAD, "throughput": TP_PAYLOAD},
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "quick": args.quick,
        "targets": TARGETS,
        "baseline_paper": BASELINE_PAPER,
    }
    result["targets_met"] = {
        "added_p50_ms": result["added_p50_ms"] <= TARGETS["added_p50_ms"],
        "added_p99_ms": result["added_p99_ms"] <= TARGETS["added_p99_ms"],
        "throughput_ratio": result["throughput_ratio"] >= TARGETS["throughput_ratio"],
        "added_over_relay_ratio": over_relay is not None
        and over_relay <= TARGETS["added_over_relay_ratio"],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
