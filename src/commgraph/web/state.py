"""The state of a node's web side, handed to every handler through the application.

:func:`commgraph.web.app.make_app` stores one :class:`AppState` under :data:`STATE`; a handler
reads ``request.app[STATE]``. Nothing in ``commgraph.web`` keeps the node or its credentials
in a module global, so two applications (two nodes in one test) never see each other's.

Both halves talk to the node through :class:`Node`, which the daemon implements: reads go to
the store, owner actions go through the engine and are durable before they return.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from commgraph.alerts import Action, Decision
from commgraph.engine import Engine
from commgraph.phases import Mode
from commgraph.store import Store
from commgraph.web.auth import Credentials

__all__ = ["STATE", "AppState", "Node"]


class Node(Protocol):
    """What the web side needs from a running node."""

    @property
    def name(self) -> str: ...

    store: Store
    engine: Engine

    def decide(self, alert_id: int, action: Action, *, by: str, reason: str = "") -> Decision:
        """Approve or deny; raises DecisionError / UnknownItemError; durable on return."""
        ...

    def set_mode(self, service: str, mode: Mode | None, *, by: str, reason: str = "") -> Decision:
        """Set (None: reset to the configured) mode; raises UnknownItemError."""
        ...

    def reset_learning(self, service: str, *, by: str, reason: str = "") -> Decision:
        """Restart learning at the service's next message; raises UnknownItemError."""
        ...

    def counters(self) -> dict[str, float]:
        """Counters for /metrics: events, verdicts, proxy connections, decode errors..."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class AppState:
    """What the handlers of one application share: the node they serve and its credentials."""

    node: Node
    credentials: Credentials


STATE = web.AppKey("commgraph_state", AppState)
