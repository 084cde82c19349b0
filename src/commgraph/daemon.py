"""Wiring: events from an adapter -> engine -> store. The only module that joins the parts.

:func:`replay` runs recorded events through the engine in event time, as fast as it can
(``commgraph replay`` and the demo); :class:`Daemon` runs the live node behind
``commgraph run``: the MQTT proxy feeding the engine, with the store written behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import subprocess
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from commgraph.adapters.mqtt.proxy import ClientIdentity, MQTTProxy
from commgraph.alerts import Action, Decision, describe
from commgraph.config import Config, NotifySettings, format_duration
from commgraph.demo import Pace, SimulatedSite, free_port, live_config, start_broker
from commgraph.detectors.guardrails import Signal, SignalNote
from commgraph.engine import Engine, Verdict
from commgraph.errors import CommgraphError, EventDecodeError
from commgraph.events import Record, VertexKind, iter_event_lines
from commgraph.identity import AddressKind, Identity
from commgraph.model import (
    ModelError,
    ServiceModel,
    open_model,
    parse_model,
    read_envelope,
    sign_model,
)
from commgraph.notify import AlertNotice, Message, Notifier, Sender
from commgraph.phases import Mode, Phase
from commgraph.signing import PrivateKey, PublicKey, load_private, load_trusted
from commgraph.store import Store
from commgraph.sync import ModelSync
from commgraph.templates import Templates
from commgraph.web.auth import load_or_create

__all__ = ["Daemon", "ReplaySummary", "replay", "run_daemon", "run_live_demo"]

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
    records: Iterable[tuple[int, Record]],
    engine: Engine,
    store: Store,
    *,
    strict: bool = False,
    progress: Callable[[int], None] | None = None,
    keep_errors: int = 20,
) -> ReplaySummary:
    """Run recorded events through ``engine`` in event time, committing to ``store`` as it
    goes. ``records`` are ``(position, record)`` pairs from any adapter (line or packet
    number): an :class:`Event`, the checked fields ``(ts, src, dst, relation, size)`` for
    :meth:`Engine.observe_fields`, or the adapter's decode error.

    ``progress`` is called with the position reached, every few thousand records. A decode
    error is raised when ``strict``; otherwise it is skipped, counted and the first
    ``keep_errors`` are kept for the report. Everything observed is committed before this
    returns, also when it raises.
    """
    summary = ReplaySummary()
    started = time.perf_counter()
    observe, observe_fields, tick = engine.observe, engine.observe_fields, engine.tick
    new_alert = summary.new_alerts.append
    next_tick = float("-inf")
    last_ts = float("-inf")
    since_check = events = 0
    position = 0
    committed = started
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
                continue
            else:
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
                        progress(position)
            verdict = observe_fields(*item) if isinstance(item, tuple) else observe(item)
            if verdict.alert is not None:
                new_alert(verdict.alert)
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
        store.flush(engine)
        summary.seconds = time.perf_counter() - started
        if progress is not None:
            progress(position)
    return summary


# -- the live daemon --------------------------------------------------------------------


def _ip_of(peer: str) -> str:
    """The IP address of a ``host:port`` peer name (IPv6 included)."""
    host = peer.rsplit(":", 1)[0] if ":" in peer else peer
    return host.strip("[]")


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
            config.learning,
            Identity(config.identity),
            node=config.node,
            templates=Templates(config.templates, routes=config.route_templates),
            detectors=config.detectors,
            guardrails=config.guardrails,
        )
        self.proxy: MQTTProxy | None = None
        self.sidecars: list[Any] = []  # adapters.http.proxy.HTTPSidecar, one per [[http.routes]]
        self.capture_stats: Any = None  # adapters.capture.CaptureStats while capturing
        self.decoder_stats: Any = None  # adapters.pcap.DecoderStats while capturing
        self.sync: ModelSync | None = None
        self.private_key: PrivateKey | None = (
            load_private(config.private_key) if config.private_key else None
        )
        self.trusted: dict[str, PublicKey] = dict(load_trusted(config.trusted_keys))
        self.models_kept = 0
        self.models_rejected = 0
        self._published: dict[str, tuple[ServiceModel, bytes]] = {}  # ours, per service
        self._model_dirty: set[str] = set()
        self._refused: set[bytes] = set()  # refused (topic, envelope) digests, audited once
        self._flush_soon = False
        self._own_decisions: set[int] = set()
        self._last_decision = store.last_decision_id()
        self._observe = self.engine.observe_fields
        self._edge_keys = self.engine.graph.key  # grows by one per new edge
        self._edges_written = len(self._edge_keys)
        self._stopping = asyncio.Event()
        self.alerts_raised = 0
        self.notifiers: list[Notifier] = []  # told of every new alert (never blocking)
        self.started = asyncio.Event()
        self._load_models()

    # -- what the proxy calls ----------------------------------------------------------

    def observe(
        self, ts: float, src: str, dst: str, relation: str, size: int | None = None
    ) -> Verdict:
        """The proxy's hook: classify, and have new structure written right after."""
        verdict = self._observe(ts, src, dst, relation, size)
        # Structure changes with a new edge (which may also end a phase or raise an alert),
        # and with an alert on a known edge (rate, size): one compare each per message.
        if (
            len(self._edge_keys) != self._edges_written
            or verdict.alert is not None
            or self.engine.changes.phase_changes  # a service sighted after approval or reset
        ):
            self._edges_written = len(self._edge_keys)
            self._schedule_write()
        return verdict

    def _schedule_write(self) -> None:
        if not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._write_structure)

    def identify(self, client: ClientIdentity, ts: float) -> str | None:
        """The address a connecting client's events carry, or None to refuse its CONNECT
        (a denied newcomer or address, in protect mode)."""
        ip = _ip_of(client.peer)
        identity = self.engine.identity
        if client.client_id:
            resolved = identity.resolve_client(client.client_id, client.username, client.cert_cn)
            # The address key is the client id: the broker allows one connection per id.
            address = f"mqtt:{client.client_id}"
        else:
            # An empty client id (clean session): the client is known by where it is.
            resolved = identity.resolve(ip, AddressKind.HOST)
            address = f"mqtt:@{ip}"
        if not self.engine.admits(ip, resolved.service):
            return None
        known_as = {
            "client_id": client.client_id,
            "username": client.username or "",
            "cert_cn": client.cert_cn or "",
            "address": ip,
        }
        self.engine.bind(address, resolved, ts, known_as)
        if self.engine.changes:
            self._schedule_write()
        return address

    def release(self, address: str) -> None:
        """A client's connection closed: its binding goes (the service stays)."""
        self.engine.unbind(address)

    def signal(
        self, kind: Signal, ip: str, ts: float, active: bool, client: ClientIdentity | None
    ) -> bool:
        """The proxy's protocol news, for the guardrails; True: refuse the connection."""
        refuse = self.engine.signal(
            kind,
            ip,
            ts,
            active=active,
            client_id=client.client_id if client is not None else None,
            username=client.username if client is not None else None,
        )
        if self.engine.changes:
            self._schedule_write()
        return refuse

    def _announce(self, alert_id: int) -> None:
        self.alerts_raised += 1
        alert = self.engine.alerts.by_id[alert_id]
        src, dst, relation = self.engine.alert_edge(alert)
        words = describe(alert.kind.value, src, dst, relation, alert.detail, alert.count)
        log.warning(
            "alert %d (%s): %s; approve with: commgraph --db %s approve %d (or deny %d)",
            alert.id,
            alert.kind.value,
            words,
            self.store.path,
            alert.id,
            alert.id,
        )
        notice = AlertNotice(
            id=alert.id,
            kind=alert.kind.value,
            src=src,
            dst=dst,
            relation=relation,
            node=self.name,
            at=alert.first_seen,
            detail=dict(alert.detail),
            count=alert.count,
        )
        for notifier in self.notifiers:
            notifier.notify(notice)  # queues; a failing notifier never stops observation

    # -- the owner's actions, from the web side (commgraph.web.app.Node) ---------------

    @property
    def name(self) -> str:
        return self.config.node

    def decide(self, alert_id: int, action: Action, *, by: str, reason: str = "") -> Decision:
        decision = self.engine.decide(alert_id, action, by=by, at=self.clock(), reason=reason)
        self._write_structure()  # durable (fsynced) before the caller answers
        return decision

    def set_mode(self, service: str, mode: Mode | None, *, by: str, reason: str = "") -> Decision:
        decision = self.engine.set_mode(service, mode, by=by, at=self.clock(), reason=reason)
        self._write_structure()
        return decision

    def reset_learning(self, service: str, *, by: str, reason: str = "") -> Decision:
        decision = self.engine.reset_learning(service, by=by, at=self.clock(), reason=reason)
        self._write_structure()
        return decision

    def counters(self) -> dict[str, float]:
        graph = self.engine.graph
        stats = self.proxy.stats if self.proxy is not None else None
        return {
            "events": float(sum(graph.count)),
            "edges": float(graph.edge_count),
            "alerts_raised": float(self.alerts_raised),
            "proxy_connections_open": float(stats.connections_open if stats else 0),
            "proxy_connections_total": float(stats.connections_total if stats else 0),
            "proxy_packets": float(stats.packets if stats else 0),
            "proxy_blocked": float(stats.blocked if stats else 0),
            "decode_errors": float(stats.decode_errors if stats else 0),
            "proxy_refused": float(stats.refused if stats else 0),
            "clients_bound": float(self.engine.bound),
            **{f"signals_{k}": float(v) for k, v in self.engine.signals.items()},
            "engine_errors": float(stats.engine_errors if stats else 0),
        }

    # -- writing ---------------------------------------------------------------------

    def _write_structure(self) -> None:
        self._flush_soon = False
        changes = self.engine.take_changes()
        for alert_id in changes.raised:  # new edges, rates, sizes, silences
            self._announce(alert_id)
        if changes.edges or changes.services:
            self._model_dirty.update(self._services_touched(changes.edges, changes.services))
        self._own_decisions.update(self.store.write_changes(self.engine, changes))

    def _services_touched(self, edges: Iterable[int], services: Iterable[int]) -> set[str]:
        graph = self.engine.graph
        names = {graph.names[vid] for vid in services}
        for e in edges:
            src, dst, _ = graph.endpoints(e)
            for vid in (src, dst):
                if graph.kind(vid) is VertexKind.SERVICE:
                    names.add(graph.names[vid])
        return names

    # -- site models -------------------------------------------------------------------

    def _load_models(self) -> None:
        """Take in the models kept in the store, and remember which of them are our own."""
        self._adopt_kept()
        self._model_dirty.update(s.service for s in self.engine.phases.states.values())
        self._write_structure()

    def _adopt_kept(self, service: str | None = None) -> None:
        """Adopt the models the store keeps (of one service, or all), oldest first, their
        signatures checked again: the trusted keys may have changed since they came. At
        start every refusal is logged; later only those of imported models (sync's were
        audited when they came)."""
        for row in sorted(self.store.models(service), key=lambda row: row["received_at"]):
            try:
                model = open_model(row["envelope"], self.trusted)
            except ModelError as exc:
                if service is None or row["source"] == "import":
                    log.warning(
                        "kept model of %s from node %s (%s) is not trusted here: %s",
                        row["service"],
                        row["node"],
                        row["source"],
                        exc,
                    )
                continue
            self.engine.adopt(model, row["node"])
            if row["node"] == self.name and row["source"] == "self":
                self._published[row["service"]] = (model, row["envelope"])

    def model_received(self, service: str, node: str, payload: bytes, *, source: str) -> bool:
        """A model envelope from the site broker (or a file): checked, kept, merged.

        Refused ones (unsigned, unknown key, tampered, malformed, or not the service and node
        the topic names) are audited once each and change nothing. One older than the model
        kept from the same node is merged (a join loses nothing) but does not replace it.
        Returns whether it was new.
        """
        try:
            model = open_model(payload, self.trusted)
            if (model.service, model.node) != (service, node):
                raise ModelError(
                    f"the message is on the topic of {service!r} from node {node!r} but holds "
                    f"a model of {model.service!r} from node {model.node!r}"
                )
        except ModelError as exc:
            self._refuse(service, node, payload, exc)
            return False
        kept = self._kept(service, node)
        if kept is not None and (kept.version, kept.issued_at) >= (model.version, model.issued_at):
            if kept != model:
                self.engine.adopt(model, node)
                self._write_structure()
            return False  # the same again (e.g. our own, echoed by the broker), or older
        self.store.save_model(service, node, payload, at=self.clock(), source=source)
        self.models_kept += 1
        decisions = self.engine.adopt(model, node)
        self._model_dirty.add(service)
        self._write_structure()  # decisions it carried are durable before we go on
        log.info(
            "model of %s from node %s kept (version %d, %d edges%s)",
            service,
            node,
            model.version,
            len(model.edges),
            f"; {len(decisions)} decisions applied here" if decisions else "",
        )
        return True

    def _kept(self, service: str, node: str) -> ServiceModel | None:
        """The model kept from ``node`` for ``service`` (already checked when it came)."""
        for row in self.store.models(service):
            if row["node"] == node:
                with contextlib.suppress(ModelError):
                    return parse_model(read_envelope(row["envelope"]).document)
        return None

    def _refuse(self, service: str, node: str, payload: bytes, exc: ModelError) -> None:
        self.models_rejected += 1
        digest = hashlib.sha256(f"{service}\0{node}\0".encode() + payload).digest()
        if digest in self._refused:
            return
        if len(self._refused) >= 10_000:  # bounded, whatever a broker is made to carry
            self._refused.clear()
        self._refused.add(digest)
        log.warning("refused the model of %s from node %s: %s (%s)", service, node, exc, exc.reason)
        decision = Decision(
            action=Action.MODEL_REJECTED,
            by="sync",
            at=self.clock(),
            reason=str(exc),
            service=service,
            detail=f"{exc.reason}; from node {node}",
        )
        self._own_decisions.add(self.store.audit(decision))

    def publish_models(self) -> int:
        """Sign and publish the models of services that changed; returns how many went out.

        Only services past learning are published (a half-learned model would make every
        other node alert on what is merely not learned yet). Without a private key, nothing
        is signed: this node only takes in models.
        """
        if self.private_key is None or not self._model_dirty:
            return 0
        engine = self.engine
        ready = []
        for name in sorted(self._model_dirty):
            vid = engine.graph.vertex(VertexKind.SERVICE, name)
            state = None if vid is None else engine.phases.states.get(vid)
            if state is not None and state.phase is Phase.ACTIVE:
                ready.append(name)
        self._model_dirty.clear()
        if not ready:
            return 0
        now = self.clock()
        sent = 0
        for model in engine.models_of(ready, node=self.name, issued_at=now, version=0):
            before = self._published.get(model.service)
            if before is not None and before[0].edges == model.edges:
                continue
            version = max(model.version, before[0].version if before else 0) + 1
            model = ServiceModel(
                service=model.service,
                version=version,
                node=self.name,
                issued_at=now,
                edges=model.edges,
            )
            envelope = sign_model(model, self.private_key)
            self.store.save_model(model.service, self.name, envelope, at=now, source="self")
            self._published[model.service] = (model, envelope)
            if self.sync is not None:
                self.sync.publish(model.service, envelope)
            sent += 1
        if sent:
            log.info("published %d model%s", sent, "" if sent == 1 else "s")
        return sent

    def _sync_received(self, service: str, node: str, payload: bytes) -> None:
        self.model_received(service, node, payload, source="sync")

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
        self.publish_models()

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
            elif decision.action is Action.MODEL_KEPT and decision.service:
                self._reload_model(decision.service)
        except CommgraphError as exc:  # e.g. already in that state: nothing to do
            log.debug("decision %s not applied: %s", decision.id, exc)
        else:
            log.info(
                "applied %s by %s%s",
                decision.action.value,
                decision.by,
                f" on alert {decision.alert}" if decision.alert else f" on {decision.service}",
            )

    def _reload_model(self, service: str) -> None:
        """Take in what ``commgraph model import`` kept in the store."""
        self._adopt_kept(service)
        self._model_dirty.add(service)
        self._write_structure()

    # -- running -----------------------------------------------------------------------

    async def _start_http(self) -> list[Any]:
        """Start one HTTP sidecar per ``[[http.routes]]`` entry (none without); the caller
        closes them. Callers are identified by the identity rules and bound like MQTT
        clients; their connections' signals go to the guardrails."""
        from commgraph.adapters.http.proxy import HTTPSidecar
        from commgraph.adapters.http.relay import Caller

        engine = self.engine

        def identify(caller: Caller, ts: float) -> str | None:
            resolved = engine.identity.resolve_caller(caller.ip, caller.user, caller.cert_cn)
            if not engine.admits(caller.ip, resolved.service):
                return None
            key = caller.cert_cn and f"cert:{caller.cert_cn}"
            address = f"http:{key or (caller.user and f'user:{caller.user}') or caller.ip}"
            known_as = {"username": caller.user or "", "cert_cn": caller.cert_cn or ""}
            engine.bind(address, resolved, ts, {**known_as, "address": caller.ip})
            if engine.changes:
                self._schedule_write()
            return address

        def on_signal(kind: Signal, ip: str, ts: float, active: bool) -> bool:
            return self.signal(kind, ip, ts, active, None)

        sidecars = []
        for route in self.config.http.routes:
            sidecar = HTTPSidecar(
                route,
                self.config.http,
                self.observe,
                identify,
                templates=engine.templates,
                clock=self.clock,
                release=self.release,
                signal=on_signal,
            )
            await sidecar.start()
            log.info("HTTP sidecar for %s on %s -> %s", route.service, route.listen, route.upstream)
            sidecars.append(sidecar)
        return sidecars

    async def run(self) -> None:
        """Serve until :meth:`stop` (or SIGINT/SIGTERM), then close and flush."""
        mqtt = self.config.mqtt
        loop = asyncio.get_running_loop()
        if mqtt.upstream is not None:
            self.proxy = MQTTProxy(
                mqtt,
                self.observe,
                self.identify,
                node=self.config.node,
                release=self.release,
                signal=self.signal,
            )
            await self.proxy.start()
        self.sidecars = await self._start_http()
        capturing = self._start_capture(loop)
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
                loop.add_signal_handler(signum, self.stop)
        if self.proxy is not None:
            where = ", ".join(f"{h}:{p}" for h, p in self.proxy.addresses)
            log.info("MQTT proxy on %s -> broker %s", where, mqtt.upstream)
        log.info(
            "node %s: default mode %s, learning %s, db %s",
            self.config.node,
            self.config.learning.mode.value,
            format_duration(self.config.learning.duration),
            self.store.path,
        )
        if self.config.sync_broker is not None:
            self.sync = ModelSync(self.config.sync_broker, self.name, self._sync_received)
            for service, (_, envelope) in self._published.items():
                self.sync.publish(service, envelope)
            await self.sync.start()
        web_runner = await self._start_web()
        if self.config.notify.urls:
            self.notifiers.append(self._phone_notifier())
        notifying = [loop.create_task(n.run()) for n in self.notifiers]
        ticker = loop.create_task(self._tick())
        self.started.set()
        try:
            await self._stopping.wait()
        finally:
            ticker.cancel()
            if web_runner is not None:
                await web_runner.cleanup()
            if capturing is not None:
                capturing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await capturing
            if self.proxy is not None:
                await self.proxy.close()
            for sidecar in self.sidecars:
                await sidecar.close()
            if self.sync is not None:
                await self.sync.close()
            for notifier in self.notifiers:
                await notifier.close()
            for task in notifying:
                task.cancel()
            self.engine.tick(self.clock())
            self.engine.flush_minute()
            self.store.flush(self.engine)
            log.info("stopped; statistics written to %s", self.store.path)

    def stop(self) -> None:
        self._stopping.set()

    def _start_capture(self, loop: asyncio.AbstractEventLoop) -> asyncio.Task[None] | None:
        """Observe an interface passively if ``[capture]`` says so (raises CaptureError)."""
        settings = self.config.capture
        if settings is None:
            return None
        from commgraph.adapters.capture import CaptureFilter, LiveCapture
        from commgraph.adapters.pcap import PacketDecoder

        live = LiveCapture(
            settings.interface,
            CaptureFilter(ports=frozenset(settings.ports), hosts=frozenset(settings.hosts)),
        )
        # HTTP: the ports asked for, and each sidecar's upstream port named by its service
        http_ports: dict[int, str | None] = dict.fromkeys(settings.http_ports)
        http_ports.update({r.upstream.port: r.service for r in self.config.http.routes})
        decoder = PacketDecoder(
            mqtt_ports=frozenset(settings.mqtt_ports),
            on_dns=lambda answer: self.engine.learn_name(answer.ip, answer.name),
            signals=True,
            http_ports=http_ports if settings.http_ports else None,
            templates=self.engine.templates,
        )
        self.capture_stats = live.stats
        self.decoder_stats = decoder.stats
        log.info(
            "capturing on %s (ports %s, hosts %s)",
            settings.interface,
            ", ".join(map(str, settings.ports)) or "all",
            ", ".join(settings.hosts) or "all",
        )
        return loop.create_task(self._observe_capture(live, decoder))

    async def _observe_capture(self, live: Any, decoder: Any) -> None:
        from commgraph.adapters.capture import live_events

        try:
            async for _, item in live_events(live, decoder):
                if isinstance(item, tuple):
                    try:
                        self.observe(*item)
                    except Exception:  # a failing engine never stops the capture
                        log.exception("observing a captured packet failed")
                elif isinstance(item, SignalNote):
                    self.signal(item.signal, item.address, item.ts, item.active, None)
                else:
                    log.debug("skipped a captured packet: %s", item)
        finally:
            live.close()

    def link_base(self) -> str:
        """Where the owner's phone reaches this node's action links."""
        api = self.config.api.listen
        return self.config.notify.link_base or (f"http://{api}" if api else "http://localhost")

    def notifier(self, settings: NotifySettings, send: Sender | None = None) -> Notifier:
        """A notifier whose action links this node's web side accepts."""
        credentials = load_or_create(self.credentials_path())
        return Notifier(
            settings,
            node=self.name,
            link_key=credentials.link_key,
            link_base=self.link_base(),
            clock=self.clock,
            send=send,
        )

    def _phone_notifier(self) -> Notifier:
        return self.notifier(self.config.notify)

    def credentials_path(self) -> Path:
        return self.config.api.credentials or Path(f"{self.store.path}.credentials")

    async def _start_web(self) -> web.AppRunner | None:
        """Serve the REST API and dashboard if ``[api] listen`` is set."""
        listen = self.config.api.listen
        if listen is None:
            return None
        from commgraph.web.app import make_app

        credentials = load_or_create(self.credentials_path())
        runner = web.AppRunner(make_app(self, credentials), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, listen.host, listen.port).start()
        log.info("dashboard and API on http://%s/ (token in %s)", listen, self.credentials_path())
        if credentials.created:
            log.warning(
                "API token (shown once, kept in %s): %s",
                self.credentials_path(),
                credentials.api_token,
            )
        return runner

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
        _event_loop_runner()(daemon.run())


def _raise_file_limit() -> None:
    """Two sockets per client: lift the soft limit on open files to the hard one."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


# -- the live demo ----------------------------------------------------------------------


def run_live_demo(
    out_dir: Path,
    *,
    seconds: float | None = None,
    pace: Pace | None = None,
    api_port: int | None = 8080,
    notify_urls: tuple[str, ...] = (),
    say: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """``commgraph demo``: Mosquitto, the proxy and dashboard, and a simulated site.

    Runs until Ctrl-C (or for ``seconds``), stops everything it started, and returns the
    alerts the site raised.
    """
    pace = pace or Pace()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("demo.db", "demo.db-wal", "demo.db-shm", "demo.credentials"):
        (out_dir / name).unlink(missing_ok=True)
    broker, broker_port = start_broker(out_dir)
    site: SimulatedSite | None = None
    try:
        config = live_config(
            out_dir,
            broker_port,
            pace=pace,
            api_port=None if api_port is None else free_port(api_port),
            notify_urls=notify_urls,
        )
        assert config.db is not None and config.mqtt.listen is not None
        with Store(config.db) as store:
            daemon = Daemon(config, store)
            daemon.notifiers.append(
                daemon.notifier(
                    NotifySettings(urls=("console",), per_minute=10), _console(daemon, say)
                )
            )

            async def main() -> None:
                nonlocal site
                serving = asyncio.get_running_loop().create_task(daemon.run())
                await asyncio.wait_for(daemon.started.wait(), 15)
                _banner(daemon, pace, say)
                site = SimulatedSite("127.0.0.1", config.mqtt.listen.port, pace)  # type: ignore[union-attr]
                await asyncio.to_thread(site.start)
                narration = asyncio.get_running_loop().create_task(_narrate(pace, say))
                if seconds is not None:
                    asyncio.get_running_loop().call_later(seconds, daemon.stop)
                try:
                    await serving
                finally:
                    narration.cancel()

            _event_loop_runner()(main())
            alerts = store.alerts()
        say(f"Stopped. The database stays in {config.db} (commgraph --db {config.db} alerts).")
        return alerts
    finally:
        if site is not None:
            site.stop()
        broker.terminate()
        try:
            broker.wait(10)
        except subprocess.TimeoutExpired:
            broker.kill()


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    try:
        import uvloop

        return uvloop.run
    except ImportError:
        return asyncio.run


def _banner(daemon: Daemon, pace: Pace, say: Callable[[str], None]) -> None:
    api = daemon.config.api.listen
    say("")
    say("commgraph live demo: a heating site behind the commgraph MQTT proxy")
    if api is not None:
        credentials = load_or_create(daemon.credentials_path())
        say(f"  dashboard  http://{api}/   (log in with the token below)")
        say(f"  API token  {credentials.api_token}")
    say(f"  database   {daemon.store.path}")
    mqtt = daemon.config.mqtt
    say(f"  broker     Mosquitto on {mqtt.upstream}, proxy on {mqtt.listen}")
    say("  Ctrl-C stops everything the demo started.")
    say("")


async def _narrate(pace: Pace, say: Callable[[str], None]) -> None:
    """Tell the viewer what happens next, on the demo's clock."""
    started = asyncio.get_running_loop().time()
    steps = [
        (
            0.0,
            f"Two sensors, a heating controller and two valves connect; each learns for "
            f"{pace.learning:g} s.",
        ),
        (pace.learning + 1, "Learning is over: from now on anything new is an anomaly."),
        (
            pace.bedroom_at,
            "A bedroom sensor is installed: it gets its own learning phase, and "
            "you are asked once whether it is yours.",
        ),
        (pace.anomaly_at, "The kitchen sensor starts commanding the kitchen valve..."),
    ]
    for at, text in steps:
        await asyncio.sleep(max(0.0, at - (asyncio.get_running_loop().time() - started)))
        say(f"[{at:5.1f} s] {text}")


def _console(daemon: Daemon, say: Callable[[str], None]) -> Sender:
    """A sender that shows the phone's notification on the console."""

    async def show(url: str, message: Message) -> None:
        say("")
        say(f"*** {message.title}: {message.text}")
        for button in message.buttons:
            say(f"    {button.label}: {button.page}")
        for alert in message.alerts:
            say(f"    or: commgraph --db {daemon.store.path} approve {alert}")
        say("")

    return show
