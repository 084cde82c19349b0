from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commgraph.errors import DecodeError, EventDecodeError
from commgraph.events import (
    MAX_SIZE,
    MAX_TS,
    Event,
    VertexKind,
    endpoint_kinds,
    iter_event_lines,
    parse_event_line,
)

T0 = 1_700_000_000.0
FIELDS = ("ts", "src", "dst", "relation", "size", "node")


def record(**overrides: object) -> dict[str, object]:
    """A valid event record with some fields replaced (see :func:`without` to remove)."""
    base: dict[str, object] = {
        "ts": T0,
        "src": "thermo-1",
        "dst": "home/kitchen/temp",
        "relation": "publish",
    }
    base.update(overrides)
    return base


def line(**overrides: object) -> str:
    return json.dumps(record(**overrides))


def without(*names: str) -> str:
    rec = record()
    for name in names:
        del rec[name]
    return json.dumps(rec)


# -- Event validation -----------------------------------------------------------------------


def test_valid_event_keeps_its_fields() -> None:
    event = Event(ts=T0, src="a", dst="b", relation="tcp/443", size=12, node="node-a")
    assert (event.ts, event.src, event.dst, event.relation) == (T0, "a", "b", "tcp/443")
    assert (event.size, event.node) == (12, "node-a")


def test_event_is_frozen() -> None:
    event = Event(ts=T0, src="a", dst="b", relation="publish")
    with pytest.raises(AttributeError):
        event.src = "c"  # type: ignore[misc]


def test_event_decode_error_is_a_decode_error() -> None:
    assert issubclass(EventDecodeError, DecodeError)


@pytest.mark.parametrize(
    "ts",
    ["1700000000", None, True, False, math.nan, math.inf, -math.inf, -1.0, -0.5, [1.0]],
)
def test_event_rejects_bad_ts(ts: object) -> None:
    with pytest.raises(EventDecodeError, match="'ts'"):
        Event(ts=ts, src="a", dst="b", relation="publish")  # type: ignore[arg-type]


def test_event_accepts_zero_and_int_ts() -> None:
    assert Event(ts=0, src="a", dst="b", relation="publish").ts == 0
    assert Event(ts=0.0, src="a", dst="b", relation="publish").ts == 0.0


@pytest.mark.parametrize("name", ["src", "dst", "relation"])
@pytest.mark.parametrize("value", ["", "   ", "\t\n"])
def test_event_rejects_empty_names(name: str, value: str) -> None:
    fields: dict[str, object] = {"src": "a", "dst": "b", "relation": "publish"}
    fields[name] = value
    with pytest.raises(EventDecodeError, match=f"'{name}' must not be empty"):
        Event(ts=T0, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["src", "dst", "relation"])
def test_event_rejects_non_string_names(name: str) -> None:
    fields: dict[str, object] = {"src": "a", "dst": "b", "relation": "publish"}
    fields[name] = 7
    with pytest.raises(EventDecodeError, match=f"'{name}' must be a string"):
        Event(ts=T0, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [-1, True, 1.5, 12.0, "12", [12]])
def test_event_rejects_bad_size(size: object) -> None:
    with pytest.raises(EventDecodeError, match="'size'"):
        Event(ts=T0, src="a", dst="b", relation="publish", size=size)  # type: ignore[arg-type]


def test_event_rejects_non_string_node() -> None:
    with pytest.raises(EventDecodeError, match="'node'"):
        Event(ts=T0, src="a", dst="b", relation="publish", node=3)  # type: ignore[arg-type]


def test_event_rejects_huge_int_ts_with_its_own_error() -> None:
    with pytest.raises(EventDecodeError, match="'ts'"):
        Event(ts=10**400, src="a", dst="b", relation="publish")


# -- parse_event_line -----------------------------------------------------------------------


def test_parse_minimal_line() -> None:
    event = parse_event_line(line())
    assert event == Event(ts=T0, src="thermo-1", dst="home/kitchen/temp", relation="publish")
    assert event.size is None and event.node is None


def test_parse_full_line_and_bytes() -> None:
    text = line(size=12, node="node-a")
    for raw in (text, text.encode()):
        event = parse_event_line(raw)
        assert event.size == 12
        assert event.node == "node-a"


def test_parse_int_ts_becomes_float() -> None:
    event = parse_event_line(line(ts=1_700_000_000))
    assert isinstance(event.ts, float)
    assert event.ts == T0


def test_parse_float_size_with_integer_value_is_int() -> None:
    event = parse_event_line(line(size=12.0))
    assert event.size == 12
    assert isinstance(event.size, int)


@pytest.mark.parametrize("size", [12.5, -1, -1.0, True, "12"])
def test_parse_rejects_bad_size(size: object) -> None:
    with pytest.raises(EventDecodeError, match="'size'"):
        parse_event_line(line(size=size))


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "-1", "true", '"1"', "null"])
def test_parse_rejects_bad_ts(raw: str) -> None:
    text = line().replace(f"{T0}", raw, 1)
    assert raw in text
    with pytest.raises(EventDecodeError, match="'ts'"):
        parse_event_line(text)


def test_parse_ignores_unknown_keys() -> None:
    event = parse_event_line(line(qos=1, retain=True, extra={"a": [1, 2]}))
    assert event == Event(ts=T0, src="thermo-1", dst="home/kitchen/temp", relation="publish")


@pytest.mark.parametrize("name", ["ts", "src", "dst", "relation"])
def test_parse_names_the_missing_field(name: str) -> None:
    with pytest.raises(EventDecodeError, match=f"missing field '{name}'"):
        parse_event_line(without(name))


def test_parse_names_every_missing_field() -> None:
    with pytest.raises(EventDecodeError) as info:
        parse_event_line(without("src", "relation"))
    assert "'src'" in info.value.reason
    assert "'relation'" in info.value.reason
    assert "'dst'" not in info.value.reason


@pytest.mark.parametrize("raw", ["[]", "[1, 2]", "3", '"text"', "null", "true"])
def test_parse_rejects_non_object_json(raw: str) -> None:
    with pytest.raises(EventDecodeError, match="expected a JSON object"):
        parse_event_line(raw)


@pytest.mark.parametrize("raw", ["", "{", "{'ts': 1}", "not json", '{"ts": 1,}'])
def test_parse_rejects_invalid_json(raw: str) -> None:
    with pytest.raises(EventDecodeError, match="not valid JSON"):
        parse_event_line(raw)


@pytest.mark.parametrize("raw", [b"\xff\xfe\x00", b'{"ts": 1, "src": "\xff"}', b"\x80abc"])
def test_parse_rejects_invalid_utf8(raw: bytes) -> None:
    with pytest.raises(EventDecodeError):
        parse_event_line(raw)


def test_parse_rejects_deep_nesting() -> None:
    with pytest.raises(EventDecodeError):
        parse_event_line("[" * 100_000 + "]" * 100_000)


def test_parse_puts_line_number_in_message() -> None:
    with pytest.raises(EventDecodeError) as info:
        parse_event_line(without("dst"), line_no=42)
    assert info.value.line == 42
    assert str(info.value).startswith("line 42: ")
    assert "'dst'" in str(info.value)


def test_parse_without_line_number_has_plain_message() -> None:
    with pytest.raises(EventDecodeError) as info:
        parse_event_line("[]")
    assert info.value.line is None
    assert not str(info.value).startswith("line")


def test_parse_rejects_huge_int_ts_with_its_own_error() -> None:
    text = line().replace(f"{T0}", "1" + "0" * 400, 1)
    with pytest.raises(EventDecodeError, match="'ts'"):
        parse_event_line(text)


# -- iter_event_lines -----------------------------------------------------------------------


def test_iter_skips_blank_lines_and_yields_errors_with_line_numbers() -> None:
    lines = [line(), "", "   \n", "[]", line(src="thermo-2"), b"\xff", without("ts")]
    out = list(iter_event_lines(lines))
    assert [n for n, _ in out] == [1, 4, 5, 6, 7]
    kinds = [type(item) for _, item in out]
    assert kinds == [Event, EventDecodeError, Event, EventDecodeError, EventDecodeError]
    errors = {n: item for n, item in out if isinstance(item, EventDecodeError)}
    assert errors[4].line == 4 and str(errors[4]).startswith("line 4: ")
    assert errors[7].line == 7 and "'ts'" in str(errors[7])
    second = out[2][1]
    assert isinstance(second, Event) and second.src == "thermo-2"


def test_iter_accepts_bytes_lines_and_blank_bytes() -> None:
    out = list(iter_event_lines([b"\n", line().encode() + b"\n"]))
    assert len(out) == 1
    assert out[0][0] == 2
    assert isinstance(out[0][1], Event)


def test_iter_of_nothing_is_empty() -> None:
    assert list(iter_event_lines([])) == []
    assert list(iter_event_lines(["", "\n", b"  "])) == []


# -- endpoint_kinds -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relation", "kinds"),
    [
        ("publish", (VertexKind.SERVICE, VertexKind.TOPIC)),
        ("subscribe", (VertexKind.SERVICE, VertexKind.TOPIC)),
        ("deliver", (VertexKind.TOPIC, VertexKind.SERVICE)),
        ("http", (VertexKind.SERVICE, VertexKind.ROUTE)),
        ("tcp/443", (VertexKind.SERVICE, VertexKind.HOST)),
        ("udp/123", (VertexKind.SERVICE, VertexKind.HOST)),
        ("icmp", (VertexKind.SERVICE, VertexKind.HOST)),
        ("http:GET /rooms/{id}", (VertexKind.SERVICE, VertexKind.HOST)),
        ("Publish", (VertexKind.SERVICE, VertexKind.HOST)),
    ],
)
def test_endpoint_kinds(relation: str, kinds: tuple[VertexKind, VertexKind]) -> None:
    assert endpoint_kinds(relation) == kinds


# -- to_json --------------------------------------------------------------------------------


def test_to_json_omits_unset_optional_fields() -> None:
    event = Event(ts=T0, src="a", dst="b", relation="publish")
    assert json.loads(event.to_json()) == {"ts": T0, "src": "a", "dst": "b", "relation": "publish"}
    assert "\n" not in event.to_json()


def test_to_json_round_trip_with_all_fields() -> None:
    event = Event(ts=T0 + 0.123, src="a", dst="b", relation="tcp/80", size=0, node="n")
    assert json.loads(event.to_json())["size"] == 0
    assert parse_event_line(event.to_json()) == event


# -- properties -----------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
event_like_dicts = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=5), json_values, max_size=8
)
# Values that are near-valid for each field, so parsing gets past the first checks often.
near_values = {
    "ts": st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()
    | st.booleans()
    | st.none()
    | st.text(max_size=3),
    "src": st.text(max_size=5) | st.integers() | st.none(),
    "dst": st.text(max_size=5) | st.integers() | st.none(),
    "relation": st.text(max_size=5) | st.integers() | st.none(),
    "size": st.integers() | st.floats() | st.booleans() | st.none() | st.text(max_size=3),
    "node": st.text(max_size=5) | st.integers() | st.none(),
}
near_records = st.fixed_dictionaries(
    {}, optional={name: strategy for name, strategy in near_values.items()}
)


def parses_or_decode_error(raw: str | bytes) -> None:
    try:
        result = parse_event_line(raw, line_no=3)
    except EventDecodeError as exc:
        assert exc.line == 3
    else:
        assert isinstance(result, Event)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_parse_arbitrary_text_only_raises_its_error(raw: str) -> None:
    parses_or_decode_error(raw)


@settings(max_examples=200, deadline=None)
@given(st.binary())
def test_parse_arbitrary_bytes_only_raises_its_error(raw: bytes) -> None:
    parses_or_decode_error(raw)


@settings(max_examples=200, deadline=None)
@given(json_values | event_like_dicts)
def test_parse_arbitrary_json_only_raises_its_error(value: object) -> None:
    raw = json.dumps(value)
    parses_or_decode_error(raw)
    parses_or_decode_error(raw.encode())


@settings(max_examples=200, deadline=None)
@given(near_records)
def test_parse_near_valid_records_only_raises_its_error(rec: dict[str, object]) -> None:
    parses_or_decode_error(json.dumps(rec))


names = st.text(min_size=1, max_size=12).filter(lambda s: not s.isspace())
events = st.builds(
    Event,
    ts=st.floats(min_value=0, max_value=MAX_TS, allow_nan=False, allow_infinity=False)
    | st.integers(min_value=0, max_value=int(MAX_TS)),
    src=names,
    dst=names,
    relation=names,
    size=st.none() | st.integers(min_value=0, max_value=MAX_SIZE),
    node=st.none() | st.text(max_size=8),
)


@settings(max_examples=200, deadline=None)
@given(events)
def test_to_json_round_trips(event: Event) -> None:
    back = parse_event_line(event.to_json())
    assert back == event
    assert isinstance(back.ts, float)
