"""The aiohttp application of a node: REST API under ``/api/v1`` and the dashboard.

The web side's modules import one way only: ``app`` -> ``api``, ``dashboard`` ->
``session`` -> ``state`` -> ``auth``; ``openapi`` and ``render`` are data and drawing. The
node and its credentials reach the handlers as the application's
:class:`~commgraph.web.state.AppState`, never as module globals.
"""

from __future__ import annotations

from aiohttp import web

from commgraph.web import api, dashboard
from commgraph.web.auth import Credentials
from commgraph.web.state import STATE, AppState, Node

__all__ = ["make_app"]

MAX_BODY = 64 * 1024


def make_app(node: Node, credentials: Credentials) -> web.Application:
    """The whole web side of ``node``."""
    app = web.Application(client_max_size=MAX_BODY)
    app[STATE] = AppState(node=node, credentials=credentials)
    api.setup(app)
    dashboard.setup(app)
    return app
