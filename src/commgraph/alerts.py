"""Alert lifecycle and the owner's decisions.

One alert per (edge, kind) stays open until the owner decides it; repeats only raise its
count and last-seen time. Alerts about a service or an address rather than one edge
(``new-service``, ``flood``, ``edge-burst``, ``auth-failure``, ``malformed``,
``connection-flood``) have no edge (``edge == NO_EDGE``): they are open once per (subject
vertex, kind), and ``detail`` holds what is known (client id, address, examples, counts).

Decisions move an alert along :data:`ALERT_TRANSITIONS`: a pending alert is approved or
denied, and the owner may later change their mind (approved <-> denied). Deciding the same
way twice is refused, so a double click cannot write a second audit entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from commgraph.errors import DecisionError, UnknownItemError

__all__ = [
    "ALERT_TRANSITIONS",
    "EDGE_KINDS",
    "KIND_LABELS",
    "KIND_WORDS",
    "NO_EDGE",
    "SITE",
    "Action",
    "Alert",
    "AlertBook",
    "AlertKind",
    "AlertState",
    "Decision",
    "describe",
    "describe_row",
    "mode_words",
]

NO_EDGE = -1  # the edge of an alert about a service or an address
SITE = 0  # the subject of an alert about the whole site (vertex 0 is no vertex)


class AlertKind(StrEnum):
    NEW_EDGE = "new-edge"
    RATE = "rate"
    PERIODICITY = "periodicity"
    SIZE = "size"
    NEW_SERVICE = "new-service"  # a service first seen after the site's bootstrap
    FLOOD = "flood"  # a service beyond its ceiling of messages per second
    EDGE_BURST = "edge-burst"  # a service beyond its new edges per minute, or its cap
    AUTH_FAILURE = "auth-failure"  # refused CONNECTs from one address (brute force)
    MALFORMED = "malformed"  # protocol errors from one address (fuzzing)
    CONNECTION_FLOOD = "connection-flood"  # connections opened or held idle by one address


EDGE_KINDS = frozenset({AlertKind.NEW_EDGE, AlertKind.RATE, AlertKind.PERIODICITY, AlertKind.SIZE})


class AlertState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"


class Action(StrEnum):
    """What the owner did; the audit log records every one."""

    APPROVE = "approve"
    DENY = "deny"
    MODE = "mode"
    RESET = "reset"
    MODEL_KEPT = "model-kept"  # a trusted model was received or imported and kept
    MODEL_REJECTED = "model-rejected"  # a model was refused: unsigned, unknown key, tampered


ALERT_TRANSITIONS: dict[tuple[AlertState, Action], AlertState] = {
    (AlertState.PENDING, Action.APPROVE): AlertState.APPROVED,
    (AlertState.PENDING, Action.DENY): AlertState.DENIED,
    (AlertState.APPROVED, Action.DENY): AlertState.DENIED,
    (AlertState.DENIED, Action.APPROVE): AlertState.APPROVED,
}


@dataclass(slots=True, kw_only=True)
class Alert:
    id: int
    edge: int
    kind: AlertKind
    state: AlertState
    count: int
    first_seen: float
    last_seen: float
    node: str | None = None
    subject: int = 0  # the service (or address host) it is about; for edges, set by the engine
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[int, AlertKind]:
        """Its place in the open index: its edge, or (for subject alerts) -1 - subject."""
        return (self.edge if self.edge >= 0 else -1 - self.subject, self.kind)


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """One entry of the audit log: who did what, when and why."""

    action: Action
    by: str
    at: float
    reason: str = ""
    alert: int | None = None
    service: str | None = None
    edge: tuple[str, str, str] | None = None  # (src, dst, relation)
    detail: str = ""  # e.g. the new mode
    id: int | None = None  # its number in the audit log, once written


class AlertBook:
    """All alerts, by id and by open (edge, kind). Pure bookkeeping, no I/O."""

    def __init__(self) -> None:
        self.by_id: dict[int, Alert] = {}
        self._open: dict[tuple[int, AlertKind], Alert] = {}
        # the newest alert per key, whatever its state: what the owner last said about it
        self.latest: dict[tuple[int, AlertKind], Alert] = {}
        self._open_of: dict[int, int] = {}  # subject -> how many open alerts are about it
        self.next_id = 1

    def raise_or_repeat(
        self,
        edge: int,
        kind: AlertKind,
        ts: float,
        node: str | None,
        *,
        subject: int = 0,
    ) -> tuple[Alert, bool]:
        """The open alert for (edge, kind) -- or (subject, kind) when ``edge`` is
        :data:`NO_EDGE` -- bumped; or a new one. Returns (alert, is_new)."""
        key = (edge if edge >= 0 else -1 - subject, kind)
        alert = self._open.get(key)
        if alert is not None:
            alert.count += 1
            if ts > alert.last_seen:
                alert.last_seen = ts
            return alert, False
        alert = Alert(
            id=self.next_id,
            edge=edge,
            kind=kind,
            state=AlertState.PENDING,
            count=1,
            first_seen=ts,
            last_seen=ts,
            node=node,
            subject=subject,
        )
        self.next_id += 1
        self.add(alert)
        return alert, True

    def add(self, alert: Alert) -> None:
        """Register an alert (new, or restored from the store)."""
        self.by_id[alert.id] = alert
        self.next_id = max(self.next_id, alert.id + 1)
        known = self.latest.get(alert.key)
        if known is None or known.id < alert.id:
            self.latest[alert.key] = alert
        if alert.state is AlertState.PENDING:
            self._open[alert.key] = alert
            self._open_of[alert.subject] = self._open_of.get(alert.subject, 0) + 1

    def open_about(self, subject: int, kind: AlertKind) -> Alert | None:
        """The open alert of ``kind`` about a service or address (not an edge), if any."""
        return self._open.get((-1 - subject, kind))

    def latest_about(self, subject: int, kind: AlertKind) -> Alert | None:
        """The newest alert of ``kind`` about a service or address, open or decided."""
        return self.latest.get((-1 - subject, kind))

    @property
    def open_alerts(self) -> dict[tuple[int, AlertKind], Alert]:
        """The live (edge, kind) -> open alert index (shared, not a copy: read only)."""
        return self._open

    def get(self, alert_id: int) -> Alert:
        alert = self.by_id.get(alert_id)
        if alert is None:
            raise UnknownItemError(f"there is no alert {alert_id}")
        return alert

    def decide(self, alert_id: int, action: Action) -> Alert:
        """Move an alert by the owner's action; raises DecisionError if it cannot move so."""
        alert = self.get(alert_id)
        after = ALERT_TRANSITIONS.get((alert.state, action))
        if after is None:
            raise DecisionError(f"alert {alert_id} is already {alert.state}")
        if self._open.pop(alert.key, None) is not None:
            left = self._open_of.get(alert.subject, 0) - 1
            if left > 0:
                self._open_of[alert.subject] = left
            else:
                self._open_of.pop(alert.subject, None)
        alert.state = after
        return alert

    def open_count(self, subject: int) -> int:
        """How many open alerts are about ``subject`` (on its edges, or about itself)."""
        return self._open_of.get(subject, 0)

    def recount(self) -> None:
        """Recount open alerts per subject (after the engine set the subjects of restored
        alerts of an older schema)."""
        counts: dict[int, int] = {}
        for alert in self._open.values():
            counts[alert.subject] = counts.get(alert.subject, 0) + 1
        self._open_of = counts

    def pending(self) -> list[Alert]:
        return [a for a in self.by_id.values() if a.state is AlertState.PENDING]


# -- in the owner's words (the CLI, notifications, the dashboard and the logs use these) ----

KIND_WORDS: dict[str, str] = {
    "new-edge": "never seen before",
    "rate": "far more often than it learned",
    "periodicity": "gone silent, longer than its usual rhythm allows",
    "size": "messages of a size it never learned",
    "new-service": "a new device: is it yours?",
    "flood": "more messages a second than its ceiling",
    "edge-burst": "a storm of new topics or peers",
    "auth-failure": "refused log-ins (password guessing?)",
    "malformed": "broken protocol packets (fuzzing?)",
    "connection-flood": "too many connections",
}

# the same, as a tag beside a listed alert
KIND_LABELS: dict[str, str] = {
    "new-edge": "new",
    "rate": "far more often than learned",
    "periodicity": "silent for longer than its rhythm",
    "size": "unusual message size",
    "new-service": "waiting for you",
    "flood": "flood",
    "edge-burst": "storm",
    "auth-failure": "brute force?",
    "malformed": "fuzzing?",
    "connection-flood": "connection flood",
}

_NOW = {"protect": "is now protected", "monitor": "is now monitored", "learn": "now learns"}


def mode_words(service: str, mode: str) -> str:
    """A service's new mode as the owner is told it: ``valve-kitchen is now protected``
    (plain text: callers escape it for their medium)."""
    return f"{service} {_NOW.get(mode, f'is now in {mode} mode')}"


_DID = {"publish": "published to", "subscribe": "subscribed to", "deliver": "received"}


def _first(examples: list[str]) -> str:
    """``publish valves/kitchen/set`` -> ``published to valves/kitchen/set``."""
    relation, _, peer = examples[0].partition(" ")
    return f"{_DID.get(relation, relation + ' to')} {peer}"


def _listed(names: list[str], total: int) -> str:
    shown = ", ".join(names[:3])
    return shown if total <= 3 else f"{shown} and {total - 3} more"


def describe(
    kind: str,
    src: str,
    dst: str,
    relation: str,
    detail: dict[str, Any] | None = None,
    count: int = 1,
) -> str:
    """One alert in words a site owner understands (plain text: callers escape it for
    their medium). ``src``/``dst``/``relation`` name its edge; for an alert about a service
    or an address, ``src`` is its name and ``dst`` the node."""
    detail = detail or {}
    if kind == "new-service":
        if "services" in detail:  # a grouped question for the whole site
            names = list(detail["services"])
            total = len(names) + int(detail.get("more", 0))
            to = "" if dst == "this node" else f" to {dst}"
            return f"{total} new devices connected{to} at once: {_listed(names, total)}"
        address = detail.get("address")
        said = f"a new device {src}" + (f" ({address})" if address and address != src else "")
        said += " appeared" if dst == "this node" else f" connected to {dst}"
        examples = list(detail.get("examples", ()))
        if examples:
            said += f" and {_first(examples)}"
            if len(examples) > 1:
                said += f" (and {len(examples) - 1} more)"
        return said
    if kind == "flood":
        return f"{src} is flooding {dst}: more messages a second than its ceiling ({count} over)"
    if kind == "edge-burst":
        edges = int(detail.get("edges", 0)) + int(detail.get("overflow", 0))
        examples = [e.partition(" ")[2] for e in detail.get("examples", ())]
        said = f"{src} suddenly talks to many new topics or peers ({edges or count} so far"
        said += f", e.g. {', '.join(examples[:3])})" if examples else ")"
        if detail.get("overflow"):
            said += f"; {detail['overflow']} beyond its cap were not recorded"
        return said
    if kind in ("auth-failure", "malformed", "connection-flood"):
        address = detail.get("address", src)
        who = address if address == src else f"{src} ({address})"
        ids = list(detail.get("client_ids", ()))
        as_ids = f" as {', '.join(ids)}" if ids else ""
        if kind == "auth-failure":
            return f"{who} was refused by the broker {count} times{as_ids}: password guessing?"
        if kind == "malformed":
            return f"{who} sent {count} broken MQTT packets{as_ids}: fuzzing?"
        return f"{who} opened too many connections ({detail.get('open', count)} open at once)"
    if kind == "new-edge":
        if relation == "publish":
            said = f"{src} started publishing to {dst}"
        elif relation == "subscribe":
            said = f"{src} started subscribing to {dst}"
        elif relation == "deliver":
            said = f"{dst} started receiving {src}"
        else:
            said = f"{src} started talking to {dst} over {relation}"
        return f"{said}, never seen before"
    if kind in KIND_WORDS:
        return f"{_doing(src, dst, relation)}: {KIND_WORDS[kind]}"
    return f"{kind} anomaly on {_doing(src, dst, relation)}"


def _doing(src: str, dst: str, relation: str) -> str:
    if relation == "publish":
        return f"{src} publishing to {dst}"
    if relation == "subscribe":
        return f"{src} subscribing to {dst}"
    if relation == "deliver":
        return f"{dst} receiving {src}"
    return f"{src} talking to {dst} over {relation}"


def describe_row(row: Mapping[str, Any]) -> str:
    """A listed alert (the store's row) in the owner's words: its edge, or for an alert
    about a service, an address or the site, what is known of it."""
    from commgraph.events import describe_edge

    kind = row.get("kind")
    if kind in KIND_WORDS and kind not in EDGE_KINDS:
        return describe(
            str(kind),
            row["src"],
            row["dst"],
            row["relation"],
            row.get("detail"),
            row.get("count", 1),
        )
    return describe_edge(row["src"], row["dst"], row["relation"])
