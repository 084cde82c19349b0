"""Passive HTTP: the caller's direction of one captured TCP connection -> the sidecar's events.

:class:`RequestStream` is fed the caller's TCP segments (sequence number and payload, in any
order) and returns, for each request head it completes, the two events the sidecar records
for that request: caller -> route (``http``) and route -> callee (``serve``), with the same
route names (:func:`~commgraph.adapters.http.relay.route_name`), so a capture of traffic and
the sidecar in front of it give the same graph. The caller is the Basic user if the request
names one, else its IP address (after a trusted proxy's ``X-Forwarded-For``), which the
identity rules map as they map the sidecar's callers.

Rules: segments before the next expected byte are trimmed (retransmissions); up to
``max_ahead`` bytes in 32 segments wait beyond a gap; a gap that does not fill, bytes that
are not HTTP (TLS), or a malformed request end the stream's decoding (:attr:`dead` says why).
A WebSocket upgrade ends it too: what follows is not HTTP. No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence

import h11

from commgraph.adapters.http.relay import (
    HTTP_RELATION,
    SERVE_RELATION,
    Network,
    caller_of,
    route_name,
)
from commgraph.events import EventFields
from commgraph.templates import Templates

__all__ = ["RequestStream"]

_SEQ = 0xFFFFFFFF
_HALF = 1 << 31
_AHEAD_SEGMENTS = 32
# The answer we pretend was sent, so that h11 reads the next request of a keep-alive stream.
_ANSWER = h11.Response(status_code=204, headers=[])


class RequestStream:
    """The caller's side of one HTTP connection seen from its SYN; see the module docstring."""

    __slots__ = (
        "ahead",
        "ahead_bytes",
        "callee",
        "caller_ip",
        "dead",
        "expected",
        "max_ahead",
        "parser",
        "templates",
        "trusted",
    )

    def __init__(
        self,
        *,
        caller_ip: str,
        callee: str,
        isn: int,
        templates: Templates,
        trusted: Sequence[Network] = (),
        max_ahead: int = 65_536,
        max_head: int = 16 * 1024,
    ) -> None:
        self.caller_ip = caller_ip
        self.callee = callee
        self.templates = templates
        self.trusted = tuple(trusted)
        self.expected = isn + 1 & _SEQ
        self.max_ahead = max_ahead
        self.ahead: dict[int, bytes] = {}
        self.ahead_bytes = 0
        self.parser = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
        self.dead: str | None = None  # why decoding stopped: gap, not-http, malformed, tunnel

    def segment(self, seq: int, payload: bytes, ts: float) -> list[EventFields]:
        """A segment from the caller (``seq``: its first byte's sequence number)."""
        if self.dead is not None or not payload:
            return []
        offset = seq - self.expected & _SEQ
        if offset >= _HALF:  # begins before the next expected byte
            skip = self.expected - seq & _SEQ
            if skip >= len(payload):
                return []
            payload, offset = payload[skip:], 0
        if offset:
            if (
                self.ahead_bytes + len(payload) > self.max_ahead
                or len(self.ahead) >= _AHEAD_SEGMENTS
            ):
                self.dead = "gap"
                return []
            if len(self.ahead.get(seq, b"")) < len(payload):
                self.ahead_bytes += len(payload) - len(self.ahead.get(seq, b""))
                self.ahead[seq] = payload
            return []
        out = self._feed(payload, ts)
        while self.ahead and self.dead is None:
            following = self._next_ahead()
            if following is None:
                break
            out.extend(self._feed(following, ts))
        return out

    def _next_ahead(self) -> bytes | None:
        for seq, payload in list(self.ahead.items()):
            offset = seq - self.expected & _SEQ
            if offset and offset < _HALF:
                continue
            del self.ahead[seq]
            self.ahead_bytes -= len(payload)
            skip = self.expected - seq & _SEQ
            if skip < len(payload):
                return payload[skip:]
        return None

    def _feed(self, payload: bytes, ts: float) -> list[EventFields]:
        self.expected = self.expected + len(payload) & _SEQ
        parser = self.parser
        if parser.their_state is h11.IDLE and payload[:2] == b"\x16\x03":
            self.dead = "not-http"
            return []
        parser.receive_data(payload)
        out: list[EventFields] = []
        while self.dead is None:
            try:
                event = parser.next_event()
                if event is h11.NEED_DATA:
                    return out
                if event is h11.PAUSED:
                    if parser.their_state is not h11.DONE:  # an upgrade: a tunnel now
                        self.dead = "tunnel"
                        return out
                    parser.send(_ANSWER)
                    parser.send(h11.EndOfMessage())
                    if parser.our_state is not h11.DONE:
                        self.dead = "closed"
                        return out
                    parser.start_next_cycle()
                elif type(event) is h11.Request:
                    out.extend(self._request(event, ts))
                elif type(event) is h11.ConnectionClosed:
                    self.dead = "closed"
            except h11.ProtocolError:
                self.dead = "malformed" if self.dead is None else self.dead
        return out

    def _request(self, request: h11.Request, ts: float) -> list[EventFields]:
        declared = None
        websocket = False
        for name, value in request.headers:
            if name == b"content-length":
                declared = int(value)
            elif name == b"upgrade" and value.lower() == b"websocket":
                websocket = True
        route = route_name(
            request.method.decode("ascii"),
            request.target.decode("ascii", "backslashreplace"),
            self.callee,
            self.templates,
            websocket=websocket,
        )
        caller = caller_of(request.headers, self.caller_ip, self.caller_ip, None, self.trusted)
        src = caller.user or caller.ip
        return [
            (ts, src, route, HTTP_RELATION, declared),
            (ts, route, self.callee, SERVE_RELATION, declared),
        ]
