"""MQTT attack generators for the tests: plain functions that do what the common attack tools
do, written here from the protocol (no tool's code), on loopback only.

* :func:`brute_force`: one CONNECT per guessed password, MQTT 3.1.1 and 5, each on its own
  connection (as password guessers do), until the list or the time is used up;
* :func:`publish_flood`: many QoS 0 PUBLISHes to one topic as fast as the socket takes them;
* :func:`topic_storm`: one PUBLISH to each of many distinct topics (mqtt-malaria's storm);
* :func:`malformed_packets` / :func:`fuzz`: valid packets mutated at random, deterministically
  from a seed, into ones every broker must refuse; each is sent on a fresh connection;
* :func:`idle_connections`: TCP connections opened and held without a byte (SlowITe), paced
  by the listener's accept queue so that its backlog is never overrun.

The attacker binds a loopback source address of its own (:data:`ATTACKER`), so that what the
node says about it can be told from what it says about the site. Every loop is bounded in
count and in time; nothing sleeps a fixed time.
"""

from __future__ import annotations

import contextlib
import random
import selectors
import socket
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from commgraph.adapters.mqtt.codec import (
    Connack,
    MQTTDecodeError,
    MQTTDecoder,
    Other,
    Packet,
    PacketType,
    encode_connect,
    encode_disconnect,
    encode_pingreq,
    encode_publish,
)

__all__ = [
    "ATTACKER",
    "FUZZ_KINDS",
    "Fuzzed",
    "IdleConnections",
    "accept_queue",
    "brute_force",
    "first_decode_error",
    "fuzz",
    "idle_connections",
    "malformed_packets",
    "publish_flood",
    "the_alert",
    "topic_storm",
]

ATTACKER = "127.0.0.66"
HOST = "127.0.0.1"
NO_CONNACK = -1  # what brute_force records for a guess the server closed without answering
BATCH = 500  # PUBLISH frames per socket write


def _connect(host: str, port: int, bind: str, timeout: float) -> socket.socket:
    source = (bind, 0) if bind else None
    return socket.create_connection((host, port), timeout=timeout, source_address=source)


def _read_until(
    sock: socket.socket, decoder: MQTTDecoder, wanted: PacketType, deadline: float
) -> Packet | None:
    """Read packets until one of type ``wanted``; None if the server closes first."""
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return None
        except TimeoutError as exc:
            raise TimeoutError(f"no {wanted.name} from the server in time") from exc
        if not data:
            return None
        for packet in decoder.feed(data):
            if type(packet) is Connack and wanted is PacketType.CONNACK:
                return packet
            if type(packet) is Other and packet.type is wanted:
                return packet


# -- password brute force ---------------------------------------------------------------------


def brute_force(
    host: str,
    port: int,
    user: str,
    passwords: Sequence[str],
    *,
    protocol_levels: Sequence[int] = (4, 5),
    bind: str = ATTACKER,
    client_id: str = "guess",
    timeout: float = 30.0,
) -> list[int]:
    """Try each of ``passwords`` for ``user``, on a fresh connection each, alternating the
    protocol levels; returns the CONNACK code of each guess tried (:data:`NO_CONNACK` when
    the server closed without one). A wrong password is refused with 0x86/0x87 (5) or
    0x04/0x05 (3.1.1). Stops when ``timeout`` seconds are used up."""
    deadline = time.monotonic() + timeout
    codes: list[int] = []
    for i, password in enumerate(passwords):
        if time.monotonic() >= deadline:
            break
        level = protocol_levels[i % len(protocol_levels)]
        with _connect(host, port, bind, timeout) as sock:
            sock.sendall(
                encode_connect(
                    f"{client_id}-{i}",
                    protocol_level=level,
                    username=user,
                    password=password.encode(),
                )
            )
            decoder = MQTTDecoder(from_client=False, protocol_level=level)
            connack = _read_until(sock, decoder, PacketType.CONNACK, deadline)
            codes.append(connack.reason_code if type(connack) is Connack else NO_CONNACK)
    return codes


# -- floods -----------------------------------------------------------------------------------


def _publish_all(
    host: str,
    port: int,
    client_id: str,
    frames: Iterator[bytes],
    *,
    bind: str,
    protocol_level: int,
    username: str | None,
    password: str | None,
    timeout: float,
) -> int:
    """CONNECT, send ``frames`` in batches, then a PINGREQ round trip (everything before it
    was read by the server), DISCONNECT. Returns the frames sent before the deadline."""
    deadline = time.monotonic() + timeout
    sent = 0
    with _connect(host, port, bind, timeout) as sock:
        sock.sendall(
            encode_connect(
                client_id,
                protocol_level=protocol_level,
                username=username,
                password=password.encode() if password is not None else None,
            )
        )
        decoder = MQTTDecoder(from_client=False, protocol_level=protocol_level)
        connack = _read_until(sock, decoder, PacketType.CONNACK, deadline)
        if type(connack) is not Connack or connack.reason_code:
            raise ConnectionError(f"{client_id}: not connected ({connack!r})")
        batch: list[bytes] = []
        for frame in frames:
            batch.append(frame)
            if len(batch) >= BATCH:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                sock.sendall(b"".join(batch))
                sent += len(batch)
                batch.clear()
                if time.monotonic() >= deadline:
                    break
        if batch and time.monotonic() < deadline:
            sock.sendall(b"".join(batch))
            sent += len(batch)
        sock.sendall(encode_pingreq())
        if _read_until(sock, decoder, PacketType.PINGRESP, deadline + 10) is None:
            raise ConnectionError(f"{client_id}: closed by the server during the flood")
        sock.sendall(encode_disconnect(v5=protocol_level == 5))
    return sent


def publish_flood(
    host: str,
    port: int,
    *,
    count: int = 10_000,
    topic: str = "t/flood",
    client_id: str = "flooder",
    bind: str = ATTACKER,
    protocol_level: int = 4,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 30.0,
) -> int:
    """``count`` QoS 0 PUBLISHes to ``topic`` as fast as the connection takes them; returns
    how many were sent (all of them unless ``timeout`` ran out)."""
    v5 = protocol_level == 5
    frames = (encode_publish(topic, b"%d" % n, v5=v5) for n in range(count))
    return _publish_all(
        host,
        port,
        client_id,
        frames,
        bind=bind,
        protocol_level=protocol_level,
        username=username,
        password=password,
        timeout=timeout,
    )


def topic_storm(
    host: str,
    port: int,
    *,
    topics: int = 20_000,
    prefix: str = "storm/",
    client_id: str = "stormer",
    bind: str = ATTACKER,
    protocol_level: int = 4,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 30.0,
) -> int:
    """One QoS 0 PUBLISH to each of ``topics`` distinct topics ``{prefix}{n}``; returns how
    many were sent."""
    v5 = protocol_level == 5
    frames = (encode_publish(f"{prefix}{n}", b"1", v5=v5) for n in range(topics))
    return _publish_all(
        host,
        port,
        client_id,
        frames,
        bind=bind,
        protocol_level=protocol_level,
        username=username,
        password=password,
        timeout=timeout,
    )


# -- fuzzing ----------------------------------------------------------------------------------

FUZZ_KINDS = ("remaining-length", "reserved-flags", "bad-utf8", "unknown-type", "truncated")


@dataclass(frozen=True, slots=True)
class Fuzzed:
    """One fuzz case: what is sent on a fresh connection (a valid CONNECT first unless the
    CONNECT itself is the mutated packet), and which mutation made it malformed."""

    kind: str
    protocol_level: int
    data: bytes
    closed: bool | None = None  # with fuzz(): whether the server closed the connection


def _frame(first: int, body: bytes) -> bytes:
    length, out = len(body), bytearray([first])
    while True:
        length, byte = divmod(length, 128)
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out) + body


def _string(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


_BAD_UTF8 = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"a\x00b")


def _mutated(rng: random.Random, kind: str, level: int, client_id: str) -> bytes:
    """A packet broken by ``kind``, with the valid CONNECT before it where it needs one."""
    v5 = level == 5
    connect = encode_connect(client_id, protocol_level=level, keep_alive=30)
    props = b"\x00" if v5 else b""
    topic = f"fuzz/{rng.randrange(1000)}".encode()
    if kind == "remaining-length":
        # a remaining length of five bytes: the fourth still says "more follows"
        first = rng.choice((0x30, 0x62, 0x82, 0xC0))
        length = bytes(rng.randrange(0x80, 0x100) for _ in range(4)) + bytes([rng.randrange(128)])
        return connect + bytes([first]) + length + rng.randbytes(8)
    if kind == "reserved-flags":
        choice = rng.randrange(3)
        if choice == 0:  # SUBSCRIBE's fixed-header flags must be 0010
            flags = rng.choice((0x0, 0x1, 0x3, 0x8, 0xA, 0xF))
            body = (1).to_bytes(2, "big") + props + _string(topic) + b"\x00"
            return connect + _frame(0x80 | flags, body)
        if choice == 1:  # a PUBLISH of QoS 3
            body = _string(topic) + (1).to_bytes(2, "big") + props + b"x"
            return connect + _frame(0x36, body)
        # CONNECT's reserved flag (bit 0) set
        body = connect[2:]  # CONNECT's remaining length is one byte here
        flags_at = 2 + 4 + 1  # "MQTT" with its length, then the protocol level
        return _frame(0x10, body[:flags_at] + bytes([body[flags_at] | 0x01]) + body[flags_at + 1 :])
    if kind == "bad-utf8":
        bad = topic[:5] + rng.choice(_BAD_UTF8) + topic[5:]
        if rng.randrange(2):  # in a PUBLISH's topic
            return connect + _frame(0x30, _string(bad) + props + b"x")
        body = _string(b"MQTT") + bytes([level, 0x02]) + (30).to_bytes(2, "big") + props
        return _frame(0x10, body + _string(bad))  # in the CONNECT's client id
    if kind == "unknown-type":
        # type 0 is reserved in every version; 15 (AUTH) does not exist before 5
        first = rng.choice((0x00, 0x0F)) if v5 else rng.choice((0x00, 0xF0))
        return connect + _frame(first, rng.randbytes(rng.randrange(0, 6)))
    if kind == "truncated":
        # a PUBLISH whose topic length runs past the end of the packet
        declared = len(topic) + rng.randrange(5, 200)
        body = declared.to_bytes(2, "big") + topic
        return connect + _frame(0x30, body)
    raise ValueError(f"unknown fuzz kind {kind!r}")


def malformed_packets(seed: int, count: int = 30) -> list[Fuzzed]:
    """``count`` fuzz cases from ``seed``: the same seed gives the same bytes. The kinds of
    :data:`FUZZ_KINDS` take turns; the protocol level and the mutation's details are drawn."""
    rng = random.Random(seed)
    cases: list[Fuzzed] = []
    for i in range(count):
        kind = FUZZ_KINDS[i % len(FUZZ_KINDS)]
        level = rng.choice((4, 5))
        cases.append(Fuzzed(kind, level, _mutated(rng, kind, level, f"fuzz-{i}")))
    return cases


def first_decode_error(case: Fuzzed) -> MQTTDecodeError | None:
    """What our codec says about a case: its decode error, or None if it accepts it all."""
    decoder = MQTTDecoder(from_client=True)
    try:
        decoder.feed(case.data)
    except MQTTDecodeError as exc:
        return exc
    return None


def fuzz(
    host: str,
    port: int,
    *,
    seed: int = 12,
    count: int = 30,
    bind: str = ATTACKER,
    wait: float = 5.0,
    timeout: float = 60.0,
) -> list[Fuzzed]:
    """Send each of :func:`malformed_packets` on a fresh connection and watch for the server
    closing it (for up to ``wait`` seconds each); returns the cases with ``closed`` set."""
    deadline = time.monotonic() + timeout
    done: list[Fuzzed] = []
    for case in malformed_packets(seed, count):
        if time.monotonic() >= deadline:
            break
        closed = False
        with _connect(host, port, bind, wait) as sock:
            with contextlib.suppress(OSError):
                sock.sendall(case.data)
            until = min(deadline, time.monotonic() + wait)
            while (left := until - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    if not sock.recv(65536):  # a CONNACK or DISCONNECT is read past
                        closed = True
                        break
                except TimeoutError:
                    break
                except OSError:
                    closed = True
                    break
        done.append(Fuzzed(case.kind, case.protocol_level, case.data, closed))
    return done


# -- connections held idle (SlowITe) ----------------------------------------------------------


def accept_queue(port: int) -> int | None:
    """Connections waiting in the accept queue of the IPv4 listener on ``port`` (from
    /proc/net/tcp, where a listening socket's rx_queue is its accept backlog), or None."""
    wanted = f":{port:04X}"
    with Path("/proc/net/tcp").open() as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[3] == "0A" and fields[1].endswith(wanted):
                return int(fields[4].partition(":")[2], 16)
    return None


@dataclass
class IdleConnections:
    """The connections :func:`idle_connections` holds open."""

    sockets: list[socket.socket] = field(default_factory=list)
    failed: int = 0  # connects that did not complete
    seconds: float = 0.0  # how long opening them took

    def still_open(self) -> int:
        """How many the server has not closed (nothing was sent: any read is EOF or reset)."""
        with selectors.DefaultSelector() as selector:
            for sock in self.sockets:
                selector.register(sock, selectors.EVENT_READ)
            gone = len(selector.select(timeout=0))
        return len(self.sockets) - gone


@contextlib.contextmanager
def idle_connections(
    host: str,
    port: int,
    *,
    count: int = 1000,
    bind: str = ATTACKER,
    step: int = 20,
    queue_limit: int = 50,
    timeout: float = 60.0,
) -> Iterator[IdleConnections]:
    """Open ``count`` TCP connections to ``host:port`` and hold them, sending nothing, for
    the ``with`` block; closed at its end. Opened ``step`` at a time: each batch's connects
    complete, then the listener's accept queue (:func:`accept_queue`) must be below
    ``queue_limit`` before the next, so the server's backlog (Mosquitto listens with 100)
    is never overrun. Raises TimeoutError if that takes longer than ``timeout``."""
    held = IdleConnections()
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    try:
        with selectors.DefaultSelector() as selector:
            while len(held.sockets) + held.failed < count:
                batch = min(step, count - len(held.sockets) - held.failed)
                for _ in range(batch):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    if bind:
                        sock.bind((bind, 0))
                    sock.setblocking(False)
                    sock.connect_ex((host, port))
                    selector.register(sock, selectors.EVENT_WRITE)
                while selector.get_map():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(f"connects to {host}:{port} did not complete")
                    for key, _ in selector.select(timeout=min(left, 1.0)):
                        sock = key.fileobj  # type: ignore[assignment]
                        selector.unregister(sock)
                        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                            sock.close()
                            held.failed += 1
                        else:
                            held.sockets.append(sock)
                while (waiting := accept_queue(port)) is not None and waiting >= queue_limit:
                    if time.monotonic() >= deadline:
                        raise TimeoutError(f"{host}:{port} accepts no more ({waiting} waiting)")
                    time.sleep(0.005)
        held.seconds = time.monotonic() - started
        yield held
    finally:
        for sock in held.sockets:
            with contextlib.suppress(OSError):
                sock.close()


# -- what the node said -------------------------------------------------------------------------

MOST_ALERTS = 5  # "one to a few alerts, never thousands"


def the_alert(
    alerts: list[dict[str, Any]], kind: str, about: str, *, allowed: set[str]
) -> dict[str, Any]:
    """The one alert of ``kind`` whose subject is ``about`` among ``alerts`` (the node's
    listing); fails unless there are 1..MOST_ALERTS alerts, all of a kind in ``allowed``
    (``kind`` included), and exactly one of ``kind`` about ``about``."""
    kinds = Counter(a["kind"] for a in alerts)
    assert 1 <= len(alerts) <= MOST_ALERTS, f"{len(alerts)} alerts: {dict(kinds)}"
    assert set(kinds) <= allowed | {kind}, f"unexpected kinds of alert: {dict(kinds)}"
    found = [a for a in alerts if a["kind"] == kind and a["src"] == about]
    assert len(found) == 1, f"{len(found)} {kind} alerts about {about}: {alerts}"
    return found[0]
