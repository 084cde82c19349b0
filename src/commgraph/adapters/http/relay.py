"""The HTTP sidecar's sans-I/O part: one caller connection relayed to one upstream connection.

:class:`Relay` holds two h11 state machines, the caller's side (we are the server) and the
upstream's (we are the client). It is fed the bytes each side sent and returns an
:class:`Output`: bytes for each side, and whether to close. It never touches a socket and
never reads a clock. Rules:

- each request head is judged before anything of it reaches the upstream: ``decide`` gets the
  caller (:func:`caller_of`: peer IP, trusted ``X-Forwarded-For``, Basic user, TLS name) and
  the route (:func:`route_name`); a :class:`Refusal` is answered ``403`` with a short JSON body
  naming the alert, and the request's body is dropped;
- bodies are relayed as h11 hands them over, chunk by chunk (never buffered whole), with the
  framing the caller chose (``Content-Length`` or chunked; ``Expect: 100-continue`` goes on to
  the upstream, whose ``100`` comes back);
- a ``101 Switching Protocols`` turns the connection into a byte tunnel (WebSocket);
- a request the caller cannot send right gets the status a server gives (400, 413, 431) and
  that connection closes; nothing else is affected. The upstream failing gets a 502;
- keep-alive: when both sides finished an exchange, both start the next one; an upstream
  that will close ends the caller's connection after its response;
- the fast path: a whole plain HTTP/1.1 request head in one read (no body, no auth,
  forwarding, upgrade or connection headers; checked by one strict pattern) and an answer
  framed by ``Content-Length`` go through as the bytes they are, judged the same way; the
  first thing that is not plain hands the connection to h11 for good, mid-exchange if need be.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import h11

from commgraph.templates import Templates

__all__ = [
    "HTTP_RELATION",
    "MAX_PATH",
    "SERVE_RELATION",
    "Caller",
    "Decide",
    "Output",
    "Refusal",
    "Relay",
    "caller_of",
    "error_response",
    "route_name",
]

HTTP_RELATION = "http"
"""The relation of caller -> route."""
SERVE_RELATION = "serve"
"""The relation of route -> callee (the service behind the sidecar)."""
MAX_PATH = 256
"""Characters of a request path kept in a route name; the rest is cut (a bounded vertex)."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request, as far as the sidecar can tell."""

    ip: str  # the peer, or the client a trusted proxy named in X-Forwarded-For
    user: str | None  # HTTP Basic user (never the password)
    cert_cn: str | None  # TLS client certificate commonName, when the sidecar terminates TLS
    peer: str  # host:port of the TCP peer


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is answered by the sidecar: its edge's label and the alert about it."""

    label: str
    alert: int | None = None


# (caller, route, declared body size) -> None: forward it; a Refusal: answer 403
Decide = Callable[[Caller, str, "int | None"], "Refusal | None"]


@dataclass(slots=True)
class Output:
    """What one call of :class:`Relay` asks the shell to do, in this order: write
    ``to_upstream`` and ``to_client``, then close both connections if ``close``."""

    to_client: list[bytes] = field(default_factory=list)
    to_upstream: list[bytes] = field(default_factory=list)
    close: bool = False
    malformed: bool = False  # the caller broke the protocol (a signal for the guardrails)
    status: int | None = None  # our own answer's status, when we gave one (403, 400...)


_REASONS = {
    400: b"Bad Request",
    403: b"Forbidden",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    502: b"Bad Gateway",
}


def error_response(status: int, error: str) -> bytes:
    """A complete HTTP/1.1 answer of ours that closes the connection: ``{"error": ...}``."""
    body = json.dumps({"error": error}).encode()
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        % (
            status,
            _REASONS.get(status, b"Error"),
            len(body),
        )
        + b"connection: close\r\n\r\n"
        + body
    )


def _refusal_body(refusal: Refusal) -> bytes:
    return json.dumps(
        {"error": "forbidden", "label": refusal.label, "alert": refusal.alert}
    ).encode()


def _forbidden(refusal: Refusal) -> bytes:
    """The whole 403 of a fast request (the connection stays open)."""
    body = _refusal_body(refusal)
    return (
        b"HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
        % len(body)
        + body
    )


def route_name(
    method: str, target: str, callee: str, templates: Templates, *, websocket: bool = False
) -> str:
    """The route vertex of a request: ``GET room-service/rooms/{id}``.

    The callee is part of the name, so that approving a call on one service allows nothing on
    another; the path becomes its template (config route rules, else ids -> ``{id}``); the
    query string is dropped; an upgrade to WebSocket is marked ``(websocket)``.
    """
    path = _path_of(target)
    template = templates.route(f"{method} {path}")
    path = template.partition(" ")[2] or path
    name = f"{method} {callee}{path}"
    return f"{name} (websocket)" if websocket else name


def _path_of(target: str) -> str:
    if target.startswith("/"):
        path = target.split("?", 1)[0].split("#", 1)[0]
    elif target == "*":
        return "/*"
    else:  # absolute form, as sent to a proxy: http://host/path?query
        _, sep, rest = target.partition("://")
        path = "/" + rest.partition("/")[2] if sep else "/"
        path = path.split("?", 1)[0].split("#", 1)[0]
    return path if len(path) <= MAX_PATH else path[:MAX_PATH]


def caller_of(
    headers: Sequence[tuple[bytes, bytes]],
    peer_ip: str,
    peer: str,
    cert_cn: str | None,
    trusted: Sequence[Network] = (),
) -> Caller:
    """The caller of a request from its headers (h11's: lower-case names) and its peer.

    ``X-Forwarded-For`` counts only when the peer is a trusted proxy: the last address in it
    that is not itself a trusted proxy is the caller. Basic credentials name the user.
    """
    ip = peer_ip
    user = None
    forwarded: list[bytes] = []
    for name, value in headers:
        if name == b"authorization":
            user = _basic_user(value)
        elif name == b"x-forwarded-for" and trusted:
            forwarded.append(value)
    if forwarded and _trusted(peer_ip, trusted):
        hops = [h.strip() for v in forwarded for h in v.decode("latin-1").split(",")]
        for hop in reversed(hops):
            try:
                address = ipaddress.ip_address(hop)
            except ValueError:
                break  # garbage in the chain: believe nothing beyond it
            ip = str(address)
            if not _trusted(ip, trusted):
                break
    return Caller(ip, user, cert_cn, peer)


def _trusted(ip: str, trusted: Sequence[Network]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address.version == net.version and address in net for net in trusted)


def _basic_user(value: bytes) -> str | None:
    scheme, _, credentials = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user = decoded.partition(":")[0]
    return user or None


# The fast path: a whole, plain HTTP/1.1 request head without a body, auth or forwarding
# headers, in one read, and an answer framed by Content-Length, relayed as the bytes they are.
# Anything else, or anything not matching exactly, goes through h11 (see Relay._slow).
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_FAST_REQUEST = re.compile(
    rb"(" + _TOKEN + rb") (/[!-~]*) HTTP/1\.1\r\n(?:" + _TOKEN + rb":[ \t]*[!-~]*(?:[ \t]+[!-~]+)*"
    rb"[ \t]*\r\n)+\r\n"
)
_FAST_RESPONSE = re.compile(
    rb"HTTP/1\.1 ([2-5]\d\d) [ \t!-~]*\r\n(?:" + _TOKEN + rb":[ \t]*[!-~]*(?:[ \t]+[!-~]+)*"
    rb"[ \t]*\r\n)+\r\n"
)
_SLOW_REQUEST_HEADERS = (
    b"\r\ncontent-length:",
    b"\r\ntransfer-encoding:",
    b"\r\nexpect:",
    b"\r\nupgrade:",
    b"\r\nconnection:",
    b"\r\nauthorization:",
    b"\r\nx-forwarded-for:",
)
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d{1,15})[ \t]*\r\n")


class Relay:
    """One caller connection and its upstream connection; see the module docstring.

    ``callee`` is the service behind the sidecar, ``host`` the Host header given to requests
    that have none (HTTP/1.0). ``max_head`` bounds a request head (431 beyond),
    ``max_body`` a declared body (413 beyond; 0: no limit).
    """

    def __init__(
        self,
        *,
        callee: str,
        host: bytes,
        decide: Decide,
        templates: Templates,
        peer_ip: str,
        peer: str,
        cert_cn: str | None = None,
        trusted: Sequence[Network] = (),
        max_head: int = 16 * 1024,
        max_body: int = 0,
    ) -> None:
        self.client = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
        self.upstream = h11.Connection(h11.CLIENT)
        self.callee = callee
        self.host = host
        self.decide = decide
        self.templates = templates
        self.peer_ip = peer_ip
        self.peer = peer
        self.cert_cn = cert_cn
        self.trusted = tuple(trusted)
        self.max_head = max_head
        self.max_body = max_body
        self.closed = False  # an output said close: nothing more is relayed
        self.tunnel = False  # after a 101: bytes go through as they are
        self.refusing = False  # the current request is answered by us, its body dropped
        self.responded = False  # the upstream's response to the current request began
        self.body = 0  # bytes of the current request's body so far
        self.requests = 0
        # the fast path: None while h11 relays; b"" idle; the head of the request in flight
        self.fast: bytes | None = b""
        self.fast_left = 0  # bytes of the fast answer's body still to come
        self.fast_answering = False  # the fast answer's head has gone to the caller
        self.fast_early: list[bytes] = []  # what the caller sent while a fast answer went out
        self.route: str | None = None  # the current request's route

    # -- the caller's bytes ------------------------------------------------------------

    def from_client(self, data: bytes) -> Output:
        """The caller sent ``data`` (``b""``: it closed its side). After an output that
        closes, every call returns an empty one that closes."""
        if self.closed:
            return Output(close=True)
        try:
            out = self._from_client(data)
        except h11.LocalProtocolError:  # a state we did not foresee: end it, not the process
            out = Output(close=True)
        self.closed = out.close
        return out

    def from_upstream(self, data: bytes) -> Output:
        """The upstream sent ``data`` (``b""``: it closed its side)."""
        if self.closed:
            return Output(close=True)
        try:
            out = self._from_upstream(data)
        except h11.LocalProtocolError:
            out = Output(close=True)
        self.closed = out.close
        return out

    def _from_client(self, data: bytes) -> Output:
        if self.fast is not None:
            if not self.fast:
                fast = self._fast_request(data)
                if fast is not None:
                    return fast
            elif self.fast_answering:
                # the answer is on its way as bytes: what the caller sends next waits for it
                self.fast_early.append(data)
                if sum(map(len, self.fast_early)) > self.max_head:
                    return Output(close=True)
                return Output()
            self._slow()
        out = Output()
        if self.tunnel:
            if data:
                out.to_upstream.append(data)
            else:
                out.close = True
            return out
        self.client.receive_data(data)
        self._pump_client(out, eof=not data)
        return out

    def _pump_client(self, out: Output, *, eof: bool = False) -> None:
        client = self.client
        while not out.close:
            try:
                event = client.next_event()
            except h11.RemoteProtocolError as exc:
                if eof:  # it went away in the middle of a request: not garbage
                    out.close = True
                else:
                    self._bad_request(out, exc.error_status_hint, "bad request")
                return
            kind = type(event)
            if kind is h11.Data:
                if not self.refusing:
                    self.body += len(event.data)  # type: ignore[union-attr]
                    if self.max_body and self.body > self.max_body:
                        self._bad_request(out, 413, "body too large", malformed=False)
                        return
                    out.to_upstream.append(self.upstream.send(event))  # type: ignore[arg-type]
            elif kind is h11.Request:
                self._request(event, out)  # type: ignore[arg-type]
            elif kind is h11.EndOfMessage:
                if not self.refusing:
                    out.to_upstream.append(self.upstream.send(event))  # type: ignore[arg-type]
                if not self._next_cycle(out):
                    return
            elif kind is h11.ConnectionClosed:
                if client.our_state in (h11.SEND_RESPONSE, h11.SEND_BODY) and not self.refusing:
                    return  # it closed its side after a request: answer it, then close
                out.close = True
                return
            else:  # NEED_DATA, PAUSED
                return

    def _request(self, request: h11.Request, out: Output) -> None:
        self.requests += 1
        self.body = 0
        self.responded = False
        declared: int | None = None
        websocket = False
        has_body = False
        # h11 bounds a head that arrives in pieces; one that came whole is measured here
        head = len(request.method) + len(request.target) + 12
        for name, value in request.headers:
            head += len(name) + len(value) + 4
            if name == b"content-length":
                declared = int(value)  # h11 checked it is a number
                has_body = has_body or declared > 0
            elif name == b"transfer-encoding" or name == b"expect":
                has_body = True
            elif name == b"upgrade" and value.lower() == b"websocket":
                websocket = True
        if head > self.max_head:
            self._bad_request(out, 431, "request head too large")
            return
        if self.max_body and declared is not None and declared > self.max_body:
            self._bad_request(out, 413, "body too large", malformed=False)
            return
        method = request.method.decode("ascii")
        route = route_name(
            method,
            request.target.decode("ascii", "backslashreplace"),
            self.callee,
            self.templates,
            websocket=websocket,
        )
        self.route = route
        caller = caller_of(request.headers, self.peer_ip, self.peer, self.cert_cn, self.trusted)
        refusal = self.decide(caller, route, declared)
        if refusal is not None:
            self.refusing = True
            self._refuse(refusal, out, close=has_body)
            return
        self.refusing = False
        headers: list[tuple[bytes, bytes]] = list(request.headers)
        if request.http_version != b"1.1" and not any(n == b"host" for n, _ in headers):
            headers.append((b"host", self.host))
        out.to_upstream.append(
            self.upstream.send(
                h11.Request(method=request.method, target=request.target, headers=headers)
            )
        )

    def _refuse(self, refusal: Refusal, out: Output, *, close: bool) -> None:
        body = _refusal_body(refusal)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        if close:  # a body may follow that we will not read: end the connection after this
            headers.append((b"connection", b"close"))
        client = self.client
        out.status = 403
        out.to_client.append(
            client.send(h11.Response(status_code=403, headers=headers, reason=b"Forbidden"))
        )
        out.to_client.append(client.send(h11.Data(data=body)))
        out.to_client.append(client.send(h11.EndOfMessage()))
        if client.our_state is h11.MUST_CLOSE:
            out.close = True

    def _bad_request(self, out: Output, status: int, error: str, *, malformed: bool = True) -> None:
        out.malformed = malformed
        out.status = status
        if not self.responded and self.client.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            out.to_client.append(error_response(status, error))
        out.close = True

    # -- the upstream's bytes ----------------------------------------------------------

    def _from_upstream(self, data: bytes) -> Output:
        if self.fast is not None:
            if self.fast:
                out = self._fast_answer(data)
                if out is not None:
                    return out
            self._slow()
        out = Output()
        if self.tunnel:
            if data:
                out.to_client.append(data)
            else:
                out.close = True
            return out
        upstream, client = self.upstream, self.client
        upstream.receive_data(data)
        while not out.close:
            try:
                event = upstream.next_event()
            except h11.RemoteProtocolError:
                self._upstream_failed(out)
                return out
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return out
            kind = type(event)
            if kind is not h11.ConnectionClosed and (
                client.our_state not in (h11.SEND_RESPONSE, h11.SEND_BODY) or self.refusing
            ):
                out.close = True  # an answer to nothing the caller asked
                return out
            if kind is h11.Data or kind is h11.EndOfMessage:
                out.to_client.append(client.send(event))  # type: ignore[arg-type]
                if kind is h11.EndOfMessage and self._next_cycle(out):
                    self._pump_client(out)
            elif kind is h11.Response:
                self.responded = True
                response = h11.Response(
                    status_code=event.status_code,  # type: ignore[union-attr]
                    headers=event.headers,  # type: ignore[union-attr]
                    reason=event.reason,  # type: ignore[union-attr]
                )  # (as HTTP/1.1, whatever the upstream spoke: h11 frames it for the caller)
                out.to_client.append(client.send(response))
            elif kind is h11.InformationalResponse:
                informational = h11.InformationalResponse(
                    status_code=event.status_code,  # type: ignore[union-attr]
                    headers=event.headers,  # type: ignore[union-attr]
                    reason=event.reason,  # type: ignore[union-attr]
                )
                try:
                    out.to_client.append(client.send(informational))
                except h11.LocalProtocolError:
                    continue  # a 100 the caller cannot take now: not needed
                if event.status_code == 101:  # type: ignore[union-attr]
                    self._switch(out)
                    return out
            elif kind is h11.ConnectionClosed:
                self._upstream_failed(out)
                return out
            else:  # NEED_DATA, PAUSED
                return out
        return out

    def _switch(self, out: Output) -> None:
        """Both sides agreed to switch protocols: from now on, a tunnel."""
        self.tunnel = True
        pending, _ = self.upstream.trailing_data
        if pending:
            out.to_client.append(pending)
        early, _ = self.client.trailing_data
        if early:
            out.to_upstream.append(early)

    def _upstream_failed(self, out: Output) -> None:
        awaiting = self.client.our_state is h11.SEND_RESPONSE and not self.refusing
        if awaiting and not self.responded and self.client.their_state is not h11.IDLE:
            out.status = 502
            out.to_client.append(error_response(502, "upstream failed"))
        out.close = True

    # -- the fast path ---------------------------------------------------------------------

    def _fast_request(self, data: bytes) -> Output | None:
        """Relay a plain request head as it came; None: not one, h11 takes it."""
        if len(data) > self.max_head or not data.endswith(b"\r\n\r\n"):
            return None
        found = _FAST_REQUEST.fullmatch(data)
        if found is None:
            return None
        lowered = data.lower()
        if b"\r\nhost:" not in lowered or any(h in lowered for h in _SLOW_REQUEST_HEADERS):
            return None
        method = found.group(1).decode("ascii")
        target = found.group(2).decode("ascii")
        self.requests += 1
        route = route_name(method, target, self.callee, self.templates)
        self.route = route
        refusal = self.decide(Caller(self.peer_ip, None, self.cert_cn, self.peer), route, None)
        out = Output()
        if refusal is not None:
            out.status = 403
            out.to_client.append(_forbidden(refusal))
            return out
        if method == "HEAD":  # its answer has a Content-Length but no body: h11 knows
            self.fast = data
            self._slow()
            self.refusing = False
            return Output(to_upstream=[data])
        self.fast = data
        self.fast_answering = False
        out.to_upstream.append(data)
        return out

    def _fast_answer(self, data: bytes) -> Output | None:
        """Relay the answer to a fast request as it came; None: h11 takes it."""
        if not self.fast_answering:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                return None
            head = data[: end + 4]
            found = _FAST_RESPONSE.fullmatch(head)
            if found is None or found.group(1) in (b"204", b"304"):
                return None
            lowered = head.lower()
            if b"\r\ntransfer-encoding:" in lowered or b"\r\nconnection:" in lowered:
                return None
            lengths = _CONTENT_LENGTH.findall(lowered)
            if len(lengths) != 1 or lowered.count(b"\r\ncontent-length:") != 1:
                return None
            self.fast_answering = True
            self.fast_left = int(lengths[0])
            data_left = len(data) - len(head)
        elif not data:
            return Output(close=True)  # the upstream went away in the middle of its answer
        else:
            data_left = len(data)
        if data_left > self.fast_left:
            return Output(close=True)  # more than the answer: the upstream is confused
        self.fast_left -= data_left
        out = Output(to_client=[data])
        if self.fast_left == 0:
            self.fast = b""
            self.fast_answering = False
            self.route = None
            early, self.fast_early = self.fast_early, []
            for piece in early:  # what the caller sent meanwhile, in order
                more = self._from_client(piece)
                out.to_client.extend(more.to_client)
                out.to_upstream.extend(more.to_upstream)
                out.status = more.status or out.status
                out.malformed = out.malformed or more.malformed
                if more.close:
                    out.close = True
                    break
        return out

    def _slow(self) -> None:
        """Leave the fast path for good: h11 relays from here on. A fast request whose answer
        has not begun is given to both h11 machines, as if they had relayed it."""
        pending, self.fast = self.fast, None
        if not pending or self.fast_answering:
            return  # (an answer half relayed fast cannot be: _fast_answer never gives up then)
        self.client.receive_data(pending)
        request = self.client.next_event()
        assert type(request) is h11.Request
        assert type(self.client.next_event()) is h11.EndOfMessage
        self.upstream.send(
            h11.Request(method=request.method, target=request.target, headers=request.headers)
        )
        self.upstream.send(h11.EndOfMessage())
        self.refusing = False
        self.responded = False

    # -- both ----------------------------------------------------------------------------

    def _next_cycle(self, out: Output) -> bool:
        """After an end of message: start the next exchange if both sides are done; True if
        it started (the caller's next request may be read)."""
        client, upstream = self.client, self.upstream
        if client.our_state is h11.MUST_CLOSE or client.their_state in (h11.MUST_CLOSE, h11.CLOSED):
            if client.our_state in (h11.DONE, h11.MUST_CLOSE):
                out.close = True
            return False
        if client.our_state is not h11.DONE or client.their_state is not h11.DONE:
            return False
        if not self.refusing:
            if upstream.our_state is h11.DONE and upstream.their_state is h11.DONE:
                upstream.start_next_cycle()
            else:  # the upstream closes after this response: so does the caller's connection
                out.close = True
                return False
        client.start_next_cycle()
        self.refusing = False
        self.responded = False
        self.route = None
        return True
