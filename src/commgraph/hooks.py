"""The parts a node plugs in behind the engine (notifier, sync, capture, web) as hooks.

A hook is a small object with any of these named methods (mitmproxy's addons):

- ``async start()``: when the node starts, in its event loop; an exception stops the
  start (a configured part that cannot run is the owner's error to see);
- ``on_alert(notice)``: a new alert (:class:`commgraph.notify.AlertNotice`), never blocking;
- ``on_model(service, envelope)``: this node signed a new model of ``service``;
- ``on_decision(decision)``: a decision made elsewhere was applied in this node;
- ``async stop()``: when the node stops, before the last statistics are written.

Every call but ``start`` goes through :meth:`Hooks.safecall`: a failing part is logged and
counted per part (``failures`` in the node's counters, ``commgraph_part_failures`` in
/metrics), and observation goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Hooks"]

log = logging.getLogger("commgraph")


class Hooks:
    """The node's hooks, each under its part's name, and the failures counted per part."""

    def __init__(self) -> None:
        self.parts: dict[str, Any] = {}
        self.failures: dict[str, int] = {}

    def add(self, part: str, hook: Any) -> None:
        self.parts[part] = hook
        self.failures.setdefault(part, 0)

    def safecall(self, part: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``call(*args, **kwargs)``; an exception is logged, counted against ``part`` and
        swallowed (then None is returned)."""
        try:
            return call(*args, **kwargs)
        except Exception:
            self.failed(part, getattr(call, "__name__", "call"))
            return None

    async def asafecall(self, part: str, call: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """:meth:`safecall` for a coroutine function."""
        try:
            return await call(*args)
        except Exception:
            self.failed(part, getattr(call, "__name__", "call"))
            return None

    def failed(self, part: str, what: str) -> None:
        """Log the exception being handled and count it against ``part``."""
        self.failures[part] = self.failures.get(part, 0) + 1
        log.exception("%s: %s failed; the node goes on", part, what)

    def call(self, hook: str, *args: Any) -> None:
        """Call the hook named ``hook`` of every part that has it, each through safecall."""
        for part, addon in self.parts.items():
            method = getattr(addon, hook, None)
            if method is not None:
                self.safecall(part, method, *args)

    async def start(self) -> None:
        """Start every part, in the order they were added (not guarded: see the module)."""
        for addon in self.parts.values():
            method = getattr(addon, "start", None)
            if method is not None:
                await method()

    async def stop(self) -> None:
        """Stop every part in the order they were added (the ones that feed the node before
        the ones that report from it), each through safecall."""
        for part, addon in self.parts.items():
            method = getattr(addon, "stop", None)
            if method is not None:
                await self.asafecall(part, method)
