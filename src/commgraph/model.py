"""Service models: the portable, signed form of what one service may do.

A model lists a service's edges with peers in semantic form (topic and route templates), each
with its label and the owner's latest decision. It is written as canonical JSON (one byte
string per model, so a signature over it is stable) and shipped inside a signed envelope::

    {"document": "<canonical model JSON>", "key": "<key id>", "signature": "<base64>"}

Nodes combine the models they receive with :func:`merge`, a join: per edge the greatest
version under one total order wins (latest decision first, then the stronger label), so
merging is commutative, associative and idempotent, and a denial is never lost to an
approval made at the same time.

Everything here is pure: no files, no network, no clock. Bad documents raise
:class:`ModelError` whose ``reason`` says why (see ``REASONS``), naming the field at fault.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from commgraph.errors import ModelError
from commgraph.signing import PrivateKey, PublicKey, key_id, public_pem, sign, verify
from commgraph.templates import matches

__all__ = [
    "DIRECTIONS",
    "LABELS",
    "LABEL_RANK",
    "REASONS",
    "SCHEMA",
    "ModelEdge",
    "ModelError",
    "ModelIndex",
    "ServiceModel",
    "SignedModel",
    "build_model",
    "canonical_json",
    "diff",
    "merge",
    "open_model",
    "parse_model",
    "read_envelope",
    "sign_model",
]

SCHEMA = 1
DIRECTIONS = frozenset({"out", "in"})
# Merge rank at equal decision time: a denial beats everything, nothing beats it.
LABEL_RANK: Mapping[str, int] = MappingProxyType(
    {"learned": 1, "pending": 2, "approved": 3, "denied": 4}
)
LABELS = frozenset(LABEL_RANK)
REASONS = frozenset({"malformed", "unsigned", "unknown-key", "tampered"})

_MODEL_FIELDS = frozenset({"schema", "service", "version", "node", "issued_at", "edges"})
_EDGE_FIELDS = frozenset(
    {"relation", "peer", "direction", "label", "decided_at", "decided_by", "figures"}
)
_ENVELOPE_FIELDS = frozenset({"document", "key", "signature"})
_DECIDING_ACTIONS = frozenset({"approve", "deny"})
# Relations whose peers are MQTT topics, where templates hold wildcards.
_TOPIC_RELATIONS = frozenset({"publish", "subscribe", "deliver"})

EdgeKey = tuple[str, str, str]  # (relation, peer, direction)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelEdge:
    """One thing the service does: ``direction`` "out" when it is the source (publish,
    subscribe, tcp/443), "in" when it receives (deliver)."""

    relation: str
    peer: str
    direction: str
    label: str
    decided_at: float | None = None
    decided_by: str | None = None
    figures: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("relation", "peer"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ModelError(f"edge field {name!r} must be a non-empty string")
        if self.direction not in DIRECTIONS:
            raise ModelError(
                f"edge field 'direction' must be 'out' or 'in', not {self.direction!r}"
            )
        if self.label not in LABELS:
            allowed = ", ".join(sorted(LABELS))
            raise ModelError(f"edge field 'label' must be one of {allowed}, not {self.label!r}")
        if self.decided_at is not None:
            object.__setattr__(self, "decided_at", _finite(self.decided_at, "decided_at"))
        if self.decided_by is not None and not isinstance(self.decided_by, str):
            raise ModelError("edge field 'decided_by' must be a string or null")
        if not isinstance(self.figures, Mapping):
            raise ModelError("edge field 'figures' must be an object of numbers")
        figures: dict[str, float] = {}
        for name, value in sorted(self.figures.items(), key=lambda item: str(item[0])):
            if not isinstance(name, str):
                raise ModelError("edge field 'figures' must have string keys")
            figures[name] = _finite(value, f"figures.{name}")
        object.__setattr__(self, "figures", MappingProxyType(figures))

    @property
    def key(self) -> EdgeKey:
        return (self.relation, self.peer, self.direction)

    def __hash__(self) -> int:
        return hash((self.key, self.label, self.decided_at, self.decided_by, self._figure_items))

    @property
    def _figure_items(self) -> tuple[tuple[str, float], ...]:
        return tuple(sorted(self.figures.items()))

    def _order(self) -> tuple[float, int, tuple[int, str], tuple[tuple[str, float], ...]]:
        """Where this edge stands among versions of the same key; merge keeps the greatest."""
        return (
            -math.inf if self.decided_at is None else self.decided_at,
            LABEL_RANK[self.label],
            (0, "") if self.decided_by is None else (1, self.decided_by),
            self._figure_items,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceModel:
    """Everything one service may do, as issued by ``node`` at ``issued_at``.

    ``edges`` are kept sorted by key; two edges with one key raise ModelError.
    """

    service: str
    version: int
    node: str
    issued_at: float
    edges: tuple[ModelEdge, ...] = ()

    def __post_init__(self) -> None:
        for name in ("service", "node"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ModelError(f"model field {name!r} must be a non-empty string")
        if not isinstance(self.version, int) or isinstance(self.version, bool):
            raise ModelError("model field 'version' must be an integer")
        if self.version < 0:
            raise ModelError("model field 'version' must not be negative")
        object.__setattr__(self, "issued_at", _finite(self.issued_at, "issued_at"))
        edges = tuple(self.edges)
        if not all(isinstance(edge, ModelEdge) for edge in edges):
            raise ModelError("model field 'edges' must hold ModelEdge values")
        edges = tuple(sorted(edges, key=lambda edge: edge.key))
        for before, after in itertools.pairwise(edges):
            if before.key == after.key:
                relation, peer, direction = after.key
                raise ModelError(
                    f"duplicate edge in model of {self.service}: {relation} {peer} ({direction})"
                )
        object.__setattr__(self, "edges", edges)

    def edge(self, relation: str, peer: str, direction: str = "out") -> ModelEdge | None:
        """The edge with that key, if the model has it."""
        for edge in self.edges:
            if edge.key == (relation, peer, direction):
                return edge
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedModel:
    """An envelope as received: the model document's bytes and, if signed, by which key."""

    document: bytes
    signature: bytes | None
    key_id: str | None


# --- canonical JSON -------------------------------------------------------------------------


def canonical_json(model: ServiceModel) -> bytes:
    """The one byte string of ``model``: sorted keys, no spaces, UTF-8, floats by repr."""
    return _dumps(
        {
            "schema": SCHEMA,
            "service": model.service,
            "version": model.version,
            "node": model.node,
            "issued_at": model.issued_at,
            "edges": [
                {
                    "relation": edge.relation,
                    "peer": edge.peer,
                    "direction": edge.direction,
                    "label": edge.label,
                    "decided_at": edge.decided_at,
                    "decided_by": edge.decided_by,
                    "figures": dict(edge.figures),
                }
                for edge in model.edges
            ],
        }
    )


def parse_model(data: bytes) -> ServiceModel:
    """Read a model document (any key order or spacing); raises ModelError only."""
    top = _object(_loads(data, "model"), "model")
    schema = top.get("schema")
    if "schema" not in top:
        raise ModelError("model: missing field 'schema'")
    if type(schema) is not int or schema != SCHEMA:
        raise ModelError(f"model: unsupported schema {schema!r} (this version reads {SCHEMA})")
    _exact_fields(top, _MODEL_FIELDS, "model")
    raw_edges = top["edges"]
    if not isinstance(raw_edges, list):
        raise ModelError("model: field 'edges' must be a list")
    edges = [_parse_edge(raw, index) for index, raw in enumerate(raw_edges)]
    return ServiceModel(
        service=_typed(top, "service", str, "model"),
        version=_typed(top, "version", int, "model"),
        node=_typed(top, "node", str, "model"),
        issued_at=_number(top, "issued_at", "model"),
        edges=tuple(edges),
    )


def _parse_edge(raw: object, index: int) -> ModelEdge:
    where = f"model: edges[{index}]"
    edge = _object(raw, where)
    _exact_fields(edge, _EDGE_FIELDS, where)
    decided_at = None if edge["decided_at"] is None else _number(edge, "decided_at", where)
    decided_by = None if edge["decided_by"] is None else _typed(edge, "decided_by", str, where)
    figures = _object(edge["figures"], f"{where}: field 'figures'")
    try:
        return ModelEdge(
            relation=_typed(edge, "relation", str, where),
            peer=_typed(edge, "peer", str, where),
            direction=_typed(edge, "direction", str, where),
            label=_typed(edge, "label", str, where),
            decided_at=decided_at,
            decided_by=decided_by,
            figures={name: _number(figures, name, f"{where}: figures") for name in figures},
        )
    except ModelError as exc:
        raise ModelError(f"{where}: {exc}") from exc


# --- signed envelopes -----------------------------------------------------------------------


def sign_model(model: ServiceModel, private_pem: PrivateKey) -> bytes:
    """The signed envelope of ``model``, ready to publish."""
    document = canonical_json(model)
    return _dumps(
        {
            "document": document.decode("utf-8"),
            "key": key_id(public_pem(private_pem)),
            "signature": base64.b64encode(sign(private_pem, document)).decode("ascii"),
        }
    )


def read_envelope(envelope: bytes) -> SignedModel:
    """Split an envelope without checking anything but its shape. A bare model document
    (not wrapped) reads as unsigned."""
    top = _object(_loads(envelope, "envelope"), "envelope")
    if "document" not in top:
        if "schema" in top:
            return SignedModel(document=envelope, signature=None, key_id=None)
        raise ModelError("envelope: missing field 'document'")
    unknown = sorted(set(top) - _ENVELOPE_FIELDS)
    if unknown:
        raise ModelError(f"envelope: unknown field {unknown[0]!r}")
    document = top["document"]
    if not isinstance(document, str):
        raise ModelError("envelope: field 'document' must be a string")
    key = top.get("key")
    if key is not None and not isinstance(key, str):
        raise ModelError("envelope: field 'key' must be a string")
    raw_signature = top.get("signature")
    signature: bytes | None = None
    if raw_signature is not None:
        if not isinstance(raw_signature, str):
            raise ModelError("envelope: field 'signature' must be a base64 string")
        try:
            signature = base64.b64decode(raw_signature.encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error) as exc:
            raise ModelError("envelope: field 'signature' is not valid base64") from exc
    try:
        document_bytes = document.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate from a \ud800 escape
        raise ModelError("envelope: field 'document' is not valid UTF-8 text") from exc
    return SignedModel(document=document_bytes, signature=signature, key_id=key)


def open_model(envelope: bytes, trusted: Mapping[str, PublicKey]) -> ServiceModel:
    """The model inside ``envelope`` if a trusted key (key id -> public PEM) signed it.

    Raises ModelError with ``reason`` "malformed", "unsigned", "unknown-key" or "tampered";
    the document is parsed only after its signature has been checked. A trusted key that is
    not an Ed25519 PEM public key raises SigningError (the site configuration is wrong).
    """
    signed = read_envelope(envelope)
    if signed.signature is None or signed.key_id is None:
        raise ModelError("unsigned model", reason="unsigned")
    public = trusted.get(signed.key_id)
    if public is None:
        raise ModelError(f"signed by an unknown key {signed.key_id}", reason="unknown-key")
    if not verify(public, signed.document, signed.signature):
        raise ModelError("signature does not match: tampered or corrupted", reason="tampered")
    return parse_model(signed.document)


# --- merge and diff -------------------------------------------------------------------------


def merge(a: ServiceModel, b: ServiceModel) -> ServiceModel:
    """The join of two models of one service: every edge of either, per key the greatest
    version (latest decision, then label rank denied > approved > pending > learned, then
    decider and figures); the highest version; node and issue time of the later issue."""
    if a.service != b.service:
        raise ModelError(f"cannot merge models of different services: {a.service}, {b.service}")
    edges: dict[EdgeKey, ModelEdge] = {edge.key: edge for edge in a.edges}
    for edge in b.edges:
        mine = edges.get(edge.key)
        edges[edge.key] = edge if mine is None else _join_edge(mine, edge)
    issuer = max(a, b, key=lambda model: (model.issued_at, model.node))
    return ServiceModel(
        service=a.service,
        version=max(a.version, b.version),
        node=issuer.node,
        issued_at=issuer.issued_at,
        edges=tuple(edges.values()),
    )


def diff(a: ServiceModel, b: ServiceModel) -> list[str]:
    """What changes from ``a`` to ``b``, one line per edge, in key order:
    ``+ publish home/+/temp (learned)``, ``- ...``, ``~ publish x: learned -> denied (by o)``."""
    before = {edge.key: edge for edge in a.edges}
    after = {edge.key: edge for edge in b.edges}
    lines: list[str] = []
    for key in sorted(before.keys() | after.keys()):
        old, new = before.get(key), after.get(key)
        if old is None and new is not None:
            lines.append(f"+ {_describe(new)} ({new.label})")
        elif new is None and old is not None:
            lines.append(f"- {_describe(old)} ({old.label})")
        elif old is not None and new is not None and old != new:
            if (old.label, old.decided_at, old.decided_by) != (
                new.label,
                new.decided_at,
                new.decided_by,
            ):
                by = f" (by {new.decided_by})" if new.decided_by else ""
                lines.append(f"~ {_describe(new)}: {old.label} -> {new.label}{by}")
            else:
                lines.append(f"~ {_describe(new)}: figures changed")
    return lines


def _describe(edge: ModelEdge) -> str:
    if edge.direction == "in":
        return f"{edge.relation} <- {edge.peer}"
    return f"{edge.relation} {edge.peer}"


def _join_edge(a: ModelEdge, b: ModelEdge) -> ModelEdge:
    return a if a._order() >= b._order() else b


class ModelIndex:
    """A model compiled for the engine's new-edge path: which model edge covers a concrete
    relationship of the service.

    Topic templates match as MQTT filters (``home/+/temp`` covers ``home/kitchen/temp``);
    other peers match exactly, or by their template when the caller passes one (an HTTP
    route's ``GET /rooms/{id}``). When several model edges cover one relationship, the
    strongest label wins (a denial over an approval over learning), so a specific denial is
    never shadowed by a broad template.
    """

    __slots__ = ("_exact", "_wildcards", "model")

    def __init__(self, model: ServiceModel) -> None:
        self.model = model
        self._exact: dict[tuple[str, str, str], ModelEdge] = {}
        self._wildcards: dict[tuple[str, str], list[ModelEdge]] = {}
        for edge in model.edges:
            if edge.label == "pending":
                continue  # undecided elsewhere: says nothing about what is allowed
            self._exact[edge.key] = edge
            if edge.relation in _TOPIC_RELATIONS and _has_wildcard(edge.peer):
                self._wildcards.setdefault((edge.relation, edge.direction), []).append(edge)

    def find(
        self, relation: str, direction: str, peer: str, *, template: str | None = None
    ) -> ModelEdge | None:
        """The model edge that decides ``relation`` with concrete ``peer``, or None."""
        found = [
            edge
            for edge in (
                self._exact.get((relation, peer, direction)),
                None if template is None else self._exact.get((relation, template, direction)),
            )
            if edge is not None
        ]
        for edge in self._wildcards.get((relation, direction), ()):
            if edge.peer != peer and matches(edge.peer, peer):
                found.append(edge)
        if not found:
            return None
        return max(found, key=lambda edge: (LABEL_RANK[edge.label], edge._order()))


def _has_wildcard(topic: str) -> bool:
    return "+" in topic.split("/") or topic.split("/")[-1] == "#"


# --- building from the store ----------------------------------------------------------------


def build_model(
    service: str,
    edges: Sequence[Mapping[str, Any]],
    *,
    node: str,
    issued_at: float,
    version: int,
    decisions: Sequence[Mapping[str, Any]] = (),
    peer_form: Callable[[str, str, str], str] | None = None,
) -> ServiceModel:
    """The model of ``service`` from store rows (``Store.edges()``, ``Store.decisions()``).

    Rows not touching the service are skipped, and so are pending edges (undecided: they say
    nothing about what the service may do). An edge from the service is "out" toward its dst,
    one to it is "in" from its src; ``peer_form(relation, direction, peer)`` gives the peer's
    semantic form (a topic template), by default the peer itself; a row's ``figures`` (learned
    rate, period, sizes) go with its edge. Each edge's decision is
    the row's own ``decided_at``/``decided_by`` if it has them, else the latest approve/deny
    row on it (by time, then row order). Rows that end up with one key are joined as in merge.
    """
    latest: dict[tuple[str, str, str], tuple[float, str]] = {}
    for index, row in enumerate(decisions):
        where = f"decision row {index}"
        if _row_str(row, "action", where) not in _DECIDING_ACTIONS or row.get("src") is None:
            continue
        src, dst = _row_str(row, "src", where), _row_str(row, "dst", where)
        edge_id = (src, dst, _row_str(row, "relation", where))
        at = _finite(row.get("at"), f"{where}: 'at'")
        by = _row_str(row, "by", where)
        seen = latest.get(edge_id)
        if seen is None or at >= seen[0]:
            latest[edge_id] = (at, by)
    built: dict[EdgeKey, ModelEdge] = {}
    for index, row in enumerate(edges):
        where = f"edge row {index}"
        src, dst = _row_str(row, "src", where), _row_str(row, "dst", where)
        relation, label = _row_str(row, "relation", where), _row_str(row, "label", where)
        if src == service:
            peer, direction = dst, "out"
        elif dst == service:
            peer, direction = src, "in"
        else:
            continue
        if label == "pending":
            continue
        if peer_form is not None:
            peer = peer_form(relation, direction, peer)
        if row.get("decided_at") is not None:
            decided: tuple[float, str] | None = (
                _finite(row["decided_at"], f"{where}: 'decided_at'"),
                _row_str(row, "decided_by", where),
            )
        else:
            decided = latest.get((src, dst, relation))
        try:
            edge = ModelEdge(
                relation=relation,
                peer=peer,
                direction=direction,
                label=label,
                decided_at=None if decided is None else decided[0],
                decided_by=None if decided is None else decided[1],
                figures=row.get("figures") or {},
            )
        except ModelError as exc:
            raise ModelError(f"{where}: {exc}") from exc
        mine = built.get(edge.key)
        built[edge.key] = edge if mine is None else _join_edge(mine, edge)
    return ServiceModel(
        service=service,
        version=version,
        node=node,
        issued_at=issued_at,
        edges=tuple(built.values()),
    )


# --- small readers --------------------------------------------------------------------------


def _dumps(value: object) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _loads(data: bytes, what: str) -> object:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ModelError(f"{what}: expected bytes, got {type(data).__name__}")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelError(f"{what}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{what}: not JSON ({exc.msg} at line {exc.lineno})") from exc
    except ValueError as exc:  # e.g. an integer longer than Python will convert
        raise ModelError(f"{what}: not usable JSON ({exc})") from exc
    except RecursionError as exc:
        raise ModelError(f"{what}: nested too deeply") from exc


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise ModelError(f"duplicate field {name!r}")
        result[name] = value
    return result


def _no_constant(name: str) -> float:
    raise ModelError(f"{name} is not a number a model may hold")


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ModelError(f"{where}: expected a JSON object")
    return value


def _exact_fields(value: Mapping[str, Any], expected: Iterable[str], where: str) -> None:
    wanted = frozenset(expected)
    missing = sorted(wanted - value.keys())
    if missing:
        raise ModelError(f"{where}: missing field {missing[0]!r}")
    unknown = sorted(value.keys() - wanted)
    if unknown:
        raise ModelError(f"{where}: unknown field {unknown[0]!r}")


def _typed(value: Mapping[str, Any], name: str, kind: type[Any], where: str) -> Any:
    item = value[name]
    if not isinstance(item, kind) or isinstance(item, bool):
        raise ModelError(f"{where}: field {name!r} must be {_KIND_NAMES.get(kind, kind.__name__)}")
    return item


_KIND_NAMES: dict[type[Any], str] = {str: "a string", int: "an integer"}


def _number(value: Mapping[str, Any], name: str, where: str) -> float:
    item = value[name]
    if not isinstance(item, int | float) or isinstance(item, bool):
        raise ModelError(f"{where}: field {name!r} must be a number")
    return _finite(item, name)


def _finite(value: object, name: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ModelError(f"field {name!r} must be a number")
    try:
        number = float(value)
    except OverflowError as exc:
        raise ModelError(f"field {name!r} is out of range") from exc
    if not math.isfinite(number):
        raise ModelError(f"field {name!r} must be a finite number")
    return number


def _row_str(row: Mapping[str, Any], name: str, where: str) -> str:
    value = row.get(name)
    if not isinstance(value, str):
        raise ModelError(f"{where}: {name!r} must be a string")
    return value
