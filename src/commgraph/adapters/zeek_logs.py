"""Zeek's http.log and dns.log: HTTP requests as the sidecar's events, and the DNS answers
that name a conn.log's addresses (the conn.log reader, whose layout these share, is
:mod:`commgraph.adapters.zeek`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from commgraph.adapters.http.relay import HTTP_RELATION, SERVE_RELATION, route_name
from commgraph.adapters.pcap import DNSAnswer
from commgraph.adapters.zeek import _ESCAPE, _decode_json, _short
from commgraph.adapters.zeek_fields import _checked_address, _clip, _integer, _time
from commgraph.errors import FlowDecodeError
from commgraph.events import MAX_SIZE, MAX_TS, EventFields
from commgraph.templates import Templates

__all__ = ["HTTPLogDecoder", "dns_answers", "read_http_log"]


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
