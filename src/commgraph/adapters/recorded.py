"""Recorded traffic -> records for :func:`commgraph.replay.replay_records`, whatever the file.

Which adapter reads a file is told by its first bytes: a pcap or pcapng magic number is a
capture (:mod:`.pcap`); a Zeek header line (``#separator``), an IoT-23 CSV header (``ts,``)
or a JSON object with Zeek's ``id.orig_h`` is a conn.log (:mod:`.zeek`); any other JSON
object is our own JSON-lines events (:mod:`commgraph.events`). A conn.log is read whole and
sorted by time first, since Zeek writes rows in completion order.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO

from commgraph.adapters.pcap import DNSAnswer, PacketDecoder, read_packets
from commgraph.adapters.zeek import flow_fields, flows_in_time_order
from commgraph.adapters.zeek_logs import dns_answers
from commgraph.detectors.guardrails import SignalNote
from commgraph.errors import CommgraphError
from commgraph.events import Event, EventFields, Record, iter_event_lines
from commgraph.templates import Templates

__all__ = ["Format", "Recording", "labelled_flows", "open_recording", "sniff"]

_PCAP_MAGICS = (
    b"\xd4\xc3\xb2\xa1",
    b"\xa1\xb2\xc3\xd4",
    b"\x4d\x3c\xb2\xa1",
    b"\xa1\xb2\x3c\x4d",
    b"\x0a\x0d\x0d\x0a",
)


class Format(StrEnum):
    EVENTS = "events"
    PCAP = "pcap"
    CONNLOG = "conn.log"


def sniff(head: bytes) -> Format:
    """The format of a file that starts with ``head`` (its first few KiB)."""
    if head[:4] in _PCAP_MAGICS:
        return Format.PCAP
    text = head.lstrip(b"\xef\xbb\xbf").lstrip()
    if text.startswith(b"#") or text.startswith(b"ts,") or text.startswith(b'"ts",'):
        return Format.CONNLOG
    if text.startswith(b"{"):
        first = text.split(b"\n", 1)[0]
        try:
            record = json.loads(first)
        except ValueError:
            return Format.EVENTS  # its decode error will name the line
        if isinstance(record, dict) and ("id.orig_h" in record or "id" in record):
            return Format.CONNLOG
    return Format.EVENTS


@dataclass(slots=True)
class Recording:
    """An open recording: its records, how many there are if known, and what they are."""

    format: Format
    records: Iterator[tuple[int, Record | DNSAnswer]]
    unit: str  # what a position counts: lines, packets, flows
    total: int | None = None
    _closing: ExitStack = field(default_factory=ExitStack, repr=False)
    stream: IO[bytes] | None = None  # for a byte-progress bar of JSON lines

    def close(self) -> None:
        self._closing.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_recording(
    path: Path,
    *,
    on_dns: Callable[[DNSAnswer], None] | None = None,
    mqtt_ports: frozenset[int] = frozenset({1883}),
    format: Format | None = None,
    http_ports: Mapping[int, str | None] | None = None,
    templates: Templates | None = None,
    dns: Path | None = None,
) -> Recording:
    """Open ``path`` for replay; ``on_dns`` hears the DNS answers of a capture as they come
    (the engine's :meth:`~commgraph.engine.Engine.learn_name`); a capture's TCP streams on
    ``http_ports`` are decoded as HTTP (port -> the service answering there, None: the
    server's address), with ``templates`` for route names. A conn.log's DNS answers come
    from ``dns`` (a Zeek dns.log), else from the ``dns.log`` beside it if there is one:
    they are records of their own (:class:`DNSAnswer`), in time order with the flows.
    Raises OSError if a file cannot be read, CommgraphError for a conn.log with no
    readable row."""
    if format is None:
        with path.open("rb") as probe:
            format = sniff(probe.read(4096))
    if format is Format.PCAP:
        decoder = PacketDecoder(
            on_dns=on_dns,
            mqtt_ports=mqtt_ports,
            signals=True,
            http_ports=http_ports,
            templates=templates,
        )
        return Recording(Format.PCAP, read_packets(path, decoder=decoder), "packets")
    if format is Format.CONNLOG:
        # Reading a whole log makes a record per row and no garbage: the collector would
        # only walk them again and again (a tenth of the time), so it waits till the end.
        collecting = gc.isenabled()
        gc.disable()
        try:
            flows, errors = flows_in_time_order(path)
        finally:
            if collecting:
                gc.enable()
        if not flows and errors:
            raise CommgraphError(f"{path}: no readable flow ({errors[0]})")
        # Bad rows are reported at the end, with their line numbers.
        answers = _dns_answers(path, dns)
        rows = enumerate(flow_fields(flows), start=1)
        named: Iterator[tuple[int, Record | DNSAnswer]] = (
            _interleaved(rows, answers) if answers else rows
        )
        records: Iterator[tuple[int, Record | DNSAnswer]] = itertools.chain(
            named, ((error.line or 0, error) for error in errors)
        )
        return Recording(Format.CONNLOG, records, "flows", total=len(flows) + len(errors))
    recording = Recording(Format.EVENTS, iter(()), "lines")
    stream = recording._closing.enter_context(path.open("rb"))
    recording.stream = stream
    recording.records = iter_event_lines(stream)
    recording.total = None
    return recording


def _dns_answers(conn_log: Path, dns: Path | None) -> list[DNSAnswer]:
    """The answers of ``dns`` or of the dns.log beside ``conn_log`` (none if there is none).
    Raises OSError if a dns.log that was named cannot be read."""
    if dns is None:
        beside = conn_log.with_name("dns.log")
        if beside == conn_log or not beside.is_file():
            return []
        dns = beside
    with dns.open("rb") as lines:
        answers, _ = dns_answers(lines)
    return answers


def _interleaved(
    flows: Iterator[tuple[int, EventFields]], answers: list[DNSAnswer]
) -> Iterator[tuple[int, Record | DNSAnswer]]:
    """Flows (in time order) with each answer before the first flow at its time or later."""
    i = 0
    position = 0
    for position, fields in flows:
        while i < len(answers) and answers[i].ts <= fields[0]:
            yield position, answers[i]
            i += 1
        yield position, fields
    for answer in answers[i:]:
        yield position, answer


def labelled_flows(
    path: Path,
    notes: list[tuple[int, DNSAnswer | SignalNote]] | None = None,
    dns: Path | None = None,
) -> tuple[list[tuple[float, str, str, str, int | None, str | None]], list[str]]:
    """The flows of a recording in time order as ``(ts, src, dst, relation, size, label)``
    (:data:`commgraph.evaluate.LabelledFlow`), with labels where it has them: a Zeek conn.log
    or IoT-23 CSV (labelled), a pcap or JSON-lines events (no labels); and the bad records
    skipped, in words. A capture's DNS answers and protocol signals are appended to
    ``notes`` (when given) with the index of the flow they came before, as a replay of it
    hears them; a conn.log's come from ``dns`` or the dns.log beside it (see
    :func:`open_recording`). Raises OSError when a file cannot be read."""
    with path.open("rb") as probe:
        kind = sniff(probe.read(4096))
    if kind is Format.CONNLOG:
        records, errors = flows_in_time_order(path)
        labelled = [
            (*fields, record.label)
            for fields, record in zip(flow_fields(records), records, strict=True)
        ]
        if notes is not None:
            times = [flow[0] for flow in labelled]
            notes.extend(
                (bisect.bisect_left(times, answer.ts), answer) for answer in _dns_answers(path, dns)
            )
        return labelled, [str(error) for error in errors]
    flows: list[tuple[float, str, str, str, int | None, str | None]] = []
    skipped: list[str] = []
    heard: list[tuple[int, DNSAnswer | SignalNote]] = []

    def answered(answer: DNSAnswer) -> None:
        heard.append((len(flows), answer))

    with open_recording(path, format=kind, on_dns=answered) as recording:
        for _, item in recording.records:
            if isinstance(item, tuple):
                flows.append((*item, None))
            elif isinstance(item, Event):
                flows.append((item.ts, item.src, item.dst, item.relation, item.size, None))
            elif isinstance(item, SignalNote):
                heard.append((len(flows), item))
            else:
                skipped.append(str(item))
    if any(flows[i][0] > flows[i + 1][0] for i in range(len(flows) - 1)):
        # out of order: each answer goes before the first flow of its time or later
        flows.sort(key=lambda flow: flow[0])
        times = [flow[0] for flow in flows]
        heard = [(bisect.bisect_left(times, note.ts), note) for _, note in heard]
        heard.sort(key=lambda pair: pair[0])
    if notes is not None:
        notes.extend(heard)
    return flows, skipped
