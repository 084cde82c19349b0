"""The OpenAPI 3.0 document of a node's REST API, served at ``/api/v1/openapi.json``.

It is the published contract: the path prefix and the page limits below are the ones the
handlers in :mod:`commgraph.web.api` apply, so the document and the server cannot disagree.
Plain data built once at import; no request handling here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from commgraph.alerts import Action, AlertState
from commgraph.graph import Label
from commgraph.model import LABELS

__all__ = ["ALERTS_LIMIT", "ALERTS_LIMIT_MAX", "OPENAPI", "PREFIX"]

PREFIX: Final = "/api/v1"
# Alerts per answer of GET /api/v1/alerts: unless asked, and at most.
ALERTS_LIMIT: Final = 100
ALERTS_LIMIT_MAX: Final = 1000


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(description: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    words = {
        400: "Malformed body or bad value (the message names the field).",
        401: "Missing or wrong API token.",
        404: "No such item.",
        409: "The item is not in a state that allows this.",
        410: "The link has expired.",
    }
    return {
        str(code): {
            "description": words[code],
            "content": {"application/json": {"schema": _ref("Error")}},
        }
        for code in codes
    }


def _array(name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name)}


def _path_param(name: str, description: str, schema_type: str = "string") -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": schema_type},
    }


def _query(name: str, values: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if values:
        schema["enum"] = values
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _integer_query(
    name: str, description: str, *, default: int, minimum: int = 0, maximum: int | None = None
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "minimum": minimum, "default": default}
    if maximum is not None:
        schema["maximum"] = maximum
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _body_schema(schema: Mapping[str, Any], *, required: bool) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


_WHO_FIELDS: dict[str, Any] = {
    "reason": {"type": "string", "description": "Why, for the audit log."},
    "by": {"type": "string", "default": "api", "description": "Who decided."},
}
_WHO = {"type": "object", "properties": _WHO_FIELDS}
_ALERT_ID = _path_param("id", "The alert's number.", "integer")
_SERVICE = _path_param("name", "The service's name.")
_TIME = {"type": "number", "description": "Epoch seconds."}
_NULLABLE_TIME = {"type": "number", "nullable": True, "description": "Epoch seconds."}
_ANY_OBJECT = {"type": "object", "additionalProperties": True}


def _decide_op(action: str) -> dict[str, Any]:
    return {
        "summary": f"{action.capitalize()} an alert (durable before the answer).",
        "operationId": f"{action}Alert",
        "parameters": [_ALERT_ID],
        "requestBody": _body_schema(_WHO, required=False),
        "responses": {
            "200": _ok("The updated alert.", _ref("Alert")),
            **_errors(400, 401, 404, 409),
        },
    }


OPENAPI: Final[dict[str, Any]] = {
    "openapi": "3.0.3",
    "info": {
        "title": "commgraph node API",
        "version": "1",
        "description": "Who talks to whom on this node: services, edges, alerts, decisions. "
        "Send the node's API token as 'Authorization: Bearer TOKEN'.",
    },
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}],
    "paths": {
        "/healthz": {
            "get": {
                "summary": "Liveness.",
                "operationId": "health",
                "security": [],
                "responses": {
                    "200": _ok(
                        "The node is up.",
                        {
                            "type": "object",
                            "properties": {
                                "status": {"type": "string", "enum": ["ok"]},
                                "node": {"type": "string"},
                                "schema": {"type": "integer"},
                            },
                        },
                    )
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text exposition of the node's counters.",
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "Metrics.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(401),
                },
            }
        },
        f"{PREFIX}/openapi.json": {
            "get": {
                "summary": "This document.",
                "operationId": "openapi",
                "security": [],
                "responses": {"200": _ok("OpenAPI 3.0 document.", _ANY_OBJECT)},
            }
        },
        f"{PREFIX}/services": {
            "get": {
                "summary": "Services with phase, mode and learning progress.",
                "operationId": "listServices",
                "responses": {"200": _ok("Services.", _array("Service")), **_errors(401)},
            }
        },
        f"{PREFIX}/services/{{name}}": {
            "get": {
                "summary": "One service with its edges.",
                "operationId": "getService",
                "parameters": [_SERVICE],
                "responses": {
                    "200": _ok(
                        "The service.",
                        {
                            "allOf": [
                                _ref("Service"),
                                {"type": "object", "properties": {"edges": _array("Edge")}},
                            ]
                        },
                    ),
                    **_errors(401, 404),
                },
            }
        },
        f"{PREFIX}/services/{{name}}/mode": {
            "post": {
                "summary": "Set the service's mode (null: back to the configured one).",
                "operationId": "setMode",
                "parameters": [_SERVICE],
                "requestBody": _body_schema(
                    {
                        "type": "object",
                        "required": ["mode"],
                        "properties": {
                            "mode": {
                                "type": "string",
                                "nullable": True,
                                "enum": ["learn", "monitor", "protect", None],
                            },
                            **_WHO_FIELDS,
                        },
                    },
                    required=True,
                ),
                "responses": {
                    "200": _ok("The decision.", _ref("Decision")),
                    **_errors(400, 401, 404, 409),
                },
            }
        },
        f"{PREFIX}/services/{{name}}/learning/reset": {
            "post": {
                "summary": "Restart learning at the service's next message.",
                "operationId": "resetLearning",
                "parameters": [_SERVICE],
                "requestBody": _body_schema(_WHO, required=False),
                "responses": {
                    "200": _ok("The decision.", _ref("Decision")),
                    **_errors(400, 401, 404, 409),
                },
            }
        },
        f"{PREFIX}/edges": {
            "get": {
                "summary": "Edges, optionally of one service and/or with one label.",
                "operationId": "listEdges",
                "parameters": [
                    _query("service"),
                    _query("label", [label.text for label in Label]),
                ],
                "responses": {"200": _ok("Edges.", _array("Edge")), **_errors(400, 401)},
            }
        },
        f"{PREFIX}/alerts": {
            "get": {
                "summary": "One page of alerts, oldest first, optionally in one state.",
                "operationId": "listAlerts",
                "parameters": [
                    _query("state", [s.value for s in AlertState]),
                    _integer_query(
                        "limit",
                        "How many alerts at most.",
                        default=ALERTS_LIMIT,
                        minimum=1,
                        maximum=ALERTS_LIMIT_MAX,
                    ),
                    _integer_query("offset", "How many matching alerts to skip.", default=0),
                ],
                "responses": {
                    "200": {
                        **_ok("The page of alerts.", _array("Alert")),
                        "headers": {
                            "X-Total-Count": {
                                "description": "How many alerts match, on all pages.",
                                "schema": {"type": "integer", "minimum": 0},
                            },
                            "Link": {
                                "description": 'RFC 8288 links to the pages around: rel="next"'
                                ' and rel="prev", each only if that page holds alerts; URI'
                                " references relative to the request.",
                                "schema": {"type": "string"},
                            },
                        },
                    },
                    **_errors(400, 401),
                },
            }
        },
        f"{PREFIX}/alerts/{{id}}": {
            "get": {
                "summary": "One alert.",
                "operationId": "getAlert",
                "parameters": [_ALERT_ID],
                "responses": {"200": _ok("The alert.", _ref("Alert")), **_errors(400, 401, 404)},
            }
        },
        f"{PREFIX}/alerts/{{id}}/approve": {"post": _decide_op("approve")},
        f"{PREFIX}/alerts/{{id}}/deny": {"post": _decide_op("deny")},
        f"{PREFIX}/graph": {
            "get": {
                "summary": "The graph: with topics, or folded to service -> service edges.",
                "operationId": "graph",
                "parameters": [_query("view", ["topics", "services"])],
                "responses": {
                    "200": _ok(
                        "Vertices and edges.",
                        {
                            "type": "object",
                            "properties": {
                                "vertices": _array("Vertex"),
                                "edges": {"type": "array", "items": _ANY_OBJECT},
                            },
                        },
                    ),
                    **_errors(400, 401),
                },
            }
        },
        f"{PREFIX}/models": {
            "get": {
                "summary": "The service models this node keeps (its own, the site's, imported).",
                "operationId": "listModels",
                "responses": {"200": _ok("Kept models.", _array("Model")), **_errors(401)},
            }
        },
        f"{PREFIX}/models/{{service}}": {
            "get": {
                "summary": "The kept models of one service, one per issuing node.",
                "operationId": "getModels",
                "parameters": [_path_param("service", "The service's name.")],
                "responses": {
                    "200": _ok("Its kept models.", _array("Model")),
                    **_errors(401, 404),
                },
            }
        },
        f"{PREFIX}/timeline": {
            "get": {
                "summary": "Per-minute graph size, anomalies and decisions.",
                "operationId": "timeline",
                "responses": {
                    "200": _ok("Minutes, oldest first.", _array("TimelineRow")),
                    **_errors(401),
                },
            }
        },
        f"{PREFIX}/decisions": {
            "get": {
                "summary": "The audit log, oldest first.",
                "operationId": "listDecisions",
                "responses": {"200": _ok("Decisions.", _array("Decision")), **_errors(401)},
            }
        },
        f"{PREFIX}/act/{{token}}": {
            "post": {
                "summary": "Carry out a notification link (single use, expires; no API token).",
                "operationId": "act",
                "security": [],
                "parameters": [_path_param("token", "The signed action token from the link.")],
                "responses": {
                    "200": _ok(
                        "Done.",
                        {
                            "type": "object",
                            "properties": {
                                "alert": _ref("Alert"),
                                "message": {"type": "string"},
                            },
                        },
                    ),
                    "409": {
                        "description": "The link was already used, or the alert is already "
                        "in that state.",
                        "content": {"application/json": {"schema": _ref("Error")}},
                    },
                    **_errors(400, 404, 410),
                },
            }
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error", "status"],
                "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
            },
            "Service": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "phase": {"type": "string", "enum": ["learning", "active"]},
                    "mode": {"type": "string", "enum": ["learn", "monitor", "protect"]},
                    "mode_source": {
                        "type": "string",
                        "enum": ["owner", "promoted", "config", "default"],
                        "description": "Set on the service by someone (owner) or by "
                        "commgraph's promotion (promoted), or the config's.",
                    },
                    "mode_set_by": {
                        "type": "string",
                        "nullable": True,
                        "description": "Who last set the service's mode (commgraph for a "
                        "promotion); null if nobody ever did.",
                    },
                    "mode_set_at": _NULLABLE_TIME,
                    "quiet_since": _NULLABLE_TIME,
                    "promote_at": {
                        **_NULLABLE_TIME,
                        "description": "With [modes] promote_after: when this monitored "
                        "service is promoted to protect if nothing is asked about it before.",
                    },
                    "promotion": {
                        "type": "string",
                        "nullable": True,
                        "enum": ["counting", "waiting", None],
                        "description": "counting towards promote_at, or waiting for its open "
                        "questions; null if it is not on its way to protect.",
                    },
                    "learning_started_at": _NULLABLE_TIME,
                    "learning_ends_at": _NULLABLE_TIME,
                    "learned_at": _NULLABLE_TIME,
                    "learning_progress": {
                        "type": "number",
                        "nullable": True,
                        "minimum": 0,
                        "maximum": 1,
                    },
                    "learning_left_s": {"type": "number", "nullable": True},
                    "events": {"type": "integer"},
                    "first_seen": _TIME,
                    "edges": {"type": "integer"},
                    "pending_alerts": {"type": "integer"},
                    "instances": {"type": "array", "items": {"type": "string"}},
                    "model_from": {
                        "type": "string",
                        "nullable": True,
                        "description": "The node whose model the service adopted instead of "
                        "learning.",
                    },
                },
            },
            "Model": {
                "type": "object",
                "properties": {
                    "service": {"type": "string"},
                    "node": {"type": "string", "description": "The node that issued it."},
                    "source": {
                        "type": "string",
                        "enum": ["self", "sync", "import"],
                        "description": "This node's own, from the site broker, or imported.",
                    },
                    "received_at": _TIME,
                    "version": {"type": "integer", "nullable": True},
                    "issued_at": _NULLABLE_TIME,
                    "key": {
                        "type": "string",
                        "nullable": True,
                        "description": "Id of the key that signed it.",
                    },
                    "edges": {
                        "type": "integer",
                        "nullable": True,
                        "description": "How many edges the model holds.",
                    },
                    "model": {
                        "allOf": [_ref("ModelDocument")],
                        "nullable": True,
                        "description": "The signed document, parsed.",
                    },
                    "envelope": {
                        "type": "object",
                        "nullable": True,
                        "description": "The signed envelope as kept: the canonical document "
                        "as a string, the key id and the base64 Ed25519 signature.",
                        "properties": {
                            "document": {"type": "string"},
                            "key": {"type": "string"},
                            "signature": {"type": "string"},
                        },
                    },
                },
            },
            "ModelDocument": {
                "type": "object",
                "properties": {
                    "schema": {"type": "integer"},
                    "service": {"type": "string"},
                    "version": {"type": "integer"},
                    "node": {"type": "string"},
                    "issued_at": _TIME,
                    "edges": {"type": "array", "items": _ref("ModelEdge")},
                },
            },
            "ModelEdge": {
                "type": "object",
                "properties": {
                    "relation": {"type": "string"},
                    "peer": {"type": "string", "description": "Counterpart or its template."},
                    "direction": {"type": "string", "enum": ["out", "in"]},
                    "label": {"type": "string", "enum": sorted(LABELS)},
                    "decided_at": _NULLABLE_TIME,
                    "decided_by": {"type": "string", "nullable": True},
                    "figures": {"type": "object", "additionalProperties": {"type": "number"}},
                },
            },
            "Edge": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "src": {"type": "string"},
                    "dst": {"type": "string"},
                    "relation": {"type": "string"},
                    "label": {"type": "string", "enum": [label.text for label in Label]},
                    "count": {"type": "integer"},
                    "bytes": {"type": "integer"},
                    "first_seen": _TIME,
                    "last_seen": _TIME,
                    "size_min": {"type": "integer", "nullable": True},
                    "size_max": {"type": "integer", "nullable": True},
                    "interval_mean_s": {"type": "number", "nullable": True},
                    "period_s": {"type": "number", "nullable": True},
                    "jitter_s": {"type": "number", "nullable": True},
                    "rate_per_min": {"type": "number", "nullable": True},
                    "interval_stdev_s": {"type": "number", "nullable": True},
                    "src_id": {"type": "integer"},
                    "dst_id": {"type": "integer"},
                    "src_kind": {"type": "string"},
                    "dst_kind": {"type": "string"},
                },
            },
            "Alert": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "kind": {"type": "string"},
                    "src": {"type": "string"},
                    "dst": {"type": "string"},
                    "relation": {"type": "string"},
                    "state": {"type": "string", "enum": [s.value for s in AlertState]},
                    "count": {"type": "integer"},
                    "first_seen": _TIME,
                    "last_seen": _TIME,
                    "node": {"type": "string", "nullable": True},
                    "edge": {"type": "integer"},
                    "decided_by": {"type": "string", "nullable": True},
                    "decided_at": _NULLABLE_TIME,
                    "reason": {"type": "string", "nullable": True},
                },
            },
            "Decision": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "nullable": True},
                    "action": {"type": "string", "enum": [a.value for a in Action]},
                    "by": {"type": "string"},
                    "at": _TIME,
                    "reason": {"type": "string"},
                    "alert": {"type": "integer", "nullable": True},
                    "service": {"type": "string", "nullable": True},
                    "edge": {
                        "type": "array",
                        "nullable": True,
                        "items": {"type": "string"},
                        "description": "[src, dst, relation] (POST answers).",
                    },
                    "src": {"type": "string", "nullable": True},
                    "dst": {"type": "string", "nullable": True},
                    "relation": {"type": "string", "nullable": True},
                    "detail": {"type": "string"},
                },
            },
            "Vertex": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "name": {"type": "string"},
                    "kind": {"type": "string"},
                    "owner": {"type": "string", "nullable": True},
                    "first_seen": _TIME,
                    "events": {"type": "integer"},
                },
            },
            "TimelineRow": {
                "type": "object",
                "properties": {
                    "ts": _TIME,
                    "vertices": {"type": "integer"},
                    "services": {"type": "integer"},
                    "edges": {"type": "integer"},
                    "learned": {"type": "integer"},
                    "anomalies": {"type": "integer"},
                    "learning": {"type": "integer"},
                    "decisions": {"type": "integer"},
                },
            },
        },
    },
}
