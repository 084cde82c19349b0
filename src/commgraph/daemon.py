"""Wiring: events from an adapter -> engine -> store. The only module that joins the parts.

:func:`replay` runs recorded events through the engine in event time, as fast as it can
(``commgraph replay`` and the demo); :class:`Daemon` runs the live node behind
``commgraph run``: the MQTT proxy feeding the engine, with the store written behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from commgraph.adapters.mqtt.proxy import ClientIdentity, MQTTProxy
from commgraph.alerts import Action, Decision
from commgraph.config import Config, format_duration
from commgraph.engine import Engine, Verdict
from commgraph.errors import CommgraphError, EventDecodeError
from commgraph.events import iter_event_lines
from commgraph.identity import Identity
from commgraph.phases import Mode
from commgraph.store import Store

__all__ = ["Daemon", "ReplaySummary", "replay", "run_daemon"]

log = logging.getLogger("commgraph")

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


# -- the live daemon --------------------------------------------------------------------


class Daemon:
    """One node: the proxy in front of the broker, the engine, the store, and the clock.

    Every second it lets time pass in the engine, applies decisions the owner made from
    another process (the CLI) since the last second, and writes counters behind. Structure
    (new edges, alerts, phase changes) is written as soon as the event that made it has been
    handled, before the proxy reads the next chunk.
    """

    def __init__(self, config: Config, store: Store, *, clock: Callable[[], float] = time.time):
        self.config = config
        self.store = store
        self.clock = clock
        store.save_settings(config.learning)
        self.engine = store.load_engine(
            config.learning, Identity(config.identity), node=config.node
        )
        self.proxy: MQTTProxy | None = None
        self._flush_soon = False
        self._own_decisions: set[int] = set()
        self._last_decision = store.last_decision_id()
        self._observe = self.engine.observe_fields
        self._edge_keys = self.engine.graph.key  # grows by one per new edge
        self._edges_written = len(self._edge_keys)
        self._stopping = asyncio.Event()
        self.alerts_raised = 0

    # -- what the proxy calls ----------------------------------------------------------

    def observe(
        self, ts: float, src: str, dst: str, relation: str, size: int | None = None
    ) -> Verdict:
        """The proxy's hook: classify, and have new structure written right after."""
        verdict = self._observe(ts, src, dst, relation, size)
        # Structure only changes with a new edge (which may also end a phase or raise an
        # alert: today every alert is about a new edge): one length compare per message
        # instead of looking through the outbox.
        if len(self._edge_keys) != self._edges_written:
            self._edges_written = len(self._edge_keys)
            if verdict.alert is not None:
                self._announce(verdict.alert)
            self._schedule_write()
        return verdict

    def _schedule_write(self) -> None:
        if not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._write_structure)

    def identify(self, client: ClientIdentity, ts: float) -> str:
        resolved = self.engine.identity.resolve_client(
            client.client_id, client.username, client.cert_cn
        )
        # The address key is the client id: the broker allows one connection per client id.
        address = f"mqtt:{client.client_id}"
        self.engine.bind(address, resolved, ts)
        if self.engine.changes:
            self._schedule_write()
        return address

    def _announce(self, alert_id: int) -> None:
        self.alerts_raised += 1
        alert = self.engine.alerts.by_id[alert_id]
        src, dst, relation = self.engine.alert_edge(alert)
        log.warning(
            "new %s alert %d: %s %s %s, never seen before; approve with: commgraph --db %s "
            "approve %d (or deny %d)",
            alert.kind.value,
            alert.id,
            src,
            relation,
            dst,
            self.store.path,
            alert.id,
            alert.id,
        )

    # -- writing ---------------------------------------------------------------------

    def _write_structure(self) -> None:
        self._flush_soon = False
        self._own_decisions.update(
            self.store.write_changes(self.engine, self.engine.take_changes())
        )

    def every_second(self) -> None:
        """Time passes, the CLI's decisions arrive, counters are written behind."""
        engine = self.engine
        engine.tick(self.clock())
        for decision in self.store.decisions_since(self._last_decision):
            assert decision.id is not None
            self._last_decision = decision.id
            if decision.id in self._own_decisions:
                self._own_decisions.discard(decision.id)
                continue
            self._apply(decision)
        self._write_structure()
        self.store.write_counters(engine, *engine.take_counters())

    def _apply(self, decision: Decision) -> None:
        """Carry out a decision made elsewhere (already in the audit log)."""
        engine = self.engine
        try:
            if decision.action in (Action.APPROVE, Action.DENY) and decision.alert is not None:
                engine.decide(
                    decision.alert, decision.action, by=decision.by, at=decision.at, audit=False
                )
            elif decision.action is Action.MODE and decision.service:
                mode = Mode(decision.detail) if decision.detail in set(Mode) else None
                engine.set_mode(decision.service, mode, by=decision.by, at=decision.at, audit=False)
            elif decision.action is Action.RESET and decision.service:
                engine.reset_learning(decision.service, by=decision.by, at=decision.at, audit=False)
        except CommgraphError as exc:  # e.g. already in that state: nothing to do
            log.debug("decision %s not applied: %s", decision.id, exc)
        else:
            log.info(
                "applied %s by %s%s",
                decision.action.value,
                decision.by,
                f" on alert {decision.alert}" if decision.alert else f" on {decision.service}",
            )

    # -- running -----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until :meth:`stop` (or SIGINT/SIGTERM), then close and flush."""
        mqtt = self.config.mqtt
        self.proxy = MQTTProxy(mqtt, self.observe, self.identify, node=self.config.node)
        await self.proxy.start()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
                loop.add_signal_handler(signum, self.stop)
        where = ", ".join(f"{h}:{p}" for h, p in self.proxy.addresses)
        log.info(
            "MQTT proxy on %s -> broker %s (node %s, default mode %s, learning %s), db %s",
            where,
            mqtt.upstream,
            self.config.node,
            self.config.learning.mode.value,
            format_duration(self.config.learning.duration),
            self.store.path,
        )
        ticker = loop.create_task(self._tick())
        try:
            await self._stopping.wait()
        finally:
            ticker.cancel()
            await self.proxy.close()
            self.engine.tick(self.clock())
            self.engine.flush_minute()
            self.store.flush(self.engine)
            log.info("stopped; statistics written to %s", self.store.path)

    def stop(self) -> None:
        self._stopping.set()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                self.every_second()
            except Exception:  # a failing write must not stop observation
                log.exception("the periodic write failed; retrying in a second")


def run_daemon(config: Config, db: Path) -> None:
    """``commgraph run``: serve until SIGINT/SIGTERM (uvloop when installed)."""
    _raise_file_limit()
    with Store(db) as store:
        daemon = Daemon(config, store)
        try:
            import uvloop

            runner: Callable[[Coroutine[Any, Any, None]], None] = uvloop.run
        except ImportError:
            runner = asyncio.run
        runner(daemon.run())


def _raise_file_limit() -> None:
    """Two sockets per client: lift the soft limit on open files to the hard one."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
