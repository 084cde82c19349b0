from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Sequence
from functools import reduce
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commgraph.errors import CommgraphError
from commgraph.model import (
    SCHEMA,
    ModelEdge,
    ModelError,
    ModelIndex,
    ServiceModel,
    build_model,
    canonical_json,
    diff,
    merge,
    open_model,
    parse_model,
    read_envelope,
    sign_model,
)
from commgraph.signing import generate_keypair, key_id, sign

T0 = 1_700_000_000.0
PRIVATE, PUBLIC = generate_keypair()
TRUSTED = {key_id(PUBLIC): PUBLIC}
FAST = settings(max_examples=200, deadline=None)


def edge(
    relation: str = "publish",
    peer: str = "home/+/temp",
    direction: str = "out",
    label: str = "learned",
    decided_at: float | None = None,
    decided_by: str | None = None,
    figures: dict[str, float] | None = None,
) -> ModelEdge:
    return ModelEdge(
        relation=relation,
        peer=peer,
        direction=direction,
        label=label,
        decided_at=decided_at,
        decided_by=decided_by,
        figures=figures or {},
    )


def model(
    *edges: ModelEdge, version: int = 1, node: str = "node-a", at: float = T0
) -> ServiceModel:
    return ServiceModel(service="thermo", version=version, node=node, issued_at=at, edges=edges)


SAMPLE = model(
    edge(),
    edge("subscribe", "home/+/cmd", label="approved", decided_at=T0 + 5, decided_by="owner@a"),
    edge("deliver", "home/+/cmd", "in", figures={"rate_per_s": 0.25, "period_s": 60.0}),
    edge("tcp/443", "api.example", label="denied", decided_at=T0 + 9, decided_by="owner@b"),
)


# --- canonical JSON -------------------------------------------------------------------------


def test_canonical_json_is_compact_sorted_and_versioned() -> None:
    one = model(edge(peer="maison/+/température", figures={"rate": 2, "a": 0.1}), at=1.5)
    assert (
        canonical_json(one)
        == (
            '{"edges":[{"decided_at":null,"decided_by":null,"direction":"out",'
            '"figures":{"a":0.1,"rate":2.0},"label":"learned","peer":"maison/+/température",'
            '"relation":"publish"}],"issued_at":1.5,"node":"node-a","schema":1,'
            '"service":"thermo","version":1}'
        ).encode()
    )
    assert json.loads(canonical_json(SAMPLE))["schema"] == SCHEMA


def test_round_trip() -> None:
    assert parse_model(canonical_json(SAMPLE)) == SAMPLE
    assert canonical_json(parse_model(canonical_json(SAMPLE))) == canonical_json(SAMPLE)
    # any spacing and key order reads the same
    pretty = json.dumps(json.loads(canonical_json(SAMPLE)), indent=2).encode()
    assert parse_model(pretty) == SAMPLE


@FAST
@given(st.permutations(SAMPLE.edges))
def test_edge_order_does_not_change_the_bytes(edges: Sequence[ModelEdge]) -> None:
    assert canonical_json(model(*edges)) == canonical_json(SAMPLE)


def test_edges_are_kept_sorted_and_hashable() -> None:
    keys = [e.key for e in SAMPLE.edges]
    assert keys == sorted(keys)
    assert len({*SAMPLE.edges, *parse_model(canonical_json(SAMPLE)).edges}) == 4
    assert SAMPLE.edge("deliver", "home/+/cmd", "in") is SAMPLE.edges[0]
    assert SAMPLE.edge("deliver", "nowhere") is None


def _doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(canonical_json(SAMPLE))
    doc.update(changes)
    return doc


def _edge_doc(**changes: Any) -> dict[str, Any]:
    doc = _doc()
    doc["edges"][0].update(changes)
    return doc


def _without(doc: dict[str, Any], name: str) -> dict[str, Any]:
    del doc[name]
    return doc


def _without_edge_field(name: str) -> dict[str, Any]:
    doc = _doc()
    del doc["edges"][0][name]
    return doc


def _encode(doc: Any) -> bytes:
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[]", "expected a JSON object"),
        (_encode(_doc(schema=2)), "unsupported schema 2"),
        (_encode(_doc(schema="1")), "unsupported schema '1'"),
        (_encode(_without(_doc(), "schema")), "missing field 'schema'"),
        (_encode(_without(_doc(), "node")), "missing field 'node'"),
        (_encode(_doc(extra=1)), "unknown field 'extra'"),
        (_encode(_doc(version="1")), "field 'version' must be an integer"),
        (_encode(_doc(version=True)), "field 'version' must be an integer"),
        (_encode(_doc(version=-1)), "'version' must not be negative"),
        (_encode(_doc(issued_at="now")), "field 'issued_at' must be a number"),
        (_encode(_doc(service="")), "'service' must be a non-empty string"),
        (_encode(_doc(edges={})), "field 'edges' must be a list"),
        (_encode(_doc(edges=[1])), r"edges\[0\]: expected a JSON object"),
        (_encode(_edge_doc(label=5)), r"edges\[0\]: field 'label' must be a string"),
        (_encode(_edge_doc(label="maybe")), r"edges\[0\]: .*'label' must be one of"),
        (_encode(_edge_doc(direction="up")), r"edges\[0\]: .*'direction' must be 'out' or 'in'"),
        (_encode(_edge_doc(decided_at="x")), "field 'decided_at' must be a number"),
        (_encode(_edge_doc(decided_by=3)), "field 'decided_by' must be a string"),
        (_encode(_edge_doc(figures=[])), "'figures': expected a JSON object"),
        (_encode(_edge_doc(figures={"rate": "x"})), "field 'rate' must be a number"),
        (_encode(_edge_doc(peer=None)), "field 'peer' must be a string"),
        (_encode(_without_edge_field("figures")), r"edges\[0\]: missing field 'figures'"),
        (b'{"schema":1,"schema":1}', "duplicate field 'schema'"),
        (canonical_json(SAMPLE).replace(b"1700000000.0", b"NaN"), "NaN is not a number"),
        (
            canonical_json(SAMPLE).replace(b"1700000000.0", b"1e999"),
            "'issued_at' must be a finite number",
        ),
    ],
)
def test_parse_errors_name_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(ModelError, match=message) as caught:
        parse_model(data)
    assert caught.value.reason == "malformed"


def test_duplicate_edge_is_refused() -> None:
    doc = _doc()
    doc["edges"].append(dict(doc["edges"][0], label="denied"))
    with pytest.raises(ModelError, match="duplicate edge in model of thermo: deliver home"):
        parse_model(_encode(doc))
    with pytest.raises(ModelError, match="duplicate edge"):
        model(edge(), edge(label="approved"))


@FAST
@given(
    st.binary(max_size=64)
    | st.builds(
        lambda v: json.dumps(v).encode(),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=5), inner, max_size=3)
            ),
            max_leaves=10,
        ),
    )
)
def test_parse_raises_only_model_error(data: bytes) -> None:
    with contextlib.suppress(ModelError):
        parse_model(data)


def test_model_error_is_a_commgraph_error() -> None:
    assert issubclass(ModelError, CommgraphError)


# --- signed envelopes -----------------------------------------------------------------------


def test_sign_and_open() -> None:
    envelope = sign_model(SAMPLE, PRIVATE)
    outer = json.loads(envelope)
    assert set(outer) == {"document", "key", "signature"}
    assert outer["document"].encode() == canonical_json(SAMPLE)
    assert outer["key"] == key_id(PUBLIC)
    assert len(base64.b64decode(outer["signature"])) == 64
    assert open_model(envelope, TRUSTED) == SAMPLE
    signed = read_envelope(envelope)
    assert (signed.document, signed.key_id) == (canonical_json(SAMPLE), key_id(PUBLIC))


def _reason(envelope: bytes, trusted: dict[str, bytes] = TRUSTED) -> tuple[str, str]:
    with pytest.raises(ModelError) as caught:
        open_model(envelope, trusted)
    return caught.value.reason, str(caught.value)


def test_one_flipped_byte_anywhere_in_the_document_is_tampering() -> None:
    outer = json.loads(sign_model(SAMPLE, PRIVATE))
    document: bytes = outer["document"].encode()
    for index in range(len(document)):
        flipped = bytearray(document)
        flipped[index] ^= 0x01
        outer["document"] = flipped.decode()
        assert _reason(_encode(outer)) == (
            "tampered",
            "signature does not match: tampered or corrupted",
        )


def test_flipped_signature_is_tampering() -> None:
    outer = json.loads(sign_model(SAMPLE, PRIVATE))
    signature = bytearray(base64.b64decode(outer["signature"]))
    signature[10] ^= 0x80
    outer["signature"] = base64.b64encode(signature).decode()
    assert _reason(_encode(outer))[0] == "tampered"
    outer["signature"] = base64.b64encode(b"short").decode()
    assert _reason(_encode(outer))[0] == "tampered"


def test_any_flipped_envelope_byte_is_rejected_as_model_error() -> None:
    envelope = sign_model(SAMPLE, PRIVATE)
    for index in range(len(envelope)):
        flipped = bytearray(envelope)
        flipped[index] ^= 0x01
        reason, _ = _reason(bytes(flipped))
        assert reason in {"malformed", "tampered", "unknown-key"}


def test_unknown_key() -> None:
    other_private, other_public = generate_keypair()
    envelope = sign_model(SAMPLE, other_private)
    assert _reason(envelope) == ("unknown-key", f"signed by an unknown key {key_id(other_public)}")
    # a key id that names a trusted key but a signature by another key is tampering
    outer = json.loads(envelope)
    outer["key"] = key_id(PUBLIC)
    assert _reason(_encode(outer))[0] == "tampered"
    assert open_model(envelope, {**TRUSTED, key_id(other_public): other_public}) == SAMPLE


def test_unsigned() -> None:
    assert _reason(canonical_json(SAMPLE)) == ("unsigned", "unsigned model")
    outer = json.loads(sign_model(SAMPLE, PRIVATE))
    for name in ("signature", "key"):
        assert _reason(_encode({**outer, name: None}))[0] == "unsigned"
        assert _reason(_encode({k: v for k, v in outer.items() if k != name}))[0] == "unsigned"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"document": 5}, "'document' must be a string"),
        ({"signature": "***"}, "not valid base64"),
        ({"signature": 5}, "'signature' must be a base64 string"),
        ({"key": 5}, "'key' must be a string"),
        ({"extra": 1}, "unknown field 'extra'"),
    ],
)
def test_malformed_envelopes(change: dict[str, Any], message: str) -> None:
    outer = json.loads(sign_model(SAMPLE, PRIVATE))
    reason, text = _reason(_encode({**outer, **change}))
    assert reason == "malformed"
    assert message in text


def test_malformed_envelope_shapes() -> None:
    assert _reason(b"nope")[0] == "malformed"
    assert _reason(b'{"key":"x"}') == ("malformed", "envelope: missing field 'document'")


def test_validly_signed_garbage_is_malformed_not_trusted() -> None:
    document = b'{"schema":1,"service":"thermo"}'
    envelope = _encode(
        {
            "document": document.decode(),
            "key": key_id(PUBLIC),
            "signature": base64.b64encode(sign(PRIVATE, document)).decode(),
        }
    )
    assert _reason(envelope) == ("malformed", "model: missing field 'edges'")


# --- merge ----------------------------------------------------------------------------------


def test_merge_latest_decision_wins_and_denial_wins_ties() -> None:
    approved_late = model(edge(label="approved", decided_at=T0 + 20, decided_by="b"))
    denied = model(edge(label="denied", decided_at=T0 + 10, decided_by="a"))
    approved_same = model(edge(label="approved", decided_at=T0 + 10, decided_by="z"))
    learned = model(edge())
    pending = model(edge(label="pending"))
    assert merge(denied, approved_late).edges[0].label == "approved"
    assert merge(approved_same, denied).edges[0].label == "denied"
    assert merge(denied, approved_same).edges[0].label == "denied"
    assert merge(learned, pending).edges[0].label == "pending"
    assert merge(learned, approved_same).edges[0].label == "approved"


def test_merge_unites_edges_and_takes_latest_issue() -> None:
    a = model(edge(peer="a"), version=3, node="node-a", at=T0)
    b = model(edge(peer="b"), version=2, node="node-b", at=T0 + 1)
    merged = merge(a, b)
    assert [e.peer for e in merged.edges] == ["a", "b"]
    assert (merged.version, merged.node, merged.issued_at) == (3, "node-b", T0 + 1)
    same_time = merge(a, model(version=1, node="node-c", at=T0))
    assert same_time.node == "node-c"


def test_merge_refuses_other_services() -> None:
    other = ServiceModel(service="lamp", version=1, node="n", issued_at=T0)
    with pytest.raises(ModelError, match="different services: thermo, lamp"):
        merge(SAMPLE, other)


_times = st.none() | st.sampled_from([1.0, 2.0, 3.0])
_edges = st.builds(
    ModelEdge,
    relation=st.sampled_from(["publish", "deliver"]),
    peer=st.sampled_from(["a", "b/+"]),
    direction=st.sampled_from(["out", "in"]),
    label=st.sampled_from(["learned", "pending", "approved", "denied"]),
    decided_at=_times,
    decided_by=st.none() | st.sampled_from(["x", "y"]),
    figures=st.dictionaries(st.sampled_from(["rate", "period"]), st.sampled_from([0.5, 1.0])),
)
_models = st.builds(
    ServiceModel,
    service=st.just("thermo"),
    version=st.integers(0, 3),
    node=st.sampled_from(["n1", "n2"]),
    issued_at=st.sampled_from([1.0, 2.0]),
    edges=st.lists(_edges, max_size=6, unique_by=lambda e: e.key).map(tuple),
)


@FAST
@given(_models, _models)
def test_merge_is_commutative(a: ServiceModel, b: ServiceModel) -> None:
    assert merge(a, b) == merge(b, a)
    assert canonical_json(merge(a, b)) == canonical_json(merge(b, a))


@FAST
@given(_models, _models, _models)
def test_merge_is_associative(a: ServiceModel, b: ServiceModel, c: ServiceModel) -> None:
    assert merge(merge(a, b), c) == merge(a, merge(b, c))


@FAST
@given(_models, _models)
def test_merge_is_idempotent(a: ServiceModel, b: ServiceModel) -> None:
    assert merge(a, a) == a
    assert merge(merge(a, b), b) == merge(a, b)


@FAST
@given(
    st.lists(_models, min_size=1, max_size=4),
    st.data(),
    st.sampled_from([3.0, 4.0]),
    st.none() | st.sampled_from(["x", "y"]),
)
def test_latest_denial_survives_any_merge_order(
    models: list[ServiceModel], data: st.DataObject, at: float, by: str | None
) -> None:
    denial = ModelEdge(
        relation="publish", peer="a", direction="out", label="denied", decided_at=at, decided_by=by
    )
    where = data.draw(st.integers(0, len(models) - 1))
    target = models[where]
    kept = tuple(e for e in target.edges if e.key != denial.key)
    models[where] = ServiceModel(
        service="thermo",
        version=target.version,
        node=target.node,
        issued_at=target.issued_at,
        edges=(*kept, denial),
    )
    order = data.draw(st.permutations(models))
    folded = reduce(merge, order)
    survivor = folded.edge("publish", "a")
    assert survivor is not None
    assert (survivor.label, survivor.decided_at) == ("denied", at)


# --- diff -----------------------------------------------------------------------------------


def test_diff_lines() -> None:
    before = model(
        edge(),
        edge("publish", "x"),
        edge("subscribe", "old/+"),
        edge("deliver", "home/+/cmd", "in", figures={"rate": 1.0}),
    )
    after = model(
        edge(),
        edge("publish", "x", label="denied", decided_at=T0, decided_by="owner@a"),
        edge("deliver", "home/+/cmd", "in", figures={"rate": 2.0}),
        edge("subscribe", "new/+", label="pending"),
    )
    assert diff(before, after) == [
        "~ deliver <- home/+/cmd: figures changed",
        "~ publish x: learned -> denied (by owner@a)",
        "+ subscribe new/+ (pending)",
        "- subscribe old/+ (learned)",
    ]
    assert diff(after, after) == []


# --- build_model ----------------------------------------------------------------------------

EDGE_ROWS: list[dict[str, Any]] = [
    {"src": "thermo", "dst": "home/+/temp", "relation": "publish", "label": "learned"},
    {"src": "thermo", "dst": "home/+/cmd", "relation": "subscribe", "label": "approved"},
    {"src": "home/+/cmd", "dst": "thermo", "relation": "deliver", "label": "learned"},
    {"src": "thermo", "dst": "evil.example:443", "relation": "tcp/443", "label": "denied"},
    {"src": "lamp", "dst": "home/+/light", "relation": "publish", "label": "learned"},
]
DECISION_ROWS: list[dict[str, Any]] = [
    {
        "action": "approve",
        "by": "owner@a",
        "at": T0 + 10,
        "src": "thermo",
        "dst": "home/+/cmd",
        "relation": "subscribe",
    },
    {"action": "mode", "by": "owner@a", "at": T0 + 11, "src": None, "dst": None, "relation": None},
    {
        "action": "deny",
        "by": "owner@b",
        "at": T0 + 20,
        "src": "thermo",
        "dst": "evil.example:443",
        "relation": "tcp/443",
    },
    {
        "action": "approve",
        "by": "owner@c",
        "at": T0 + 30,
        "src": "thermo",
        "dst": "home/+/cmd",
        "relation": "subscribe",
    },
    {
        "action": "deny",
        "by": "late-writer",
        "at": T0 + 15,
        "src": "thermo",
        "dst": "home/+/cmd",
        "relation": "subscribe",
    },
    {
        "action": "approve",
        "by": "someone",
        "at": T0 + 40,
        "src": "lamp",
        "dst": "home/+/light",
        "relation": "publish",
    },
]


def _build(edges: Sequence[dict[str, Any]], decisions: Sequence[dict[str, Any]]) -> ServiceModel:
    return build_model(
        "thermo", edges, node="node-a", issued_at=T0 + 50, version=4, decisions=decisions
    )


def test_build_model_from_rows() -> None:
    built = _build(EDGE_ROWS, DECISION_ROWS)
    assert built == ServiceModel(
        service="thermo",
        version=4,
        node="node-a",
        issued_at=T0 + 50,
        edges=(
            edge("deliver", "home/+/cmd", "in"),
            edge("publish", "home/+/temp"),
            edge(
                "subscribe",
                "home/+/cmd",
                label="approved",
                decided_at=T0 + 30,
                decided_by="owner@c",
            ),
            edge(
                "tcp/443",
                "evil.example:443",
                label="denied",
                decided_at=T0 + 20,
                decided_by="owner@b",
            ),
        ),
    )


@FAST
@given(st.permutations(EDGE_ROWS))
def test_build_model_bytes_do_not_depend_on_row_order(rows: list[dict[str, Any]]) -> None:
    assert canonical_json(_build(rows, DECISION_ROWS)) == canonical_json(
        _build(EDGE_ROWS, DECISION_ROWS)
    )


def test_build_model_joins_rows_that_share_a_peer() -> None:
    rows = [
        {"src": "thermo", "dst": "home/+/temp", "relation": "publish", "label": "learned"},
        {
            "src": "thermo",
            "dst": "home/+/temp",
            "relation": "publish",
            "label": "approved",
            "decided_at": T0 + 5,
            "decided_by": "owner",
        },
    ]
    assert _build(rows, []).edges == (
        edge(label="approved", decided_at=T0 + 5, decided_by="owner"),
    )


def test_build_model_leaves_out_pending_edges_and_forms_peers() -> None:
    rows = [
        {"src": "thermo", "dst": "home/kitchen/temp", "relation": "publish", "label": "learned"},
        {"src": "thermo", "dst": "home/kitchen/door", "relation": "publish", "label": "pending"},
    ]
    built = build_model(
        "thermo",
        rows,
        node="n",
        issued_at=T0,
        version=1,
        peer_form=lambda relation, direction, peer: peer.replace("kitchen", "+"),
    )
    assert built.edges == (edge("publish", "home/+/temp"),)


def test_model_index_finds_the_strongest_covering_edge() -> None:
    model = ServiceModel(
        service="thermo",
        version=1,
        node="a",
        issued_at=T0,
        edges=(
            edge("publish", "home/+/temp"),
            edge("publish", "home/attic/temp", label="denied", decided_at=T0, decided_by="o"),
            edge("publish", "home/#", label="pending"),
            edge("subscribe", "home/+/cmd", label="approved", decided_at=T0, decided_by="o"),
            edge("deliver", "home/+/cmd", "in"),
            edge("http", "GET /rooms/{id}"),
            edge("tcp/443", "cloud.example"),
        ),
    )
    index = ModelIndex(model)
    found = index.find("publish", "out", "home/kitchen/temp")
    assert found is not None and found.label == "learned" and found.peer == "home/+/temp"
    denied = index.find("publish", "out", "home/attic/temp")
    assert denied is not None and denied.label == "denied"
    assert index.find("publish", "out", "home/kitchen/door") is None  # pending says nothing
    assert index.find("publish", "in", "home/kitchen/temp") is None
    sub = index.find("subscribe", "out", "home/+/cmd")
    assert sub is not None and sub.label == "approved"
    assert index.find("subscribe", "out", "home/#") is None  # wider than the template
    assert index.find("deliver", "in", "home/hall/cmd") is not None
    assert index.find("http", "out", "GET /rooms/12") is None
    assert index.find("http", "out", "GET /rooms/12", template="GET /rooms/{id}") is not None
    assert index.find("tcp/443", "out", "cloud.example") is not None
    assert index.find("tcp/443", "out", "other.example") is None


def test_build_model_bad_rows() -> None:
    with pytest.raises(ModelError, match="edge row 0: 'label' must be a string"):
        _build([{"src": "thermo", "dst": "x", "relation": "publish"}], [])
    with pytest.raises(ModelError, match=r"edge row 0: .*'label' must be one of"):
        _build([{"src": "thermo", "dst": "x", "relation": "publish", "label": "odd"}], [])
    with pytest.raises(ModelError, match="decision row 0: 'at'"):
        _build(
            [],
            [
                {
                    "action": "deny",
                    "by": "o",
                    "at": "soon",
                    "src": "a",
                    "dst": "b",
                    "relation": "publish",
                }
            ],
        )
