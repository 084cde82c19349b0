"""Who is asking: the API token, the dashboard's session cookie and its CSRF field.

- A request is **authorized** when it carries the node's API token, as a bearer header or as
  the HttpOnly, SameSite=Strict cookie ``commgraph_token`` that the login form sets. The
  cookie counts for a state-changing request only when the browser says it comes from this
  very site (no ``Origin`` header, or one naming this host).
- Every state-changing dashboard form carries ``csrf`` = HMAC(link key, cookie value),
  checked on POST (403 without it).
- The login form itself has no token yet: it is protected by a double-submit nonce, the
  ``commgraph_login`` cookie repeated in a form field.

The API and the dashboard both ask here; the credentials come from the application's
:class:`~commgraph.web.state.AppState`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Final

from aiohttp import hdrs, web

from commgraph.web.auth import same_secret
from commgraph.web.state import STATE

__all__ = [
    "COOKIE",
    "LOGIN_COOKIE",
    "authorized",
    "checked_form",
    "csrf_of",
    "csrf_token",
    "end",
    "is_api_token",
    "login_nonce",
    "login_nonce_ok",
    "offer_login",
    "require_login",
    "start",
]

COOKIE: Final = "commgraph_token"
LOGIN_COOKIE: Final = "commgraph_login"  # double-submit value for the login form (no token yet)
SESSION_DAYS: Final = 30
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


def authorized(request: web.Request) -> bool:
    """Whether ``request`` carries this node's API token (bearer header or session cookie)."""
    expected = request.app[STATE].credentials.api_token
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() == "bearer" and same_secret(given.strip(), expected):
        return True
    cookie = request.cookies.get(COOKIE)
    if cookie is None or not same_secret(cookie, expected):
        return False
    if request.method in _SAFE_METHODS:
        return True
    origin = request.headers.get(hdrs.ORIGIN)
    return origin is None or origin == f"{request.scheme}://{request.host}"


def csrf_token(link_key: bytes, cookie: str) -> str:
    """The ``csrf`` form field for a session cookie value."""
    return hmac.new(link_key, b"csrf:" + cookie.encode(), hashlib.sha256).hexdigest()


def csrf_of(request: web.Request) -> str:
    """The ``csrf`` field that forms on pages answering ``request`` must carry."""
    return csrf_token(request.app[STATE].credentials.link_key, request.cookies.get(COOKIE, ""))


def require_login(request: web.Request) -> None:
    """Send a visitor without a session to ``/login`` (303)."""
    if not authorized(request):
        raise web.HTTPSeeOther("/login")


async def checked_form(request: web.Request) -> Mapping[str, str]:
    """The posted form of a logged-in owner with a valid ``csrf`` field, else 303 / 403."""
    require_login(request)
    form = await request.post()
    given = form.get("csrf")
    if not isinstance(given, str) or not hmac.compare_digest(given, csrf_of(request)):
        raise web.HTTPForbidden(text="missing or wrong csrf field: reload the page and retry")
    return {k: v for k, v in form.items() if isinstance(v, str)}


def is_api_token(request: web.Request, given: str) -> bool:
    """Whether ``given`` (typed into the login form) is this node's API token."""
    return same_secret(given, request.app[STATE].credentials.api_token)


def login_nonce() -> str:
    """A fresh double-submit value for one login form."""
    return secrets.token_urlsafe(16)


def offer_login(response: web.StreamResponse, nonce: str) -> None:
    """Set the cookie half of the login form's ``nonce`` on ``response``."""
    response.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="Strict", path="/login")


def login_nonce_ok(request: web.Request, nonce: str) -> bool:
    """Whether the login form's ``nonce`` field matches its cookie (the form came from us)."""
    return same_secret(request.cookies.get(LOGIN_COOKIE), nonce)


def start(request: web.Request, response: web.StreamResponse, token: str) -> None:
    """Open a session on ``response`` for the (checked) API token ``token``."""
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        path="/",
        secure=request.secure,
        max_age=SESSION_DAYS * 86400,
    )
    response.del_cookie(LOGIN_COOKIE, path="/login")


def end(response: web.StreamResponse) -> None:
    """Close the session on ``response``."""
    response.del_cookie(COOKIE, path="/")
