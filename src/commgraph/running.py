"""Which node runs on a database, and what it did with the decisions made elsewhere.

A running node (:class:`commgraph.daemon.Daemon`) owns its engine: a decision the CLI writes
into the database takes effect when the node applies it, within a second. So that the owner
learns when it does not (the node's state moved on: the alert was decided meanwhile, the
service is not known there), the node says in the store's ``meta`` who runs
(``running``: pid, host, node) and how far it applied the audit log (``applied``: the last
decision id seen, and the last refused ones with the reason). The CLI waits for it with
:func:`wait_applied`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from commgraph.store import Store

__all__ = ["Applied", "announce", "record_applied", "retire", "running_node", "wait_applied"]

RUNNING, APPLIED = "running", "applied"
KEEP_REFUSED = 50  # the last refused decisions kept with their reason


@dataclass(frozen=True, slots=True)
class Applied:
    """What the running node did with one decision: ``taken``, or refused with ``reason``;
    ``taken`` None when it did not answer within the wait."""

    decision: int
    pid: int
    taken: bool | None
    reason: str = ""


def announce(store: Store, node: str) -> None:
    """This process runs ``node`` on ``store`` from now on."""
    info = {"pid": os.getpid(), "host": socket.gethostname(), "node": node}
    store.set_meta(RUNNING, json.dumps(info))


def retire(store: Store) -> None:
    """This node stopped: nothing runs on ``store`` any more."""
    store.set_meta(RUNNING, "")


def record_applied(store: Store, through: int, refused: dict[int, str]) -> None:
    """The node has seen the audit log up to decision ``through``; ``refused`` (id ->
    reason) are the ones it could not apply since the last call."""
    before = _applied(store)
    kept: dict[str, str] = dict(before.get("refused", {}))
    kept.update({str(k): v for k, v in refused.items()})
    if len(kept) > KEEP_REFUSED:
        kept = dict(sorted(kept.items(), key=lambda item: int(item[0]))[-KEEP_REFUSED:])
    store.set_meta(APPLIED, json.dumps({"through": through, "refused": kept}))


def running_node(store: Store) -> dict[str, Any] | None:
    """The node running on ``store`` (pid, host, node), or None when none runs (a node that
    died without saying so counts as none once its pid is gone from this host)."""
    text = store.meta(RUNNING)
    if not text:
        return None
    try:
        info = json.loads(text)
        pid = int(info["pid"])
    except (ValueError, KeyError, TypeError):
        return None
    if info.get("host") == socket.gethostname() and not _alive(pid):
        return None
    return dict(info)


def wait_applied(
    store: Store,
    decision: int,
    *,
    timeout: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    pause: Callable[[float], None] = time.sleep,
) -> Applied | None:
    """Wait (up to ``timeout`` seconds) until the node running on ``store`` has seen
    ``decision``; None when no node runs there."""
    node = running_node(store)
    if node is None:
        return None
    pid = int(node["pid"])
    deadline = clock() + timeout
    while True:
        applied = _applied(store)
        if int(applied.get("through", 0)) >= decision:
            reason = applied.get("refused", {}).get(str(decision))
            return Applied(decision, pid, reason is None, reason or "")
        if clock() >= deadline or running_node(store) is None:
            return Applied(decision, pid, None)
        pause(0.05)


def _applied(store: Store) -> dict[str, Any]:
    text = store.meta(APPLIED)
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
