"""Credentials of a node's web side: the API token and signed action links.

- The **API token** is made at first start, shown once, and kept with the link key in a file
  readable by its owner only (0600). Requests carry it as ``Authorization: Bearer TOKEN``;
  the dashboard keeps it in a cookie after the login form.
- **Action tokens** ride in the Approve / Deny links of notifications, so the owner can act
  from the phone without the API token. Each names one alert and one action, expires, and is
  signed (HMAC-SHA256 with the link key). Single use is the store's job: the token's nonce is
  recorded when it is used, and a second use is refused.

Pure functions over bytes and time; only :func:`load_or_create` touches a file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from commgraph.errors import CommgraphError, TokenError

__all__ = [
    "ActionToken",
    "Credentials",
    "TokenError",
    "load_or_create",
    "make_action_token",
    "read_action_token",
    "same_secret",
]

ACTIONS = frozenset({"approve", "deny"})


@dataclass(frozen=True, slots=True)
class Credentials:
    api_token: str
    link_key: bytes
    created: bool  # made just now: the caller shows the token once


@dataclass(frozen=True, slots=True)
class ActionToken:
    alert: int
    action: str
    expires: float
    nonce: str


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


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_action_token(
    key: bytes, alert: int, action: str, *, now: float, valid_for: float, nonce: str | None = None
) -> str:
    """A URL-safe token allowing ``action`` on ``alert`` until ``now + valid_for``."""
    if action not in ACTIONS:
        raise ValueError(f"an action token is for approve or deny, not {action!r}")
    body = json.dumps(
        {"a": alert, "x": action, "e": int(now + valid_for), "n": nonce or secrets.token_hex(8)},
        separators=(",", ":"),
    ).encode()
    mac = hmac.new(key, body, hashlib.sha256).digest()
    return f"{_b64(body)}.{_b64(mac)}"


def read_action_token(key: bytes, token: str, *, now: float) -> ActionToken:
    """Check signature and expiry; raises :class:`TokenError` with a reason a person reads."""
    try:
        body_text, mac_text = token.split(".")
        body, mac = _unb64(body_text), _unb64(mac_text)
    except ValueError:
        raise TokenError("this link is damaged (not a commgraph action token)") from None
    if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
        raise TokenError("this link was not issued by this node (bad signature)")
    try:
        data = json.loads(body)
        parsed = ActionToken(
            alert=int(data["a"]),
            action=str(data["x"]),
            expires=float(data["e"]),
            nonce=str(data["n"]),
        )
    except (ValueError, KeyError, TypeError):
        raise TokenError("this link is damaged (unreadable contents)") from None
    if parsed.action not in ACTIONS:
        raise TokenError("this link asks for an unknown action")
    if now > parsed.expires:
        raise TokenError("this link has expired: decide in the dashboard or the CLI instead")
    return parsed
