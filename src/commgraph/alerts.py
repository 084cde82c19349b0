"""Alert lifecycle and the owner's decisions.

One alert per (edge, kind) stays open until the owner decides it; repeats only raise its
count and last-seen time. Decisions move an alert along :data:`ALERT_TRANSITIONS`: a pending
alert is approved or denied, and the owner may later change their mind (approved <-> denied).
Deciding the same way twice is refused, so a double click cannot write a second audit entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from commgraph.errors import DecisionError, UnknownItemError

__all__ = [
    "ALERT_TRANSITIONS",
    "Action",
    "Alert",
    "AlertBook",
    "AlertKind",
    "AlertState",
    "Decision",
]


class AlertKind(StrEnum):
    NEW_EDGE = "new-edge"
    RATE = "rate"
    PERIODICITY = "periodicity"
    SIZE = "size"


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
        self.next_id = 1

    def raise_or_repeat(
        self, edge: int, kind: AlertKind, ts: float, node: str | None
    ) -> tuple[Alert, bool]:
        """The open alert for (edge, kind), bumped; or a new one. Returns (alert, is_new)."""
        alert = self._open.get((edge, kind))
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
        )
        self.next_id += 1
        self.add(alert)
        return alert, True

    def add(self, alert: Alert) -> None:
        """Register an alert (new, or restored from the store)."""
        self.by_id[alert.id] = alert
        self.next_id = max(self.next_id, alert.id + 1)
        if alert.state is AlertState.PENDING:
            self._open[(alert.edge, alert.kind)] = alert

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
        self._open.pop((alert.edge, alert.kind), None)
        alert.state = after
        return alert

    def pending(self) -> list[Alert]:
        return [a for a in self.by_id.values() if a.state is AlertState.PENDING]
