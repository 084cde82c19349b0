"""Zeek ``conn.log`` -> flow records -> engine fields, for replaying recorded network traffic;
and Zeek ``http.log`` -> the HTTP sidecar's events (:class:`HTTPLogDecoder`, at the end).

Reads the three forms a conn.log comes in, told apart line by line:

- Zeek's TSV: ``#separator``, ``#unset_field``, ``#empty_field``, ``#path``, ``#fields``
  (the column order), ``#types``, ``#open``/``#close`` header lines, then tab-separated rows.
  IoT-23's ``conn.log.labeled`` is this form with one odd last column,
  ``tunnel_parents   label   detailed-label``: three values separated by three spaces inside
  one tab-separated field (a header name holding spaces is split the same way).
- Zeek's JSON lines: one object per line, keys ``ts``, ``id.orig_h``, ...; unset fields
  absent or null; ``ts`` epoch seconds or an ISO-8601 string.
- CSV with a header line naming the columns (IoT-23 converted files), cells empty, ``-`` or
  ``(empty)`` when unset.

:class:`ConnLogDecoder` is the sans-I/O part: fed one line at a time, it returns a
:class:`FlowRecord`, ``None`` (blank and header lines) or raises :class:`FlowDecodeError`;
:meth:`ConnLogDecoder.decode_lines` does the same for many lines in one loop.
:func:`read_flows` is the thin file reader around it. Zeek writes a row when a connection
ends, so rows are not in ``ts`` order: :func:`flows_in_time_order` sorts them.
:func:`flow_fields` turns records into the fields :meth:`Engine.observe_fields
<commgraph.engine.Engine.observe_fields>` takes (``src`` the originator, ``dst`` the
responder, ``relation`` e.g. ``tcp/50``, see :func:`relation`); :func:`flow_events` makes
:class:`~commgraph.events.Event` values of the same fields.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import BinaryIO, Final

from commgraph.adapters.zeek_fields import (
    _ALIASES,
    _COLUMNS,
    _INF,
    _LABELS,
    _PROTOS,
    _REQUIRED,
    FlowRecord,
    _addresses,
    _clip,
    _convert,
    _names,
    _new_record,
    _port,
    _ports,
    _record,
    _relation,
    relation,
)
from commgraph.errors import EventDecodeError, FlowDecodeError
from commgraph.events import MAX_SIZE, MAX_TS, Event

__all__ = [
    "ConnLogDecoder",
    "FlowDecodeError",
    "FlowRecord",
    "flow_events",
    "flow_fields",
    "flows_in_time_order",
    "read_flows",
    "relation",
]


# -- layouts: which column holds which field ------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Layout:
    """How to cut one TSV or CSV row into FlowRecord's 14 fields."""

    names: tuple[str, ...]  # the columns as the header wrote them
    separator: str
    csv: bool
    unset: frozenset[str]
    composites: tuple[tuple[int, int], ...]  # (column, values in it), last column first
    width: int  # values per row once composite columns are split
    pick: Callable[[list[str]], tuple[str, ...]]  # the 14 cells; index -1 for absent columns

    def usual(self, text: str) -> FlowRecord | None:
        """The record of a usual row, or None for any other line (then :meth:`record`
        decodes it exactly or says what is wrong). Raises nothing.

        The replay hot path: one split, plain conversions, cache lookups for addresses and
        ports (values already checked), range checks: what :func:`_problem` checks, for
        values whose types are known.
        """
        if self.csv and '"' in text:
            return None
        cells = text.split(self.separator)
        if len(cells) != len(self.names):
            return None
        if self.composites:
            for column, count in self.composites:
                inner = cells[column].split()
                if len(inner) != count:
                    return None
                cells[column : column + 1] = inner
        cells.append("")  # what pick() finds for columns the header did not name
        (
            ts,
            orig_h,
            orig_p,
            resp_h,
            resp_p,
            proto,
            service,
            duration,
            orig_bytes,
            resp_bytes,
            conn_state,
            label,
            detailed_label,
            uid,
        ) = self.pick(cells)
        unset = self.unset
        try:
            when = float(ts)
            seconds = None if duration in unset else float(duration)
            sent = None if orig_bytes in unset else int(orig_bytes)
            received = None if resp_bytes in unset else int(resp_bytes)
        except ValueError:
            return None
        src = _addresses.get(orig_h)
        dst = _addresses.get(resp_h)
        sport = _ports.get(orig_p)
        if sport is None:
            sport = _port(orig_p)
        dport = _ports.get(resp_p)
        if dport is None:
            dport = _port(resp_p)
        name = _PROTOS.get(proto)
        tag = None if label in unset else _LABELS.get(label)
        # None: unset; "": not met yet (the exact path takes the row and remembers it).
        kind = None if service in unset else _names.get(service, "")
        state = None if conn_state in unset else _names.get(conn_state, "")
        detail = None if detailed_label in unset else _names.get(detailed_label, "")
        if not (
            0.0 <= when <= MAX_TS
            and src is not None  # else new, or not an address
            and dst is not None
            and sport is not None
            and dport is not None
            and name is not None  # else unusual: the exact path lower-cases and checks it
            and (seconds is None or 0.0 <= seconds < _INF)
            and (sent is None or 0 <= sent <= MAX_SIZE)
            and (received is None or 0 <= received <= MAX_SIZE)
            and (tag is not None or label in unset)
            and kind != ""
            and state != ""
            and detail != ""
        ):
            return None
        return _new_record(
            FlowRecord,
            (
                when,
                src,
                sport,
                dst,
                dport,
                name,
                kind,
                seconds,
                sent,
                received,
                state,
                tag,
                detail,
                None if uid in unset else uid,
            ),
        )

    def record(self, text: str) -> FlowRecord:
        """The record of any row, checked field by field: FlowDecodeError names the fault."""
        if not self.csv:
            cells = text.split(self.separator)
        elif '"' not in text:
            cells = text.split(",")
        else:
            try:
                cells = next(csv.reader([text]), [])
            except csv.Error as exc:
                raise FlowDecodeError(f"not a valid CSV row ({exc})") from None
        if len(cells) != len(self.names):
            if not (self.composites and len(cells) == self.width):
                raise FlowDecodeError(
                    f"expected {len(self.names)} fields, found {len(cells)}"
                    + (" (is the separator a tab?)" if len(cells) == 1 and not self.csv else "")
                )
        else:
            for column, count in self.composites:
                inner = cells[column].split()
                if len(inner) != count:
                    name = self.names[column]
                    raise FlowDecodeError(
                        f"field {name!r} must hold {count} space-separated values,"
                        f" found {len(inner)}",
                        field=name,
                    )
                cells[column : column + 1] = inner
        cells.append("")
        return _record(_convert(self.pick(cells), self.unset))


def _layout(
    names: Sequence[str], separator: str, *, is_csv: bool, unset: frozenset[str]
) -> _Layout:
    """The layout for a header's column names, or FlowDecodeError saying what is missing."""
    expanded: list[str] = []
    composites: list[tuple[int, int]] = []
    for column, name in enumerate(names):
        parts = name.split()
        if len(parts) > 1:
            composites.append((column, len(parts)))
        expanded.extend(parts or [name])
    canonical = [_ALIASES.get(name, name) for name in expanded]
    seen: set[str] = set()
    for name in canonical:
        if name in seen and name in _COLUMNS:
            raise FlowDecodeError(f"the header names column {name!r} twice", field=name)
        seen.add(name)
    missing = [name for name in _COLUMNS if name in _REQUIRED and name not in seen]
    if missing:
        raise FlowDecodeError(
            f"the header has no column {', '.join(map(repr, missing))}", field=missing[0]
        )
    indices = [canonical.index(name) if name in seen else -1 for name in _COLUMNS]
    return _Layout(
        names=tuple(names),
        separator=separator,
        csv=is_csv,
        unset=unset | {""},
        composites=tuple(reversed(composites)),
        width=len(expanded),
        pick=itemgetter(*indices),
    )


# -- the decoder ----------------------------------------------------------------------------

_CSV_UNSET: Final = frozenset({"", "-", "(empty)"})
_JSON_UNSET: Final = _CSV_UNSET
_DIRECTIVE: Final = re.compile(r"#([A-Za-z_]+)")
_ESCAPE: Final = re.compile(r"\\x([0-9a-fA-F]{2})")
_JSON_KEYS: Final = (  # nested form ("id": {"orig_h": ...}) second
    ("ts", None),
    ("id.orig_h", "orig_h"),
    ("id.orig_p", "orig_p"),
    ("id.resp_h", "resp_h"),
    ("id.resp_p", "resp_p"),
    ("proto", None),
    ("service", None),
    ("duration", None),
    ("orig_bytes", None),
    ("resp_bytes", None),
    ("conn_state", None),
    ("label", None),
    ("detailed-label", None),
    ("uid", None),
)
_decode_json = json.JSONDecoder().decode


class ConnLogDecoder:
    """Turns the lines of one conn.log, fed in order, into flow records; no I/O.

    :meth:`decode` takes one line, :meth:`decode_lines` many; both count the lines they
    are given (``line``, 1-based). The format is told
    from each line: ``#`` header lines set the TSV layout (a later ``#fields`` replaces it),
    ``{`` starts a JSON object, a line naming ``ts`` and ``id.orig_h`` separated by commas is
    a CSV header; other lines are rows of the latest layout.
    """

    def __init__(self) -> None:
        self.line = 0
        self._layout: _Layout | None = None
        self._separator = "\t"
        self._unset_field = "-"
        self._empty_field = "(empty)"
        self._no_layout = "no '#fields' or CSV header line before this row"

    def decode(self, line: bytes | str) -> FlowRecord | None:
        """The record on the next line; None for a blank or header line.

        Raises :class:`FlowDecodeError` (with ``line`` set) for a line that is not a valid
        row or header, and nothing else for any input; the decoder stays usable after it.
        """
        self.line += 1
        try:
            text = line if isinstance(line, str) else line.decode()
        except UnicodeDecodeError:
            raise FlowDecodeError("not valid UTF-8", line=self.line) from None
        text = text.rstrip("\r\n")
        if self.line == 1 and text[:1] == "\ufeff":
            text = text[1:]
        layout = self._layout
        try:
            if layout is not None and text[:1].isdigit():  # a row: nothing else to decide
                return layout.usual(text) or layout.record(text)
            return self._other(text)
        except FlowDecodeError as exc:
            raise FlowDecodeError(exc.reason, line=self.line, field=exc.field) from None

    def decode_lines(
        self, lines: Iterable[bytes | str]
    ) -> Iterator[tuple[int, FlowRecord | FlowDecodeError]]:
        """``(line number, record or error)`` for each of ``lines`` that is not blank or a
        header: what :meth:`decode` returns or raises for each, in one loop (the replay hot
        path). Raises nothing of its own; ``line`` counts as it goes."""
        decode = self.decode
        for raw in lines:
            layout = self._layout
            if layout is not None:
                try:
                    text = raw.decode() if isinstance(raw, bytes) else raw
                except UnicodeDecodeError:
                    text = ""
                text = text.rstrip("\r\n")
                # The same test as decode() makes, so a line takes the same path here.
                if text[:1].isdigit():
                    record = layout.usual(text)
                    if record is not None:
                        self.line = line = self.line + 1
                        yield line, record
                        continue
            try:
                record = decode(raw)
            except FlowDecodeError as exc:
                yield self.line, exc
                continue
            if record is not None:
                yield self.line, record

    def _other(self, text: str) -> FlowRecord | None:
        if not text or text.isspace():
            return None
        first = text.lstrip()[0]
        if first == "#":
            self._header(text)
            return None
        if first == "{":
            return self._json(text)
        if "," in text and not text[0].isdigit():
            names = [name.strip().strip('"') for name in text.split(",")]
            if "ts" in names and ("id.orig_h" in names or "id_orig_h" in names):
                self._layout = _layout(names, ",", is_csv=True, unset=_CSV_UNSET)
                return None
        if self._layout is None:
            raise FlowDecodeError(self._no_layout)
        return self._layout.usual(text) or self._layout.record(text)

    def _header(self, text: str) -> None:
        match = _DIRECTIVE.match(text)
        directive = match.group(1) if match else ""
        if directive == "separator":
            value = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text[len("#separator") :])
            value = value[1:] if value[:1] == " " else value
            if not value or value in "\r\n":
                raise FlowDecodeError(f"'#separator' has no usable value: {_clip(text)}")
            self._separator = value
            self._layout = None  # a new log starts: its #fields follow
            self._no_layout = "no '#fields' header line before this row"
            return
        values = text.split(self._separator)[1:]
        if directive == "unset_field" and len(values) == 1:
            self._unset_field = values[0]
        elif directive == "empty_field" and len(values) == 1:
            self._empty_field = values[0]
        elif directive == "path" and values != ["conn"]:
            self._layout = None
            self._no_layout = f"this part of the file is not a conn log ('#path' {values!r})"
            raise FlowDecodeError(f"'#path' is {_clip(values)}, not ['conn']: not a conn log")
        elif directive == "fields":
            self._layout = None
            self._no_layout = "the last '#fields' header line was not usable"
            unset = frozenset({self._unset_field, self._empty_field})
            self._layout = _layout(values, self._separator, is_csv=False, unset=unset)

    def _json(self, text: str) -> FlowRecord:
        try:
            obj = _decode_json(text)
        except (ValueError, RecursionError) as exc:  # bad JSON and bad UTF-8 are ValueErrors
            raise FlowDecodeError(f"not valid JSON ({_short(exc)})") from None
        if type(obj) is not dict:
            raise FlowDecodeError(f"expected a JSON object, got {type(obj).__name__}")
        nested = obj.get("id")
        values: list[object] = []
        for key, inner in _JSON_KEYS:
            value = obj.get(key)
            if value is None and inner is not None and type(nested) is dict:
                value = nested.get(inner)
            if value is None and key == "detailed-label":
                value = obj.get("detailed_label")
            values.append(value)
        return _record(_convert(values, _JSON_UNSET))


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 80 else text[:77] + "..."


# -- reading files --------------------------------------------------------------------------

_by_ts: Final = itemgetter(0)  # FlowRecord.ts


def read_flows(
    source: str | os.PathLike[str] | BinaryIO,
) -> Iterator[tuple[int, FlowRecord | FlowDecodeError]]:
    """Yield ``(line number, record or error)`` for each row of a conn.log, in file order.

    ``source`` is a path or a binary file (read to its end, not closed). Blank lines and
    valid header lines yield nothing; every other line yields exactly one item. A bad line
    yields a :class:`FlowDecodeError` naming the line (and the field, when one is at fault),
    and reading goes on. Raises ``OSError`` if the file cannot be opened or read, nothing
    else.
    """
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as stream:
            yield from _read(stream)
    else:
        yield from _read(source)


def _read(lines: Iterable[bytes]) -> Iterator[tuple[int, FlowRecord | FlowDecodeError]]:
    return ConnLogDecoder().decode_lines(lines)


def flows_in_time_order(
    source: str | os.PathLike[str] | BinaryIO,
) -> tuple[list[FlowRecord], list[FlowDecodeError]]:
    """All records of a conn.log sorted by ``ts`` (stable: ties keep file order), and the
    errors of the lines that could not be read, in file order. Raises like :func:`read_flows`."""
    records: list[FlowRecord] = []
    errors: list[FlowDecodeError] = []
    keep, drop = records.append, errors.append
    for _, item in read_flows(source):
        if type(item) is FlowRecord:
            keep(item)
        else:
            drop(item)  # type: ignore[arg-type]
    records.sort(key=_by_ts)
    return records, errors


# -- events ---------------------------------------------------------------------------------


def flow_fields(
    records: Iterable[FlowRecord],
) -> Iterator[tuple[float, str, str, str, int | None]]:
    """Yield ``(ts, src, dst, relation, size)`` for each record, in the order of ``records``:
    the arguments of :meth:`Engine.observe_fields <commgraph.engine.Engine.observe_fields>`.

    ``src`` is the originator's address, ``dst`` the responder's, ``relation`` is
    :func:`relation` (one shared string per protocol and port), ``size`` the sum of the
    byte counts that are set (None when neither is; at most ``events.MAX_SIZE``), ``ts`` the
    flow's start. For records this module made, the fields pass every check
    :class:`~commgraph.events.Event` makes; records built by hand are not checked again.
    Give records in time order (:func:`flows_in_time_order`). Raises nothing of its own.
    """
    relations: dict[tuple[str, int], str] = {}
    for ts, src, _, dst, port, proto, _, _, sent, received, _, _, _, _ in records:
        key = (proto, port)
        rel = relations.get(key)
        if rel is None:
            rel = relations[key] = _relation(proto, port)
        if sent is None:
            size = received
        elif received is None:
            size = sent
        else:
            size = sent + received
            if size > MAX_SIZE:
                size = MAX_SIZE
        yield ts, src, dst, rel, size


def flow_events(
    records: Iterable[FlowRecord], *, node: str | None = None
) -> Iterator[tuple[int, Event]]:
    """Yield ``(position, Event)`` for each record, position 1-based in ``records``; the
    Event holds the fields of :func:`flow_fields` and ``node``.

    Raises :class:`EventDecodeError` at once if ``node`` is not a string or None, and when
    it meets a hand-built record whose fields an Event refuses.
    """
    if node is not None and not isinstance(node, str):
        raise EventDecodeError(f"'node' must be a string, not {type(node).__name__}")
    return (
        (position, Event(ts=ts, src=src, dst=dst, relation=rel, size=size, node=node))
        for position, (ts, src, dst, rel, size) in enumerate(flow_fields(records), 1)
    )


# -- http.log -------------------------------------------------------------------------------
