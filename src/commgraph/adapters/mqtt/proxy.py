"""The MQTT proxy: sits in front of any broker, tells the engine every relationship, and in
protect mode blocks what is not allowed, as the broker's own ACL would.

This is the asyncio shell around :class:`commgraph.adapters.mqtt.relay.Relay`, which decides
everything about a connection's bytes (identity, blocking and its acknowledgements, SUBACK
merging, topic alias repair, protocol errors, signals). One client connection is two asyncio
protocols, :class:`_ClientSide` and :class:`_BrokerSide`, sharing one relay; the shell holds the
sockets and what needs a clock or an event loop: the broker connection (a few opened at a time),
the CONNECT timeout, the TLS client certificate, and writing what the relay returns.

What the protocol itself says about a client goes to ``signal``: connections opened, their
first PUBLISH or SUBSCRIBE, their close, CONNACKs the broker refused, and protocol errors.
The guardrails count them per address (brute force, fuzzing, connection floods).

Backpressure: when one side's write buffer is full, the other side stops reading. Nothing is
buffered without bound; a packet larger than ``max_packet_size`` closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from commgraph.adapters.mqtt.relay import ClientIdentity, Identify, Output, Relay, RelayStats
from commgraph.config import Address, MQTTSettings
from commgraph.detectors.guardrails import Signal
from commgraph.engine import Verdict

__all__ = ["ClientIdentity", "MQTTProxy", "ProxyStats"]

log = logging.getLogger("commgraph.proxy")

_HIGH_WATER = 256 * 1024
# asyncio's default of 100 pending connections drops SYNs when a whole site reconnects at
# once (after a broker restart), and each dropped SYN costs its client a second.
_BACKLOG = 4096
_UPSTREAM_CONNECTS = 64


# (ts, src, dst, relation, size) -> verdict: the engine's observe_fields, or a test's function
Observe = Callable[[float, str, str, str, "int | None"], Verdict]
# (signal, peer IP, ts, ever active, client if known) -> True: refuse this connection
OnSignal = Callable[[Signal, str, float, bool, "ClientIdentity | None"], bool]


@dataclass(slots=True)
class ProxyStats(RelayStats):
    """Counters for /metrics and the logs (the relays' too); only the event loop writes them."""

    connections_total: int = 0
    connections_open: int = 0
    blocked: int = 0
    engine_errors: int = 0
    upstream_errors: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class MQTTProxy:
    """Listens for MQTT clients and relays each to ``settings.upstream``.

    ``observe`` classifies an event (the engine); ``identify`` turns a connecting client into
    the address its events carry (the daemon binds it to a service). Both are called on the
    event loop and must not block.
    """

    def __init__(
        self,
        settings: MQTTSettings,
        observe: Observe,
        identify: Identify,
        *,
        node: str | None = None,
        clock: Callable[[], float] = time.time,
        release: Callable[[str], None] | None = None,
        signal: OnSignal | None = None,
    ) -> None:
        if settings.upstream is None or (settings.listen is None and settings.tls is None):
            raise ValueError("the proxy needs [mqtt] listen (or tls.listen) and upstream")
        self.settings = settings
        self.observe = observe
        self.identify = identify
        self.node = node
        self.clock = clock
        self.release = release
        self.on_signal = signal
        self.stats = ProxyStats()
        self._servers: list[asyncio.Server] = []
        self._connections: set[_ClientSide] = set()
        # A whole site reconnecting at once would overflow the broker's own accept queue
        # (Mosquitto's is ~100) and cost each dropped SYN a second: connect a few at a time.
        self.upstream_slots = asyncio.Semaphore(_UPSTREAM_CONNECTS)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where the proxy listens (host, port), after :meth:`start`."""
        found = []
        for server in self._servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                found.append((host, port))
        return found

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.settings.listen is not None:
            self._servers.append(
                await loop.create_server(
                    lambda: _ClientSide(self, None),
                    self.settings.listen.host,
                    self.settings.listen.port,
                    reuse_address=True,
                    backlog=_BACKLOG,
                )
            )
        tls = self.settings.tls
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls.cert, tls.key)
            if tls.ca is not None:
                context.load_verify_locations(tls.ca)
                context.verify_mode = (
                    ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
                )
            self._servers.append(
                await loop.create_server(
                    lambda: _ClientSide(self, tls.listen),
                    tls.listen.host,
                    tls.listen.port,
                    ssl=context,
                    reuse_address=True,
                    backlog=_BACKLOG,
                )
            )

    async def close(self) -> None:
        """Stop listening and close both sides of every connection."""
        for server in self._servers:
            server.close()
        for connection in list(self._connections):
            connection.close()
        for server in self._servers:
            await server.wait_closed()
        # Give the transports a turn to flush and report connection_lost.
        for _ in range(3):
            if not self._connections:
                break
            await asyncio.sleep(0.05)

    # -- called by the protocols ---------------------------------------------------------

    def signal(
        self, kind: Signal, ip: str, active: bool = False, client: ClientIdentity | None = None
    ) -> bool:
        """Tell the node about a connection; True: refuse it. Failures never stop traffic."""
        if self.on_signal is None:
            return False
        try:
            return self.on_signal(kind, ip, self.clock(), active, client)
        except Exception:
            self.stats.engine_errors += 1
            if self.stats.engine_errors <= 10 or self.stats.engine_errors % 1000 == 0:
                log.exception("the engine failed on a %s signal from %s", kind.value, ip)
            return False

    def verdict(self, ts: float, src: str, dst: str, relation: str, size: int | None) -> bool:
        """Whether to block this event; the engine failing never stops the traffic."""
        try:
            blocked = self.observe(ts, src, dst, relation, size).block
        except Exception:
            self.stats.engine_errors += 1
            if self.stats.engine_errors <= 10 or self.stats.engine_errors % 1000 == 0:
                log.exception(
                    "the engine failed on %s %s -> %s; %s (failures so far: %d)",
                    relation,
                    src,
                    dst,
                    "forwarding" if self.settings.fail_open else "blocking",
                    self.stats.engine_errors,
                )
            blocked = not self.settings.fail_open
        if blocked:
            self.stats.blocked += 1
        return blocked


class _Side(asyncio.Protocol):
    """What both halves share: a transport, a peer, and backpressure."""

    transport: asyncio.Transport | None = None
    peer: _Side | None = None

    def pause_writing(self) -> None:
        # Our outgoing buffer is full: stop reading what would be written to it.
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def _setup(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=_HIGH_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # small packets must not wait for Nagle's algorithm
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class _ClientSide(_Side):
    """The client's connection to the proxy; owns the upstream half and the :class:`Relay`."""

    def __init__(self, proxy: MQTTProxy, tls_listener: Address | None) -> None:
        self.proxy = proxy
        self.tls = tls_listener is not None
        self.relay: Relay | None = None  # made when the peer is known
        self.broker: _BrokerSide | None = None
        self.peer_name = "?"
        self.ip = "?"
        self.opened = False  # the node was told this connection opened
        self.early: bytes | None = None  # what came before the broker connection was up
        self.timeout: asyncio.TimerHandle | None = None
        self.opening: asyncio.Task[None] | None = None
        self.closed = False

    # -- connection lifecycle --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._setup(transport)
        peer = transport.get_extra_info("peername")
        self.peer_name = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.ip = str(peer[0]) if peer else "?"
        proxy = self.proxy
        self.relay = Relay(
            proxy.verdict,
            proxy.identify,
            peer=self.peer_name,
            cert_cn=_common_name(transport.get_extra_info("peercert")) if self.tls else None,
            max_packet_size=proxy.settings.max_packet_size,
            stats=proxy.stats,
        )
        stats = proxy.stats
        stats.connections_total += 1
        stats.connections_open += 1
        proxy._connections.add(self)
        self.opened = True
        if self._signals(self.relay.connection_opened()):
            # an address the owner denied, or beyond its connection ceiling, in protect mode
            stats.refused += 1
            self.abort()
            return
        loop = asyncio.get_running_loop()
        self.timeout = loop.call_later(proxy.settings.connect_timeout, self._connect_timeout)
        self.opening = loop.create_task(self._open_upstream())

    async def _open_upstream(self) -> None:
        upstream = self.proxy.settings.upstream
        assert upstream is not None
        loop = asyncio.get_running_loop()
        try:
            async with self.proxy.upstream_slots:
                if self.closed:
                    return
                _, broker = await asyncio.wait_for(
                    loop.create_connection(lambda: _BrokerSide(self), upstream.host, upstream.port),
                    self.proxy.settings.connect_timeout,
                )
        except (TimeoutError, OSError) as exc:
            self.proxy.stats.upstream_errors += 1
            log.warning("cannot reach the broker at %s for %s: %s", upstream, self.peer_name, exc)
            self.close()
            return
        if self.closed:
            broker.close()
            return
        self.broker = broker
        self.peer = broker
        if self.early is not None:
            early, self.early = self.early, None
            self.data_received(early)
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def _connect_timeout(self) -> None:
        if self.closed or (self.relay is not None and self.relay.address is not None):
            return
        if self.early is not None:
            # Its bytes wait for our broker connection: not the client's delay. Look again.
            self.timeout = asyncio.get_running_loop().call_later(
                self.proxy.settings.connect_timeout, self._connect_timeout
            )
            return
        log.info("%s sent no CONNECT in time: closing", self.peer_name)
        self.close()

    def close(self) -> None:
        """Close both sides (pending writes are flushed first)."""
        if self.closed:
            return
        self.closed = True
        if self.timeout is not None:
            self.timeout.cancel()
        if self.transport is not None:
            self.transport.close()
        if self.broker is not None:
            self.broker.close()

    def abort(self) -> None:
        """Drop the connection at once (the client sent garbage)."""
        if self.transport is not None:
            self.transport.abort()
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()
        if self in self.proxy._connections:
            self.proxy._connections.discard(self)
            self.proxy.stats.connections_open -= 1
        relay = self.relay
        if relay is None:
            return
        if self.opened:
            self.opened = False
            self._signals(relay.connection_closed())
        if relay.address is not None and self.proxy.release is not None:
            address, relay.address = relay.address, None
            try:
                self.proxy.release(address)
            except Exception:
                log.exception("releasing %r failed", address)

    # -- relaying: the Relay decides, this writes ------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.broker is None:
            # The broker is not connected yet: keep this one read, read no more until it is.
            self.early = data if self.early is None else self.early + data
            if self.transport is not None:
                self.transport.pause_reading()
            return
        relay = self.relay
        assert relay is not None
        out = relay.client_data(data, self.proxy.clock())  # one reading of the clock per read
        if self.timeout is not None and relay.identity is not None:
            self.timeout.cancel()
            self.timeout = None
        self._write(out)

    def from_broker(self, data: bytes) -> None:
        """What the broker sent for this client (called by :class:`_BrokerSide`)."""
        if self.relay is not None:
            self._write(self.relay.broker_data(data, self.proxy.clock()))

    def _write(self, out: Output) -> None:
        if out.to_broker and self.broker is not None:
            data = out.to_broker
            self.broker.write(b"".join(data) if len(data) > 1 else data[0])
        if out.to_client:
            data = out.to_client
            self.write(b"".join(data) if len(data) > 1 else data[0])
        if out.signals:
            self._signals(out)
        close = out.close
        if close is not None:
            log.log(close.level, "%s", close.reason)
            if close.abort:
                self.abort()
            else:
                self.close()

    def _signals(self, out: Output) -> bool:
        """Tell the node the output's signals; True: it refuses the connection."""
        relay = self.relay
        assert relay is not None
        refuse = False
        for kind in out.signals:
            refuse = self.proxy.signal(kind, self.ip, relay.active, relay.identity) or refuse
        return refuse


class _BrokerSide(_Side):
    """The proxy's connection to the broker for one client."""

    def __init__(self, client: _ClientSide) -> None:
        self.client = client
        self.peer = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._setup(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self.client.from_broker(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _common_name(cert: object) -> str | None:
    """The subject commonName of a peer certificate as ``ssl`` reports it."""
    if not isinstance(cert, dict):
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
