"""Credentials of a node's web side: the API token and the link key.

The **API token** is made at first start, shown once on the terminal, and kept with the link
key (which signs the action links of :mod:`commgraph.links`) in a file readable by its owner
only (0600). Requests carry it as ``Authorization: Bearer TOKEN``; the dashboard keeps it in a
cookie after the login form.

The token is a secret, so it never goes to the log (which ends up in journald): only
:func:`announce_token` prints it, to a terminal.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from commgraph.errors import CommgraphError

__all__ = ["Credentials", "announce_token", "load_or_create", "same_secret"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Credentials:
    api_token: str
    link_key: bytes
    created: bool  # made just now: the caller shows the token once

    def __repr__(self) -> str:  # a traceback or a debug log must not show the secrets
        return f"Credentials(api_token=<secret>, link_key=<secret>, created={self.created})"


def load_or_create(path: Path) -> Credentials:
    """The node's credentials from ``path``, made (0600) if the file does not exist."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Credentials(
            api_token=str(data["api_token"]),
            link_key=base64.b64decode(data["link_key"]),
            created=False,
        )
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CommgraphError(f"{path}: cannot read the node's credentials ({exc})") from None
    token, key = secrets.token_urlsafe(32), secrets.token_bytes(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump({"api_token": token, "link_key": base64.b64encode(key).decode()}, out)
    return Credentials(api_token=token, link_key=key, created=True)


def same_secret(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented token with the real one."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def announce_token(credentials: Credentials, path: Path, terminal: TextIO | None = None) -> None:
    """Tell whoever starts the node about an API token made just now.

    The log (journald, under systemd) only says where the token is kept. The token itself is
    printed to ``terminal`` (standard error by default) if that is a terminal, so a person sees
    it once; otherwise the owner reads it from ``path``.
    """
    out = sys.stderr if terminal is None else terminal
    log.warning("a new API token was made; it is kept in %s (readable by its owner only)", path)
    try:
        on_terminal = out.isatty()
    except (AttributeError, ValueError):  # closed or detached stream
        on_terminal = False
    if on_terminal:
        print(f"API token (shown once, kept in {path}): {credentials.api_token}", file=out)
        out.flush()
