"""The fields of a Zeek conn.log row: one record type and the checked conversion of each
column (shared by the conn.log reader :mod:`commgraph.adapters.zeek` and the http.log and
dns.log readers of :mod:`commgraph.adapters.zeek_logs`)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final, NamedTuple

from commgraph.errors import FlowDecodeError
from commgraph.events import MAX_SIZE, MAX_TS

__all__ = ["FlowRecord", "relation"]


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
