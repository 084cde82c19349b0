"""A pcap recorder for tests: a TCP relay in front of a real broker that logs both directions
of every connection with timestamps, and writes them as a classic libpcap file.

The frames are synthetic Ethernet/IPv4/TCP around the bytes that really went through: a
handshake per connection, data segments with running sequence numbers, a FIN from the side
that closed. The broker is written down as ``server`` (port 1883 by default, so the pcap
decoder takes it for MQTT); clients keep their real loopback addresses and ports.

:meth:`Recorder.skip` moves the clock of what follows forward, as if that much time had gone
by: a capture where the attack comes minutes after the site learned, recorded in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Recorder", "recording", "write_pcap"]

OPEN, CLIENT, SERVER, CLIENT_CLOSED, SERVER_CLOSED = range(5)
_SEGMENT = 32_000  # payload bytes per synthetic TCP segment
_SYN, _FIN, _ACK, _PSH = 0x02, 0x01, 0x10, 0x08


@dataclass(frozen=True, slots=True)
class Entry:
    """One thing seen on connection ``conn`` at ``ts``: opened, data, or a side's close."""

    ts: float
    conn: int
    what: int
    data: bytes = b""


@dataclass
class _Connection:
    client: tuple[str, int]
    client_seq: int
    server_seq: int
    closed: bool = False


@dataclass
class Recorder:
    """A running relay on ``host:port`` to ``upstream``; :attr:`entries` grows as it goes."""

    upstream: tuple[str, int]
    host: str = "127.0.0.1"
    port: int = 0
    entries: list[Entry] = field(default_factory=list)
    clients: dict[int, tuple[str, int]] = field(default_factory=dict)
    offset: float = 0.0
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.Server | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._relay, self.host, 0, backlog=4096)
            )
            self.port = int(self._server.sockets[0].getsockname()[1])
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="pcap-recorder", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the recording relay did not start within 10 s")

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        loop.close()

    def skip(self, seconds: float) -> None:
        """What is recorded from now on is stamped ``seconds`` later."""
        with self._lock:
            self.offset += seconds

    def _note(self, conn: int, what: int, data: bytes = b"") -> None:
        with self._lock:
            self.entries.append(Entry(time.time() + self.offset, conn, what, data))

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = len(self.clients)
        peer = writer.get_extra_info("peername")
        self.clients[conn] = (str(peer[0]), int(peer[1]))
        self._note(conn, OPEN)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            self._note(conn, SERVER_CLOSED)
            writer.close()
            return

        async def pump(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, what: int, closed: int
        ) -> None:
            try:
                while data := await source.read(65536):
                    self._note(conn, what, data)
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                self._note(conn, closed)
                sink.close()

        try:
            await asyncio.gather(
                pump(reader, up_writer, CLIENT, CLIENT_CLOSED),
                pump(up_reader, writer, SERVER, SERVER_CLOSED),
            )
        except asyncio.CancelledError:  # the recorder stops: close, and end quietly
            writer.close()
            up_writer.close()

    def write(self, path: Path, server: tuple[str, int] = ("127.0.0.1", 1883)) -> int:
        """The recording so far as a pcap file; returns the number of packets."""
        with self._lock:
            entries = list(self.entries)
        return write_pcap(path, entries, dict(self.clients), server)


@contextlib.contextmanager
def recording(upstream: tuple[str, int]) -> Iterator[Recorder]:
    """A :class:`Recorder` relaying to ``upstream`` for the ``with`` block."""
    recorder = Recorder(upstream)
    recorder.start()
    try:
        yield recorder
    finally:
        recorder.stop()


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _frame(
    src: tuple[str, int], dst: tuple[str, int], seq: int, ack: int, flags: int, payload: bytes
) -> bytes:
    tcp = struct.pack(
        "!HHIIBBHHH", src[1], dst[1], seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, 65535, 0, 0
    )
    total = 20 + len(tcp) + len(payload)
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        total,
        0,
        0x4000,
        64,
        socket.IPPROTO_TCP,
        0,
        socket.inet_aton(src[0]),
        socket.inet_aton(dst[0]),
    )
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    ethernet = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
    return ethernet + ip + tcp + payload


def write_pcap(
    path: Path,
    entries: list[Entry],
    clients: dict[int, tuple[str, int]],
    server: tuple[str, int],
) -> int:
    """Write ``entries`` (in time order) as a little-endian libpcap file, link type
    Ethernet; returns the number of packets written."""
    packets: list[tuple[float, bytes]] = []
    conns: dict[int, _Connection] = {}
    for entry in entries:
        client = clients[entry.conn]
        if entry.what == OPEN:
            state = conns[entry.conn] = _Connection(client, 1000 + entry.conn * 7919, 5000)
            packets.append((entry.ts, _frame(client, server, state.client_seq, 0, _SYN, b"")))
            syn_ack = _frame(
                server, client, state.server_seq, state.client_seq + 1, _SYN | _ACK, b""
            )
            packets.append((entry.ts, syn_ack))
            state.client_seq += 1
            state.server_seq += 1
            ack = _frame(client, server, state.client_seq, state.server_seq, _ACK, b"")
            packets.append((entry.ts, ack))
            continue
        state = conns[entry.conn]
        if state.closed:
            continue
        if entry.what in (CLIENT, SERVER):
            from_client = entry.what == CLIENT
            for at in range(0, len(entry.data), _SEGMENT):
                chunk = entry.data[at : at + _SEGMENT]
                if from_client:
                    frame = _frame(
                        client, server, state.client_seq, state.server_seq, _ACK | _PSH, chunk
                    )
                    state.client_seq += len(chunk)
                else:
                    frame = _frame(
                        server, client, state.server_seq, state.client_seq, _ACK | _PSH, chunk
                    )
                    state.server_seq += len(chunk)
                packets.append((entry.ts, frame))
        else:
            # the first side to close: its FIN, and the other's FIN in answer
            first, second = (client, server) if entry.what == CLIENT_CLOSED else (server, client)
            seqs = (state.client_seq, state.server_seq)
            if entry.what == SERVER_CLOSED:
                seqs = seqs[::-1]
            packets.append((entry.ts, _frame(first, second, seqs[0], seqs[1], _FIN | _ACK, b"")))
            packets.append(
                (entry.ts, _frame(second, first, seqs[1], seqs[0] + 1, _FIN | _ACK, b""))
            )
            state.closed = True
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for ts, frame in packets:
            seconds = int(ts)
            micros = min(999_999, round((ts - seconds) * 1e6))
            out.write(struct.pack("<IIII", seconds, micros, len(frame), len(frame)))
            out.write(frame)
    return len(packets)
