"""Wiring: events from an adapter -> engine -> store. The only module that joins the parts.

:class:`Daemon` runs the live node behind ``commgraph run``: the MQTT proxy (and a passive
capture) feeding the engine, with the store written behind. Replays in event time are
:mod:`commgraph.replay`'s; the demo (:mod:`commgraph.demo`) is never imported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from commgraph.adapters.mqtt.proxy import ClientIdentity, MQTTProxy
from commgraph.alerts import Action, Decision, describe, mode_words
from commgraph.config import Config, NotifySettings, format_duration
from commgraph.detectors.guardrails import Signal, SignalNote
from commgraph.engine import Engine, Verdict
from commgraph.errors import CommgraphError
from commgraph.hooks import Hooks
from commgraph.identity import AddressKind
from commgraph.notify import AlertNotice, ModeNotice, Notice, Notifier, Sender
from commgraph.phases import COMMGRAPH, LearningSettings, Mode
from commgraph.running import announce, record_applied, retire
from commgraph.signing import load_private, load_trusted
from commgraph.site_models import SiteModels
from commgraph.store import Store
from commgraph.sync import ModelSync
from commgraph.web.auth import announce_token, load_or_create

__all__ = ["Daemon", "engine_for", "event_loop_runner", "run_daemon"]

log = logging.getLogger("commgraph")

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
        # The site config owns the learning settings; the database keeps the last run's copy
        # for commands without --config, so a change is said, then the config wins.
        stored = store.settings()
        if stored is not None and stored != config.learning:
            log.warning(
                "learning settings changed since %s last ran (%s wins): %s",
                store.path,
                config.source,
                "; ".join(config.learning.changes_from(stored)),
            )
        store.save_settings(config.learning)
        self.engine = engine_for(store, config, config.node)
        self.proxy: MQTTProxy | None = None
        self.sidecars: list[Any] = []  # adapters.http.proxy.HTTPSidecar, one per [[http.routes]]
        self.capture_stats: Any = None  # adapters.capture.CaptureStats while capturing
        self.decoder_stats: Any = None  # adapters.pcap.DecoderStats while capturing
        self.sync: ModelSync | None = None
        self.hooks = Hooks()
        self.hooks.failures["tick"] = 0  # the every-second writes, counted as a part
        self.models = SiteModels(
            self.engine,
            store,
            config.node,
            trusted=dict(load_trusted(config.trusted_keys)),
            private_key=load_private(config.private_key) if config.private_key else None,
            clock=clock,
            written=self._write_structure,
            audited=self._own_decisions_add,
            publish=lambda service, envelope: self.hooks.call("on_model", service, envelope),
        )
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
        self._running = False  # announced in the store as the node running on it
        self.models.load()
        self._write_structure()

    def _own_decisions_add(self, decision_id: int) -> None:
        self._own_decisions.add(decision_id)

    @property
    def models_kept(self) -> int:
        return self.models.kept

    @property
    def models_rejected(self) -> int:
        return self.models.rejected

    def model_received(self, service: str, node: str, payload: bytes, *, source: str) -> bool:
        """A model envelope from the site broker (or a file): :meth:`SiteModels.received`."""
        return self.models.received(service, node, payload, source=source)

    def publish_models(self) -> int:
        """Sign and publish the changed models: :meth:`SiteModels.publish_changed`."""
        return self.models.publish_changed()

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
            extra={
                "fields": {
                    "event": "alert",
                    "id": alert.id,
                    "kind": alert.kind.value,
                    "src": src,
                    "dst": dst,
                    "relation": relation,
                }
            },
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
        self.hooks.call("on_alert", notice)  # queues; a failing notifier never stops observation

    def _tell(self, decision: Decision) -> None:
        """A decision commgraph made on its own (a promotion): logged, and told to the owner."""
        if decision.action is not Action.MODE or not decision.service:
            return
        log.warning(
            "%s (%s); back with: commgraph --db %s mode %s monitor",
            mode_words(decision.service, decision.detail),
            decision.reason,
            self.store.path,
            decision.service,
        )
        notice = ModeNotice(
            service=decision.service,
            mode=decision.detail,
            by=decision.by,
            reason=decision.reason,
            node=self.name,
            at=decision.at,
        )
        self.hooks.call("on_alert", notice)  # told like an alert, by the same notifiers

    # -- the owner's actions, from the web side (commgraph.web.state.Node) ---------------

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
            **{f"failures_{part}": float(n) for part, n in self.hooks.failures.items()},
            **self._sidecar_counters(),
        }

    def _sidecar_counters(self) -> dict[str, float]:
        """``http/<counter>/<service>`` for each HTTP sidecar (a service name has no '/')."""
        found: dict[str, float] = {}
        for sidecar in self.sidecars:
            stats, service = sidecar.stats, sidecar.route.service
            for name in _SIDECAR_COUNTERS:
                key = f"http/{name}/{service}"
                found[key] = found.get(key, 0.0) + float(getattr(stats, name))
        return found

    # -- writing ---------------------------------------------------------------------

    def _write_structure(self) -> None:
        self._flush_soon = False
        changes = self.engine.take_changes()
        for alert_id in changes.raised:  # new edges, rates, sizes, silences
            self._announce(alert_id)
        for decision in changes.decisions:
            if decision.by == COMMGRAPH:
                self._tell(decision)
        if changes.edges or changes.services:
            self.models.touched(changes.edges, changes.services)
        self._own_decisions.update(self.store.write_changes(self.engine, changes))

    def _sync_received(self, service: str, node: str, payload: bytes) -> None:
        self.hooks.safecall("sync", self.models.received, service, node, payload, source="sync")

    def every_second(self) -> None:
        """Time passes, the CLI's decisions arrive, counters are written behind."""
        engine = self.engine
        engine.tick(self.clock())
        seen, refused = self._last_decision, {}
        for decision in self.store.decisions_since(self._last_decision):
            assert decision.id is not None
            self._last_decision = decision.id
            if decision.id in self._own_decisions:
                self._own_decisions.discard(decision.id)
                continue
            problem = self._apply(decision)
            if problem is not None:
                refused[decision.id] = problem
        self._write_structure()
        if self._last_decision != seen and self._running:
            record_applied(self.store, self._last_decision, refused)
        self.store.write_counters(engine.take_counters())
        self.publish_models()

    def _apply(self, decision: Decision) -> str | None:
        """Carry out a decision made elsewhere (already in the audit log); returns why it
        could not be applied here, or None."""
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
                self.models.reload(decision.service)
        except CommgraphError as exc:  # e.g. decided meanwhile here: the node's state wins
            log.warning(
                "decision %s (%s by %s) is in the audit log but not applied here: %s",
                decision.id,
                decision.action.value,
                decision.by,
                exc,
            )
            return str(exc)
        log.info(
            "applied %s by %s%s",
            decision.action.value,
            decision.by,
            f" on alert {decision.alert}" if decision.alert else f" on {decision.service}",
            extra={
                "fields": {
                    "event": "decision",
                    "action": decision.action.value,
                    "by": decision.by,
                    "alert": decision.alert,
                    "service": decision.service,
                }
            },
        )
        self.hooks.call("on_decision", decision)
        return None

    # -- running -----------------------------------------------------------------------

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
                clock=self.clock,
                release=self.release,
                signal=self.signal,
            )
            await self.proxy.start()
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
        # Started in this order, and stopped in it: what feeds the node first, the
        # notifiers last (they flush what the others made them queue).
        if self.config.http.routes:
            self.hooks.add("http", _HTTPHook(self))
        if self.config.capture is not None:
            self.hooks.add("capture", _CaptureHook(self))
        if self.config.sync_broker is not None:
            self.hooks.add("sync", _SyncHook(self))
        if self.config.api.listen is not None:
            self.hooks.add("web", _WebHook(self))
        if self.config.homeassistant.discovery:
            self.hooks.add("homeassistant", self._homeassistant())
        self.hooks.add("notify", _NotifyHook(self))
        ticker: asyncio.Task[None] | None = None
        try:
            await self.hooks.start()
            announce(self.store, self.name)
            self._running = True
            record_applied(self.store, self._last_decision, {})
            ticker = loop.create_task(self._tick())
            self.started.set()
            await self._stopping.wait()
        finally:
            if ticker is not None:
                ticker.cancel()
            if self._running:
                self._running = False
                retire(self.store)
            if self.proxy is not None:
                await self.proxy.close()
            await self.hooks.stop()
            self.engine.tick(self.clock())
            self.engine.flush_minute()
            self.store.flush(self.engine)
            log.info("stopped; statistics written to %s", self.store.path)

    def stop(self) -> None:
        self._stopping.set()

    def _homeassistant(self) -> Any:
        """The Home Assistant hook, on its broker (else the sync broker, else upstream)."""
        from commgraph import __version__
        from commgraph.homeassistant import HomeAssistant, view_of

        settings = self.config.homeassistant
        broker = settings.broker or self.config.sync_broker or self.config.mqtt.upstream
        if broker is None:
            raise CommgraphError("[homeassistant] discovery needs a broker (homeassistant.broker)")
        return HomeAssistant(
            broker,
            self.name,
            lambda: view_of(self.engine),
            self.decide,
            prefix=settings.prefix,
            version=__version__,
        )

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
            announce_token(credentials, self.credentials_path())
        return runner

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            # a failing write must not stop observation: logged, counted, retried in a second
            self.hooks.safecall("tick", self.every_second)


class _NotifyHook:
    """The owner's notifiers: told of every new alert, delivering in their own tasks."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.notifiers = daemon.notifiers
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if self.daemon.config.notify.urls:  # after the web side made the credentials
            self.notifiers.append(self.daemon._phone_notifier())
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(n.run()) for n in self.notifiers]

    def on_alert(self, notice: Notice) -> None:
        for notifier in self.notifiers:
            notifier.notify(notice)  # queues, never blocks

    async def stop(self) -> None:
        for notifier in self.notifiers:
            await notifier.close()
        for task in self.tasks:
            task.cancel()


class _SyncHook:
    """Model exchange with the site broker: our own models out, the others' in."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    async def start(self) -> None:
        daemon = self.daemon
        assert daemon.config.sync_broker is not None
        daemon.sync = ModelSync(daemon.config.sync_broker, daemon.name, daemon._sync_received)
        for service, (_, envelope) in daemon.models.published.items():
            daemon.sync.publish(service, envelope)
        await daemon.sync.start()

    def on_model(self, service: str, envelope: bytes) -> None:
        if self.daemon.sync is not None:
            self.daemon.sync.publish(service, envelope)

    async def stop(self) -> None:
        if self.daemon.sync is not None:
            await self.daemon.sync.close()


class _WebHook:
    """The REST API and dashboard."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        self.runner = await self.daemon._start_web()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


_SIDECAR_COUNTERS = (
    "connections_open",
    "connections_total",
    "requests",
    "blocked",
    "bad_requests",
    "upstream_errors",
    "refused_connections",
    "engine_errors",
)


class _HTTPHook:
    """The HTTP sidecars ([[http.routes]]), feeding the node like the MQTT proxy."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    async def start(self) -> None:
        """One sidecar per ``[[http.routes]]`` entry. Callers are identified by the identity
        rules and bound like MQTT clients; their connections' signals go to the guardrails."""
        from commgraph.adapters.http.proxy import HTTPSidecar
        from commgraph.adapters.http.relay import Caller

        daemon = self.daemon
        engine = daemon.engine

        def identify(caller: Caller, ts: float) -> str | None:
            resolved = engine.identity.resolve_caller(caller.ip, caller.user, caller.cert_cn)
            if not engine.admits(caller.ip, resolved.service):
                return None
            key = caller.cert_cn and f"cert:{caller.cert_cn}"
            address = f"http:{key or (caller.user and f'user:{caller.user}') or caller.ip}"
            known_as = {"username": caller.user or "", "cert_cn": caller.cert_cn or ""}
            engine.bind(address, resolved, ts, {**known_as, "address": caller.ip})
            if engine.changes:
                daemon._schedule_write()
            return address

        def on_signal(kind: Signal, ip: str, ts: float, active: bool) -> bool:
            return daemon.signal(kind, ip, ts, active, None)

        sidecars = []
        for route in daemon.config.http.routes:
            sidecar = HTTPSidecar(
                route,
                daemon.config.http,
                daemon.observe,
                identify,
                templates=engine.templates,
                clock=daemon.clock,
                release=daemon.release,
                signal=on_signal,
            )
            await sidecar.start()
            log.info("HTTP sidecar for %s on %s -> %s", route.service, route.listen, route.upstream)
            sidecars.append(sidecar)
        daemon.sidecars = sidecars

    async def stop(self) -> None:
        for sidecar in self.daemon.sidecars:
            await sidecar.close()


class _CaptureHook:
    """A passive capture on an interface ([capture]), feeding the node like the proxy."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the interface (raises CaptureError) and observe it in a task."""
        daemon = self.daemon
        settings = daemon.config.capture
        assert settings is not None
        from commgraph.adapters.capture import CaptureFilter, LiveCapture
        from commgraph.adapters.pcap import PacketDecoder

        live = LiveCapture(
            settings.interface,
            CaptureFilter(ports=frozenset(settings.ports), hosts=frozenset(settings.hosts)),
        )
        # HTTP: the ports asked for, and each sidecar's upstream port named by its service
        http_ports: dict[int, str | None] = dict.fromkeys(settings.http_ports)
        http_ports.update({r.upstream.port: r.service for r in daemon.config.http.routes})
        decoder = PacketDecoder(
            mqtt_ports=frozenset(settings.mqtt_ports),
            on_dns=lambda answer: daemon.engine.learn_name(answer.ip, answer.name),
            signals=True,
            http_ports=http_ports if settings.http_ports else None,
            templates=daemon.engine.templates,
        )
        daemon.capture_stats = live.stats
        daemon.decoder_stats = decoder.stats
        log.info(
            "capturing on %s (ports %s, hosts %s)",
            settings.interface,
            ", ".join(map(str, settings.ports)) or "all",
            ", ".join(settings.hosts) or "all",
        )
        self.task = asyncio.get_running_loop().create_task(self._observe(live, decoder))

    async def _observe(self, live: Any, decoder: Any) -> None:
        from commgraph.adapters.capture import live_events

        daemon = self.daemon
        try:
            async for _, item in live_events(live, decoder):
                if isinstance(item, tuple):  # a failing engine never stops the capture
                    daemon.hooks.safecall("capture", daemon.observe, *item)
                elif isinstance(item, SignalNote):  # with the client id the stream named
                    daemon.engine.signal(
                        item.signal,
                        item.address,
                        item.ts,
                        active=item.active,
                        client_id=item.client_id,
                        username=item.username,
                    )
                else:
                    log.debug("skipped a captured packet: %s", item)
        finally:
            live.close()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


def engine_for(
    store: Store,
    config: Config | None,
    node: str | None,
    settings: LearningSettings | None = None,
) -> Engine:
    """The engine a database holds, with the site config's identity rules, templates and
    detectors when there is one (as a running node of that config has them; without one, the
    default identity profile); ``settings`` instead of the config's learning settings when
    given."""
    if config is None:  # the database's own settings, and the defaults of a site config
        return store.load_engine(settings, node=node, **Config().engine_parts())
    return store.load_engine(settings or config.learning, node=node, **config.engine_parts())


def run_daemon(config: Config, db: Path) -> None:
    """``commgraph run``: serve until SIGINT/SIGTERM (uvloop when installed)."""
    _raise_file_limit()
    with Store(db) as store:
        daemon = Daemon(config, store)
        event_loop_runner()(daemon.run())


def _raise_file_limit() -> None:
    """Two sockets per client: lift the soft limit on open files to the hard one."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    try:
        import uvloop

        return uvloop.run
    except ImportError:
        return asyncio.run
