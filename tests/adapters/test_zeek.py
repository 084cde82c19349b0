"""Zeek conn.log adapter: real IoT-23 flows in CSV, Zeek TSV and JSON lines; fuzzed lines."""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import math
import pickle
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commgraph.adapters.zeek import (
    ConnLogDecoder,
    FlowDecodeError,
    FlowRecord,
    flow_events,
    flow_fields,
    flows_in_time_order,
    read_flows,
    relation,
)
from commgraph.engine import Engine
from commgraph.errors import EventDecodeError
from commgraph.events import MAX_SIZE, Event
from commgraph.phases import LearningSettings
from conftest import DATA

MALWARE_8_1 = DATA / "iot23_CTU-Malware-Capture-8-1-labeled.csv"
MALWARE_44_1 = DATA / "iot23_CTU-Malware-Capture-44-1-labeled.csv"
HONEYPOT_5_1 = DATA / "iot23_CTU-Honeypot-Capture-5-1-labeled.csv"
IOT23 = (MALWARE_8_1, MALWARE_44_1, HONEYPOT_5_1)
needs_data = pytest.mark.usefixtures("shared_data")  # fails, not skips, without the data
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Zeek's conn.log columns as IoT-23 has them, and their Zeek types.
COLUMNS = [
    "ts",
    "uid",
    "id.orig_h",
    "id.orig_p",
    "id.resp_h",
    "id.resp_p",
    "proto",
    "service",
    "duration",
    "orig_bytes",
    "resp_bytes",
    "conn_state",
    "local_orig",
    "local_resp",
    "missed_bytes",
    "history",
    "orig_pkts",
    "orig_ip_bytes",
    "resp_pkts",
    "resp_ip_bytes",
    "tunnel_parents",
    "label",
    "detailed-label",
]
TYPES = [
    "time",
    "string",
    "addr",
    "port",
    "addr",
    "port",
    "enum",
    "string",
    "interval",
    "count",
    "count",
    "string",
    "bool",
    "bool",
    "count",
    "string",
    "count",
    "count",
    "count",
    "count",
    "set[string]",
    "string",
    "string",
]
HEADER = [
    "#separator \\x09",
    "#set_separator\t,",
    "#empty_field\t(empty)",
    "#unset_field\t-",
    "#path\tconn",
    "#open\t2018-07-31-15-15-09",
]
NUMBERS = {
    "ts": float,
    "id.orig_p": int,
    "id.resp_p": int,
    "duration": float,
    "orig_bytes": int,
    "resp_bytes": int,
}

SAMPLE_ROW = (
    "1533042911.474174,C5JLGOoxIw2dBZt47,192.168.100.113,123,81.2.254.224,123,udp,,0.005490,"
    "48,48,SF,,,0,Dd,1,76,1,76,(empty),Benign,-"
)
SAMPLE = FlowRecord(
    ts=1533042911.474174,
    orig_h="192.168.100.113",
    orig_p=123,
    resp_h="81.2.254.224",
    resp_p=123,
    proto="udp",
    duration=0.00549,
    orig_bytes=48,
    resp_bytes=48,
    conn_state="SF",
    label="benign",
    uid="C5JLGOoxIw2dBZt47",
)


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def tsv_value(column: str, value: str) -> str:
    if value in ("", "-", "(empty)"):
        return "(empty)" if column == "tunnel_parents" else "-"
    return value


SAMPLE_TSV = "\t".join(
    tsv_value(c, v) for c, v in zip(COLUMNS, SAMPLE_ROW.split(","), strict=True)
).encode()


def as_tsv(rows: list[dict[str, str]], *, iot23_last_column: bool = False) -> bytes:
    """The rows as Zeek writes conn.log; optionally IoT-23's three-in-one last column."""
    names, types = list(COLUMNS), list(TYPES)
    if iot23_last_column:
        names[-3:] = ["   ".join(names[-3:])]
        types[-3:] = ["   ".join(types[-3:])]
    lines = [*HEADER, "\t".join(["#fields", *names]), "\t".join(["#types", *types])]
    for row in rows:
        cells = [tsv_value(column, row[column]) for column in COLUMNS]
        if iot23_last_column:
            cells[-3:] = ["   ".join(cells[-3:])]
        lines.append("\t".join(cells))
    lines.append("#close\t2018-08-01-15-15-09")
    return ("\n".join(lines) + "\n").encode()


def as_json(rows: list[dict[str, str]], *, iso_ts: bool = False) -> bytes:
    """The rows as Zeek's JSON writer would: numbers as numbers, unset fields left out."""
    lines = []
    for row in rows:
        record: dict[str, object] = {}
        for column in COLUMNS:
            value = row[column]
            if value in ("", "-", "(empty)"):
                continue
            record[column] = NUMBERS[column](value) if column in NUMBERS else value
        if iso_ts:
            moment = datetime.fromtimestamp(int(row["ts"].split(".")[0]), UTC)
            record["ts"] = moment.strftime("%Y-%m-%dT%H:%M:%S.") + row["ts"].split(".")[1] + "Z"
        lines.append(json.dumps(record))
    return ("\n".join(lines) + "\n").encode()


def records_of(data: bytes) -> list[FlowRecord]:
    items = list(read_flows(io.BytesIO(data)))
    errors = [item for _, item in items if isinstance(item, FlowDecodeError)]
    assert errors == []
    return [item for _, item in items if isinstance(item, FlowRecord)]


def fields_of(record: FlowRecord) -> dict[str, Any]:
    return record._asdict()


# -- the real IoT-23 files ------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize(
    ("path", "flows", "labels"),
    [
        (MALWARE_8_1, 10_403, {"benign": 2_181, "malicious": 8_222}),
        (MALWARE_44_1, 237, {"benign": 211, "malicious": 26}),
        (HONEYPOT_5_1, 1_374, {"benign": 1_374}),
    ],
)
def test_iot23_files_parse_completely(path: Path, flows: int, labels: dict[str, int]) -> None:
    records, errors = flows_in_time_order(path)
    assert errors == []
    assert len(records) == flows
    assert Counter(r.label for r in records) == labels
    assert all(a.ts <= b.ts for a, b in itertools.pairwise(records))
    # Zeek wrote them in completion order: sorting was needed.
    in_file = [item.ts for _, item in read_flows(path) if isinstance(item, FlowRecord)]
    assert in_file != sorted(in_file)
    assert len({r.uid for r in records}) == flows


@needs_data
def test_iot23_line_numbers_count_the_csv_header() -> None:
    items = list(read_flows(MALWARE_44_1))
    assert [line for line, _ in items] == list(range(2, 239))


@needs_data
def test_malware_8_1_command_and_control_is_tcp_50() -> None:
    records, _ = flows_in_time_order(MALWARE_8_1)
    malicious = [r for r in records if r.label == "malicious"]
    assert {relation(r) for r in malicious} == {"tcp/50"}
    assert {r.detailed_label for r in malicious} == {"C&C"}
    assert {r.orig_h for r in malicious} == {"192.168.100.113"}
    # Every attempt goes unanswered, to an address and its one-byte-shifted twin.
    assert {r.conn_state for r in malicious} == {"S0"}
    assert Counter(r.resp_h for r in malicious) == {
        "178.128.185.250": 4_112,
        "128.185.250.50": 4_110,
    }
    benign = Counter(relation(r) for r in records if r.label == "benign")
    assert benign == {"udp/123": 2_179, "tcp/22": 2}
    first = records[0].ts
    assert 68.5 * 60 < malicious[0].ts - first < 69.5 * 60


@needs_data
def test_malware_44_1_labels() -> None:
    records, _ = flows_in_time_order(MALWARE_44_1)
    detailed = Counter(r.detailed_label for r in records if r.label == "malicious")
    assert detailed == {"C&C": 14, "C&C-FileDownload": 11, "DDoS": 1}
    (ddos,) = (r for r in records if r.detailed_label == "DDoS")
    assert relation(ddos) == "udp/80"
    assert ddos.orig_bytes == 1_744_830_458  # one flow, 1.7 GB in 300 s


@needs_data
def test_honeypot_5_1_icmp_ports_are_ignored() -> None:
    records, _ = flows_in_time_order(HONEYPOT_5_1)
    icmp = [r for r in records if r.proto == "icmp"]
    assert len(icmp) == 86
    assert {relation(r) for r in icmp} == {"icmp"}
    assert len({(r.orig_p, r.resp_p) for r in icmp}) > 1  # type and code, per message
    assert any(":" in r.orig_h for r in icmp)  # ICMPv6 neighbour discovery


@needs_data
@pytest.mark.parametrize("path", IOT23, ids=lambda p: p.stem)
def test_same_flows_as_zeek_tsv_and_json_parse_to_identical_records(path: Path) -> None:
    rows = csv_rows(path)
    expected = records_of(path.read_bytes())
    assert len(expected) == len(rows)
    assert records_of(as_tsv(rows)) == expected
    assert records_of(as_tsv(rows, iot23_last_column=True)) == expected
    assert records_of(as_json(rows)) == expected
    assert records_of(as_json(rows, iso_ts=True)) == expected


@needs_data
def test_events_of_iot23_flows() -> None:
    records, _ = flows_in_time_order(MALWARE_44_1)
    events = list(flow_events(records, node="lab"))
    assert [position for position, _ in events] == list(range(1, 238))
    for record, (_, event) in zip(records, events, strict=True):
        assert type(event) is Event
        assert event == Event(
            ts=record.ts,
            src=record.orig_h,
            dst=record.resp_h,
            relation=relation(record),
            size=None
            if record.orig_bytes is None and record.resp_bytes is None
            else (record.orig_bytes or 0) + (record.resp_bytes or 0),
            node="lab",
        )
    assert events[0][1].to_json()


@needs_data
@pytest.mark.parametrize("path", IOT23, ids=lambda p: p.stem)
def test_flow_fields_and_flow_events_agree_and_build_the_same_graph(path: Path) -> None:
    records, _ = flows_in_time_order(path)
    fields = list(flow_fields(records))
    events = [event for _, event in flow_events(records)]
    assert len(fields) == len(events) == len(records)
    for (ts, src, dst, rel, size), event in zip(fields, events, strict=True):
        assert (ts, src, dst, rel, size, None) == (
            event.ts,
            event.src,
            event.dst,
            event.relation,
            event.size,
            event.node,
        )
        assert type(ts) is float and type(size) in (int, type(None))

    by_fields, by_events = (Engine(LearningSettings(duration=3600.0)) for _ in range(2))
    verdicts_fields = [by_fields.observe_fields(*f) for f in fields]
    verdicts_events = [by_events.observe(event) for event in events]
    assert verdicts_fields == verdicts_events
    graphs = by_fields.graph, by_events.graph
    assert graphs[0].edge_count == graphs[1].edge_count > 0
    assert [graphs[0].stats(e) for e in range(graphs[0].edge_count)] == [
        graphs[1].stats(e) for e in range(graphs[1].edge_count)
    ]
    assert sum(graphs[0].stats(e).count for e in range(graphs[0].edge_count)) == len(records)


# -- the three forms, small -----------------------------------------------------------------


def test_csv_row() -> None:
    data = (",".join(COLUMNS) + "\n" + SAMPLE_ROW + "\n").encode()
    assert list(read_flows(io.BytesIO(data))) == [(2, SAMPLE)]


def test_tsv_unset_and_empty_fields_become_none() -> None:
    cells = ["1533042911.5", "-", "10.0.0.1", "1", "10.0.0.2", "2", "tcp"] + ["-"] * 14
    cells += ["(empty)", "-"]
    data = as_tsv([]).replace(b"#close", "\t".join(cells).encode() + b"\n#close")
    (record,) = records_of(data)
    assert record == FlowRecord(
        ts=1533042911.5, orig_h="10.0.0.1", orig_p=1, resp_h="10.0.0.2", resp_p=2, proto="tcp"
    )
    assert next(flow_events([record]))[1].size is None


def test_csv_unset_fields_become_none() -> None:
    row = "1.0,,10.0.0.1,1,10.0.0.2,2,udp,,,,,,,,,,,,,,,,"
    (record,) = records_of((",".join(COLUMNS) + "\n" + row + "\n").encode())
    assert fields_of(record) == fields_of(
        FlowRecord(ts=1.0, orig_h="10.0.0.1", orig_p=1, resp_h="10.0.0.2", resp_p=2, proto="udp")
    )


def test_json_null_and_missing_fields_become_none() -> None:
    line = {"ts": 1, "id.orig_h": "::1", "id.orig_p": 1, "id.resp_h": "::2", "id.resp_p": 53}
    data = json.dumps({**line, "proto": "udp", "service": None, "orig_bytes": None})
    (record,) = records_of(data.encode())
    assert record == FlowRecord(
        ts=1.0, orig_h="::1", orig_p=1, resp_h="::2", resp_p=53, proto="udp"
    )


def test_json_nested_id_and_detailed_label_spellings() -> None:
    data = json.dumps(
        {
            "ts": "2018-07-31T13:15:11.474174+00:00",
            "id": {"orig_h": "192.168.100.113", "orig_p": 123, "resp_h": "81.2.254.224"},
            "id.resp_p": 123.0,
            "proto": "UDP",
            "label": "Malicious",
            "detailed_label": "C&C",
        }
    )
    (record,) = records_of(data.encode())
    assert (record.ts, record.resp_p, record.proto) == (1533042911.474174, 123, "udp")
    assert (record.label, record.detailed_label) == ("malicious", "C&C")


@pytest.mark.parametrize(
    ("orig_bytes", "resp_bytes", "size"),
    [(None, None, None), (10, None, 10), (None, 7, 7), (10, 7, 17), (0, 0, 0)],
)
def test_event_size(orig_bytes: int | None, resp_bytes: int | None, size: int | None) -> None:
    record = SAMPLE._replace(orig_bytes=orig_bytes, resp_bytes=resp_bytes)
    assert next(flow_events([record]))[1].size == size


def test_event_size_is_capped_at_max_size() -> None:
    record = SAMPLE._replace(orig_bytes=MAX_SIZE, resp_bytes=MAX_SIZE)
    assert next(flow_events([record]))[1].size == MAX_SIZE


@pytest.mark.parametrize(
    ("orig_bytes", "resp_bytes", "size"),
    [(None, None, None), (10, None, 10), (None, 7, 7), (10, 7, 17), (MAX_SIZE, 1, MAX_SIZE)],
)
def test_flow_fields(orig_bytes: int | None, resp_bytes: int | None, size: int | None) -> None:
    record = SAMPLE._replace(orig_bytes=orig_bytes, resp_bytes=resp_bytes)
    assert list(flow_fields([record])) == [
        (SAMPLE.ts, "192.168.100.113", "81.2.254.224", "udp/123", size)
    ]


def test_flow_fields_share_one_relation_string_per_protocol_and_port() -> None:
    records = [
        SAMPLE._replace(proto=proto, resp_p=port)
        for proto in ("tcp", "udp", "icmp")
        for port in (50, 8080, 50, 8080)
    ]
    relations = [fields[3] for fields in flow_fields(records)]
    assert relations == ["tcp/50", "tcp/8080"] * 2 + ["udp/50", "udp/8080"] * 2 + ["icmp"] * 4
    assert relations[0] is relations[2] and relations[1] is relations[3]
    assert relations[4] is relations[6]


@pytest.mark.parametrize(
    ("proto", "resp_p", "expected"),
    [
        ("tcp", 50, "tcp/50"),
        ("udp", 123, "udp/123"),
        ("icmp", 0, "icmp"),
        ("icmp", 136, "icmp"),
        ("unknown_transport", 0, "unknown_transport"),
    ],
)
def test_relation(proto: str, resp_p: int, expected: str) -> None:
    assert relation(SAMPLE._replace(proto=proto, resp_p=resp_p)) == expected


def test_flows_in_time_order_is_stable_and_keeps_errors() -> None:
    rows = ["3.0,a,10.0.0.1,1,10.0.0.2,2,tcp", "1.0,b,10.0.0.1,1,10.0.0.2,2,tcp", "junk"]
    rows += ["1.0,c,10.0.0.1,1,10.0.0.2,2,tcp", "2.0,d,10.0.0.1,1,10.0.0.2,2,tcp"]
    data = "ts,uid,id.orig_h,id.orig_p,id.resp_h,id.resp_p,proto\n" + "\n".join(rows)
    records, errors = flows_in_time_order(io.BytesIO(data.encode()))
    assert [r.uid for r in records] == ["b", "c", "d", "a"]
    assert [e.line for e in errors] == [4]


def test_read_flows_takes_paths_and_binary_files(tmp_path: Path) -> None:
    path = tmp_path / "conn.log"
    path.write_bytes(as_tsv([]).replace(b"#close", SAMPLE_TSV + b"\n#close"))
    expected = [(9, SAMPLE)]
    assert list(read_flows(path)) == expected
    assert list(read_flows(str(path))) == expected
    with path.open("rb") as stream:
        assert list(read_flows(stream)) == expected


def test_crlf_and_byte_order_mark() -> None:
    data = "\ufeff" + ",".join(COLUMNS) + "\r\n" + SAMPLE_ROW + "\r\n"
    assert records_of(data.encode()) == [SAMPLE]


def test_a_later_fields_header_replaces_the_layout() -> None:
    first = as_tsv([]).replace(b"#close", SAMPLE_TSV + b"\n#close")
    second = b"#fields\tid.resp_p\tid.resp_h\tid.orig_p\tid.orig_h\tproto\tts\n"
    second += b"80\t10.0.0.2\t5\t10.0.0.1\ttcp\t7.5\n"
    records = records_of(first + second)
    assert records[0] == SAMPLE
    assert records[1] == FlowRecord(
        ts=7.5, orig_h="10.0.0.1", orig_p=5, resp_h="10.0.0.2", resp_p=80, proto="tcp"
    )


def test_other_zeek_logs_are_refused_line_by_line() -> None:
    data = b"#separator \\x09\n#path\tdns\n#fields\tts\tuid\n1.0\tC1\n"
    items = list(read_flows(io.BytesIO(data)))
    assert [line for line, _ in items] == [2, 3, 4]
    assert all(isinstance(item, FlowDecodeError) for _, item in items)
    assert "not a conn log" in str(items[0][1])
    assert "no column 'id.orig_h'" in str(items[1][1])
    assert "line 4: " in str(items[2][1])


# -- errors ---------------------------------------------------------------------------------


def one_error(row: str, header: str = ",".join(COLUMNS)) -> FlowDecodeError:
    data = f"{header}\n{SAMPLE_ROW}\n{row}\n{SAMPLE_ROW}\n".encode()
    items = list(read_flows(io.BytesIO(data)))
    assert [line for line, _ in items] == [2, 3, 4]
    assert items[0][1] == SAMPLE and items[2][1] == SAMPLE
    error = items[1][1]
    assert isinstance(error, FlowDecodeError)
    assert isinstance(error, EventDecodeError)
    assert error.line == 3
    assert str(error).startswith("line 3: ")
    return error


def replaced(column: str, value: str) -> str:
    cells = SAMPLE_ROW.split(",")
    cells[COLUMNS.index(column)] = value
    return ",".join(cells)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("ts", "yesterday"),
        ("ts", "nan"),
        ("ts", "-1"),
        ("ts", "1e12"),
        ("ts", ""),
        ("id.orig_h", "192.168.100.300"),
        ("id.orig_h", "host.example"),
        ("id.orig_h", "-"),
        ("id.resp_h", " 10.0.0.1"),
        ("id.orig_p", "70000"),
        ("id.resp_p", "-1"),
        ("id.resp_p", "http"),
        ("id.resp_p", "80.5"),
        ("proto", "t c p"),
        ("duration", "inf"),
        ("duration", "-0.5"),
        ("duration", "soon"),
        ("orig_bytes", "-48"),
        ("resp_bytes", str(MAX_SIZE + 1)),
        ("resp_bytes", "1" * 5000),
    ],
)
def test_bad_value_names_line_and_field(column: str, value: str) -> None:
    error = one_error(replaced(column, value))
    assert error.field == column
    assert repr(column) in str(error)


def test_wrong_field_count_names_the_line() -> None:
    error = one_error(SAMPLE_ROW.rsplit(",", 2)[0])
    assert "expected 23 fields, found 21" in str(error)


def test_broken_iot23_last_column() -> None:
    header = ",".join([*COLUMNS[:-3], "tunnel_parents   label   detailed-label"])
    row = SAMPLE_ROW.rsplit(",", 3)[0] + ",-   Benign   -"
    broken = SAMPLE_ROW.rsplit(",", 3)[0] + ",-   Benign"
    data = f"{header}\n{row}\n{broken}\n".encode()
    items = list(read_flows(io.BytesIO(data)))
    assert items[0] == (2, SAMPLE)
    error = items[1][1]
    assert isinstance(error, FlowDecodeError)
    assert "must hold 3 space-separated values, found 2" in str(error)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "no '#fields' or CSV header"),
        ('{"ts": true}', "'ts' must be a number or a string, not bool"),
        ('{"ts": 1, "id.orig_h": 5}', "'id.orig_h' must be a string"),
        ('{"ts": 1, "id.orig_h": "::1", "id.orig_p": 1, "id.resp_h": "::1"}', "'id.resp_p' is"),
        ("\x00\x01", "no '#fields' or CSV header"),
    ],
)
def test_json_and_garbage_errors(line: str, message: str) -> None:
    decoder = ConnLogDecoder()
    with pytest.raises(FlowDecodeError, match=message.replace("[", r"\[")):
        decoder.decode(line)


def test_invalid_utf8_is_a_decode_error() -> None:
    with pytest.raises(FlowDecodeError, match="line 1: not valid UTF-8"):
        ConnLogDecoder().decode(b"\xff\xfe1.0,a\n")


# -- FlowRecord and Event values ------------------------------------------------------------


def test_records_from_the_decoder_are_immutable_hashable_tuples() -> None:
    (record,) = records_of((",".join(COLUMNS) + "\n" + SAMPLE_ROW).encode())
    assert type(record) is FlowRecord
    assert record == SAMPLE and hash(record) == hash(SAMPLE)
    assert record != SAMPLE._replace(uid="other")
    assert len({record, SAMPLE, SAMPLE._replace(uid="other")}) == 2
    assert pickle.loads(pickle.dumps(record)) == record
    assert record._fields[:6] == ("ts", "orig_h", "orig_p", "resp_h", "resp_p", "proto")
    assert record[0] is record.ts and len(record) == 14
    with pytest.raises(AttributeError):
        record.ts = 0.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        record[0] = 0.0  # type: ignore[index]


def test_equal_addresses_share_one_string() -> None:
    row = SAMPLE_ROW.replace("81.2.254.224", "10.9.8.7")
    data = f"{','.join(COLUMNS)}\n{row}\n{row}\n".encode()
    first, second = records_of(data)
    assert first == second
    assert first.resp_h is second.resp_h and first.orig_h is second.orig_h


def test_events_from_flows_are_true_frozen_events() -> None:
    _, event = next(flow_events([SAMPLE], node="n1"))
    assert type(event) is Event
    assert event == Event(
        ts=SAMPLE.ts,
        src="192.168.100.113",
        dst="81.2.254.224",
        relation="udp/123",
        size=96,
        node="n1",
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.src = "x"  # type: ignore[misc]


def test_flow_events_checks_node_like_event_does() -> None:
    with pytest.raises(EventDecodeError, match="'node'"):
        next(flow_events([SAMPLE], node=3))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"ts": math.nan}, "ts"),
        ({"ts": 1}, "ts"),
        ({"orig_h": ""}, "id.orig_h"),
        ({"resp_h": "10.0.0"}, "id.resp_h"),
        ({"resp_p": 65536}, "id.resp_p"),
        ({"orig_p": True}, "id.orig_p"),
        ({"proto": "TCP"}, "proto"),
        ({"proto": ""}, "proto"),
        ({"duration": -1.0}, "duration"),
        ({"orig_bytes": MAX_SIZE + 1}, "orig_bytes"),
        ({"service": ""}, "service"),
        ({"label": "Benign"}, "label"),
        ({"uid": 7}, "uid"),
    ],
)
def test_checked_flow_records_name_the_bad_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(FlowDecodeError) as caught:
        FlowRecord.checked(**{**SAMPLE._asdict(), **changes})
    assert caught.value.field == field
    assert repr(field) in str(caught.value)
    assert caught.value.line is None
    SAMPLE._replace(**changes)  # built by hand: not checked


def test_checked_flow_records_equal_parsed_ones() -> None:
    assert FlowRecord.checked(**SAMPLE._asdict()) == SAMPLE
    assert type(FlowRecord.checked(*SAMPLE)) is FlowRecord


# -- fuzzing --------------------------------------------------------------------------------

CSV_HEAD = ",".join(COLUMNS).encode()
TSV_HEAD = as_tsv([]).split(b"#close")[0].rstrip(b"\n")
JSON_SAMPLE = as_json([dict(zip(COLUMNS, SAMPLE_ROW.split(","), strict=True))]).rstrip(b"\n")
IOT23_TSV = as_tsv([dict(zip(COLUMNS, SAMPLE_ROW.split(","), strict=True))], iot23_last_column=True)
IOT23_HEAD, IOT23_ROW = IOT23_TSV.split(b"\n#close")[0].rsplit(b"\n", 1)
FORMS = {
    "csv": (CSV_HEAD, SAMPLE_ROW.encode(), b","),
    "tsv": (TSV_HEAD, SAMPLE_TSV, b"\t"),
    "iot23": (IOT23_HEAD, IOT23_ROW, b"   "),
    "json": (b"", JSON_SAMPLE, b","),
}


@st.composite
def mutated(draw: st.DrawFn, line: bytes, separator: bytes) -> bytes:
    kind = draw(st.sampled_from(["truncate", "flip", "drop", "insert", "garbage", "double"]))
    at = draw(st.integers(0, len(line)))
    if kind == "truncate":
        result = line[:at]
    elif kind == "flip":
        result = line[:at] + bytes([draw(st.integers(0, 255))]) + line[at + 1 :]
    elif kind == "drop":
        cells = line.split(separator)
        del cells[draw(st.integers(0, len(cells) - 1))]
        result = separator.join(cells)
    elif kind == "insert":
        result = line[:at] + draw(st.binary(min_size=1, max_size=8)) + line[at:]
    elif kind == "double":
        result = line.replace(separator, separator * 2, 1)
    else:
        result = draw(st.binary(max_size=200))
    return result.replace(b"\n", b" ")


@st.composite
def files_with_one_bad_line(draw: st.DrawFn) -> tuple[bytes, bytes, int]:
    head, line, separator = FORMS[draw(st.sampled_from(sorted(FORMS)))]
    bad = draw(mutated(line, separator))
    before = [head, line] if head else [line]
    bad_line = b"\n".join(before).count(b"\n") + 2
    return b"\n".join([*before, bad, line]) + b"\n", bad, bad_line


@FAST
@given(files_with_one_bad_line())
def test_a_mutated_line_costs_only_itself(case: tuple[bytes, bytes, int]) -> None:
    data, bad, bad_line = case
    items = list(read_flows(io.BytesIO(data)))
    for line, item in items:
        if isinstance(item, FlowDecodeError):
            assert line == item.line == bad_line
            assert str(item).startswith(f"line {bad_line}: ")
        else:
            assert type(item) is FlowRecord
            assert FlowRecord.checked(*item) == item  # it passes the checks
    if not bad.lstrip().startswith(b"#"):  # a mutated header line may change the layout
        good = [item for line, item in items if line != bad_line]
        assert good == [SAMPLE, SAMPLE]
        assert [line for line, _ in items if line != bad_line] == [bad_line - 1, bad_line + 1]


@FAST
@given(st.lists(st.binary(max_size=120) | st.sampled_from([CSV_HEAD, TSV_HEAD])))
def test_any_bytes_yield_only_records_and_decode_errors(lines: list[bytes]) -> None:
    for line, item in read_flows(io.BytesIO(b"\n".join(lines))):
        assert isinstance(item, FlowRecord | FlowDecodeError)
        assert 1 <= line <= max(1, b"\n".join(lines).count(b"\n") + 1)


@FAST
@given(st.lists(st.text(max_size=80) | st.sampled_from([*HEADER, "#fields\tts\tid.orig_h"])))
def test_decoder_raises_only_its_own_error(lines: list[str]) -> None:
    decoder = ConnLogDecoder()
    for line in lines:
        try:
            record = decoder.decode(line)
        except FlowDecodeError as exc:
            assert exc.line == decoder.line
        else:
            assert record is None or type(record) is FlowRecord


def one_by_one(lines: list[bytes]) -> list[tuple[int, object]]:
    """What decode() makes of each line, as decode_lines() reports it."""
    decoder, results = ConnLogDecoder(), []
    for line in lines:
        try:
            record = decoder.decode(line)
        except FlowDecodeError as exc:
            results.append((decoder.line, (exc.reason, exc.field)))
        else:
            if record is not None:
                results.append((decoder.line, record))
    return results


@FAST
@given(
    st.lists(
        st.sampled_from(sorted(FORMS)).flatmap(
            lambda form: st.sampled_from(FORMS[form][:2]) | mutated(FORMS[form][1], FORMS[form][2])
        ),
        max_size=12,
    )
)
def test_decode_lines_does_what_decode_does_line_by_line(chunks: list[bytes]) -> None:
    lines = [line for chunk in chunks for line in chunk.split(b"\n")]  # headers: several
    decoder = ConnLogDecoder()
    together = [
        (line, (item.reason, item.field) if isinstance(item, FlowDecodeError) else item)
        for line, item in decoder.decode_lines(lines)
    ]
    assert together == one_by_one(lines)
    assert decoder.line == len(lines)
    more = decoder.decode_lines([b"", SAMPLE_TSV, b"\xff"])  # counting goes on
    assert [line for line, _ in more] == [len(lines) + 2, len(lines) + 3]
    assert decoder.line == len(lines) + 3


ODD_VALUES = ["", "-", "(empty)", "Benigx", "MALICIOUS", "benign", "TCP", "icmp", "sctp", "0"]
ODD_VALUES += [
    "65535",
    "65536",
    "-1",
    " 5",
    "+5",
    "1_0",
    "\u0661\u0662",
    "5.0",
    "1e3",
    "nan",
    "inf",
]
ODD_VALUES += ["::1", "10.0.0.1", "10.0.0.256", "1533042911", "2018-07-31T13:15:11", "S0", "x y"]


@st.composite
def rows_with_odd_cells(draw: st.DrawFn) -> tuple[bytes, bytes]:
    head, line, separator = FORMS[draw(st.sampled_from(["csv", "tsv", "iot23"]))]
    cells = line.split(separator)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(cells) - 1))
        cells[at] = draw(st.sampled_from(ODD_VALUES) | st.text(max_size=6)).encode()
    return head, separator.join(cells)


@FAST
@given(rows_with_odd_cells())
def test_the_fast_path_agrees_with_the_exact_one(case: tuple[bytes, bytes]) -> None:
    head, row = case
    decoder = ConnLogDecoder()
    for line in head.split(b"\n"):
        decoder.decode(line)
    layout = decoder._layout
    assert layout is not None
    text = row.decode()
    fast = layout.usual(text)
    try:
        exact: object = layout.record(text)
    except FlowDecodeError as exc:
        exact = exc
    if fast is not None:
        assert type(exact) is FlowRecord
        assert [(type(v), v) for v in fast] == [(type(v), v) for v in exact]


@FAST
@given(
    st.dictionaries(
        st.sampled_from([*COLUMNS, "id", "detailed_label"]),
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats()
        | st.text(max_size=20)
        | st.sampled_from(["10.0.0.1", "::1", "tcp", "80", "1533042911.5", "2018-07-31T13:15:11"])
        | st.lists(st.integers(), max_size=2)
        | st.dictionaries(st.sampled_from(["orig_h", "resp_p"]), st.integers() | st.text()),
    )
)
def test_json_objects_yield_a_record_or_a_decode_error(obj: dict[str, object]) -> None:
    try:
        record = ConnLogDecoder().decode(json.dumps(obj))
    except FlowDecodeError as exc:
        assert exc.line == 1
    else:
        assert type(record) is FlowRecord
