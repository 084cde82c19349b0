"""The aiohttp application of a node: REST API under ``/api/v1`` and the dashboard.

Both halves talk to the node through :class:`Node`, which the daemon implements: reads go to
the store, owner actions go through the engine and are durable before they return.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from commgraph.alerts import Action, Decision
from commgraph.engine import Engine
from commgraph.phases import Mode
from commgraph.store import Store
from commgraph.web.auth import Credentials

__all__ = ["CREDENTIALS", "NODE", "Node", "make_app"]


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


NODE = web.AppKey("node", Node)
CREDENTIALS = web.AppKey("credentials", Credentials)


def make_app(node: Node, credentials: Credentials) -> web.Application:
    """The whole web side of a node."""
    app = web.Application(client_max_size=64 * 1024)
    app[NODE] = node
    app[CREDENTIALS] = credentials
    from commgraph.web import api, dashboard

    api.setup(app)
    dashboard.setup(app)
    return app
