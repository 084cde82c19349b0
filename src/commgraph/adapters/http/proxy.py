"""The HTTP sidecar: listens in front of one service, tells the engine every call, and in
protect mode answers what is not allowed with ``403`` instead of passing it on.

One caller connection is two asyncio protocols, :class:`_CallerSide` and :class:`_UpstreamSide`,
around one sans-I/O :class:`~commgraph.adapters.http.relay.Relay`. Each request is two events:
caller -> route (``http``) and route -> callee (``serve``), so the graph shows caller -> callee
through the route; it is blocked if either is.

What the protocol says about a caller goes to ``signal``: connections opened, their first
request, their close, and bad requests; the guardrails count them per address.

Backpressure: when one side's write buffer is full, the other side stops reading, so a large
body streams through with bounded memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from commgraph.adapters.http.relay import (
    HTTP_RELATION,
    SERVE_RELATION,
    Caller,
    Output,
    Refusal,
    Relay,
    error_response,
)
from commgraph.config import HTTPRoute, HTTPSettings
from commgraph.detectors.guardrails import Signal
from commgraph.engine import Verdict
from commgraph.templates import Templates

__all__ = ["HTTPSidecar", "SidecarStats"]

log = logging.getLogger("commgraph.http")

_HIGH_WATER = 256 * 1024
_BACKLOG = 4096
_UPSTREAM_CONNECTS = 64
_ALERTS_KEPT = 10_000  # (caller, route) -> alert id remembered for the 403 body

# (ts, src, dst, relation, size) -> verdict: the engine's observe_fields, or a test's function
Observe = Callable[[float, str, str, str, "int | None"], Verdict]
# (caller, ts) -> the address its events carry, or None: refuse it (a denied newcomer)
Identify = Callable[[Caller, float], "str | None"]
# (signal, peer IP, ts, ever active) -> True: refuse this connection
OnSignal = Callable[[Signal, str, float, bool], bool]


@dataclass(slots=True)
class SidecarStats:
    """Counters for /metrics and the logs; only the event loop writes them."""

    connections_total: int = 0
    connections_open: int = 0
    requests: int = 0
    blocked: int = 0
    bad_requests: int = 0
    refused_connections: int = 0
    engine_errors: int = 0
    upstream_errors: int = 0


class HTTPSidecar:
    """Listens on ``route.listen`` and relays each caller to ``route.upstream``.

    ``observe`` classifies an event (the engine); ``identify`` turns a caller into the
    address its events carry (the daemon binds it to a service) and ``release`` lets each
    such address go when its connection closes. All are called on the event loop and must
    not block.
    """

    def __init__(
        self,
        route: HTTPRoute,
        settings: HTTPSettings,
        observe: Observe,
        identify: Identify,
        *,
        templates: Templates | None = None,
        clock: Callable[[], float] = time.time,
        release: Callable[[str], None] | None = None,
        signal: OnSignal | None = None,
    ) -> None:
        self.route = route
        self.settings = settings
        self.observe = observe
        self.identify = identify
        self.templates = templates or Templates()
        self.clock = clock
        self.release = release
        self.on_signal = signal
        self.stats = SidecarStats()
        self.host = str(route.upstream).encode("ascii", "replace")
        self._server: asyncio.Server | None = None
        self._connections: set[_CallerSide] = set()
        self._alerts: dict[tuple[str, str], int] = {}
        self.upstream_slots = asyncio.Semaphore(_UPSTREAM_CONNECTS)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where the sidecar listens (host, port), after :meth:`start`."""
        if self._server is None:
            return []
        return [sock.getsockname()[:2] for sock in self._server.sockets]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        context = None
        tls = self.route.tls
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls.cert, tls.key)
            if tls.ca is not None:
                context.load_verify_locations(tls.ca)
                context.verify_mode = (
                    ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
                )
        self._server = await loop.create_server(
            lambda: _CallerSide(self),
            self.route.listen.host,
            self.route.listen.port,
            ssl=context,
            reuse_address=True,
            backlog=_BACKLOG,
        )

    async def close(self) -> None:
        """Stop listening and close both sides of every connection."""
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.close()
        if self._server is not None:
            await self._server.wait_closed()
        for _ in range(3):
            if not self._connections:
                break
            await asyncio.sleep(0.05)

    # -- called by the protocols -----------------------------------------------------

    def signal(self, kind: Signal, ip: str, active: bool = False) -> bool:
        """Tell the node about a connection; True: refuse it. Failures never stop traffic."""
        if self.on_signal is None:
            return False
        try:
            return self.on_signal(kind, ip, self.clock(), active)
        except Exception:
            self._engine_failed(f"a {kind.value} signal from {ip}")
            return False

    def judge(
        self, connection: _CallerSide, caller: Caller, route: str, size: int | None
    ) -> Refusal | None:
        """The two events of one request; a :class:`Refusal` if either is blocked."""
        self.stats.requests += 1
        now = self.clock()
        key = (caller.ip, caller.user, caller.cert_cn)
        address = connection.addresses.get(key)
        try:
            if address is None:
                address = self.identify(caller, now)
                if address is None:
                    self.stats.blocked += 1
                    return Refusal("denied")
                connection.addresses[key] = address
            asked = self.observe(now, address, route, HTTP_RELATION, size)
            served = self.observe(now, route, self.route.service, SERVE_RELATION, size)
        except Exception:
            self._engine_failed(f"{route} from {caller.peer}")
            if self.settings.fail_open:
                return None
            self.stats.blocked += 1
            return Refusal("error")
        for verdict, edge in ((asked, (address, route)), (served, (route, self.route.service))):
            if verdict.alert is not None:
                if len(self._alerts) >= _ALERTS_KEPT:
                    self._alerts.clear()
                self._alerts[edge] = verdict.alert
        if not (asked.block or served.block):
            return None
        self.stats.blocked += 1
        verdict, edge = (
            (asked, (address, route)) if asked.block else (served, (route, self.route.service))
        )
        return Refusal(verdict.label.name.lower(), self._alerts.get(edge))

    def _engine_failed(self, what: str) -> None:
        self.stats.engine_errors += 1
        if self.stats.engine_errors <= 10 or self.stats.engine_errors % 1000 == 0:
            log.exception(
                "the engine failed on %s (failures so far: %d)", what, self.stats.engine_errors
            )


class _Side(asyncio.Protocol):
    transport: asyncio.Transport | None = None
    peer: _Side | None = None

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def _setup(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=_HIGH_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def write(self, chunks: list[bytes]) -> None:
        if chunks and self.transport is not None and not self.transport.is_closing():
            self.transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))


class _CallerSide(_Side):
    """A caller's connection to the sidecar; owns the upstream half."""

    def __init__(self, sidecar: HTTPSidecar) -> None:
        self.sidecar = sidecar
        self.upstream: _UpstreamSide | None = None
        self.relay: Relay | None = None
        self.addresses: dict[tuple[str, str | None, str | None], str] = {}
        self.ip = "?"
        self.opened = False
        self.active = False
        self.closed = False
        self.early: list[bytes] = []  # what came before the upstream connection was up
        self.opening: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._setup(cast(asyncio.Transport, transport))
        sidecar = self.sidecar
        sidecar.stats.connections_total += 1
        sidecar.stats.connections_open += 1
        sidecar._connections.add(self)
        peername = transport.get_extra_info("peername")
        self.ip = str(peername[0]) if peername else "?"
        peer = f"{peername[0]}:{peername[1]}" if peername else "?"
        self.opened = True
        if sidecar.signal(Signal.OPENED, self.ip):
            sidecar.stats.refused_connections += 1
            self.close()
            return
        cert_cn = _common_name(transport.get_extra_info("peercert"))
        settings = sidecar.settings

        def decide(caller: Caller, route: str, size: int | None) -> Refusal | None:
            if not self.active:
                self.active = True
                sidecar.signal(Signal.ACTIVE, self.ip, True)
            return sidecar.judge(self, caller, route, size)

        self.relay = Relay(
            callee=sidecar.route.service,
            host=sidecar.host,
            decide=decide,
            templates=sidecar.templates,
            peer_ip=self.ip,
            peer=peer,
            cert_cn=cert_cn,
            trusted=settings.trusted_proxies,
            max_head=settings.max_head_size,
            max_body=settings.max_body_size,
        )
        self.opening = asyncio.get_running_loop().create_task(self._open_upstream())

    async def _open_upstream(self) -> None:
        sidecar = self.sidecar
        upstream = sidecar.route.upstream
        loop = asyncio.get_running_loop()
        try:
            async with sidecar.upstream_slots:
                if self.closed:
                    return
                _, side = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: _UpstreamSide(self), upstream.host, upstream.port
                    ),
                    sidecar.settings.connect_timeout,
                )
        except (TimeoutError, OSError) as exc:
            sidecar.stats.upstream_errors += 1
            log.warning("cannot reach %s for %s: %s", upstream, self.ip, exc)
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(error_response(502, "upstream unreachable"))
            self.close()
            return
        if self.closed:
            side.close()
            return
        self.upstream = side
        self.peer = side
        early, self.early = self.early, []
        for data in early:
            self.data_received(data)
        if early and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.relay is None or self.closed:
            return
        if self.upstream is None:
            # Not connected to the service yet: keep this read, read no more until it is.
            self.early.append(data)
            if self.transport is not None:
                self.transport.pause_reading()
            return
        self._apply(self.relay.from_client(data))

    def eof_received(self) -> bool | None:
        if self.upstream is None:
            self.early.append(b"")
        elif self.relay is not None and not self.closed:
            self._apply(self.relay.from_client(b""))
        return True  # keep our side open until the answer is written

    def from_upstream(self, data: bytes) -> None:
        if self.relay is None or self.closed:
            return
        self._apply(self.relay.from_upstream(data))

    def _apply(self, out: Output) -> None:
        if out.to_upstream and self.upstream is not None:
            self.upstream.write(out.to_upstream)
        self.write(out.to_client)
        if out.status is not None and out.status != 403:
            if out.malformed:
                self.sidecar.stats.bad_requests += 1
                self.sidecar.signal(Signal.MALFORMED, self.ip, self.active)
            elif out.status == 502:
                self.sidecar.stats.upstream_errors += 1
        if out.close:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        if self.upstream is not None:
            self.upstream.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()
        sidecar = self.sidecar
        if self in sidecar._connections:
            sidecar._connections.discard(self)
            sidecar.stats.connections_open -= 1
        if self.opened:
            self.opened = False
            sidecar.signal(Signal.CLOSED, self.ip, self.active)
        if sidecar.release is not None:
            for address in self.addresses.values():
                try:
                    sidecar.release(address)
                except Exception:
                    log.exception("releasing %r failed", address)
        self.addresses.clear()


class _UpstreamSide(_Side):
    """The sidecar's connection to the service for one caller."""

    def __init__(self, caller: _CallerSide) -> None:
        self.caller = caller
        self.peer = caller

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._setup(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self.caller.from_upstream(data)

    def eof_received(self) -> bool | None:
        self.caller.from_upstream(b"")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.caller.closed:
            self.caller.from_upstream(b"")
            self.caller.close()

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
