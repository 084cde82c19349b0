"""Wiring: events from an adapter -> engine -> store. The only module that joins the parts.

For now it holds the replay loop used by ``commgraph replay`` and the demo: recorded events
run through the same engine, in event time, as fast as they can.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from commgraph.engine import Engine
from commgraph.errors import EventDecodeError
from commgraph.events import iter_event_lines
from commgraph.store import Store

__all__ = ["ReplaySummary", "replay"]

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

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def replay(
    lines: Iterable[str | bytes],
    engine: Engine,
    store: Store,
    *,
    strict: bool = False,
    progress: Callable[[int], None] | None = None,
    keep_errors: int = 20,
) -> ReplaySummary:
    """Run JSON-lines events through ``engine``, committing to ``store`` as it goes.

    ``progress`` is called with the number of lines read so far, every few thousand lines.
    A malformed line raises :class:`EventDecodeError` with its line number when ``strict``;
    otherwise it is skipped, counted and the first ``keep_errors`` are kept for the report.
    Everything observed is committed before this returns, also when it raises.
    """
    summary = ReplaySummary()
    started = time.perf_counter()
    observe, tick = engine.observe, engine.tick
    next_tick = float("-inf")
    since_check = 0
    line_no = 0
    committed = started
    try:
        for line_no, item in iter_event_lines(lines):
            if isinstance(item, EventDecodeError):
                if strict:
                    raise item
                summary.skipped += 1
                if len(summary.errors) < keep_errors:
                    summary.errors.append(item)
                continue
            ts = item.ts
            if ts >= next_tick or since_check >= CHECK_EVERY:
                if ts >= next_tick:
                    tick(ts)
                    next_tick = (ts // 60 + 1) * 60
                    if summary.first_ts is None:
                        summary.first_ts = ts
                since_check = 0
                now = time.perf_counter()
                if now - committed >= COMMIT_SECONDS:
                    store.flush(engine)
                    committed = now
                    if progress is not None:
                        progress(line_no)
            verdict = observe(item)
            if verdict.alert is not None:
                summary.new_alerts.append(verdict.alert)
            summary.events += 1
            since_check += 1
            if summary.last_ts is None or ts > summary.last_ts:
                summary.last_ts = ts
    finally:
        if summary.last_ts is not None:
            engine.tick(summary.last_ts)
        engine.flush_minute()
        store.flush(engine)
        summary.seconds = time.perf_counter() - started
        if progress is not None:
            progress(line_no)
    return summary
