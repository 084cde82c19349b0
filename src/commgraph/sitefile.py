"""A new site: the commented ``site.toml`` that ``commgraph init`` writes, what to change on
the broker side, and ``commgraph check``'s findings about a configuration.

:func:`render_site` and :func:`broker_advice` are pure; :func:`check_site` reaches the
broker, the sync broker and (when asked) the notification targets, and returns one
:class:`Finding` per part, each with the fix when it failed. It never raises for an
unreachable part: that is a finding.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from commgraph.config import Address, Config, parse_address
from commgraph.phases import Mode

__all__ = ["Finding", "SiteAnswers", "broker_advice", "check_site", "render_site"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteAnswers:
    """The questions ``commgraph init`` asks, with their defaults."""

    node: str = "node-a"
    broker: str = "127.0.0.1:1884"  # where the real broker is (after moving it)
    listen: str = "127.0.0.1:1883"  # the port the proxy takes (where clients connect)
    mode: Mode = Mode.MONITOR
    notify: str = ""  # an Apprise URL, or none
    api: str = "127.0.0.1:8080"
    keys: bool = False  # make the site's key pair (site.key, site.pub) too

    def __post_init__(self) -> None:
        for name in ("broker", "listen", "api"):
            parse_address(getattr(self, name))  # ValueError naming the value
        if not self.node.strip():
            raise ValueError("the node name must not be empty")


def _str(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid TOML basic string


def render_site(answers: SiteAnswers) -> str:
    """The commented ``site.toml`` for ``answers`` (keys ``site.key``/``site.pub`` if made)."""
    a = answers
    notify = f"urls = [{_str(a.notify)}]" if a.notify else '# urls = ["ntfy://ntfy.sh/my-topic"]'
    keys = (
        '[keys]\nprivate = "site.key"         # signs this site\'s service models\n'
        'trusted = ["site.pub"]'
        if a.keys
        else '# [keys]\n# private = "site.key"       # make with: commgraph keygen\n'
        '# trusted = ["site.pub"]'
    )
    return f"""\
# commgraph site configuration, written by `commgraph init`.
# Check it with: commgraph check --config site.toml
# Run it with:   commgraph run --config site.toml

[node]
name = {_str(a.node)}
db = {_str(a.node + ".db")}       # SQLite, next to this file

[learning]
duration = "1h"                # how long each new service learns before alerts start

[modes]
default = {_str(a.mode.value)}          # learn | monitor (alert only) | protect (block)

[mqtt]
listen = {_str(a.listen)}    # where your devices and services connect
upstream = {_str(a.broker)}  # the real broker behind the proxy

[api]
listen = {_str(a.api)}       # REST API and dashboard; the token is made on first start

[notify]
{notify}

[sync]
broker = {_str(a.broker)}    # the site broker carrying the signed models

[homeassistant]
discovery = false              # true: Home Assistant sees this node over MQTT discovery

{keys}
"""


def broker_advice(answers: SiteAnswers) -> str:
    """What to change on the broker side, with the exact ``listener`` line for Mosquitto."""
    broker, listen = parse_address(answers.broker), parse_address(answers.listen)
    lines = [
        "On the broker side:",
        f"  - Mosquitto must listen on {broker}; in mosquitto.conf:",
        f"        listener {broker.port} {broker.host}",
    ]
    if broker.port == listen.port and broker.host == listen.host:
        lines.append("  - the proxy and the broker cannot share an address: pick another port")
    elif listen.port == 1883:
        lines.append(
            "  - remove its old 'listener 1883' line: the proxy takes port 1883, "
            "so clients need no change"
        )
    else:
        lines.append(f"  - or point your clients at the proxy, {listen}, instead of the broker")
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of ``commgraph check``: what was checked, whether it is fine, and the fix."""

    part: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        head = f"{'ok  ' if self.ok else 'FAIL'} {self.part}: {self.detail}"
        return head if self.ok or not self.fix else f"{head} (fix: {self.fix})"


def _reach(address: Address, timeout: float) -> str | None:
    """None if ``address`` accepts a TCP connection, else why not."""
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


Send = Callable[[str], Awaitable[None]]


def check_site(
    config: Config, *, notify: Send | None = None, timeout: float = 3.0
) -> list[Finding]:
    """Reach the broker, the sync broker and (with ``notify``, which sends one test message
    to a URL) each notification target."""
    findings = [Finding("config", True, f"{config.source} is valid")]
    brokers = [("broker", config.mqtt.upstream), ("sync broker", config.sync_broker)]
    for part, address in brokers:
        if address is None:
            findings.append(Finding(part, True, "not configured"))
            continue
        problem = _reach(address, timeout)
        key = "mqtt.upstream" if part == "broker" else "sync.broker"
        findings.append(
            Finding(part, True, f"{address} accepts connections")
            if problem is None
            else Finding(
                part,
                False,
                f"{address}: {problem}",
                f"start the broker there (listener {address.port} {address.host}) or fix {key}",
            )
        )
    if notify is not None:
        if not config.notify.urls:
            findings.append(Finding("notify", True, "no notify.urls configured"))
        for url in config.notify.urls:
            shown = url.split("://", 1)[0] + "://…"  # a URL may carry a secret: scheme only
            try:
                asyncio.run(asyncio.wait_for(notify(url), timeout * 5))
            except Exception as exc:
                findings.append(
                    Finding(
                        "notify",
                        False,
                        f"{shown}: {type(exc).__name__}",  # its text may hold the URL
                        "check the URL in notify.urls and that its service is reachable",
                    )
                )
            else:
                findings.append(Finding("notify", True, f"{shown}: test message sent"))
    return findings
