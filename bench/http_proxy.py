"""Benchmark of the HTTP sidecar (``commgraph run`` with ``[[http.routes]]``) on loopback.

Starts its own upstream (aiohttp on uvloop, a small JSON answer), the node with one sidecar in
front of it (monitor mode, learning the whole run: every request is allowed, the realistic
steady path), and a bare byte relay (uvloop, TCP_NODELAY: the floor any asyncio relay pays),
then measures in the same run, against the same upstream:

* latency: small GETs on one keep-alive connection, one in flight; blocks of direct, relayed
  and sidecar samples interleave so drift cancels out; added = through - direct;
* throughput: ``--connections`` keep-alive connections, each one request in flight, for a
  fixed time; requests/s direct and through the sidecar, and their ratio.

Prints one JSON object. ``--quick`` for a smoke-test sized run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mqtt_proxy import start_relay  # the same bare relay as the MQTT bench

HOST = "127.0.0.1"
TARGETS = {"added_p50_ms": 0.3, "added_p99_ms": 1.5, "throughput_ratio": 0.5}
BASELINE = {"envoy_istio_sidecar_p90_ms": 2.65}
REQUEST = b"GET /rooms/12/temperature HTTP/1.1\r\nhost: bench\r\n\r\n"

UPSTREAM_SOURCE = """
import sys
import uvloop
from aiohttp import web
async def temperature(request):
    return web.Response(body=b'{"celsius": 21.5}', content_type="application/json")
app = web.Application()
app.router.add_get("/rooms/{room}/temperature", temperature)
uvloop.install()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None,
            backlog=1024)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_accepting(port: int, process: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {port} within {timeout:g} s")


class Client:
    """One blocking keep-alive connection; ``get`` sends a request and reads its answer."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def get(self) -> None:
        self.sock.sendall(REQUEST)
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end >= 0:
                head = self.buffer[:head_end].lower()
                start = head.find(b"content-length:")
                length = int(head[start + 15 : head.find(b"\r\n", start)].strip())
                end = head_end + 4 + length
                if len(self.buffer) >= end:
                    if not head.startswith(b"http/1.1 200"):
                        raise SystemExit(f"unexpected answer: {self.buffer[:80]!r}")
                    self.buffer = self.buffer[end:]
                    return
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SystemExit("the server closed the connection")
            self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def latencies(ports: dict[str, int], samples: int, blocks: int) -> dict[str, list[float]]:
    clients = {name: Client(port) for name, port in ports.items()}
    found: dict[str, list[float]] = {name: [] for name in ports}
    per_block = max(1, samples // blocks)
    try:
        for client in clients.values():  # warm up: first request, caches, connections
            for _ in range(50):
                client.get()
        for _ in range(blocks):
            for name, client in clients.items():
                times = found[name]
                for _ in range(per_block):
                    start = time.perf_counter()
                    client.get()
                    times.append((time.perf_counter() - start) * 1000.0)
    finally:
        for client in clients.values():
            client.close()
    return found


async def _throughput(port: int, connections: int, seconds: float) -> float:
    done = 0
    stop = time.monotonic() + seconds

    async def one() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while time.monotonic() < stop:
                writer.write(REQUEST)
                head = await reader.readuntil(b"\r\n\r\n")
                low = head.lower()
                start = low.find(b"content-length:")
                await reader.readexactly(int(low[start + 15 : low.find(b"\r\n", start)]))
                done += 1
        finally:
            writer.close()

    began = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(connections))), seconds + 30)
    return done / (time.monotonic() - began)


def throughput(port: int, connections: int, seconds: float) -> float:
    return asyncio.run(_throughput(port, connections, seconds))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller run (smoke test)")
    parser.add_argument("--samples", type=int, help="latency samples per endpoint")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, help="seconds per throughput run")
    args = parser.parse_args(argv)
    samples = args.samples or (600 if args.quick else 6000)
    blocks = 10 if args.quick else 60
    seconds = args.seconds or (1.0 if args.quick else 4.0)

    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="commgraph-bench-") as tmpdir:
        tmp = Path(tmpdir)
        upstream_port, sidecar_port, relay_port = free_port(), free_port(), free_port()
        try:
            upstream = subprocess.Popen(
                [sys.executable, "-c", UPSTREAM_SOURCE, str(upstream_port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            processes.append(upstream)
            wait_accepting(upstream_port, upstream, "the upstream", 20)
            relay = start_relay(relay_port, upstream_port)
            processes.append(relay)
            config = tmp / "site.toml"
            config.write_text(
                f'[node]\nname = "bench"\ndb = "{tmp / "bench.db"}"\n'
                '[learning]\nduration = "1d"\n[modes]\ndefault = "monitor"\n'
                # a bench client is a flood by design: the ceiling would answer it alone
                "[guardrails]\nmessages_per_second = 0\n"
                f'[[http.routes]]\nlisten = "{HOST}:{sidecar_port}"\n'
                f'upstream = "{HOST}:{upstream_port}"\nservice = "rooms"\n'
            )
            commgraph = Path(sys.executable).parent / "commgraph"
            with (tmp / "node.log").open("wb") as log:
                node = subprocess.Popen(
                    [str(commgraph), "run", "--config", str(config)],
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    env={**os.environ, "COMMGRAPH_DB": str(tmp / "bench.db")},
                )
            processes.append(node)
            wait_accepting(relay_port, relay, "the byte relay", 10)
            wait_accepting(sidecar_port, node, "the sidecar", 30)
            ports = {"direct": upstream_port, "relay": relay_port, "sidecar": sidecar_port}
            found = latencies(ports, samples, blocks)
            rps_direct = max(throughput(upstream_port, args.connections, seconds) for _ in "ab")
            rps_sidecar = max(throughput(sidecar_port, args.connections, seconds) for _ in "ab")
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
    direct, relayed, through = found["direct"], found["relay"], found["sidecar"]
    d50 = statistics.median(direct)
    result = {
        "rtt_direct_p50_ms": round(d50, 4),
        "rtt_relay_p50_ms": round(statistics.median(relayed), 4),
        "rtt_sidecar_p50_ms": round(statistics.median(through), 4),
        "rtt_sidecar_p99_ms": round(percentile(through, 0.99), 4),
        "added_p50_ms": round(statistics.median(through) - d50, 4),
        "added_p99_ms": round(percentile(through, 0.99) - percentile(direct, 0.99), 4),
        "relay_added_p50_ms": round(statistics.median(relayed) - d50, 4),
        "added_over_relay_p50_ms": round(
            statistics.median(through) - statistics.median(relayed), 4
        ),
        "requests_per_s_direct": round(rps_direct, 1),
        "requests_per_s_sidecar": round(rps_sidecar, 1),
        "throughput_ratio": round(rps_sidecar / rps_direct, 3),
        "samples_per_endpoint": len(through),
        "connections": args.connections,
        "targets": TARGETS,
        "baseline": BASELINE,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
