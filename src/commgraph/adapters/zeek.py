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
import ipaddress
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import BinaryIO, Final, NamedTuple

from commgraph.adapters.http.relay import HTTP_RELATION, SERVE_RELATION, route_name
from commgraph.adapters.pcap import DNSAnswer
from commgraph.errors import EventDecodeError, FlowDecodeError
from commgraph.events import MAX_SIZE, MAX_TS, Event, EventFields
from commgraph.templates import Templates

__all__ = [
    "ConnLogDecoder",
    "FlowDecodeError",
    "FlowRecord",
    "HTTPLogDecoder",
    "dns_answers",
    "flow_events",
    "flow_fields",
    "flows_in_time_order",
    "read_flows",
    "read_http_log",
    "relation",
]


class FlowRecord(NamedTuple):
    """One connection summary from a conn.log: an immutable, hashable tuple of 14 fields.

    Guarantees for every record this module makes (the decoder, :func:`read_flows`,
    :func:`flows_in_time_order`, :meth:`checked`): ``ts`` is a float of epoch seconds within
    ``0..events.MAX_TS``; ``orig_h``/``resp_h`` are IPv4 or IPv6 addresses as written in the
    log; ports are ints in ``0..65535`` (for ICMP Zeek puts the type and code there);
    ``proto`` is a lower-case name (``tcp``, ``udp``, ``icmp``, ``unknown_transport``);
    ``duration`` is finite and >= 0; byte counts are ints in ``0..events.MAX_SIZE``;
    ``label`` is lower-cased (IoT-23: ``malicious`` or ``benign``); the optional strings are
    non-empty. ``None`` means the log left the field unset.

    The parser checks every field before it builds a record, so a record that exists is
    valid; building one by hand (``FlowRecord(...)``, ``_replace``) checks nothing. Use
    :meth:`checked` for values from anywhere else. Equality and hashing are a tuple's (a
    record equals a plain tuple of the same values).
    """

    ts: float
    orig_h: str
    orig_p: int
    resp_h: str
    resp_p: int
    proto: str
    service: str | None = None
    duration: float | None = None
    orig_bytes: int | None = None
    resp_bytes: int | None = None
    conn_state: str | None = None
    label: str | None = None
    detailed_label: str | None = None
    uid: str | None = None

    @classmethod
    def checked(
        cls,
        ts: float,
        orig_h: str,
        orig_p: int,
        resp_h: str,
        resp_p: int,
        proto: str,
        service: str | None = None,
        duration: float | None = None,
        orig_bytes: int | None = None,
        resp_bytes: int | None = None,
        conn_state: str | None = None,
        label: str | None = None,
        detailed_label: str | None = None,
        uid: str | None = None,
    ) -> FlowRecord:
        """A record of these values if they keep the guarantees above; else
        :class:`FlowDecodeError` naming the first field at fault (by its Zeek column name)."""
        return _record(
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
            )
        )


def relation(record: FlowRecord) -> str:
    """The edge relation of a flow: ``tcp/PORT`` or ``udp/PORT`` with the responder's port,
    ``icmp`` for ICMP (whose "ports" are a message type and code), else the protocol name."""
    return _relation(record.proto, record.resp_p)


def _relation(proto: str, port: int) -> str:
    return f"{proto}/{port}" if proto == "tcp" or proto == "udp" else proto


# -- validation -----------------------------------------------------------------------------

# Zeek's column names, in FlowRecord's field order; ``required`` columns may not be unset.
_COLUMNS: Final = (
    "ts",
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
    "label",
    "detailed-label",
    "uid",
)
_REQUIRED: Final = frozenset(_COLUMNS[:6])
_ALIASES: Final = {  # other spellings met in converted files
    "id_orig_h": "id.orig_h",
    "id_orig_p": "id.orig_p",
    "id_resp_h": "id.resp_h",
    "id_resp_p": "id.resp_p",
    "detailed_label": "detailed-label",
}

_INF: Final = float("inf")
_PROTOS: Final = {"tcp": "tcp", "udp": "udp", "icmp": "icmp"}  # also interns the names
_PROTO_NAME: Final = re.compile(r"[a-z][a-z0-9_]*\Z")
_LABELS: Final = {"Malicious": "malicious", "Benign": "benign", "benign": "benign"}
_LOWER_LABELS: Final = frozenset(_LABELS.values())

# Addresses already checked, each mapped to one shared string object (the engine's dict
# lookups are fastest on strings it has seen). Bounded: cleared when it grows too large.
_addresses: dict[str, str] = {}
_ADDRESSES_MAX: Final = 65_536


def _checked_address(text: str) -> str | None:
    """``text`` (the shared copy) if it is an IP address, else None."""
    known = _addresses.get(text)
    if known is not None:
        return known
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return None
    if len(_addresses) >= _ADDRESSES_MAX:
        _addresses.clear()
    _addresses[text] = text
    return text


# Port numbers as written, each mapped to its int: most rows repeat a few ports, and a dict
# lookup costs less than int() and a range check. Only valid ports (0..65535) get in.
_ports: dict[str, int] = {}
_PORTS_MAX: Final = 131_072


def _port(text: str) -> int | None:
    """The port number ``text`` spells (remembered for next time), or None if it is none."""
    try:
        number = int(text)
    except ValueError:
        return None
    if not 0 <= number <= 65535:
        return None
    if len(_ports) >= _PORTS_MAX:
        _ports.clear()
    _ports[text] = number
    return number


# Short strings from a small vocabulary (service, conn_state, detailed-label), each mapped to
# one shared copy, so that 100,000 records hold a few strings, not 100,000. Bounded.
_names: dict[str, str] = {}
_NAMES_MAX: Final = 4_096


def _name(text: str) -> str:
    """The shared copy of ``text``."""
    if len(_names) >= _NAMES_MAX:
        _names.clear()
    return _names.setdefault(text, text)


def _clip(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _problem(
    ts: object,
    orig_h: object,
    orig_p: object,
    resp_h: object,
    resp_p: object,
    proto: object,
    service: object,
    duration: object,
    orig_bytes: object,
    resp_bytes: object,
    conn_state: object,
    label: object,
    detailed_label: object,
    uid: object,
) -> tuple[str, str] | None:
    """``(column, reason)`` for the first invalid field, or None (the common case first)."""
    if (
        type(ts) is float
        and 0.0 <= ts <= MAX_TS  # NaN fails every comparison
        and type(orig_h) is str
        and orig_h in _addresses
        and type(resp_h) is str
        and resp_h in _addresses
        and type(orig_p) is int
        and 0 <= orig_p <= 65535
        and type(resp_p) is int
        and 0 <= resp_p <= 65535
        and type(proto) is str
        and proto in _PROTOS
        and (duration is None or (type(duration) is float and 0.0 <= duration < _INF))
        and (orig_bytes is None or (type(orig_bytes) is int and 0 <= orig_bytes <= MAX_SIZE))
        and (resp_bytes is None or (type(resp_bytes) is int and 0 <= resp_bytes <= MAX_SIZE))
        and (label is None or (type(label) is str and label in _LOWER_LABELS))
        and (service is None or (type(service) is str and service))
        and (conn_state is None or (type(conn_state) is str and conn_state))
        and (detailed_label is None or (type(detailed_label) is str and detailed_label))
        and (uid is None or (type(uid) is str and uid))
    ):
        return None
    if type(ts) is not float or not 0.0 <= ts <= MAX_TS:
        return "ts", f"'ts' must be a float of epoch seconds from 0 to {MAX_TS:g}, not {_clip(ts)}"
    for column, address in (("id.orig_h", orig_h), ("id.resp_h", resp_h)):
        if type(address) is not str or _checked_address(address) is None:
            return column, f"{column!r} is not an IP address: {_clip(address)}"
    for column, port in (("id.orig_p", orig_p), ("id.resp_p", resp_p)):
        if type(port) is not int or not 0 <= port <= 65535:
            return column, f"{column!r} must be a port number from 0 to 65535, not {_clip(port)}"
    if type(proto) is not str or not _PROTO_NAME.match(proto):
        return "proto", f"'proto' must be a lower-case protocol name, not {_clip(proto)}"
    if duration is not None and (type(duration) is not float or not 0.0 <= duration < _INF):
        return "duration", f"'duration' must be a float of seconds >= 0, not {_clip(duration)}"
    for column, count in (("orig_bytes", orig_bytes), ("resp_bytes", resp_bytes)):
        if count is not None and (type(count) is not int or not 0 <= count <= MAX_SIZE):
            return (
                column,
                f"{column!r} must be a byte count from 0 to {MAX_SIZE}, not {_clip(count)}",
            )
    for column, text in (
        ("service", service),
        ("conn_state", conn_state),
        ("label", label),
        ("detailed-label", detailed_label),
        ("uid", uid),
    ):
        if text is not None and (type(text) is not str or not text):
            return column, f"{column!r} must be a non-empty string or unset, not {_clip(text)}"
    if type(label) is str and label != label.lower():
        return "label", f"'label' must be lower-case, not {_clip(label)}"
    return None


# -- building records -----------------------------------------------------------------------


_Values = tuple[object, ...]  # the 14 fields in FlowRecord order, not yet checked

# What FlowRecord(...) does after binding its 14 arguments by name (namedtuple's own
# __new__ calls it): for the hot path, whose values are checked and in field order.
_new_record: Final = tuple.__new__


def _record(values: _Values) -> FlowRecord:
    """A FlowRecord from converted values, or FlowDecodeError naming the field."""
    problem = _problem(*values)
    if problem is not None:
        raise FlowDecodeError(problem[1], field=problem[0])
    return FlowRecord._make(values)


def _time(value: object) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)  # OverflowError for absurd ints: reported as a bad value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"is neither epoch seconds nor an ISO-8601 time: {_clip(value)}"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        try:
            return moment.timestamp()
        except (OverflowError, OSError):
            raise ValueError(f"is out of range: {_clip(value)}") from None
    raise ValueError(f"must be a number or a string, not {type(value).__name__}")


def _integer(value: object) -> int:
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"is not an integer: {_clip(value)}") from None
    raise ValueError(f"must be an integer, not {_clip(value)}")


def _seconds(value: object) -> float:
    if type(value) is float:
        return value
    if type(value) is int or isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"is not a number: {_clip(value)}") from None
    raise ValueError(f"must be a number, not {_clip(value)}")


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    raise ValueError(f"must be a string, not {_clip(value)}")


def _word(value: object) -> str:
    if isinstance(value, str):
        return _name(value)
    raise ValueError(f"must be a string, not {_clip(value)}")


def _address(value: object) -> str:
    if isinstance(value, str):
        return _addresses.get(value, value)
    raise ValueError(f"must be a string, not {_clip(value)}")


def _proto(value: object) -> str:
    if isinstance(value, str):
        return _PROTOS.get(value) or value.lower()
    raise ValueError(f"must be a string, not {_clip(value)}")


def _label(value: object) -> str:
    if isinstance(value, str):
        return _LABELS.get(value) or value.lower()
    raise ValueError(f"must be a string, not {_clip(value)}")


_CONVERTERS: Final[tuple[Callable[[object], object], ...]] = (
    _time,
    _address,
    _integer,
    _address,
    _integer,
    _proto,
    _word,
    _seconds,
    _integer,
    _integer,
    _word,
    _label,
    _word,
    _text,
)


def _convert(values: Sequence[object], unset: frozenset[str]) -> _Values:
    """Convert each raw value (text, or a JSON scalar) by its column; the slow, exact path
    that names the column at fault. ``None`` and the ``unset`` markers mean unset."""
    converted: list[object] = []
    for column, convert, value in zip(_COLUMNS, _CONVERTERS, values, strict=True):
        if value is None or (type(value) is str and value in unset):
            if column in _REQUIRED:
                raise FlowDecodeError(f"{column!r} is unset", field=column)
            converted.append(None)
            continue
        try:
            converted.append(convert(value))
        except (ValueError, OverflowError) as exc:
            raise FlowDecodeError(f"{column!r} {exc}", field=column) from None
    return tuple(converted)


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


class HTTPLogDecoder:
    """Turns the lines of one Zeek ``http.log`` (TSV with its ``#fields`` header, or JSON
    lines) into the HTTP sidecar's events; no I/O.

    Each row (one request) gives caller -> route (``http``) and route -> callee (``serve``)
    with the sidecar's route names: the caller is the row's ``username`` if set, else
    ``id.orig_h``; the callee is what ``callees`` names the responder's port, else
    ``id.resp_h``; ``size`` is ``request_body_len`` when above zero. :meth:`decode` returns
    the events of a row, ``[]`` for blank and header lines, or raises
    :class:`FlowDecodeError` naming the field at fault.
    """

    def __init__(
        self,
        *,
        callees: dict[int, str] | None = None,
        templates: Templates | None = None,
    ) -> None:
        self.callees = dict(callees or {})
        self.templates = templates or Templates()
        self._separator = "\t"
        self._unset = frozenset({"-", "(empty)", ""})
        self._fields: dict[str, int] | None = None

    def decode(self, line: bytes | str) -> list[EventFields]:
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        text = text.rstrip("\r\n")
        if not text.strip():
            return []
        if text.startswith("#"):
            self._header(text)
            return []
        if text.lstrip().startswith("{"):
            try:
                obj = _decode_json(text)
            except (ValueError, RecursionError) as exc:
                raise FlowDecodeError(f"not valid JSON ({_short(exc)})") from None
            if type(obj) is not dict:
                raise FlowDecodeError(f"expected a JSON object, got {type(obj).__name__}")
            inner = obj.get("id")
            nested: dict[str, object] = inner if type(inner) is dict else {}

            def get(key: str) -> object:
                value = obj.get(key)
                if value is None and key.startswith("id."):
                    value = nested.get(key[3:])
                return value

            return self._row(get)
        if self._fields is None:
            raise FlowDecodeError("no '#fields' header line before this row")
        cells = text.split(self._separator)
        fields = self._fields

        def cell(key: str) -> object:
            i = fields.get(key)
            if i is None or i >= len(cells) or cells[i] in self._unset:
                return None
            return cells[i]

        return self._row(cell)

    def _header(self, text: str) -> None:
        if text.startswith("#separator"):
            value = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text[len("#separator") :])
            self._separator = value[1:] if value[:1] == " " else value
            self._fields = None
            return
        values = text.split(self._separator)[1:]
        if text.startswith("#path") and values != ["http"]:
            self._fields = None
            raise FlowDecodeError(f"'#path' is {_clip(values)}, not ['http']: not an http log")
        if text.startswith("#unset_field") and len(values) == 1:
            self._unset = self._unset | {values[0]}
        elif text.startswith("#fields"):
            self._fields = {name: i for i, name in enumerate(values)}

    def _row(self, get: Callable[[str], object]) -> list[EventFields]:
        values: dict[str, object] = {}
        for key in ("ts", "id.orig_h", "id.resp_h", "id.resp_p", "method", "uri"):
            value = get(key)
            if value is None:
                raise FlowDecodeError(f"'{key}' is not set", field=key)
            values[key] = value
        try:
            ts = _time(values["ts"])
            if not 0.0 <= ts <= MAX_TS:
                raise ValueError(f"is out of range: {_clip(values['ts'])}")
        except (ValueError, OverflowError) as exc:
            raise FlowDecodeError(f"'ts' {exc}", field="ts") from None
        try:
            port = _integer(values["id.resp_p"])
        except (ValueError, OverflowError) as exc:
            raise FlowDecodeError(f"'id.resp_p' {exc}", field="id.resp_p") from None
        method, uri = str(values["method"]), str(values["uri"])
        if not method.isascii() or not method.isalpha():
            raise FlowDecodeError(f"'method' is not a method: {_clip(method)}", field="method")
        callee = self.callees.get(port) or str(values["id.resp_h"])
        user = get("username")
        caller = str(user) if user else str(values["id.orig_h"])
        size: int | None = None
        body = get("request_body_len")
        if body is not None:
            try:
                size = _integer(body) or None
            except (ValueError, OverflowError):
                size = None
        if size is not None and not 0 <= size <= MAX_SIZE:
            size = None
        route = route_name(method.upper(), uri, callee, self.templates)
        return [(ts, caller, route, HTTP_RELATION, size), (ts, route, callee, SERVE_RELATION, size)]


def read_http_log(
    lines: Iterable[bytes | str],
    *,
    callees: dict[int, str] | None = None,
    templates: Templates | None = None,
) -> Iterator[tuple[int, EventFields | FlowDecodeError]]:
    """Yield ``(line number, event fields or error)`` for a Zeek http.log, in file order;
    never raises for what the lines contain."""
    decoder = HTTPLogDecoder(callees=callees, templates=templates)
    for number, line in enumerate(lines, start=1):
        try:
            for fields in decoder.decode(line):
                yield number, fields
        except FlowDecodeError as exc:
            yield number, FlowDecodeError(exc.reason, line=number, field=exc.field)


def dns_answers(lines: Iterable[bytes | str]) -> tuple[list[DNSAnswer], int]:
    """The address answers of a Zeek ``dns.log`` (TSV with its ``#fields`` header, or JSON
    lines) in time order, each naming its address by the row's ``query``; and how many rows
    could not be read. Answers that are not addresses (CNAMEs, TXT) are left out. Never
    raises for what the lines contain."""
    found: list[DNSAnswer] = []
    bad = 0
    separator, unset = "\t", frozenset({"-", "(empty)", ""})
    fields: dict[str, int] | None = None
    for line in lines:
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        text = text.rstrip("\r\n")
        if not text.strip():
            continue
        if text.startswith("#"):
            if text.startswith("#separator"):
                value = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text[10:])
                separator = value[1:] if value[:1] == " " else value
            elif text.startswith("#fields"):
                fields = {name: i for i, name in enumerate(text.split(separator)[1:])}
            continue
        ts_value: object
        query: object
        answers: object
        if text.lstrip().startswith("{"):
            try:
                obj = _decode_json(text)
            except (ValueError, RecursionError):
                bad += 1
                continue
            if type(obj) is not dict:
                bad += 1
                continue
            ts_value, query, answers = obj.get("ts"), obj.get("query"), obj.get("answers")
        elif fields is not None:
            cells = text.split(separator)
            ts_value, query, answers = (
                _cell(cells, fields, unset, key) for key in ("ts", "query", "answers")
            )
            if isinstance(answers, str):
                answers = answers.split(",")
        else:
            bad += 1
            continue
        if query is None or answers is None:
            continue  # a query without an answer names nothing
        try:
            ts = _time(ts_value)
        except (ValueError, OverflowError):
            bad += 1
            continue
        if not isinstance(query, str) or not isinstance(answers, list) or not 0 <= ts <= MAX_TS:
            bad += 1
            continue
        for answer in answers:
            address = _checked_address(answer) if isinstance(answer, str) else None
            if address is not None and (address[:1].isdigit() or ":" in address):
                found.append(DNSAnswer(ts, address, query))
    found.sort(key=lambda answer: answer.ts)
    return found, bad


def _cell(cells: list[str], fields: dict[str, int], unset: frozenset[str], key: str) -> str | None:
    i = fields.get(key)
    if i is None or i >= len(cells) or cells[i] in unset:
        return None
    return cells[i]
