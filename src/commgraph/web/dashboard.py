"""The owner's dashboard: server-rendered pages over the node's store, readable on a phone.

Every page except ``/login`` and ``/act/{token}`` needs the API token, kept after the login
form in a session cookie; every state-changing form carries a ``csrf`` field (both in
:mod:`commgraph.web.session`). The pages work without JavaScript; handlers get the node from
``request.app[STATE]``: owner actions go through :class:`commgraph.web.state.Node` (durable
before the redirect), reads go to the store.

``/act/{token}`` is what a notification link opens: GET only shows what would happen, the
one POST button does it; the signed token authorizes, once (the store records its nonce).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import jinja2
from aiohttp import web
from markupsafe import Markup

from commgraph.alerts import Action, describe_row
from commgraph.errors import DecisionError, UnknownItemError
from commgraph.events import describe_edge
from commgraph.export import LABEL_COLOURS, service_view
from commgraph.links import ActionToken, TokenError, is_sound, read_action_token
from commgraph.phases import LearningSettings, Mode, format_duration
from commgraph.web import render, session
from commgraph.web.api import model_rows, whole_number
from commgraph.web.state import STATE

__all__ = ["setup"]

FLASH_COOKIE = "commgraph_flash"
HERE = Path(__file__).parent
TEMPLATES = web.AppKey("dashboard_templates", jinja2.Environment)
MODES = ("default", *(m.value for m in Mode))
ALERT_STATES = ("pending", "approved", "denied")
OVERVIEW_ALERTS = 20  # the newest pending alerts on the overview; the rest on /alerts
ALERTS_PAGE = 50  # alerts per page of /alerts


@dataclass(frozen=True, slots=True)
class Pager:
    """Where one page of a listing lies: rows ``first`` to ``last`` (from 1) of ``total``,
    and the links to the pages before and after it (None at either end)."""

    first: int
    last: int
    total: int
    previous: str | None
    next: str | None


def setup(app: web.Application) -> None:
    """Register the dashboard's pages and its static files on ``app`` (which holds STATE)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = _when
    env.filters["ago"] = _ago
    env.filters["q"] = lambda text: quote(str(text), safe="")
    env.globals["colours"] = LABEL_COLOURS
    env.globals["describe"] = describe_edge
    env.globals["alert_words"] = describe_row
    app[TEMPLATES] = env
    r = app.router
    r.add_get("/login", login_page)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_get("/", overview)
    r.add_get("/graph", graph)
    r.add_get("/services/{name}", service)
    r.add_post("/services/{name}/mode", set_mode)
    r.add_post("/services/{name}/reset", reset_learning)
    r.add_get("/alerts", alerts)
    r.add_post(r"/alerts/{id:\d+}/{action:approve|deny}", decide)
    r.add_get("/timeline", timeline)
    r.add_get("/act/{token}", act_page)
    r.add_post("/act/{token}", act)
    r.add_static("/static/", HERE / "static", append_version=True)


# -- redirects and flash ----------------------------------------------------------------------


def _redirect(target: str) -> web.Response:
    return web.Response(status=303, headers={"Location": target})


def _back(form: Mapping[str, str], default: str, message: str) -> web.Response:
    """A redirect to the form's ``next`` page (same site only) with a flash message."""
    target = form.get("next", "")
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        target = default
    response = _redirect(target)
    response.set_cookie(
        FLASH_COOKIE, quote(message[:300]), httponly=True, samesite="Strict", path="/"
    )
    return response


def _page(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    env = request.app[TEMPLATES]
    flash = request.cookies.get(FLASH_COOKIE)
    context.setdefault("logged_in", session.authorized(request))
    body = env.get_template(template).render(
        csrf=session.csrf_of(request) if context["logged_in"] else "",
        flash=unquote(flash) if flash else None,
        node=request.app[STATE].node.name,
        path=request.path_qs,
        **context,
    )
    response = web.Response(text=body, status=status, content_type="text/html")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'self';"
        " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    if flash:
        response.del_cookie(FLASH_COOKIE, path="/")
    return response


# -- login ------------------------------------------------------------------------------------


async def login_page(request: web.Request) -> web.Response:
    return _login_form(request, status=200, error=None)


def _login_form(request: web.Request, *, status: int, error: str | None) -> web.Response:
    nonce = session.login_nonce()
    response = _page(
        request, "login.html", status=status, login_nonce=nonce, error=error, logged_in=False
    )
    session.offer_login(response, nonce)
    return response


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    token, nonce = form.get("token"), form.get("login_nonce")
    if not isinstance(nonce, str) or not session.login_nonce_ok(request, nonce):
        raise web.HTTPForbidden(text="the login form expired: reload /login and retry")
    if not isinstance(token, str) or not session.is_api_token(request, token.strip()):
        return _login_form(request, status=401, error="That is not this node's API token.")
    response = _redirect("/")
    session.start(request, response, token.strip())
    return response


async def logout(request: web.Request) -> web.Response:
    await session.checked_form(request)
    response = _redirect("/login")
    session.end(response)
    return response


# -- pages ------------------------------------------------------------------------------------


async def overview(request: web.Request) -> web.Response:
    session.require_login(request)
    store = request.app[STATE].node.store
    counts = store.status()
    pending = store.alerts(state="pending", limit=OVERVIEW_ALERTS, newest_first=True)
    waiting = counts["alerts_by_state"]["pending"]
    return _page(
        request,
        "overview.html",
        counts=counts,
        pending=pending,
        waiting=waiting,
        more=max(0, waiting - len(pending)),
        services=store.services(),
        decisions=store.decisions(limit=10, newest_first=True),
        now=time.time(),
    )


async def graph(request: web.Request) -> web.Response:
    session.require_login(request)
    store = request.app[STATE].node.store
    edges = store.edges()
    view = "services" if request.query.get("view") == "services" else "full"
    if view == "services":
        rows = service_view(edges)
        vertices, links = render.service_graph(rows)
        title = "services and who they reach"
    else:
        rows = edges
        vertices, links = render.full_graph(store.vertices(), edges)
        title = "services, topics and hosts"
    svg = render.graph_svg(vertices, links, title=title)
    urgency = {"pending": 0, "denied": 1, "approved": 2, "learned": 3}
    rows = sorted(rows, key=lambda r: (urgency.get(r["label"], 9), r["src"], r["dst"]))
    return _page(request, "graph.html", svg=Markup(svg), view=view, rows=rows)


async def service(request: web.Request) -> web.Response:
    session.require_login(request)
    name = request.match_info["name"]
    node = request.app[STATE].node
    store = node.store
    found = [s for s in store.services() if s["name"] == name]
    if not found:
        raise web.HTTPNotFound(text=f"no service named {name!r}")
    info = found[0]
    now = time.time()
    progress = None
    started, ends = info["learning_started_at"], info["learning_ends_at"]
    if info["phase"] == "learning" and started is not None and ends is not None:
        total = max(ends - started, 1e-9)
        progress = {
            "percent": max(0.0, min(100.0, (now - started) / total * 100)),
            "left": max(0.0, ends - now),
        }
    after = (store.settings() or LearningSettings()).promote_after
    return _page(
        request,
        "service.html",
        service=info,
        promote_after=format_duration(after) if after else "-",
        progress=progress,
        edges=store.edges(service=name),
        models=model_rows(node, name),
        modes=MODES,
        now=now,
    )


async def alerts(request: web.Request) -> web.Response:
    session.require_login(request)
    state = request.query.get("state") or None
    if state is not None and state not in ALERT_STATES:
        raise web.HTTPBadRequest(text=f"state must be one of {', '.join(ALERT_STATES)}")
    text = request.query.get("page", "1")
    asked = whole_number(text)
    if asked is None or asked < 1:
        raise web.HTTPBadRequest(text=f"page must be a whole number from 1, not {text[:40]!r}")
    store = request.app[STATE].node.store
    total = store.count_alerts(state)
    # past the last page (its alerts were just decided, say): the last page
    number = min(asked, max(1, -(-total // ALERTS_PAGE)))
    offset = (number - 1) * ALERTS_PAGE
    rows = store.alerts(state=state, limit=ALERTS_PAGE, offset=offset, newest_first=True)

    def link(to: int) -> str:
        return "/alerts?" + (f"state={state}&" if state else "") + f"page={to}"

    pager = Pager(
        first=offset + 1,
        last=offset + len(rows),
        total=total,
        previous=link(number - 1) if number > 1 else None,
        next=link(number + 1) if offset + len(rows) < total else None,
    )
    return _page(request, "alerts.html", alerts=rows, state=state, states=ALERT_STATES, pager=pager)


async def timeline(request: web.Request) -> web.Response:
    session.require_login(request)
    rows = request.app[STATE].node.store.timeline()
    return _page(request, "timeline.html", svg=Markup(render.timeline_svg(rows)), rows=rows)


# -- owner actions ----------------------------------------------------------------------------


async def decide(request: web.Request) -> web.Response:
    form = await session.checked_form(request)
    alert_id = int(request.match_info["id"])
    action = Action(request.match_info["action"])
    try:
        request.app[STATE].node.decide(
            alert_id, action, by="dashboard", reason=form.get("reason", "").strip()[:500]
        )
    except DecisionError as exc:
        return _back(form, "/", f"Not done: {exc}")
    done = "approved" if action is Action.APPROVE else "denied"
    return _back(form, "/", f"Alert {alert_id} {done}.")


async def set_mode(request: web.Request) -> web.Response:
    form = await session.checked_form(request)
    name = request.match_info["name"]
    here = f"/services/{quote(name, safe='')}"
    chosen = form.get("mode", "")
    if chosen not in MODES:
        return _back(form, here, f"Not done: unknown mode {chosen!r}")
    mode = None if chosen == "default" else Mode(chosen)
    try:
        request.app[STATE].node.set_mode(name, mode, by="dashboard", reason=form.get("reason", ""))
    except UnknownItemError:
        raise web.HTTPNotFound(text=f"no service named {name!r}") from None
    except DecisionError as exc:
        return _back(form, here, f"Not done: {exc}")
    return _back(form, here, f"{name}: mode set to {chosen}.")


async def reset_learning(request: web.Request) -> web.Response:
    form = await session.checked_form(request)
    name = request.match_info["name"]
    here = f"/services/{quote(name, safe='')}"
    try:
        request.app[STATE].node.reset_learning(name, by="dashboard", reason=form.get("reason", ""))
    except UnknownItemError:
        raise web.HTTPNotFound(text=f"no service named {name!r}") from None
    except DecisionError as exc:
        return _back(form, here, f"Not done: {exc}")
    return _back(form, here, f"{name}: learning starts again at its next message.")


# -- notification links -----------------------------------------------------------------------


def _act_read(request: web.Request) -> tuple[ActionToken, dict[str, Any]] | web.Response:
    """The action token of the URL and its alert, or the page saying why not."""
    key = request.app[STATE].credentials.link_key
    token = request.match_info["token"]
    try:
        parsed = read_action_token(key, token, now=time.time())
    except TokenError as exc:
        status = 410 if is_sound(key, token) else 400
        return _act_refused(request, status, "This link cannot be used", str(exc))
    alert = request.app[STATE].node.store.alert(parsed.alert)
    if alert is None:
        return _act_refused(request, 404, "Unknown alert", f"There is no alert {parsed.alert}.")
    return parsed, alert


def _act_refused(request: web.Request, status: int, title: str, message: str) -> web.Response:
    return _page(request, "act.html", status=status, title=title, message=message, alert=None)


async def act_page(request: web.Request) -> web.Response:
    """What the link will do, with one button: a GET (link previews) changes nothing."""
    read = _act_read(request)
    if isinstance(read, web.Response):
        return read
    parsed, alert = read
    return _page(
        request,
        "act.html",
        title="Confirm",
        message=None,
        action=parsed.action,
        alert=alert,
        what=describe_row(alert),
    )


async def act(request: web.Request) -> web.Response:
    read = _act_read(request)
    if isinstance(read, web.Response):
        return read
    parsed, alert = read
    what = describe_row(alert)
    node = request.app[STATE].node
    if not node.store.use_token(parsed.nonce, time.time()):
        return _act_refused(
            request,
            409,
            "Link already used",
            f"This link was already used. Alert {alert['id']} ({what}) is {alert['state']}.",
        )
    try:
        node.decide(alert["id"], Action(parsed.action), by="notification link")
    except DecisionError as exc:
        return _act_refused(request, 409, "Nothing to do", str(exc))
    done = "Approved" if parsed.action == "approve" else "Denied"
    return _page(request, "act.html", title="Done", message=f"{done}: {what}.", alert=None)


# -- formatting -------------------------------------------------------------------------------


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _ago(seconds: float | None) -> str:
    """A duration a person reads: ``3 h 12 min``, ``45 s``."""
    if seconds is None:
        return "-"
    s = round(abs(seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {s} s" if minutes < 10 and s else f"{minutes} min"
    return f"{s} s"
