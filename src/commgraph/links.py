"""Signed action links: the Approve / Deny links of notifications.

An **action token** rides in a link, so the owner can act from the phone without the API
token. Each names one alert and one action, expires, and is signed (HMAC-SHA256 with the
node's link key). Single use is the store's job: the token's nonce is recorded when it is
used, and a second use is refused.

The notifier makes tokens, the web side reads them; neither imports the other. Pure functions
over bytes and time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from commgraph.errors import TokenError

__all__ = [
    "ACTIONS",
    "ActionToken",
    "TokenError",
    "is_sound",
    "make_action_token",
    "read_action_token",
]

ACTIONS = frozenset({"approve", "deny"})


@dataclass(frozen=True, slots=True)
class ActionToken:
    alert: int
    action: str
    expires: float
    nonce: str


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


def is_sound(key: bytes, token: str) -> bool:
    """Whether ``token`` was signed with ``key`` and reads well, whatever its time: a refused
    token that is sound has only expired (the owner needs another way, not a better link)."""
    try:
        read_action_token(key, token, now=float("-inf"))
    except TokenError:
        return False
    return True
