"""The sans-I/O relay, scripted: bytes in from either side, bytes out and decisions, no network."""

from __future__ import annotations

import base64
import ipaddress
import json

import h11
from hypothesis import given, settings
from hypothesis import strategies as st

from commgraph.adapters.http.relay import (
    Caller,
    Output,
    Refusal,
    Relay,
    caller_of,
    route_name,
)
from commgraph.templates import RouteRule, Templates

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class Script:
    """A relay whose decisions are recorded; ``block`` names routes to refuse."""

    def __init__(self, *block: str, **options: int) -> None:
        self.asked: list[tuple[Caller, str, int | None]] = []
        self.block = set(block)
        self.relay = Relay(
            callee="room",
            host=b"127.0.0.1:8000",
            decide=self.decide,
            templates=Templates(routes=[RouteRule(pattern="/rooms/{room}/temperature")]),
            peer_ip="127.0.0.2",
            peer="127.0.0.2:4000",
            trusted=[ipaddress.ip_network("10.0.0.0/8")],
            **options,
        )

    def decide(self, caller: Caller, route: str, size: int | None) -> Refusal | None:
        self.asked.append((caller, route, size))
        return Refusal("pending", 7) if route in self.block else None

    def client(self, data: bytes) -> Output:
        return self.relay.from_client(data)

    def upstream(self, data: bytes) -> Output:
        return self.relay.from_upstream(data)


def _parse_requests(data: bytes) -> list[h11.Request | h11.Data | h11.EndOfMessage]:
    """What an upstream server would read from these bytes."""
    server = h11.Connection(h11.SERVER)
    server.receive_data(data)
    found: list[h11.Request | h11.Data | h11.EndOfMessage] = []
    while True:
        event = server.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return found
        found.append(event)  # type: ignore[arg-type]


def test_a_request_is_judged_then_forwarded_and_the_answer_comes_back() -> None:
    s = Script()
    out = s.client(b"GET /rooms/12/temperature?unit=c HTTP/1.1\r\nhost: x\r\n\r\n")
    assert [route for _, route, _ in s.asked] == ["GET room/rooms/{room}/temperature"]
    assert s.asked[0][0] == Caller("127.0.0.2", None, None, "127.0.0.2:4000")
    request = _parse_requests(b"".join(out.to_upstream))[0]
    assert isinstance(request, h11.Request)
    assert request.target == b"/rooms/12/temperature?unit=c"
    assert not out.to_client and not out.close
    back = s.upstream(OK)
    assert b"".join(back.to_client).endswith(b"\r\n\r\nok") and not back.close


def test_keep_alive_and_pipelined_requests_each_get_their_answer_in_order() -> None:
    s = Script()
    out = s.client(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b/42 HTTP/1.1\r\nhost: x\r\n\r\n")
    assert [r for _, r, _ in s.asked] == ["GET room/a"]  # the second waits for the first answer
    assert len(_parse_requests(b"".join(out.to_upstream))) == 2  # request + end of message
    back = s.upstream(OK)
    assert [r for _, r, _ in s.asked] == ["GET room/a", "GET room/b/{id}"]
    assert _parse_requests(b"".join(back.to_upstream))[0].target == b"/b/42"  # type: ignore[union-attr]
    s.upstream(OK)  # the answer to /b/42
    for _ in range(100):  # many more on the same connection
        out = s.client(b"GET /c HTTP/1.1\r\nhost: x\r\n\r\n")
        assert out.to_upstream and not out.close
        back = s.upstream(OK)
        assert b"".join(back.to_client).endswith(b"ok") and not back.close
    assert s.relay.requests == 102


def test_an_upstream_answering_what_nobody_asked_is_closed() -> None:
    s = Script()
    out = s.upstream(OK)
    assert out.close and out.to_client == []


def test_a_refused_request_gets_403_naming_the_alert_and_never_reaches_upstream() -> None:
    s = Script("POST room/unlock")
    out = s.client(b"POST /unlock HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc")
    assert out.to_upstream == []
    answer = b"".join(out.to_client)
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {
        "error": "forbidden",
        "label": "pending",
        "alert": 7,
    }
    assert out.close  # it had a body: the connection ends after the answer
    assert s.asked[0][2] == 3


def test_a_refused_request_without_body_keeps_the_connection() -> None:
    s = Script("GET room/secret")
    out = s.client(b"GET /secret HTTP/1.1\r\nhost: x\r\n\r\nGET /open HTTP/1.1\r\nhost: x\r\n\r\n")
    assert not out.close
    assert b"".join(out.to_client).startswith(b"HTTP/1.1 403 ")
    assert _parse_requests(b"".join(out.to_upstream))[0].target == b"/open"  # type: ignore[union-attr]


def test_chunked_bodies_are_relayed_chunk_by_chunk() -> None:
    s = Script()
    head = b"POST /up HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    out = s.client(head + b"5\r\nhello\r\n")
    first = b"".join(out.to_upstream)
    assert first.endswith(b"5\r\nhello\r\n")  # the first chunk goes on before the rest came
    out = s.client(b"6\r\n world\r\n0\r\n\r\n")
    events = _parse_requests(first + b"".join(out.to_upstream))
    body = b"".join(bytes(e.data) for e in events if isinstance(e, h11.Data))
    assert body == b"hello world" and isinstance(events[-1], h11.EndOfMessage)
    assert s.asked[0][2] is None  # no declared size


def test_expect_100_continue_goes_to_the_upstream_and_its_100_comes_back() -> None:
    s = Script()
    out = s.client(
        b"PUT /f HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n"
    )
    assert b"expect: 100-continue" in b"".join(out.to_upstream).lower()
    back = s.upstream(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert b"".join(back.to_client).startswith(b"HTTP/1.1 100 ")
    out = s.client(b"data")
    assert b"".join(out.to_upstream) == b"data"
    back = s.upstream(OK)
    assert b"".join(back.to_client).endswith(b"ok")


def test_websocket_upgrade_becomes_a_tunnel_recorded_as_websocket() -> None:
    s = Script()
    s.client(
        b"GET /chat HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    )
    assert s.asked[0][1] == "GET room/chat (websocket)"
    back = s.upstream(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
        b"connection: Upgrade\r\n\r\n\x81\x02hi"
    )
    assert b"".join(back.to_client).endswith(b"\r\n\r\n\x81\x02hi")
    assert s.relay.tunnel
    assert s.client(b"\x81\x85garbage-for-http").to_upstream == [b"\x81\x85garbage-for-http"]


def test_http_10_gets_a_host_upstream_and_the_connection_closes_after_its_answer() -> None:
    s = Script()
    out = s.client(b"GET /old HTTP/1.0\r\n\r\n")
    request = _parse_requests(b"".join(out.to_upstream))[0]
    assert (b"host", b"127.0.0.1:8000") in list(request.headers)  # type: ignore[union-attr]
    back = s.upstream(OK)
    assert b"".join(back.to_client).startswith(b"HTTP/1.1 200") and back.close


def test_bad_requests_get_400_431_413_and_close_that_connection() -> None:
    s = Script()
    out = s.client(b"GET /x HTTP/1.1\r\nhost: x\r\nbad header\r\n\r\n")
    assert b"".join(out.to_client).startswith(b"HTTP/1.1 400 ") and out.close and out.malformed
    s = Script(max_head=1024)
    out = s.client(b"GET /x HTTP/1.1\r\nhost: x\r\nx-long: " + b"a" * 2000)
    assert b"".join(out.to_client).startswith(b"HTTP/1.1 431 ") and out.close
    s = Script(max_body=10)
    out = s.client(b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n\r\n")
    assert b"".join(out.to_client).startswith(b"HTTP/1.1 413 ") and out.close
    assert not out.malformed and out.to_upstream == []


def test_the_upstream_failing_before_answering_is_a_502() -> None:
    s = Script()
    s.client(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n")
    out = s.upstream(b"")
    assert b"".join(out.to_client).startswith(b"HTTP/1.1 502 ") and out.close


def test_routes_drop_the_query_and_name_the_callee() -> None:
    t = Templates(routes=[RouteRule(pattern="/rooms/{room}/temperature")])
    assert route_name("GET", "/rooms/kitchen/temperature?x=1", "room", t) == (
        "GET room/rooms/{room}/temperature"
    )
    assert route_name("GET", "/devices/3f2a9c1e-7b4d-4e2a-9c1e-0123456789ab", "d", t) == (
        "GET d/devices/{id}"
    )
    assert route_name("GET", "http://h:1/a/7?q", "d", t) == "GET d/a/{id}"
    assert route_name("OPTIONS", "*", "d", t) == "OPTIONS d/*"
    assert len(route_name("GET", "/" + "a" * 5000, "d", t)) < 300


def test_callers_by_basic_user_and_forwarded_for_only_from_trusted_proxies() -> None:
    auth = (b"authorization", b"Basic " + base64.b64encode(b"alice:secret"))
    trusted = [ipaddress.ip_network("10.0.0.0/8")]
    assert caller_of([auth], "127.0.0.2", "p", None).user == "alice"
    xff = (b"x-forwarded-for", b"1.2.3.4, 10.0.0.9")
    assert caller_of([xff], "10.0.0.1", "p", None, trusted).ip == "1.2.3.4"
    assert caller_of([xff], "127.0.0.2", "p", None, trusted).ip == "127.0.0.2"  # not trusted
    assert caller_of([(b"x-forwarded-for", b"junk")], "10.0.0.1", "p", None, trusted).ip == (
        "10.0.0.1"
    )


_HEAD_BYTES = st.binary(max_size=300) | st.lists(
    st.sampled_from(
        [
            b"GET",
            b" ",
            b"/x",
            b"HTTP/1.1",
            b"HTTP/1.0",
            b"\r\n",
            b"host: a",
            b":",
            b"\x00",
            b"content-length: 5",
            b"transfer-encoding: chunked",
            b"expect: 100-continue",
            b"upgrade: websocket",
            b"\n",
            b"\t",
            b"\xff",
            b"0\r\n\r\n",
            b"zz\r\n",
        ]
    ),
    max_size=30,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(head=_HEAD_BYTES, split=st.integers(min_value=0, max_value=300))
def test_fuzzed_request_heads_are_parsed_or_answered_with_our_error(
    head: bytes, split: int
) -> None:
    """Never an exception: a request goes on, or a 4xx of ours closes the connection."""
    s = Script()
    outs = [s.client(head[:split]), s.client(head[split:]), s.client(b"")]
    for out in outs:
        answer = b"".join(out.to_client)
        if answer:
            status = int(answer.split(b" ", 2)[1])
            assert status in (400, 413, 431)
            assert out.close


def test_plain_requests_and_answers_go_through_as_the_bytes_they_are() -> None:
    s = Script()
    request = b"GET /rooms/1/temperature HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"
    out = s.client(request)
    assert out.to_upstream == [request] and s.relay.fast == request  # the fast path
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234"
    back = s.upstream(answer)
    assert back.to_client == [answer]
    # the caller pipelines its next request while the answer is half way: it waits
    later = b"GET /b HTTP/1.1\r\nhost: x\r\n\r\n"
    assert s.client(later).to_upstream == []
    back = s.upstream(b"56789")
    assert back.to_client == [b"56789"] and back.to_upstream == [later]
    assert [r for _, r, _ in s.asked] == ["GET room/rooms/{room}/temperature", "GET room/b"]


def test_an_answer_the_fast_path_cannot_frame_goes_to_h11_mid_exchange() -> None:
    s = Script()
    s.client(b"GET /c HTTP/1.1\r\nhost: x\r\n\r\n")
    back = s.upstream(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    assert b"".join(back.to_client).endswith(b"2\r\nok\r\n0\r\n\r\n") and not back.close
    assert s.relay.fast is None  # h11 from here on
    out = s.client(b"GET /d HTTP/1.1\r\nhost: x\r\n\r\n")
    assert _parse_requests(b"".join(out.to_upstream))[0].target == b"/d"  # type: ignore[union-attr]
    head = Script()
    head.client(b"HEAD /e HTTP/1.1\r\nhost: x\r\n\r\n")
    back = head.upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n")  # no body: a HEAD
    assert b"".join(back.to_client).startswith(b"HTTP/1.1 200") and not back.close
    assert head.client(b"GET /f HTTP/1.1\r\nhost: x\r\n\r\n").to_upstream


def test_the_upstream_leaving_in_the_middle_of_a_fast_answer_closes() -> None:
    s = Script()
    s.client(b"GET /g HTTP/1.1\r\nhost: x\r\n\r\n")
    assert not s.upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n01").close
    assert s.upstream(b"").close
    s = Script()
    s.client(b"GET /g HTTP/1.1\r\nhost: x\r\n\r\n")
    assert s.upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n01").close  # too much
    s = Script("GET room/h")
    out = s.client(b"GET /h HTTP/1.1\r\nhost: x\r\n\r\n")
    assert out.to_upstream == [] and out.status == 403 and not out.close
    assert json.loads(b"".join(out.to_client).split(b"\r\n\r\n")[1])["alert"] == 7
