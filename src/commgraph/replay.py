"""The one event-time driver: recorded records -> engine (-> store), as fast as it can.

``commgraph replay``, ``commgraph demo --replay``, ``commgraph eval`` (through
:mod:`commgraph.evaluate`) and the benchmarks all drive :meth:`Engine.tick` over event time
here: one tick at every event-time minute, before the first event of that minute, and one
at the last event's time when the records end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from commgraph.adapters.pcap import DNSAnswer
from commgraph.detectors.guardrails import Signal, SignalNote
from commgraph.engine import Engine, Verdict
from commgraph.errors import EventDecodeError
from commgraph.events import Record, iter_event_lines

if TYPE_CHECKING:  # the store is handed in; evaluation runs without one
    from commgraph.store import Store

__all__ = ["CHECK_EVERY", "COMMIT_SECONDS", "ReplaySummary", "replay", "replay_records"]

# A replay commits about twice a second of wall time (checked at every event-time minute and
# every CHECK_EVERY events): one fsync per event-time minute would make a week of sparse
# traffic take minutes. Everything is committed when the replay ends, also on an error.
CHECK_EVERY = 5000
COMMIT_SECONDS = 0.5


@dataclass(slots=True)
class ReplaySummary:
    events: int = 0
    skipped: int = 0
    errors: list[EventDecodeError] = field(default_factory=list)  # the first few
    new_alerts: list[int] = field(default_factory=list)
    first_ts: float | None = None
    last_ts: float | None = None
    seconds: float = 0.0
    store_seconds: float = 0.0  # of ``seconds``, in Store.flush

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def replay(
    lines: Iterable[str | bytes],
    engine: Engine,
    store: Store | None,
    *,
    strict: bool = False,
    progress: Callable[[int], None] | None = None,
    keep_errors: int = 20,
) -> ReplaySummary:
    """Run JSON-lines events through ``engine``: :func:`replay_records` of the lines."""
    return replay_records(
        iter_event_lines(lines),
        engine,
        store,
        strict=strict,
        progress=progress,
        keep_errors=keep_errors,
    )


def replay_records(
    records: Iterable[tuple[int, Record | DNSAnswer]],
    engine: Engine,
    store: Store | None,
    *,
    strict: bool = False,
    progress: Callable[[int], None] | None = None,
    keep_errors: int = 20,
    on_verdict: Callable[[int, Verdict], None] | None = None,
    on_tick: Callable[[float], None] | None = None,
) -> ReplaySummary:
    """Run recorded events through ``engine`` in event time, committing to ``store`` (when
    there is one) as it goes. ``records`` are ``(position, record)`` pairs from any adapter
    (line or packet number): an :class:`Event`, the checked fields ``(ts, src, dst,
    relation, size)`` for :meth:`Engine.observe_fields`, a protocol :class:`SignalNote`, a
    :class:`DNSAnswer` (for :meth:`Engine.learn_name`, where the capture had it), or the
    adapter's decode error.

    ``progress`` is called with the position reached about twice a second and at the end.
    ``on_verdict(position, verdict)`` is called after each event, ``on_tick(ts)`` after each
    tick (the last one after the final minute is flushed). A decode error is raised when
    ``strict``; otherwise it is skipped, counted and the first ``keep_errors`` are kept for
    the report. Everything observed is committed before this returns, also when it raises.
    """
    summary = ReplaySummary()
    perf = time.perf_counter
    started = perf()
    observe, observe_fields, tick = engine.observe, engine.observe_fields, engine.tick
    bound: dict[str, int] = {}  # client ids a capture's connections bound, and how often
    new_alert = summary.new_alerts.append
    next_tick = float("-inf")
    last_ts = float("-inf")
    since_check = events = 0
    position = 0
    committed = started
    store_seconds = 0.0
    try:
        for position, item in records:
            if isinstance(item, tuple):  # the adapters' fast form: checked fields
                ts = item[0]
            elif isinstance(item, EventDecodeError):
                if strict:
                    raise item
                summary.skipped += 1
                if len(summary.errors) < keep_errors:
                    summary.errors.append(item)
                continue
            elif isinstance(item, SignalNote):  # what an MQTT stream's protocol said
                engine.signal(
                    item.signal,
                    item.address,
                    item.ts,
                    active=item.active,
                    client_id=item.client_id,
                    username=item.username,
                )
                _connection(engine, item, bound)
                continue
            elif isinstance(item, DNSAnswer):
                engine.learn_name(item.ip, item.name)
                continue
            else:
                ts = item.ts
            if ts >= next_tick or since_check >= CHECK_EVERY:
                if ts >= next_tick:
                    tick(ts)
                    next_tick = (ts // 60 + 1) * 60
                    if summary.first_ts is None:
                        summary.first_ts = ts
                    if on_tick is not None:
                        on_tick(ts)
                since_check = 0
                now = perf()
                if now - committed >= COMMIT_SECONDS:
                    if store is not None:
                        store.flush(engine)
                        committed = perf()
                        store_seconds += committed - now
                    else:
                        committed = now
                    if progress is not None:
                        progress(position)
            verdict = observe_fields(*item) if isinstance(item, tuple) else observe(item)
            if verdict.alert is not None:
                new_alert(verdict.alert)
            if on_verdict is not None:
                on_verdict(position, verdict)
            events += 1
            since_check += 1
            if ts > last_ts:
                last_ts = ts
    finally:
        summary.events = events
        if events:
            summary.last_ts = last_ts
            engine.tick(last_ts)
        engine.flush_minute()
        if on_tick is not None and events:
            on_tick(last_ts)
        if store is not None:
            before = perf()
            store.flush(engine)
            store_seconds += perf() - before
        summary.seconds = perf() - started
        summary.store_seconds = store_seconds
        if progress is not None:
            progress(position)
    return summary


def _connection(engine: Engine, note: SignalNote, bound: dict[str, int]) -> None:
    """A captured MQTT connection binds its client id to its address while it is open, as
    the proxy does: a newcomer's question then names the address behind the client id."""
    client = note.client_id
    if not client or client == note.address:
        return
    if note.signal is Signal.ACTIVE:
        resolved = engine.identity.resolve_client(client, note.username)
        known = {"client_id": client, "username": note.username or "", "address": note.address}
        engine.bind(client, resolved, note.ts, known)
        bound[client] = bound.get(client, 0) + 1
    elif note.signal is Signal.CLOSED and note.active and bound.get(client):
        engine.unbind(client)
        bound[client] -= 1
        if not bound[client]:
            del bound[client]
