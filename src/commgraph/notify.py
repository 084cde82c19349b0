"""Telling the owner about new alerts on the phone, with Approve / Deny links, and about
what commgraph decided on its own (a service promoted to protect: :class:`ModeNotice`).

The engine calls :meth:`Notifier.notify` on the event loop; it only queues. A background task,
:meth:`Notifier.run`, turns queued alerts into messages and hands each message to a sender
per configured URL. The rules:

- one message per alert while fewer than ``per_minute`` went out in the last minute; beyond
  that, alerts are collected and sent as ONE digest once the oldest message leaves the minute;
- a failed delivery (exception, HTTP >= 400, Apprise saying no) is retried after each delay
  of ``retry_delays``, then counted as failed and logged; deliveries run as their own tasks,
  so a dead service never holds up the others;
- the queue is bounded: beyond ``queue_size`` waiting alerts, the oldest is dropped and counted.

Like every addon-like part, notifying may fail without stopping observation: nothing here
raises into the caller.

Senders are plain async functions ``send(url, message)`` that raise on failure. ``ntfy://``
and ``ntfys://`` URLs are published directly as ntfy JSON, because ntfy's action buttons are
per message here (each carries a signed token), while Apprise's ntfy plugin only takes one
fixed ``actions=`` string per URL. Every other URL goes through Apprise with the links in the
body, as plain text: Apprise escapes it for targets that render HTML or Markdown, so a
device's topic name is never markup there.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aiohttp
import apprise

from commgraph.alerts import describe as alert_words
from commgraph.alerts import mode_words
from commgraph.config import NotifySettings
from commgraph.errors import CommgraphError, DeliveryError
from commgraph.links import make_action_token

__all__ = [
    "AlertNotice",
    "Button",
    "DeliveryError",
    "Message",
    "ModeNotice",
    "Notice",
    "Notifier",
    "NotifyStats",
    "Sender",
    "describe",
    "send_apprise",
    "send_message",
    "send_ntfy",
]

log = logging.getLogger(__name__)

NTFY_SCHEMES = ("ntfy", "ntfys")
NTFY_CLOUD = "https://ntfy.sh"
RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)  # five tries in all
QUEUE_SIZE = 1000
HTTP_TIMEOUT = 15.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertNotice:
    """What the owner is told about one alert; ``src``/``dst``/``relation`` name its edge."""

    id: int
    kind: str
    src: str
    dst: str
    relation: str
    node: str
    at: float
    detail: Mapping[str, Any] = field(default_factory=dict)  # alerts about a service/address
    count: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ModeNotice:
    """A service's mode changed without the owner (``by`` commgraph): told, not asked."""

    service: str
    mode: str
    by: str
    reason: str
    node: str
    at: float


Notice = AlertNotice | ModeNotice


@dataclass(frozen=True, slots=True, kw_only=True)
class Button:
    """A link in a message: ``page`` opens in a browser, ``post`` is a one-tap API call."""

    label: str
    page: str
    post: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One notification as every sender sees it; ``alerts`` are the ids it covers."""

    title: str
    text: str
    buttons: tuple[Button, ...] = ()
    alerts: tuple[int, ...] = ()
    digest: bool = False

    def body_with_links(self) -> str:
        """The text followed by one ``Label: link`` line per button, for plain services."""
        lines = [self.text, ""] if self.buttons else [self.text]
        lines += [f"{b.label}: {b.page}" for b in self.buttons]
        return "\n".join(lines)


Sender = Callable[[str, Message], Awaitable[None]]


@dataclass(slots=True)
class NotifyStats:
    """Counters since start; ``sent``/``failed``/``retried`` count deliveries (message x URL)."""

    sent: int = 0
    failed: int = 0
    retried: int = 0
    digests: int = 0
    dropped: int = 0


def describe(notice: Notice) -> str:
    """The alert (or the decision) in the owner's words (the wording lives in ``alerts``)."""
    if isinstance(notice, ModeNotice):
        said = mode_words(notice.service, notice.mode)
        return f"{said} ({notice.reason})" if notice.reason else said
    return alert_words(
        notice.kind, notice.src, notice.dst, notice.relation, dict(notice.detail), notice.count
    )


def local_time(at: float) -> str:
    """A timestamp as the owner reads it: local date, time and zone."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(at))


def is_ntfy(url: str) -> bool:
    return url.split("://", 1)[0].lower() in NTFY_SCHEMES


def redact(url: str) -> str:
    """A URL fit for logs: scheme and host only (paths and users may hold secrets)."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname or '?'}"
    except ValueError:
        return "<unreadable URL>"


# -- senders -----------------------------------------------------------------------------------


def ntfy_target(url: str) -> tuple[str, list[str], dict[str, str]]:
    """``ntfy[s]://[user:pass@|token@]host[:port]/topic[/topic]`` -> (server, topics, headers).

    ``ntfy://`` is plain HTTP and ``ntfys://`` HTTPS, as in Apprise; ``ntfy://topic`` alone
    means the topic on ntfy.sh.
    """
    parts = urlsplit(url)
    topics = [unquote(t) for t in parts.path.split("/") if t]
    headers: dict[str, str] = {}
    if not topics:
        if not parts.hostname:
            raise DeliveryError(f"{redact(url)}: no ntfy topic in the URL")
        return NTFY_CLOUD, [unquote(parts.netloc.rsplit("@", 1)[-1])], headers
    if not parts.hostname:
        raise DeliveryError(f"{redact(url)}: no ntfy server in the URL")
    scheme = "https" if parts.scheme.lower() == "ntfys" else "http"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    server = f"{scheme}://{host}" + (f":{parts.port}" if parts.port else "")
    if parts.username and parts.password is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password)}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    elif parts.username:
        headers["Authorization"] = f"Bearer {unquote(parts.username)}"
    return server, topics, headers


def ntfy_payload(topic: str, message: Message) -> dict[str, Any]:
    """ntfy's JSON publish body: buttons with ``post`` become one-tap HTTP POST actions."""
    actions: list[dict[str, Any]] = []
    for button in message.buttons[:3]:  # ntfy (Android) shows at most three
        if button.post is not None:
            actions.append(
                {
                    "action": "http",
                    "label": button.label,
                    "url": button.post,
                    "method": "POST",
                    "clear": True,
                }
            )
        else:
            actions.append({"action": "view", "label": button.label, "url": button.page})
    return {
        "topic": topic,
        "title": message.title,
        "message": message.text,
        "actions": actions,
        "tags": ["warning"],
    }


async def send_ntfy(url: str, message: Message) -> None:
    """Publish to an ntfy server's JSON endpoint; raises DeliveryError on any failure."""
    server, topics, headers = ntfy_target(url)
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for topic in topics:
                payload = ntfy_payload(topic, message)
                async with session.post(server + "/", json=payload, headers=headers) as resp:
                    if resp.status >= 400:
                        raise DeliveryError(f"{redact(url)}: ntfy answered HTTP {resp.status}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DeliveryError(f"{redact(url)}: cannot reach ntfy ({exc!r})") from exc


async def send_apprise(url: str, message: Message) -> None:
    """Send through Apprise with the links in the body; raises DeliveryError if it fails."""
    service = apprise.Apprise()
    if not service.add(url):
        raise DeliveryError(f"{redact(url)}: not a notification URL Apprise understands")
    # Plain text: topics and client ids are chosen by devices, so a target that renders HTML
    # or Markdown (e-mail, say) must get them escaped by Apprise, never as markup.
    result = await service.async_notify(
        body=message.body_with_links(),
        title=message.title,
        body_format=apprise.NotifyFormat.TEXT,
    )
    if not result:
        raise DeliveryError(f"{redact(url)}: Apprise could not deliver the message")


async def send_message(url: str, message: Message) -> None:
    """The default sender: ntfy directly, everything else through Apprise."""
    if is_ntfy(url):
        await send_ntfy(url, message)
    else:
        await send_apprise(url, message)


# -- the notifier ------------------------------------------------------------------------------


class Notifier:
    """Queues alert notices and delivers them in the background; see the module docstring."""

    def __init__(
        self,
        settings: NotifySettings,
        *,
        node: str,
        link_key: bytes,
        link_base: str,
        clock: Callable[[], float] = time.time,
        send: Sender | None = None,
        minute: float = 60.0,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self.settings = settings
        self.node = node
        self.stats = NotifyStats()
        self._key = link_key
        self._base = link_base.rstrip("/")
        self._clock = clock
        self._send: Sender = send or send_message
        self._minute = minute
        self._delays = tuple(retry_delays)
        self._per_minute = max(1, settings.per_minute)
        self.urls = self._usable(settings.urls) if send is None else settings.urls
        self._queue: deque[Notice] = deque()
        self._queue_size = queue_size
        self._digest: list[Notice] = []
        self._recent: deque[float] = deque()  # loop times of messages in the last minute
        self._wake = asyncio.Event()
        self._closing = False
        self._deliveries: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None

    @staticmethod
    def _usable(urls: Sequence[str]) -> tuple[str, ...]:
        """The URLs a sender can use; the others are logged once and skipped."""
        usable = []
        for url in urls:
            try:
                ok = bool(ntfy_target(url)) if is_ntfy(url) else apprise.Apprise().add(url)
            except (CommgraphError, ValueError):
                ok = False
            if ok:
                usable.append(url)
            else:
                log.error("notify: %s is not a usable notification URL; skipped", redact(url))
        return tuple(usable)

    def notify(self, notice: Notice) -> None:
        """Queue one alert (or decision) for the owner. Never blocks, never raises."""
        try:
            if not self.urls or self._closing:
                return
            while len(self._queue) >= self._queue_size:
                dropped = self._queue.popleft()
                self.stats.dropped += 1
                if isinstance(dropped, ModeNotice):
                    log.warning("notify: queue full, %s not notified", describe(dropped))
                else:
                    log.warning("notify: queue full, alert %d not notified", dropped.id)
            self._queue.append(notice)
            self._wake.set()
        except Exception:  # an addon-like part must not stop observation
            log.exception("notify: cannot queue alert")

    async def run(self) -> None:
        """Deliver until :meth:`close`; sends, rate-limits, digests and retries."""
        self._runner = asyncio.current_task()
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            while self._recent and self._recent[0] <= now - self._minute:
                self._recent.popleft()
            room = len(self._recent) < self._per_minute
            # At shutdown the queue is drained first, so one digest takes all that is left.
            if self._digest and (not self._queue if self._closing else room):
                self._dispatch(self._digest_message(self._digest), now)
                self._digest = []
            elif self._queue:
                notice = self._queue.popleft()
                if room and not self._digest:
                    self._dispatch(self._single_message(notice), now)
                else:
                    self._digest.append(notice)
            elif self._closing:
                break
            else:
                timeout = self._recent[0] + self._minute - now if self._digest else None
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
        if self._deliveries:
            await asyncio.gather(*self._deliveries, return_exceptions=True)

    async def close(self, timeout: float = 5.0) -> None:
        """Flush what is queued (a pending digest goes out now) within ``timeout``, then stop."""
        self._closing = True
        self._wake.set()
        runner = self._runner
        try:
            if runner is None:
                await asyncio.wait_for(self.run(), timeout)
            elif not runner.done():
                await asyncio.wait_for(asyncio.shield(runner), timeout)
        except TimeoutError:
            log.warning("notify: gave up flushing after %gs", timeout)
        finally:
            for task in (runner, *self._deliveries):
                if task is not None and not task.done():
                    task.cancel()
            pending = [t for t in (runner, *self._deliveries) if t is not None]
            await asyncio.gather(*pending, return_exceptions=True)

    # -- messages

    def _single_message(self, notice: Notice) -> Message:
        if isinstance(notice, ModeNotice):
            return self._mode_message(notice)
        node = notice.node or self.node
        what = "new relationship" if notice.kind == "new-edge" else f"{notice.kind} alert"
        now = self._clock()
        approve = self._token(notice.id, "approve", now)
        deny = self._token(notice.id, "deny", now)
        return Message(
            title=f"commgraph: {what} on {node}",
            text=f"{describe(notice)}.\nNode: {node}\nTime: {local_time(notice.at)}",
            buttons=(
                Button(
                    label="Approve",
                    page=f"{self._base}/act/{approve}",
                    post=f"{self._base}/api/v1/act/{approve}",
                ),
                Button(
                    label="Deny",
                    page=f"{self._base}/act/{deny}",
                    post=f"{self._base}/api/v1/act/{deny}",
                ),
                Button(label="All alerts", page=f"{self._base}/alerts"),
            ),
            alerts=(notice.id,),
        )

    def _mode_message(self, notice: ModeNotice) -> Message:
        node = notice.node or self.node
        said = mode_words(notice.service, notice.mode)
        why = f" ({notice.reason})" if notice.reason else ""
        return Message(
            title=f"commgraph: {said}",
            text=f"{said}, decided by {notice.by}{why}.\nNode: {node}\n"
            f"Time: {local_time(notice.at)}",
            buttons=(
                Button(
                    label="Service", page=f"{self._base}/services/{quote(notice.service, safe='')}"
                ),
            ),
        )

    def _digest_message(self, notices: Sequence[Notice]) -> Message:
        count = len(notices)
        alerts = tuple(n.id for n in notices if isinstance(n, AlertNotice))
        if len(alerts) == count:
            things = "new relationship" if count == 1 else "new relationships"
        else:
            things = "message" if count == 1 else "messages"
        lines = [f"{count} more {things} on {self.node}:"]
        lines += [f"- {describe(n)} ({local_time(n.at)})" for n in notices]
        return Message(
            title=f"commgraph: {count} more {things} on {self.node}",
            text="\n".join(lines),
            buttons=(Button(label="Review", page=f"{self._base}/alerts?state=pending"),),
            alerts=alerts,
            digest=True,
        )

    def _token(self, alert: int, action: str, now: float) -> str:
        return make_action_token(
            self._key, alert, action, now=now, valid_for=self.settings.link_valid_for
        )

    # -- delivery

    def _dispatch(self, message: Message, now: float) -> None:
        self._recent.append(now)
        if message.digest:
            self.stats.digests += 1
        for url in self.urls:
            task = asyncio.create_task(self._deliver(url, message))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, url: str, message: Message) -> None:
        """One message to one URL, with retries; counts and logs, never raises."""
        tries = len(self._delays) + 1
        try:
            for attempt in range(tries):
                try:
                    await self._send(url, message)
                except Exception as exc:
                    if attempt + 1 < tries:
                        self.stats.retried += 1
                        log.info("notify: %s failed (%s); retrying", redact(url), exc)
                        await asyncio.sleep(self._delays[attempt])
                        continue
                    self.stats.failed += 1
                    log.error(
                        "notify: alerts %s not delivered to %s after %d tries: %s",
                        ",".join(map(str, message.alerts)),
                        redact(url),
                        tries,
                        exc,
                    )
                    return
                self.stats.sent += 1
                return
        except asyncio.CancelledError:
            self.stats.failed += 1
            log.warning("notify: %s: delivery abandoned at shutdown", redact(url))
            raise
