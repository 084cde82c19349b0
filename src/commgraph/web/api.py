"""The REST API of a node, under ``/api/v1``, plus ``/healthz`` and ``/metrics``.

Every answer is JSON (``/metrics`` excepted); an error is ``{"error": SENTENCE, "status":
CODE}``. Everything under ``/api/v1`` needs the API token (``Authorization: Bearer TOKEN``,
or the dashboard's ``commgraph_token`` cookie; see :mod:`commgraph.web.session`), except the
notification links (``/api/v1/act/{token}``, signed themselves) and the OpenAPI document
(:mod:`commgraph.web.openapi`). ``/metrics`` needs the token; ``/healthz`` does not.

Handlers are thin and get everything from ``request.app[STATE]``: reads go to the store,
owner actions to the :class:`~commgraph.web.state.Node` (durable before they return). Errors
map to statuses in one place, :func:`_api_errors`: UnknownItemError 404, DecisionError 409,
bad input 400.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from commgraph.alerts import Action, AlertState, Decision
from commgraph.errors import DecisionError, UnknownItemError
from commgraph.export import service_view
from commgraph.graph import Label
from commgraph.links import TokenError, is_sound, read_action_token
from commgraph.model import (
    ModelError,
    ServiceModel,
    SignedModel,
    canonical_json,
    parse_model,
    read_envelope,
)
from commgraph.phases import Mode
from commgraph.web.openapi import ALERTS_LIMIT, ALERTS_LIMIT_MAX, OPENAPI, PREFIX
from commgraph.web.session import authorized
from commgraph.web.state import STATE, Node

__all__ = ["model_rows", "setup", "whole_number"]

# Routes anyone may call: the notification links carry their own signature.
_PUBLIC_ROUTES: Final = frozenset({"api.act", "api.openapi", "api.healthz"})


class ApiError(Exception):
    """An answer other than success: rendered as ``{"error", "status"}`` by the middleware."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- authentication and errors ----------------------------------------------------------------


def _is_api(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/") or path in ("/healthz", "/metrics")


_STOCK_MESSAGES: Final[Mapping[int, str]] = {
    404: "there is no such resource; see /api/v1/openapi.json for what exists",
    405: "this resource does not accept that method",
    413: "the request body is too large",
}


@web.middleware
async def _api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check the token on API routes and turn every failure into a JSON error."""
    if not _is_api(request.path):
        return await handler(request)  # the dashboard's own business
    try:
        # No route (404/405) reveals nothing openapi.json does not: answer it without a token,
        # so a phone opening a notification link with GET learns that it needs POST.
        match = request.match_info
        public = match.http_exception is not None or match.route.name in _PUBLIC_ROUTES
        if not public and not authorized(request):
            raise ApiError(401, "a valid API token is needed (Authorization: Bearer TOKEN)")
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.message)
    except UnknownItemError as exc:
        return _error(404, str(exc))
    except DecisionError as exc:
        return _error(409, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = _STOCK_MESSAGES.get(exc.status, exc.reason.lower())
        response = _error(exc.status, message)
        if hdrs.ALLOW in exc.headers:
            response.headers[hdrs.ALLOW] = exc.headers[hdrs.ALLOW]
        return response


def _error(status: int, message: str) -> web.Response:
    headers = {hdrs.WWW_AUTHENTICATE: 'Bearer realm="commgraph"'} if status == 401 else None
    return web.json_response({"error": message, "status": status}, status=status, headers=headers)


# -- reading requests -------------------------------------------------------------------------


async def _body(request: web.Request, *, required: bool = False) -> dict[str, Any]:
    """The JSON object in the body; ``{}`` for an empty optional body."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise ApiError(400, "the request needs a JSON object as its body")
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return data


def _text_field(body: Mapping[str, Any], field: str, default: str) -> str:
    value = body.get(field, default)
    if not isinstance(value, str):
        raise ApiError(400, f"field {field!r} must be a string")
    return value


def _who(body: Mapping[str, Any]) -> tuple[str, str]:
    """(by, reason) of an owner action."""
    by = _text_field(body, "by", "api").strip()
    if not by:
        raise ApiError(400, "field 'by' must not be empty")
    return by, _text_field(body, "reason", "")


def _choice(request: web.Request, name: str, allowed: Iterable[str]) -> str | None:
    value = request.query.get(name)
    options = list(allowed)
    if value is not None and value not in options:
        raise ApiError(
            400, f"query parameter {name!r} must be one of {', '.join(options)}, not {value!r}"
        )
    return value


def whole_number(text: str) -> int | None:
    """``text`` as a whole number if it is ASCII digits only (no sign, space, decimals or
    exponent), else None."""
    if not (text.isascii() and text.isdigit()):
        return None
    try:
        return int(text)
    except ValueError:  # more digits than Python converts
        return None


def _whole_param(
    request: web.Request, name: str, *, default: int, least: int = 0, most: int | None = None
) -> int:
    """Query parameter ``name`` as a whole number from ``least`` (to ``most``), ``default``
    if absent."""
    text = request.query.get(name)
    if text is None:
        return default
    value = whole_number(text)
    if value is None or value < least or (most is not None and value > most):
        allowed = f"{least} or more" if most is None else f"from {least} to {most}"
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise ApiError(
            400, f"query parameter {name!r} must be a whole number {allowed}, not {shown!r}"
        )
    return value


def _alert_id(request: web.Request) -> int:
    text = request.match_info["id"]
    value = whole_number(text)
    if value is None:
        raise ApiError(400, f"alert id must be a positive integer, not {text!r}")
    return value


def _node(request: web.Request) -> Node:
    return request.app[STATE].node


def _alert_row(node: Node, alert_id: int) -> dict[str, Any]:
    row = node.store.alert(alert_id)
    if row is None:
        raise ApiError(404, f"there is no alert {alert_id}")
    return row


def _service_row(node: Node, name: str) -> dict[str, Any]:
    for row in _services(node):
        if row["name"] == name:
            return row
    raise ApiError(404, f"there is no service {name!r}")


def _services(node: Node) -> list[dict[str, Any]]:
    now = time.time()
    rows = node.store.services()
    for row in rows:
        row["learning_progress"], row["learning_left_s"] = _learning(row, now)
    return rows


def _learning(row: Mapping[str, Any], now: float) -> tuple[float | None, float | None]:
    """(progress 0..1, seconds left) of a service's learning phase; None before it starts."""
    if row["phase"] == "active":
        return 1.0, 0.0
    started, ends = row["learning_started_at"], row["learning_ends_at"]
    if started is None or ends is None:
        return None, None
    if ends <= started:
        return 1.0, 0.0
    progress = min(1.0, max(0.0, (now - started) / (ends - started)))
    return progress, max(0.0, ends - now)


def _decision_json(decision: Decision) -> dict[str, Any]:
    data = dataclasses.asdict(decision)
    data["action"] = decision.action.value
    data["edge"] = list(decision.edge) if decision.edge else None
    return data


# -- handlers ---------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    node = _node(request)
    return web.json_response(
        {"status": "ok", "node": node.name, "schema": node.store.schema_version}
    )


class _NodeCollector(Collector):
    """The node's counters and the store's tallies, read once per scrape."""

    def __init__(self, counters: Mapping[str, float], status: Mapping[str, Any]) -> None:
        self.counters = counters
        self.status = status

    def collect(self) -> Iterable[Metric]:
        c, s = self.counters, self.status

        def counter(name: str, doc: str, key: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=c.get(key, 0.0))

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield counter("commgraph_events", "Events observed.", "events")
        yield gauge("commgraph_edges", "Edges of the communication graph.", c.get("edges", 0.0))
        yield _labelled("commgraph_alerts", "Alerts by state.", "state", s["alerts_by_state"])
        yield _labelled("commgraph_edges_by_label", "Edges by label.", "label", s["edges_by_label"])
        yield _labelled("commgraph_alerts_by_kind", "Alerts by kind.", "kind", s["alerts_by_kind"])
        yield _labelled("commgraph_services", "Services by phase.", "phase", s["services_by_phase"])
        signals = CounterMetricFamily(
            "commgraph_signals",
            "What the protocol said about connections, per signal (for the guardrails).",
            labels=["signal"],
        )
        for key in sorted(k for k in c if k.startswith("signals_")):
            signals.add_metric([key.removeprefix("signals_")], c[key])
        yield signals
        failures = CounterMetricFamily(
            "commgraph_part_failures",
            "Calls into a part (notify, sync, web, capture, tick) that failed and were skipped.",
            labels=["part"],
        )
        for key in sorted(k for k in c if k.startswith("failures_")):
            failures.add_metric([key.removeprefix("failures_")], c[key])
        yield failures
        yield counter("commgraph_proxy_refused", "CONNECTs the node refused.", "proxy_refused")
        yield gauge(
            "commgraph_clients_bound",
            "Client ids bound to a service now (open connections).",
            c.get("clients_bound", 0.0),
        )
        yield gauge(
            "commgraph_proxy_connections_open",
            "Client connections open in the proxy.",
            c.get("proxy_connections_open", 0.0),
        )
        yield counter(
            "commgraph_proxy_connections",
            "Client connections accepted by the proxy.",
            "proxy_connections_total",
        )
        yield counter("commgraph_proxy_packets", "Packets relayed by the proxy.", "proxy_packets")
        yield counter(
            "commgraph_proxy_blocked", "Packets the proxy blocked on a verdict.", "proxy_blocked"
        )
        yield counter(
            "commgraph_decode_errors", "Connections closed on undecodable input.", "decode_errors"
        )
        yield counter(
            "commgraph_engine_errors", "Messages the engine failed to classify.", "engine_errors"
        )
        yield from _sidecar_families(c)


# counter of SidecarStats -> (metric, help, a gauge?)
_SIDECAR_METRICS = {
    "connections_open": ("commgraph_http_connections_open", "Caller connections open.", True),
    "connections_total": ("commgraph_http_connections", "Caller connections accepted.", False),
    "requests": ("commgraph_http_requests", "Requests the sidecar classified.", False),
    "blocked": ("commgraph_http_blocked", "Requests answered 403 on a verdict.", False),
    "bad_requests": ("commgraph_http_bad_requests", "Requests answered 400/413/431.", False),
    "upstream_errors": (
        "commgraph_http_upstream_errors",
        "Requests the upstream could not answer (502).",
        False,
    ),
    "refused_connections": (
        "commgraph_http_refused",
        "Caller connections refused (denied newcomers, guardrails).",
        False,
    ),
    "engine_errors": ("commgraph_http_engine_errors", "Requests the engine failed on.", False),
}


def _sidecar_families(c: Mapping[str, float]) -> Iterable[Metric]:
    """The HTTP sidecars' counters (``http/<counter>/<service>``), labelled by service."""
    for name, (metric, doc, is_gauge) in _SIDECAR_METRICS.items():
        family: GaugeMetricFamily | CounterMetricFamily = (
            GaugeMetricFamily(metric, doc, labels=["service"])
            if is_gauge
            else CounterMetricFamily(metric, doc, labels=["service"])
        )
        prefix = f"http/{name}/"
        for key in sorted(k for k in c if k.startswith(prefix)):
            family.add_metric([key.removeprefix(prefix)], c[key])
        yield family


def _labelled(name: str, doc: str, label: str, values: Mapping[str, float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], float(value))
    return family


async def metrics(request: web.Request) -> web.Response:
    node = _node(request)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_NodeCollector(node.counters(), node.store.status()))
    return web.Response(
        body=generate_latest(registry), headers={hdrs.CONTENT_TYPE: CONTENT_TYPE_PLAIN_0_0_4}
    )


async def list_services(request: web.Request) -> web.Response:
    return web.json_response(_services(_node(request)))


async def get_service(request: web.Request) -> web.Response:
    node = _node(request)
    name = request.match_info["name"]
    row = _service_row(node, name)
    row["edges"] = node.store.edges(service=name)
    return web.json_response(row)


async def set_mode(request: web.Request) -> web.Response:
    node = _node(request)
    name = request.match_info["name"]
    body = await _body(request, required=True)
    if "mode" not in body:
        raise ApiError(400, "field 'mode' is required (learn, monitor, protect, or null)")
    text = body["mode"]
    if text is not None and text not in set(Mode):
        raise ApiError(
            400, f"field 'mode' must be learn, monitor, protect or null, not {json.dumps(text)}"
        )
    by, reason = _who(body)
    mode = None if text is None else Mode(text)
    decision = node.set_mode(name, mode, by=by, reason=reason)
    return web.json_response(_decision_json(decision))


async def reset_learning(request: web.Request) -> web.Response:
    node = _node(request)
    by, reason = _who(await _body(request))
    decision = node.reset_learning(request.match_info["name"], by=by, reason=reason)
    return web.json_response(_decision_json(decision))


async def list_edges(request: web.Request) -> web.Response:
    label = _choice(request, "label", (label.text for label in Label))
    service = request.query.get("service")
    return web.json_response(_node(request).store.edges(service=service, label=label))


async def list_alerts(request: web.Request) -> web.Response:
    """One page of alerts, oldest first; ``X-Total-Count`` says how many match, ``Link`` where
    the next and previous pages are."""
    state = _choice(request, "state", (s.value for s in AlertState))
    limit = _whole_param(request, "limit", default=ALERTS_LIMIT, least=1, most=ALERTS_LIMIT_MAX)
    offset = _whole_param(request, "offset", default=0)
    store = _node(request).store
    total = store.count_alerts(state)
    offset = min(offset, total)  # past the end is the empty page, whatever the number
    rows = store.alerts(state=state, limit=limit, offset=offset)
    headers = {"X-Total-Count": str(total)}
    links = _page_links(request, offset=offset, limit=limit, total=total)
    if links:
        headers[hdrs.LINK] = links
    return web.json_response(rows, headers=headers)


def _page_links(request: web.Request, *, offset: int, limit: int, total: int) -> str:
    """The RFC 8288 ``Link`` value to the next and previous pages that hold something, as
    references relative to this request (so they stay right behind a reverse proxy)."""
    pages = []
    if offset + limit < total:
        pages.append(("next", offset + limit))
    if offset > 0:
        pages.append(("prev", max(0, offset - limit)))
    kept = [(k, v) for k, v in request.query.items() if k not in ("limit", "offset")]
    return ", ".join(
        f'<{request.rel_url.with_query([*kept, ("limit", limit), ("offset", to)])}>; rel="{rel}"'
        for rel, to in pages
    )


async def get_alert(request: web.Request) -> web.Response:
    return web.json_response(_alert_row(_node(request), _alert_id(request)))


async def _decide(request: web.Request, action: Action) -> web.Response:
    node = _node(request)
    alert_id = _alert_id(request)
    by, reason = _who(await _body(request))
    node.decide(alert_id, action, by=by, reason=reason)
    return web.json_response(_alert_row(node, alert_id))


async def approve(request: web.Request) -> web.Response:
    return await _decide(request, Action.APPROVE)


async def deny(request: web.Request) -> web.Response:
    return await _decide(request, Action.DENY)


async def graph(request: web.Request) -> web.Response:
    view = _choice(request, "view", ("topics", "services")) or "topics"
    store = _node(request).store
    if view == "topics":
        return web.json_response({"vertices": store.vertices(), "edges": store.edges()})
    edges = service_view(store.edges())
    names = {row["src"] for row in edges} | {row["dst"] for row in edges}
    vertices = [v for v in store.vertices() if v["name"] in names and v["kind"] != "topic"]
    return web.json_response({"vertices": vertices, "edges": edges})


def model_rows(node: Node, service: str | None = None) -> list[dict[str, Any]]:
    """The kept model envelopes, each with what its document says (the store only keeps
    envelopes a trusted key signed; one that cannot be read has nulls)."""
    rows = []
    for row in node.store.models(service):
        envelope = row["envelope"]
        signed: SignedModel | None
        model: ServiceModel | None
        outer: Any
        try:
            signed = read_envelope(envelope)
            model = parse_model(signed.document)
            outer = json.loads(envelope)
        except (ModelError, ValueError):
            signed = model = outer = None
        rows.append(
            {
                "service": row["service"],
                "node": row["node"],
                "source": row["source"],
                "received_at": row["received_at"],
                "version": None if model is None else model.version,
                "issued_at": None if model is None else model.issued_at,
                "key": None if signed is None else signed.key_id,
                "edges": None if model is None else len(model.edges),
                "model": None if model is None else json.loads(canonical_json(model)),
                "envelope": outer,
            }
        )
    return rows


async def list_models(request: web.Request) -> web.Response:
    return web.json_response(model_rows(_node(request)))


async def get_models(request: web.Request) -> web.Response:
    service = request.match_info["service"]
    rows = model_rows(_node(request), service)
    if not rows:
        raise ApiError(404, f"no model of service {service!r} is kept on this node")
    return web.json_response(rows)


async def timeline(request: web.Request) -> web.Response:
    return web.json_response(_node(request).store.timeline())


async def decisions(request: web.Request) -> web.Response:
    return web.json_response(_node(request).store.decisions())


_OUTCOMES: Final[Mapping[Action, str]] = {
    Action.APPROVE: "Approved: {src} {relation} {dst} is normal now.",
    Action.DENY: "Denied: {src} {relation} {dst} is not allowed now.",
}


async def act(request: web.Request) -> web.Response:
    """A notification link: the token names the alert and the action, and is used once."""
    node = _node(request)
    key = request.app[STATE].credentials.link_key
    token_text = request.match_info["token"]
    now = time.time()
    try:
        token = read_action_token(key, token_text, now=now)
    except TokenError as exc:
        raise ApiError(410 if is_sound(key, token_text) else 400, str(exc)) from None
    _alert_row(node, token.alert)  # 404 before the link is spent
    if not node.store.use_token(token.nonce, now):
        raise ApiError(409, "this link was already used")
    action = Action(token.action)
    node.decide(token.alert, action, by="notification link")
    row = _alert_row(node, token.alert)
    return web.json_response({"alert": row, "message": _OUTCOMES[action].format(**row)})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


# -- wiring -----------------------------------------------------------------------------------


def setup(app: web.Application) -> None:
    """Add the API's routes and its error/authentication middleware to ``app``."""
    app.middlewares.append(_api_errors)
    p = PREFIX
    app.router.add_get("/healthz", healthz, name="api.healthz")
    app.router.add_get("/metrics", metrics, name="api.metrics")
    app.router.add_get(f"{p}/openapi.json", openapi, name="api.openapi")
    app.router.add_get(f"{p}/services", list_services, name="api.services")
    app.router.add_get(f"{p}/services/{{name}}", get_service, name="api.service")
    app.router.add_post(f"{p}/services/{{name}}/mode", set_mode, name="api.service.mode")
    app.router.add_post(
        f"{p}/services/{{name}}/learning/reset", reset_learning, name="api.service.reset"
    )
    app.router.add_get(f"{p}/edges", list_edges, name="api.edges")
    app.router.add_get(f"{p}/alerts", list_alerts, name="api.alerts")
    app.router.add_get(f"{p}/alerts/{{id}}", get_alert, name="api.alert")
    app.router.add_post(f"{p}/alerts/{{id}}/approve", approve, name="api.alert.approve")
    app.router.add_post(f"{p}/alerts/{{id}}/deny", deny, name="api.alert.deny")
    app.router.add_get(f"{p}/graph", graph, name="api.graph")
    app.router.add_get(f"{p}/models", list_models, name="api.models")
    app.router.add_get(f"{p}/models/{{service}}", get_models, name="api.models.service")
    app.router.add_get(f"{p}/timeline", timeline, name="api.timeline")
    app.router.add_get(f"{p}/decisions", decisions, name="api.decisions")
    app.router.add_post(f"{p}/act/{{token}}", act, name="api.act")
