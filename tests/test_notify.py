"""The notifier against a real ntfy-compatible receiver and a real Apprise JSON webhook.

The receiver is an aiohttp app on a free loopback port; it records every publish and can be
told to answer HTTP 503. Every wait is bounded by a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from commgraph.config import NotifySettings
from commgraph.links import TokenError, read_action_token
from commgraph.notify import AlertNotice, Message, Notifier, describe, local_time, ntfy_target

KEY = b"k" * 32
LINK_BASE = "http://127.0.0.1:9999"
T0 = 1_700_000_000.0
FAST_RETRIES = (0.01, 0.02, 0.04, 0.08)


@dataclass
class Receiver:
    """An ntfy-compatible server (JSON publish to /) plus a webhook at /hook."""

    port: int = 0
    published: list[dict[str, Any]] = field(default_factory=list)
    hooked: list[dict[str, Any]] = field(default_factory=list)
    fail_next: int = 0  # answer 503 to this many requests first
    fail_always: bool = False
    refused: int = 0

    def ntfy_url(self) -> str:
        return f"ntfy://127.0.0.1:{self.port}/commgraph"

    async def _answer(self, request: web.Request, into: list[dict[str, Any]]) -> web.Response:
        if self.fail_always or self.fail_next > 0:
            self.fail_next = max(0, self.fail_next - 1)
            self.refused += 1
            return web.Response(status=503, text="busy")
        into.append(await request.json())
        return web.json_response({"id": str(len(into))})

    async def publish(self, request: web.Request) -> web.Response:
        return await self._answer(request, self.published)

    async def hook(self, request: web.Request) -> web.Response:
        return await self._answer(request, self.hooked)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/", rec.publish)
    app.router.add_post("/hook", rec.hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    rec.port = server.port or 0
    try:
        yield rec
    finally:
        await server.close()


MakeNotifier = Callable[..., Notifier]


@pytest.fixture
async def make_notifier() -> AsyncIterator[MakeNotifier]:
    """Notifiers whose run() task is started here and closed (bounded) at teardown."""
    made: list[tuple[Notifier, asyncio.Task[None]]] = []

    def make(urls: tuple[str, ...], **kwargs: Any) -> Notifier:
        settings = NotifySettings(
            urls=urls,
            per_minute=kwargs.pop("per_minute", 5),
            link_valid_for=kwargs.pop("link_valid_for", 86400.0),
        )
        kwargs.setdefault("retry_delays", FAST_RETRIES)
        kwargs.setdefault("clock", lambda: T0)
        notifier = Notifier(settings, node="node-a", link_key=KEY, link_base=LINK_BASE, **kwargs)
        made.append((notifier, asyncio.create_task(notifier.run())))
        return notifier

    yield make
    for notifier, task in made:
        await notifier.close(timeout=2.0)
        assert task.done()


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def notice(n: int = 1, *, src: str = "thermo-kitchen", dst: str = "valves/kitchen/set",
           relation: str = "publish", kind: str = "new-edge",
           detail: dict[str, Any] | None = None, count: int = 1) -> AlertNotice:  # fmt: skip
    return AlertNotice(id=n, kind=kind, src=src, dst=dst, relation=relation, node="node-a", at=T0,
                       detail=detail or {}, count=count)  # fmt: skip


def token_of(url: str, prefix: str) -> str:
    assert url.startswith(prefix), url
    return url[len(prefix) :]


# -- words ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relation", "src", "dst", "words"),
    [
        ("publish", "thermo-kitchen", "valves/kitchen/set",
         "thermo-kitchen started publishing to valves/kitchen/set, never seen before"),
        ("subscribe", "valve-kitchen", "valves/kitchen/set",
         "valve-kitchen started subscribing to valves/kitchen/set, never seen before"),
        ("deliver", "valves/kitchen/set", "valve-kitchen",
         "valve-kitchen started receiving valves/kitchen/set, never seen before"),
        ("tcp/443", "thermo-kitchen", "cloud.example.com",
         "thermo-kitchen started talking to cloud.example.com over tcp/443, never seen before"),
    ],
)  # fmt: skip
def test_describe_says_it_in_the_owners_words(
    relation: str, src: str, dst: str, words: str
) -> None:
    assert describe(notice(src=src, dst=dst, relation=relation)) == words


def test_describe_says_what_changed_on_a_known_edge() -> None:
    assert describe(notice(kind="rate")) == (
        "thermo-kitchen publishing to valves/kitchen/set: far more often than it learned"
    )
    assert describe(notice(kind="periodicity")).endswith("longer than its usual rhythm allows")
    assert describe(notice(kind="size")).endswith("messages of a size it never learned")
    assert describe(notice(kind="other")).startswith("other anomaly on thermo-kitchen")


def test_describe_names_a_newcomer_and_an_address() -> None:
    newcomer = notice(
        kind="new-service",
        src="intruder-7",
        dst="node-a",
        relation="new-service",
        detail={
            "client_id": "intruder-7",
            "address": "192.168.1.90",
            "examples": ["publish valves/kitchen/set"],
        },
    )
    assert describe(newcomer) == (
        "a new device intruder-7 (192.168.1.90) connected to node-a and published to "
        "valves/kitchen/set"
    )
    guessing = notice(
        kind="auth-failure",
        src="192.168.1.66",
        dst="node-a",
        relation="auth-failure",
        detail={"address": "192.168.1.66", "client_ids": ["admin", "root"]},
        count=40,
    )
    assert describe(guessing) == (
        "192.168.1.66 was refused by the broker 40 times as admin, root: password guessing?"
    )


def test_ntfy_url_maps_like_apprise() -> None:
    assert ntfy_target("ntfy://127.0.0.1:8080/alerts")[:2] == ("http://127.0.0.1:8080", ["alerts"])
    assert ntfy_target("ntfys://ntfy.example.org/a/b")[:2] == (
        "https://ntfy.example.org",
        ["a", "b"],
    )
    assert ntfy_target("ntfy://mytopic")[:2] == ("https://ntfy.sh", ["mytopic"])
    assert ntfy_target("ntfy://tk_abc@h/t")[2] == {"Authorization": "Bearer tk_abc"}


# -- ntfy ----------------------------------------------------------------------------------------


async def test_ntfy_message_names_everything_and_carries_signed_actions(
    receiver: Receiver, make_notifier: MakeNotifier
) -> None:
    notifier = make_notifier((receiver.ntfy_url(),))
    notifier.notify(notice(7))
    await until(lambda: len(receiver.published) == 1)

    [msg] = receiver.published
    assert msg["topic"] == "commgraph"
    assert msg["title"] == "commgraph: new relationship on node-a"
    text = msg["message"]
    assert "thermo-kitchen started publishing to valves/kitchen/set, never seen before" in text
    assert "node-a" in text
    assert local_time(T0) in text
    assert time.strftime("%H:%M:%S", time.localtime(T0)) in text
    assert "Approve:" not in text  # ntfy has buttons instead
    assert msg["tags"] == ["warning"]

    approve, deny, view = msg["actions"]
    for action, label in ((approve, "Approve"), (deny, "Deny")):
        assert action["action"] == "http"
        assert action["label"] == label
        assert action["method"] == "POST"
        assert action["clear"] is True
        token = token_of(action["url"], f"{LINK_BASE}/api/v1/act/")
        decoded = read_action_token(KEY, token, now=T0 + 60)
        assert (decoded.alert, decoded.action) == (7, label.lower())
    assert view["action"] == "view"
    assert view["url"] == f"{LINK_BASE}/alerts"
    await until(lambda: notifier.stats.sent > 0)  # counted once ntfy's answer is read
    assert notifier.stats.sent == 1
    assert notifier.stats.failed == notifier.stats.retried == 0


async def test_link_token_expires_after_link_valid_for(
    receiver: Receiver, make_notifier: MakeNotifier
) -> None:
    make_notifier((receiver.ntfy_url(),), link_valid_for=600.0).notify(notice(3))
    await until(lambda: len(receiver.published) == 1)
    token = token_of(receiver.published[0]["actions"][0]["url"], f"{LINK_BASE}/api/v1/act/")

    assert read_action_token(KEY, token, now=T0 + 599).alert == 3
    with pytest.raises(TokenError, match="expired"):
        read_action_token(KEY, token, now=T0 + 601)


async def test_burst_gives_per_minute_singles_then_one_digest(
    receiver: Receiver, make_notifier: MakeNotifier
) -> None:
    minute = 0.5
    notifier = make_notifier((receiver.ntfy_url(),), per_minute=5, minute=minute)
    started = asyncio.get_running_loop().time()
    services = [f"sensor-{i}" for i in range(1, 13)]
    for i, svc in enumerate(services, start=1):
        notifier.notify(notice(i, src=svc, dst=f"home/{svc}/state"))

    await until(lambda: len(receiver.published) >= 5)
    singles = receiver.published[:5]
    assert [m["title"] for m in singles] == ["commgraph: new relationship on node-a"] * 5
    for svc, msg in zip(services[:5], singles, strict=True):
        assert f"{svc} started publishing to home/{svc}/state" in msg["message"]

    await until(lambda: len(receiver.published) == 6)
    elapsed = asyncio.get_running_loop().time() - started
    assert elapsed >= minute * 0.9  # the digest waited for the end of the minute
    digest = receiver.published[5]
    assert "7 more new relationships on node-a" in digest["title"]
    assert digest["message"].startswith("7 more new relationships on node-a:")
    for svc in services[5:]:
        assert f"{svc} started publishing to home/{svc}/state" in digest["message"]
    for svc in services[:5]:
        assert f"{svc} started" not in digest["message"]
    assert digest["actions"] == [
        {"action": "view", "label": "Review", "url": f"{LINK_BASE}/alerts?state=pending"}
    ]
    await asyncio.sleep(minute)  # nothing else comes
    assert len(receiver.published) == 6
    assert (notifier.stats.sent, notifier.stats.digests) == (6, 1)


async def test_receiver_failing_twice_then_succeeding_is_retried(
    receiver: Receiver, make_notifier: MakeNotifier
) -> None:
    receiver.fail_next = 2
    notifier = make_notifier((receiver.ntfy_url(),))
    notifier.notify(notice(1))
    await until(lambda: notifier.stats.sent == 1)
    assert len(receiver.published) == 1
    assert receiver.refused == 2
    assert (notifier.stats.retried, notifier.stats.failed) == (2, 0)


async def test_dead_receiver_counts_failures_and_never_blocks(
    receiver: Receiver, make_notifier: MakeNotifier
) -> None:
    receiver.fail_always = True
    notifier = make_notifier((receiver.ntfy_url(),))
    began = time.perf_counter()
    for i in range(1, 4):
        notifier.notify(notice(i))
    assert time.perf_counter() - began < 0.05  # notify() only queues

    await until(lambda: notifier.stats.failed == 3)
    assert receiver.refused == 15  # five tries each
    assert notifier.stats.retried == 12
    assert notifier.stats.sent == 0

    receiver.fail_always = False
    notifier.notify(notice(4, src="thermo-bath", dst="valves/bath/set"))
    await until(lambda: notifier.stats.sent == 1)
    assert "thermo-bath" in receiver.published[0]["message"]


async def test_a_failing_service_does_not_hold_up_the_others(
    receiver: Receiver, make_notifier: MakeNotifier
) -> None:
    dead = "ntfy://127.0.0.1:1/nobody"  # port 1: connection refused
    notifier = make_notifier((dead, receiver.ntfy_url()), retry_delays=(1.0, 1.0))
    notifier.notify(notice(1))
    await until(lambda: len(receiver.published) == 1, timeout=0.9)
    assert notifier.stats.failed == 0  # the dead one is still retrying


# -- Apprise -------------------------------------------------------------------------------------


async def test_apprise_json_webhook_gets_the_links_in_the_body(
    receiver: Receiver, make_notifier: MakeNotifier
) -> None:
    notifier = make_notifier((f"json://127.0.0.1:{receiver.port}/hook",))
    notifier.notify(notice(5))
    await until(lambda: len(receiver.hooked) == 1)

    [posted] = receiver.hooked
    assert posted["title"] == "commgraph: new relationship on node-a"
    body = posted["message"]
    assert "thermo-kitchen started publishing to valves/kitchen/set" in body
    lines = body.splitlines()
    approve = next(line for line in lines if line.startswith("Approve: "))
    deny = next(line for line in lines if line.startswith("Deny: "))
    for line, action in ((approve, "approve"), (deny, "deny")):
        token = token_of(line.split(": ", 1)[1], f"{LINK_BASE}/act/")
        decoded = read_action_token(KEY, token, now=T0)
        assert (decoded.alert, decoded.action) == (5, action)
    await until(lambda: notifier.stats.sent > 0)  # counted once Apprise has the answer
    assert notifier.stats.sent == 1


async def test_markup_a_device_chose_reaches_an_html_target_as_text(
    receiver: Receiver, make_notifier: MakeNotifier
) -> None:
    """An Apprise target that renders HTML (as e-mail does; here the JSON webhook told
    ``format=html``) gets a device's topic and client id escaped, never as markup; a
    plain-text target gets them exactly."""
    html = make_notifier((f"json://127.0.0.1:{receiver.port}/hook?format=html",))
    html.notify(notice(6, src="<i>thermo</i>", dst="home/<b>x</b>"))
    await until(lambda: len(receiver.hooked) == 1)
    rendered = receiver.hooked[0]["message"]
    assert "<b>" not in rendered and "<i>" not in rendered
    assert "&lt;i&gt;thermo&lt;/i&gt;" in rendered and "home/&lt;b&gt;x&lt;/b&gt;" in rendered

    text = make_notifier((f"json://127.0.0.1:{receiver.port}/hook",))
    text.notify(notice(7, src="<i>thermo</i>", dst="home/<b>x</b>"))
    await until(lambda: len(receiver.hooked) == 2)
    plain = receiver.hooked[1]["message"]
    assert "<i>thermo</i> started publishing to home/<b>x</b>, never seen before" in plain


async def test_apprise_failure_is_retried_and_counted(
    receiver: Receiver, make_notifier: MakeNotifier
) -> None:
    receiver.fail_always = True
    notifier = make_notifier((f"json://127.0.0.1:{receiver.port}/hook",), retry_delays=(0.01,))
    notifier.notify(notice(1))
    await until(lambda: notifier.stats.failed == 1)
    assert (notifier.stats.retried, notifier.stats.sent) == (1, 0)


# -- queue and shutdown, with a plain async function as the sender -------------------------------


def recording_sender() -> tuple[list[Message], Callable[[str, Message], Awaitable[None]]]:
    got: list[Message] = []

    async def send(url: str, message: Message) -> None:
        got.append(message)

    return got, send


async def test_queue_is_bounded_and_drops_the_oldest() -> None:
    got, send = recording_sender()
    settings = NotifySettings(urls=("test://",), per_minute=100)
    notifier = Notifier(
        settings, node="node-a", link_key=KEY, link_base=LINK_BASE, send=send, queue_size=3
    )
    for i in range(1, 6):
        notifier.notify(notice(i))
    assert notifier.stats.dropped == 2
    await notifier.close(timeout=2.0)  # never started: close() flushes by itself
    assert [m.alerts for m in got] == [(3,), (4,), (5,)]


async def test_close_sends_a_pending_digest_at_once(make_notifier: MakeNotifier) -> None:
    got, send = recording_sender()
    notifier = make_notifier(("test://",), per_minute=1, minute=3600.0, send=send)
    for i in range(1, 4):
        notifier.notify(notice(i))
    await until(lambda: len(got) == 1)
    began = asyncio.get_running_loop().time()
    await notifier.close(timeout=2.0)
    assert asyncio.get_running_loop().time() - began < 1.0
    assert [(m.digest, m.alerts) for m in got] == [(False, (1,)), (True, (2, 3))]
    notifier.notify(notice(9))  # after close: ignored, no error
