"""The engine: ``observe(event) -> Verdict``, ``tick(now)``, and the owner's decisions.

Pure: no I/O, no clock. Time arrives with events and ``tick(now)``. What the store must write
is collected in :class:`Changes` (structural: write at once, handed out as values by
:meth:`Engine.delta`) and in the graph's dirty edge list (counters: written behind, batched,
as values by :meth:`Engine.take_counters`); :meth:`Engine.restore` resumes from what was
written. Those values (:mod:`commgraph.state`) are the whole contract with the store.

The hot path for a known, allowed edge is three dict lookups, one table probe, a few column
updates and the detectors' figures (:mod:`commgraph.detectors`); it returns a shared,
immutable :class:`Verdict`. New edges are where the rest happens: learning, site models
(:meth:`Engine.adopt`: a service whose type has a trusted model skips learning and its new
edges take the model's labels), templates, and alerts.

Trust no newcomer: a service first seen after the site's bootstrap period is asked about
(``new-service``) or held until the owner approves it (:class:`~commgraph.phases.Admission`),
and guardrails (:mod:`commgraph.detectors.guardrails`) bound what any service or address can
do, learning or not: floods, topic storms, an edge cap, brute force, fuzzing, connection
floods. Each is one alert per service (or address) and kind whose count grows.

From watching to protecting: with ``promote_after``, :meth:`Engine.tick` promotes a service
monitored by the site default to protect once nothing was asked about it for that long (the
rule is :meth:`~commgraph.phases.LearningSettings.promote_at`); the promotion is an audited
:meth:`Engine.set_mode` by ``commgraph``.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from commgraph.alerts import (
    NO_EDGE,
    SITE,
    Action,
    Alert,
    AlertBook,
    AlertKind,
    AlertState,
    Decision,
)
from commgraph.detectors import PERIODICITY, RATE, SIZE, DetectorSettings, Features
from commgraph.detectors.guardrails import AddressBook, GuardrailSettings, Signal
from commgraph.errors import DecisionError, UnknownItemError
from commgraph.events import Event, VertexKind, endpoint_kinds
from commgraph.graph import SIZE_UNKNOWN, Graph, Label
from commgraph.identity import AddressKind, Identity, Resolved
from commgraph.model import ModelEdge, ModelIndex, ServiceModel, build_model, merge
from commgraph.phases import (
    COMMGRAPH,
    Admission,
    LearningPhases,
    LearningSettings,
    Mode,
    Phase,
    PhaseChange,
    format_duration,
)
from commgraph.state import (
    Counters,
    Delta,
    EdgeCounts,
    EdgeRow,
    Snapshot,
    TimelineRow,
    VertexRow,
)
from commgraph.templates import Templates

__all__ = ["Changes", "Engine", "TimelineRow", "Verdict"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the engine says about one event. ``block`` is for proxies in protect mode."""

    label: Label
    block: bool = False
    alert: int | None = None  # the id of the alert this event raised, if it raised one

    @property
    def anomalous(self) -> bool:
        return self.label >= Label.PENDING


_LEARNED, _APPROVED = int(Label.LEARNED), int(Label.APPROVED)  # ints: cheaper than enums
_PENDING = int(Label.PENDING)
_FIGURE_KINDS = {RATE: AlertKind.RATE, SIZE: AlertKind.SIZE, PERIODICITY: AlertKind.PERIODICITY}
_KIND_CODES = {kind: code for code, kind in _FIGURE_KINDS.items()}
_MODEL_LABELS = {"learned": Label.LEARNED, "approved": Label.APPROVED, "denied": Label.DENIED}
_VERDICTS = {(label, block): Verdict(label, block) for label in Label for block in (False, True)}
_PENDING_VERDICTS = (_VERDICTS[(Label.PENDING, False)], _VERDICTS[(Label.PENDING, True)])
ALLOW_LEARNED = _VERDICTS[(Label.LEARNED, False)]
ALLOW_APPROVED = _VERDICTS[(Label.APPROVED, False)]


@dataclass(slots=True)
class Changes:
    """Structural changes since the last take; the store writes them synchronously."""

    vertices: set[int] = field(default_factory=set)
    relations: set[int] = field(default_factory=set)
    edges: set[int] = field(default_factory=set)
    services: set[int] = field(default_factory=set)
    modes: set[int] = field(default_factory=set)  # services whose owner-set mode changed
    quiet: set[int] = field(default_factory=set)  # services whose quiet_since moved on
    alerts: set[int] = field(default_factory=set)
    instances: list[tuple[int, str]] = field(default_factory=list)
    raised: list[int] = field(default_factory=list)  # alerts raised, of every kind
    edge_instances: dict[int, str] = field(default_factory=dict)  # new edge -> its instance
    phase_changes: list[PhaseChange] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    timeline: list[TimelineRow] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.vertices
            or self.relations
            or self.edges
            or self.services
            or self.modes
            or self.quiet
            or self.alerts
            or self.instances
            or self.edge_instances
            or self.phase_changes
            or self.decisions
            or self.timeline
        )


def _copy(alert: Alert) -> Alert:
    """An alert as a value: what the store writes must not change under it."""
    return replace(alert, detail=dict(alert.detail))


_KIND_ADDRESS = {VertexKind.SERVICE: None, VertexKind.HOST: AddressKind.HOST}
_NEVER = 1 << 62  # an event count no service reaches: its flood check is off
_NO_START = array("d", [float("-inf")])  # a window that never started: any event is past it
_EXAMPLES = 5  # examples an alert about a service or an address keeps
_GROUPED = 1000  # services one grouped new-service question names
_ADDRESS_KINDS = (AlertKind.AUTH_FAILURE, AlertKind.MALFORMED, AlertKind.CONNECTION_FLOOD)
_SIGNAL_KINDS = {
    Signal.REFUSED: AlertKind.AUTH_FAILURE,
    Signal.MALFORMED: AlertKind.MALFORMED,
    Signal.OPENED: AlertKind.CONNECTION_FLOOD,
}


class Engine:
    """One node's communication graph, learning phases and alerts."""

    def __init__(
        self,
        settings: LearningSettings | None = None,
        identity: Identity | None = None,
        *,
        node: str | None = None,
        templates: Templates | None = None,
        detectors: DetectorSettings | None = None,
        guardrails: GuardrailSettings | None = None,
    ) -> None:
        self.settings = settings or LearningSettings()
        self.guardrails = guardrails or GuardrailSettings()
        self.features = Features(detectors)
        self._update = self.features.update
        self.identity = identity or Identity()
        self.templates = templates or Templates()
        self.node = node
        self.graph = Graph()
        self.phases = LearningPhases(self.settings)
        self.alerts = AlertBook()
        self._open = self.alerts.open_alerts  # (edge, kind) -> the alert open on it
        self.instances: dict[int, set[str]] = {}
        # Trusted site models by service, and the node each first came from.
        self.models: dict[str, ModelIndex] = {}
        self.model_sources: dict[str, str] = {}
        # edge -> (when, by whom) of the owner's latest decision on it, here or on another node
        self.decided: dict[int, tuple[float, str]] = {}
        self._learned: set[int] = set()  # services whose learning ended, figures not yet
        self._bindings: dict[str, Resolved] = {}  # address -> identity an adapter resolved
        self._bound: dict[str, int] = {}  # address -> connections holding its binding
        self._known_as: dict[str, dict[str, str]] = {}  # address -> client id, user, peer...
        # Admission and guardrails
        self.site_started: float | None = None  # the site's first event: its bootstrap starts
        self._newcomers = [0.0, 0]  # site-wide: window start, newcomers in it
        # Columns by vertex id, grown when a service first needs them (see _room): a small
        # site pays a few bytes per service, not a dict entry and boxed numbers.
        self._flood_next = array("Q")  # event count of its next rate check (0: the next one)
        self._flood_start = array("d")  # start of its one-second window (-inf: none yet)
        self._burst_start = array("d")  # start of its minute of new edges (-inf: none yet)
        self._burst_edges = array("I")  # new edges in that minute (while learning)
        self._burst_alerts = array("I")  # new alerts in that minute (afterwards)
        self._edges_of_service: dict[int, int] = {}  # service -> edges it is the subject of
        self.addresses = AddressBook(self.guardrails.addresses)
        self.signals: dict[str, int] = {signal.value: 0 for signal in Signal}
        self._rate_limit = self.features.settings.rate_limit
        self._question: int | None = None  # a newcomer's question raised by this event
        self.changes = Changes()
        self._bumped: set[int] = set()  # alerts whose counters moved
        # address caches per slot kind: concrete address -> vertex id. Topics and routes are
        # their own names, so their cache is the graph's name index itself.
        self._caches: dict[VertexKind, dict[str, int]] = {
            VertexKind.SERVICE: {},
            VertexKind.HOST: {},
            VertexKind.TOPIC: self.graph.name_index(VertexKind.TOPIC),
            VertexKind.ROUTE: self.graph.name_index(VertexKind.ROUTE),
        }
        # relation name -> (relation id, src cache, dst cache, src kind, dst kind, subject is dst)
        self._relations: dict[
            str, tuple[int, dict[str, int], dict[str, int], VertexKind, VertexKind, bool]
        ] = {}
        # Every cache that holds host addresses: the kind's, and those of relations with
        # rules of their own (see _relation).
        self._host_caches: list[dict[str, int]] = [self._caches[VertexKind.HOST]]
        self._minute: int | None = None
        self._minute_learned = 0
        self._minute_anomalies = 0
        self._last_row: TimelineRow | None = None

    # -- observation ----------------------------------------------------------------------

    def observe(self, event: Event) -> Verdict:
        """Classify one event and account for it. Never does I/O; raises only on bugs."""
        return self.observe_fields(
            event.ts, event.src, event.dst, event.relation, event.size, event.node
        )

    def observe_fields(
        self,
        ts: float,
        src: str,
        dst: str,
        relation: str,
        size: int | None = None,
        node: str | None = None,
    ) -> Verdict:
        """:meth:`observe` for an adapter that holds the fields of an event it has checked
        (the MQTT proxy): the same, without building an :class:`Event` per message."""
        rel = self._relations.get(relation)
        if rel is None:
            rel = self._relation(relation)
        s = rel[1].get(src)
        d = rel[2].get(dst)
        if s is None or d is None:
            pair = self._endpoints(rel, src, dst, s, d, ts, relation, node)
            if type(pair) is Verdict:
                return pair
            s, d = pair  # type: ignore[misc]
        graph = self.graph
        e = graph.record(s, d, rel[0], ts, size)
        if e < 0:
            verdict = self._new_edge(s, d, rel, ts, size, node, dst if rel[5] else src)
            if self._question is not None:  # this event made a newcomer: its question
                verdict = Verdict(verdict.label, verdict.block, self._question)
                self._question = None
            return verdict
        subject = d if rel[5] else s
        events = graph.events
        n = events[subject] + 1
        events[subject] = n
        # the ceiling counts what a service sends, not what it is delivered
        flood_next = self._flood_next
        if (
            (subject >= len(flood_next) or n >= flood_next[subject])
            and not rel[5]
            and self._floods(subject, ts, node, src)
        ):
            return _VERDICTS[(Label(graph.label[e]), True)]
        label = graph.label[e]
        if label in (_LEARNED, _APPROVED):
            kind = self._update(e, graph.gap, size)
            if kind:
                return self._figure_alert(e, kind, subject, ts, node)
            return ALLOW_LEARNED if label == _LEARNED else ALLOW_APPROVED
        return self._flagged(e, subject, ts, node)

    def _relation(
        self, name: str
    ) -> tuple[int, dict[str, int], dict[str, int], VertexKind, VertexKind, bool]:
        src_kind, dst_kind = endpoint_kinds(name)
        rid = self.graph.relation_id(name)
        self.changes.relations.add(rid)
        dst_cache = self._caches[dst_kind]
        if dst_kind is VertexKind.HOST and self.identity.relation_specific(name):
            # Rules for this relation name its hosts differently: a cache of its own.
            dst_cache = {}
            self._host_caches.append(dst_cache)
        rel = (
            rid,
            self._caches[src_kind],
            dst_cache,
            src_kind,
            dst_kind,
            dst_kind is VertexKind.SERVICE,
        )
        self._relations[name] = rel
        return rel

    def _vertex(
        self,
        kind: VertexKind,
        address: str,
        ts: float,
        relation: str | None = None,
        cache: dict[str, int] | None = None,
    ) -> int:
        """Resolve an address met in a ``kind`` slot (of ``relation``) to a vertex, and
        remember it in ``cache`` (default: the kind's). The cache miss path."""
        graph = self.graph
        if self.site_started is None:
            self.site_started = ts
        if kind in (VertexKind.SERVICE, VertexKind.HOST):
            bound = self._bindings.get(address) if kind is VertexKind.SERVICE else None
            resolved = bound or self.identity.resolve(address, _KIND_ADDRESS[kind], relation)
            name = resolved.service
        else:
            resolved, name = None, address
        vid = graph.vertex(kind, name)
        if vid is None:
            vid = graph.add_vertex(kind, name, ts)
            self.changes.vertices.add(vid)
        if kind is VertexKind.SERVICE:
            if graph.kind(vid) is not VertexKind.SERVICE:  # a host that starts talking
                graph.set_kind(vid, VertexKind.SERVICE)
                self.changes.vertices.add(vid)
            first = vid not in self.phases.states
            # a newcomer: first seen (as any vertex: a host that starts talking is not new)
            # after the site's bootstrap
            rule = (
                self._admission(name, graph.first_seen[vid])
                if first and name not in self.models
                else None
            )
            if first and name in self.models:
                change: PhaseChange | None = self.phases.adopt(
                    vid, name, ts, self.model_sources[name]
                )
            elif rule is Admission.HOLD:
                change = self.phases.hold(vid, name, ts)
            else:
                change = self.phases.sighted(vid, name, ts, graph.events[vid])
            if change is not None:
                self._phase_changed(vid, change)
            if rule is not None:
                self._newcomer(vid, address, ts)
        if resolved is not None and resolved.instance is not None:
            known = self.instances.setdefault(vid, set())
            if resolved.instance not in known:
                known.add(resolved.instance)
                self.changes.instances.append((vid, resolved.instance))
        kept = graph.names[vid]
        # the name's own string as the key when they are equal: one copy, not two
        (self._caches[kind] if cache is None else cache)[kept if kept == address else address] = vid
        return vid

    def learn_name(self, address: str, name: str) -> None:
        """A DNS answer named ``address`` (an adapter saw it): with a ``dns`` identity rule,
        the address's next events count for ``name``. A host vertex of the address is renamed
        to the name unless that name is taken (then its edges stay under the address)."""
        if not self.identity.learn_name(address, name):
            return
        for cache in self._host_caches:
            cache.pop(address, None)
        graph = self.graph
        name = self.identity.name_of(address) or address
        vid = graph.vertex(VertexKind.HOST, address)
        if (
            vid is not None
            and graph.kind(vid) is VertexKind.HOST
            and graph.vertex(VertexKind.HOST, name) is None
        ):
            graph.rename(vid, name)
            self.changes.vertices.add(vid)

    def bind(
        self,
        address: str,
        resolved: Resolved,
        ts: float,
        known_as: dict[str, str] | None = None,
    ) -> None:
        """Tie a concrete address (an MQTT connection's key) to a service an adapter resolved.

        Events with ``address`` as their service side then count for ``resolved.service``;
        the service is sighted at its first event (a client that connects and does nothing
        leaves no trace in the graph). ``known_as`` is what the adapter knows of the client
        (``client_id``, ``username``, ``cert_cn``, ``address``), for the owner's questions.
        Each bind is released by one :meth:`unbind`.
        """
        if self._bindings.get(address) != resolved:
            self._caches[VertexKind.SERVICE].pop(address, None)
        self._bindings[address] = resolved  # _vertex resolves a bound address this way
        self._bound[address] = self._bound.get(address, 0) + 1
        if known_as:
            self._known_as[address] = {k: v for k, v in known_as.items() if v}

    def unbind(self, address: str) -> None:
        """Release one bind of an address (its connection closed); when none is left the
        address is forgotten. The service and its edges stay."""
        left = self._bound.get(address, 1) - 1
        if left > 0:
            self._bound[address] = left
            return
        self._bound.pop(address, None)
        self._bindings.pop(address, None)
        self._known_as.pop(address, None)
        self._caches[VertexKind.SERVICE].pop(address, None)

    @property
    def bound(self) -> int:
        """Addresses bound now (open connections' clients)."""
        return len(self._bindings)

    # -- admission and guardrails -----------------------------------------------------------

    def _admission(self, service: str, ts: float) -> Admission | None:
        """The admission rule for a service first seen at ``ts``; None if it is no newcomer
        (the site is still in its bootstrap, or newcomers just learn)."""
        started = self.site_started
        if started is None or ts < started + self.settings.bootstrap:
            return None
        rule = self.settings.admission_for(self.settings.mode_for(service))
        return None if rule is Admission.LEARN else rule

    def _newcomer(self, vid: int, address: str, ts: float) -> None:
        """Ask the owner about a newcomer: its own question, or, in a storm of newcomers,
        one grouped question for the site."""
        limit = self.guardrails.new_services_per_minute
        window = self._newcomers
        if ts - window[0] >= 60.0:
            window[0], window[1] = ts, 0
        window[1] += 1
        known = dict(self._known_as.get(address, {}))
        known.setdefault("address", address.removeprefix("mqtt:"))
        if limit and window[1] > limit:
            alert = self._about(SITE, AlertKind.NEW_SERVICE, ts, None)
            if alert is not None:
                names = alert.detail.setdefault("services", [])
                self._restart_quiet(vid, ts)
                if len(names) < _GROUPED:
                    names.append(self.graph.names[vid])
                else:
                    alert.detail["more"] = alert.detail.get("more", 0) + 1
                self.changes.alerts.add(alert.id)
            return
        alert, new = self.alerts.raise_or_repeat(
            NO_EDGE, AlertKind.NEW_SERVICE, ts, self.node, subject=vid
        )
        alert.detail.update(known)
        alert.detail.setdefault("examples", [])
        self._raised(alert, new)
        self._question = alert.id

    def _raised(self, alert: Alert, new: bool) -> None:
        self.changes.alerts.add(alert.id)
        if new:
            self.changes.raised.append(alert.id)
            self._minute_anomalies += 1
            self._restart_quiet(alert.subject, alert.first_seen)

    def _restart_quiet(self, subject: int, at: float) -> None:
        """A question about ``subject`` was raised or closed at ``at``: its count towards
        promotion starts again (see :mod:`commgraph.phases`)."""
        state = self.phases.states.get(subject)
        if state is not None and (state.quiet_since is None or at > state.quiet_since):
            state.quiet_since = at
            self.changes.quiet.add(subject)

    def _about(self, subject: int, kind: AlertKind, ts: float, node: str | None) -> Alert | None:
        """The alert of ``kind`` about a service or address, raised or repeated; None when
        the owner approved such an alert before (it is exempt). A denied one counts on."""
        latest = self.alerts.latest_about(subject, kind)
        if latest is not None and latest.state is not AlertState.PENDING:
            if latest.state is AlertState.APPROVED:
                return None
            latest.count += 1
            latest.last_seen = max(latest.last_seen, ts)
            self._bumped.add(latest.id)
            return latest
        alert, new = self.alerts.raise_or_repeat(
            NO_EDGE, kind, ts, node or self.node, subject=subject
        )
        if new:
            self._raised(alert, True)
        else:
            self._bumped.add(alert.id)
        return alert

    def _name_connection(self, alert: Alert, address: str | None) -> None:
        """Name on a service's flood or edge-burst alert, once, what is known of the
        connection its messages came by (client id, username, IP address): the owner sees
        the address behind a client id. Replayed events carry no connection: nothing."""
        if address is None or "address" in alert.detail:
            return
        known = self._known_as.get(address)
        if not known:
            return
        for key in ("client_id", "username", "address"):
            if known.get(key):
                alert.detail[key] = known[key]
        self.changes.alerts.add(alert.id)

    def _example(self, alert: Alert, subject: int, counterpart: int, rid: int) -> None:
        examples = alert.detail.setdefault("examples", [])
        if len(examples) < _EXAMPLES:
            graph = self.graph
            examples.append(f"{graph.relations[rid]} {graph.names[counterpart]}")
            self.changes.alerts.add(alert.id)

    def _floods(self, subject: int, ts: float, node: str | None, address: str) -> bool:
        """The rate check of a service, due every ``messages_per_second`` events: True if
        this message is over the ceiling and to be dropped (protect mode). ``address``: the
        one the message came from (its connection's, for :meth:`_name_connection`)."""
        self._room(subject)
        ceiling = self.guardrails.messages_per_second
        if not ceiling or self.graph.kind(subject) is not VertexKind.SERVICE:
            self._flood_next[subject] = _NEVER
            return False
        events = self.graph.events[subject]
        if ts - self._flood_start[subject] >= 1.0:
            # a new one-second window starts with this message
            self._flood_start[subject] = ts
            self._flood_next[subject] = events + ceiling
            return False
        alert = self._about(subject, AlertKind.FLOOD, ts, node)
        if alert is None:  # the owner said this service may send this much
            self._flood_next[subject] = _NEVER
            return False
        self._name_connection(alert, address)
        self._flood_next[subject] = events + 1  # check every message until the second ends
        return self.phases.mode(subject) is Mode.PROTECT

    def _storm(self, subject: int, ts: float, learning: bool) -> bool:
        """A new edge of ``subject``: True if it is beyond its new edges per minute (while
        learning) or its new alerts per minute (afterwards): then it is grouped."""
        self._room(subject)
        if ts - self._burst_start[subject] >= 60.0:
            self._burst_start[subject] = ts
            self._burst_edges[subject] = self._burst_alerts[subject] = 0
        if learning:
            edges = self._burst_edges[subject] + 1
            self._burst_edges[subject] = edges
            limit = self.guardrails.new_edges_per_minute
            return bool(limit) and edges > limit
        alerts = self._burst_alerts[subject] + 1
        self._burst_alerts[subject] = alerts
        limit = self.guardrails.new_alerts_per_minute
        return bool(limit) and alerts > limit

    def _room(self, vid: int) -> None:
        """Grow the per-service columns to hold vertex ``vid``."""
        grow = vid + 1 - len(self._flood_next)
        if grow > 0:
            self._flood_next.extend(array("Q", bytes(8 * grow)))
            self._flood_start.extend(_NO_START * grow)
            self._burst_start.extend(_NO_START * grow)
            self._burst_edges.extend(array("I", bytes(4 * grow)))
            self._burst_alerts.extend(array("I", bytes(4 * grow)))

    def _capped(self, subject: int) -> bool:
        cap = self.guardrails.max_edges_per_service
        return bool(cap) and self._edges_of_service.get(subject, 0) >= cap

    def _overflow(
        self, subject: int, ts: float, node: str | None, what: str, address: str
    ) -> Verdict:
        """A new edge of a service at its cap: counted on its edge-burst alert, no graph
        entry; blocked in protect mode."""
        alert = self._about(subject, AlertKind.EDGE_BURST, ts, node)
        if alert is not None:
            self._name_connection(alert, address)
            alert.detail["overflow"] = alert.detail.get("overflow", 0) + 1
            examples = alert.detail.setdefault("examples", [])
            if len(examples) < _EXAMPLES:
                examples.append(what)
            self._bumped.add(alert.id)
        return _PENDING_VERDICTS[self._blocks_pending(subject)]

    def _endpoints(
        self,
        rel: tuple[int, dict[str, int], dict[str, int], VertexKind, VertexKind, bool],
        src: str,
        dst: str,
        s: int | None,
        d: int | None,
        ts: float,
        relation: str,
        node: str | None,
    ) -> tuple[int, int] | Verdict:
        """Resolve the endpoints not cached yet, the event's subject first: a service at its
        edge cap creates no new counterpart vertex (a topic storm stays bounded)."""
        if rel[5]:  # the destination is the subject
            if d is None:
                d = self._vertex(rel[4], dst, ts, relation, rel[2])
            if s is None:
                if self._capped(d):
                    return self._overflow(d, ts, node, f"{relation} {src}", dst)
                s = self._vertex(rel[3], src, ts)
        else:
            if s is None:
                s = self._vertex(rel[3], src, ts)
            if d is None:
                if self._capped(s):
                    return self._overflow(s, ts, node, f"{relation} {dst}", src)
                d = self._vertex(rel[4], dst, ts, relation, rel[2])
        return s, d

    def signal(
        self,
        signal: Signal,
        address: str,
        ts: float,
        *,
        active: bool = False,
        client_id: str | None = None,
        username: str | None = None,
    ) -> bool:
        """A protocol adapter's news about a connection from ``address`` (an IP address).

        Refused CONNECTs, protocol errors, and connections opened fast or held idle beyond
        the ``[guardrails]`` ceilings raise one alert per address and kind; the address is a
        host vertex, so the owner sees who is behind the client ids. Returns True if the
        connection is to be refused: in protect mode, from an address the owner denied, or
        beyond a connection ceiling the owner did not approve.
        """
        self.signals[signal.value] += 1
        # a connection is no event: a port probe or a health check starts no bootstrap
        state = self.addresses.note(address, signal, ts, active=active)
        g = self.guardrails
        if signal is Signal.REFUSED:
            over = bool(g.auth_failures_per_minute) and state.refused >= g.auth_failures_per_minute
        elif signal is Signal.MALFORMED:
            over = bool(g.malformed_per_minute) and state.malformed >= g.malformed_per_minute
        elif signal is Signal.OPENED:
            over = (bool(g.connections_per_second) and state.opened > g.connections_per_second) or (
                bool(g.idle_connections) and state.idle > g.idle_connections
            )
        else:
            return False
        protect = self.settings.mode is Mode.PROTECT
        if not over:
            return protect and signal is Signal.OPENED and self._denied_address(address)
        host = self._address_vertex(address, ts)
        alert = self._about(host, _SIGNAL_KINDS[signal], ts, None)
        if alert is None:  # approved: this address may do so
            return False
        detail = alert.detail
        detail.setdefault("address", address)
        for key, value in (("client_ids", client_id), ("usernames", username)):
            if value:
                seen = detail.setdefault(key, [])
                if value not in seen and len(seen) < _EXAMPLES:
                    seen.append(value)
                    self.changes.alerts.add(alert.id)
        if signal is Signal.OPENED:
            detail["open"] = max(detail.get("open", 0), state.open)
        return protect and signal is Signal.OPENED

    def _address_vertex(self, address: str, ts: float) -> int:
        name = self.identity.resolve(address, AddressKind.HOST).service
        vid = self.graph.vertex(VertexKind.HOST, name)
        if vid is None:
            vid = self.graph.add_vertex(VertexKind.HOST, name, ts)
            self.changes.vertices.add(vid)
        return vid

    def _denied_address(self, address: str) -> bool:
        name = self.identity.resolve(address, AddressKind.HOST).service
        vid = self.graph.vertex(VertexKind.HOST, name)
        if vid is None:
            return False
        for kind in _ADDRESS_KINDS:
            latest = self.alerts.latest_about(vid, kind)
            if latest is not None and latest.state is AlertState.DENIED:
                return True
        return False

    def admits(self, address: str | None, service: str) -> bool:
        """Whether a client connecting from ``address`` as ``service`` may connect: not in
        protect mode when the owner denied the address, nor when the owner denied the
        service (a denied newcomer) where it is blocked."""
        if (
            address is not None
            and self.settings.mode is Mode.PROTECT
            and self._denied_address(address)
        ):
            return False
        vid = self.graph.vertex(VertexKind.SERVICE, service)
        if vid is None:
            return True
        state = self.phases.states.get(vid)
        if state is None or state.phase is not Phase.DENIED:
            return True
        return not self._blocks(vid, Label.DENIED)

    def _learning(self, vid: int, ts: float) -> bool:
        learning, change = self.phases.is_learning(vid, ts, self.graph.events[vid])
        if change is not None:
            self._phase_changed(vid, change)
        return learning

    def _owner(self, vid: int) -> int:
        """The service a counterpart belongs to: itself, a topic's first publisher, or 0."""
        kind = self.graph.kind(vid)
        if kind is VertexKind.SERVICE:
            return vid
        if kind is VertexKind.TOPIC:
            return self.graph.owner[vid]
        return 0

    def _new_edge(
        self,
        s: int,
        d: int,
        rel: tuple[int, dict[str, int], dict[str, int], VertexKind, VertexKind, bool],
        ts: float,
        size: int | None,
        node: str | None,
        address: str,
    ) -> Verdict:
        self._at_minute(ts)
        graph = self.graph
        subject, counterpart = (d, s) if rel[5] else (s, d)
        # Decided on the events before this one; then this one is counted.
        learning = self._learning(subject, ts)
        if not learning:
            owner = self._owner(counterpart)
            learning = owner != 0 and owner != subject and self._learning(owner, ts)
        events = graph.events[subject] + 1
        graph.events[subject] = events
        flood_next = self._flood_next
        if (
            (subject >= len(flood_next) or events >= flood_next[subject])
            and not rel[5]
            and self._floods(subject, ts, node, address)
        ):
            return _PENDING_VERDICTS[True]  # dropped: not even a graph entry
        relation = graph.relations[rel[0]]
        if rel[4] is VertexKind.TOPIC and relation == "publish" and not graph.owner[d]:
            graph.owner[d] = s
            self.changes.vertices.add(d)
        topical = (rel[3] if rel[5] else rel[4]) is VertexKind.TOPIC
        instance = self._instance_of(address) if topical else None
        index = self.models.get(graph.names[subject])
        if index is not None:
            known = self._covering(index, counterpart, relation, "in" if rel[5] else "out")
            if known is not None:
                return self._modelled(s, d, rel[0], ts, size, known, subject, instance)
        if self._capped(subject):
            what = f"{relation} {graph.names[counterpart]}"
            return self._overflow(subject, ts, node, what, address)
        state = self.phases.states.get(subject)
        phase = None if state is None else state.phase
        if phase is Phase.HELD or phase is Phase.DENIED:
            # A held newcomer's edges wait on its question; a denied one's are denied.
            label = Label.PENDING if phase is Phase.HELD else Label.DENIED
            e = graph.add_edge(s, d, rel[0], label, ts, size)
            self._edge_added(e, subject, instance)
            question = self.alerts.open_about(subject, AlertKind.NEW_SERVICE)
            if question is not None:
                if question.detail.get("examples"):  # its first edge was counted at its raise
                    question.count += 1
                    self._bumped.add(question.id)
                self._example(question, subject, counterpart, rel[0])
            return _VERDICTS[(label, self._blocks(subject, label))]
        mode = self.phases.mode(subject)
        if learning or mode is Mode.LEARN:
            if learning and self._storm(subject, ts, True):
                return self._burst_edge(
                    s, d, rel[0], ts, size, subject, instance, node, address=address
                )
            e = graph.add_edge(s, d, rel[0], Label.LEARNED, ts, size)
            self._edge_added(e, subject, instance)
            self._minute_learned += 1
            question = self.alerts.open_about(subject, AlertKind.NEW_SERVICE)
            if question is not None:  # a newcomer the owner is asked about, learning
                self._example(question, subject, counterpart, rel[0])
            return ALLOW_LEARNED
        owner = self._owner(counterpart) if rel[5] else 0
        if owner and owner != subject and self.alerts.open_about(owner, AlertKind.EDGE_BURST):
            # delivered from a storm: one more edge of the storm's question, not a new one
            return self._burst_edge(s, d, rel[0], ts, size, subject, instance, node, owner)
        if self._storm(subject, ts, False):
            return self._burst_edge(
                s, d, rel[0], ts, size, subject, instance, node, address=address
            )
        e = graph.add_edge(s, d, rel[0], Label.PENDING, ts, size)
        self._edge_added(e, subject, instance)
        alert, new = self.alerts.raise_or_repeat(
            e, AlertKind.NEW_EDGE, ts, node or self.node, subject=subject
        )
        self._raised(alert, new)
        return Verdict(Label.PENDING, self._blocks(subject, Label.PENDING), alert.id)

    def _burst_edge(
        self,
        s: int,
        d: int,
        rid: int,
        ts: float,
        size: int | None,
        subject: int,
        instance: str | None,
        node: str | None,
        storm: int = 0,
        *,
        address: str | None = None,
    ) -> Verdict:
        """A new edge beyond its service's ceiling: pending, on the service's one
        edge-burst alert (no alert of its own); approving that alert approves them all.
        ``storm``: the service whose storm this edge is part of, if not ``subject`` (a
        delivery of the storm's topics)."""
        alert = self._about(storm or subject, AlertKind.EDGE_BURST, ts, node)
        if alert is None:
            label = Label.APPROVED  # the owner approved this service's bursts
        elif alert.state is AlertState.PENDING:
            label = Label.PENDING
        else:
            label = Label.DENIED
        e = self.graph.add_edge(s, d, rid, label, ts, size)
        self._edge_added(e, subject, instance)
        if alert is not None:
            if not storm:
                self._example(alert, subject, d if s == subject else s, rid)
                self._name_connection(alert, address)
            alert.detail["edges"] = alert.detail.get("edges", 0) + 1
            self._bumped.add(alert.id)
        if label is Label.PENDING:
            return _PENDING_VERDICTS[self._blocks_pending(subject)]
        return _VERDICTS[(label, self._blocks(subject, label))]

    def _instance_of(self, address: str) -> str | None:
        bound = self._bindings.get(address)
        if bound is not None:
            return bound.instance
        if not self.identity.rules:
            return None
        return self.identity.resolve(address, AddressKind.HOST).instance

    def _edge_added(self, e: int, subject: int, instance: str | None) -> None:
        self.changes.edges.add(e)
        self._edges_of_service[subject] = self._edges_of_service.get(subject, 0) + 1
        self._update(e, 0.0, None)  # its first event, for the rates
        if instance is not None:
            # An instance's topics teach the templates of its service type.
            self.changes.edge_instances[e] = instance
            src, dst, _ = self.graph.endpoints(e)
            topic = self.graph.names[dst if src == subject else src]
            self.templates.observe(self.graph.names[subject], instance, topic)

    def _covering(
        self, index: ModelIndex, counterpart: int, relation: str, direction: str
    ) -> ModelEdge | None:
        """The edge of the service's site model that decides this relationship, if any."""
        peer = self.graph.names[counterpart]
        route = self.graph.kind(counterpart) is VertexKind.ROUTE
        template = self.templates.route(peer) if route else None
        return index.find(relation, direction, peer, template=template)

    def _modelled(
        self,
        s: int,
        d: int,
        rid: int,
        ts: float,
        size: int | None,
        known: ModelEdge,
        subject: int,
        instance: str | None,
    ) -> Verdict:
        """A new edge the site model already decides: labelled as the model says, no alert."""
        label = _MODEL_LABELS[known.label]
        e = self.graph.add_edge(s, d, rid, label, ts, size)
        self._edge_added(e, subject, instance)
        if known.figures and label is not Label.DENIED:
            # what the service was learned to do elsewhere: rate, period, sizes
            figures = known.figures
            size_min, size_max = figures.get("size_min"), figures.get("size_max")
            self.features.seed(
                e,
                rate_per_min=figures.get("rate_per_min"),
                period_s=figures.get("period_s"),
                jitter_s=figures.get("jitter_s"),
                size_min=None if size_min is None else int(size_min),
                size_max=None if size_max is None else int(size_max),
            )
        if known.decided_at is not None and known.decided_by is not None:
            self.decided[e] = (known.decided_at, known.decided_by)
        if label is Label.LEARNED:
            self._minute_learned += 1
        return _VERDICTS[(label, self._blocks(subject, label))]

    def _figure_alert(
        self, e: int, kind: int, subject: int, ts: float, node: str | None
    ) -> Verdict:
        """A known edge whose rate or size is not what was learned: one alert per (edge,
        kind) until decided; repeats count on it. The event itself is allowed."""
        label = Label(self.graph.label[e])
        if self.phases.mode(subject) is Mode.LEARN:
            return _VERDICTS[(label, False)]
        alert_kind = _FIGURE_KINDS[kind]
        # With [detectors] rate_limit, traffic beyond the learned rate is dropped in protect.
        limit = (
            self._rate_limit
            and alert_kind is AlertKind.RATE
            and self.phases.mode(subject) is Mode.PROTECT
        )
        open_alert = self._open.get((e, alert_kind))
        if open_alert is not None:
            open_alert.count += 1
            if ts > open_alert.last_seen:
                open_alert.last_seen = ts
            self._bumped.add(open_alert.id)
            return _VERDICTS[(label, limit)]
        alert, new = self.alerts.raise_or_repeat(
            e, alert_kind, ts, node or self.node, subject=subject
        )
        self._at_minute(ts)
        self._raised(alert, new)
        return Verdict(label, limit, alert.id)

    def _silences(self, now: float) -> None:
        """Periodic edges silent for too long: a periodicity alert each (checked in tick)."""
        graph = self.graph
        for e, due in sorted(self.features.silent(now, graph.last)):
            if graph.label[e] not in (_LEARNED, _APPROVED):
                continue
            if (e, AlertKind.PERIODICITY) in self._open:
                continue
            src, dst, rid = graph.endpoints(e)
            subject = dst if self._relation_subject_is_dst(rid) else src
            if self.phases.mode(subject) is Mode.LEARN:
                continue
            alert, new = self.alerts.raise_or_repeat(
                e, AlertKind.PERIODICITY, due, self.node, subject=subject
            )
            self._raised(alert, new)

    def _relation_subject_is_dst(self, rid: int) -> bool:
        return endpoint_kinds(self.graph.relations[rid])[1] is VertexKind.SERVICE

    def _flagged(self, e: int, subject: int, ts: float, node: str | None) -> Verdict:
        """A known edge that is pending or denied: count it on its alert, block if asked.
        Flows of an attack repeat on such edges, so this path stays plain too."""
        label = self.graph.label[e]
        if label == _PENDING:
            alert = self._open.get((e, AlertKind.NEW_EDGE))
            if alert is None:  # an edge of a held newcomer or of a burst: its group's alert
                alert = self._group_alert(e, subject)
            if alert is not None:
                alert.count += 1
                if ts > alert.last_seen:
                    alert.last_seen = ts
                self._bumped.add(alert.id)
            else:  # a pending edge whose question was lost: ask again, and tell the owner
                alert, new = self.alerts.raise_or_repeat(
                    e, AlertKind.NEW_EDGE, ts, node or self.node, subject=subject
                )
                self._raised(alert, new)
            return _PENDING_VERDICTS[self._blocks_pending(subject)]
        return _VERDICTS[(Label(label), self._blocks(subject, Label(label)))]

    def _group_alert(self, e: int, subject: int) -> Alert | None:
        """The open question a pending edge without its own alert belongs to: its service's
        (a held newcomer, a burst), or the storm its topic came from (a delivery)."""
        book = self.alerts
        alert = book.open_about(subject, AlertKind.NEW_SERVICE) or book.open_about(
            subject, AlertKind.EDGE_BURST
        )
        if alert is None:
            src, dst, _ = self.graph.endpoints(e)
            counterpart = src if dst == subject else dst
            if self.graph.kind(counterpart) is VertexKind.TOPIC:
                owner = self.graph.owner[counterpart]
                if owner and owner != subject:
                    alert = book.open_about(owner, AlertKind.EDGE_BURST)
        return alert

    def _blocks_pending(self, subject: int) -> bool:
        """Whether a pending edge of ``subject`` is blocked: a held newcomer's always."""
        state = self.phases.states.get(subject)
        if state is not None and state.phase is Phase.HELD:
            return True
        return self.settings.block_pending and self.phases.mode(subject) is Mode.PROTECT

    def _blocks(self, subject: int, label: Label) -> bool:
        if label is Label.PENDING:
            return self._blocks_pending(subject)
        if label is not Label.DENIED:
            return False
        mode = self.phases.mode(subject)
        if mode is Mode.PROTECT:
            return True
        # A newcomer denied where newcomers are held stays blocked, whatever the mode.
        state = self.phases.states.get(subject)
        return (
            state is not None
            and state.phase is Phase.DENIED
            and self.settings.admission_for(mode) is Admission.HOLD
        )

    # -- time -----------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Let time pass to ``now``: end learning phases that are due, close timeline minutes,
        raise a periodicity alert for each periodic edge silent for too long, and promote to
        protect the services quiet for ``promote_after``."""
        self._at_minute(now)
        self._end_phases(now)
        self._silences(now)
        if self.settings.promote_after:
            self._promote(now)

    def _promote(self, now: float) -> None:
        """Monitor -> protect for every service due (:meth:`LearningSettings.promote_at`) with
        no open question about it; decided and audited as ``by commgraph``."""
        after = self.settings.promote_after
        assert after is not None
        promote_at = self.settings.promote_at
        due = [
            state.service
            for vid, state in self.phases.states.items()
            if (at := promote_at(state)) is not None and now >= at and not self._open_about(vid)
        ]
        for service in sorted(due):
            self.set_mode(
                service,
                Mode.PROTECT,
                by=COMMGRAPH,
                at=now,
                reason=f"no open question for {format_duration(after)}",
            )

    def _open_about(self, vid: int) -> bool:
        """Whether a question about a service is open: on its edges, about itself, or a
        grouped question that names it."""
        if self.alerts.open_count(vid):
            return True
        grouped = self.alerts.open_about(SITE, AlertKind.NEW_SERVICE)
        return grouped is not None and self.graph.names[vid] in grouped.detail.get("services", ())

    def _end_phases(self, now: float) -> None:
        for change in self.phases.due(now, self.graph.events):
            vid = self.graph.vertex(VertexKind.SERVICE, change.service)
            assert vid is not None
            self._phase_changed(vid, change)
        if self._learned:
            self._learn_figures()

    def _at_minute(self, ts: float) -> None:
        minute = int(ts // 60)
        if self._minute is None:
            self._minute = minute
        elif minute > self._minute:
            # The row shows the minute's end, whenever we happen to notice it has passed.
            self._end_phases(self._minute * 60 + 59.999999)
            self._close_minute()
            self._minute = minute

    def _close_minute(self) -> None:
        """Emit the timeline row of the current minute if anything changed."""
        if self._minute is None:
            return
        row = TimelineRow(
            minute=self._minute,
            vertices=self.graph.vertex_count,
            services=len(self.phases.states),
            edges=self.graph.edge_count,
            learned=self._minute_learned,
            anomalies=self._minute_anomalies,
            learning=sum(1 for s in self.phases.states.values() if s.phase is Phase.LEARNING),
        )
        last = self._last_row
        if (
            last is None
            or row.learned
            or row.anomalies
            or (row.vertices, row.services, row.edges, row.learning)
            != (last.vertices, last.services, last.edges, last.learning)
            or last.minute == row.minute
        ):
            self.changes.timeline.append(row)
            self._last_row = row
        self._minute_learned = self._minute_anomalies = 0

    def _phase_changed(self, vid: int, change: PhaseChange) -> None:
        self.changes.services.add(vid)
        self.changes.phase_changes.append(change)
        if change.after is Phase.ACTIVE:
            self._restart_quiet(vid, change.at)  # its count towards promotion starts
        if change.after is Phase.ACTIVE and change.before is Phase.LEARNING:
            self._learned.add(vid)  # its figures are learned at the end of _end_phases

    def _learn_figures(self) -> None:
        """Services that have learned since the last time: the figures of their normal edges
        become their baseline. One scan of the edges for all of them, however many."""
        services, self._learned = self._learned, set()
        graph = self.graph
        endpoints, labels = graph.endpoints, graph.label
        for e in range(graph.edge_count):
            src, dst, _ = endpoints(e)
            if (src in services or dst in services) and labels[e] in (_LEARNED, _APPROVED):
                self._learn_edge(e)

    def _learn_edge(self, e: int) -> None:
        graph = self.graph
        low, high = graph.size_min[e], graph.size_max[e]
        if low == SIZE_UNKNOWN:  # sizes never seen: any size is fine
            low, high = 0, SIZE_UNKNOWN
        self.features.learn(e, low, high)
        graph.touch(e)  # the baseline is written with the counters

    # -- the owner's decisions ------------------------------------------------------------

    def decide(
        self,
        alert_id: int,
        action: Action,
        *,
        by: str,
        at: float,
        reason: str = "",
        audit: bool = True,
    ) -> Decision:
        """Approve or deny an alert: relabels its edge. Raises DecisionError if it cannot.

        ``audit=False`` applies a decision already in the audit log (made by another process).
        """
        if action not in (Action.APPROVE, Action.DENY):
            raise DecisionError(f"an alert is approved or denied, not {action}")
        alert = self.alerts.decide(alert_id, action)
        label = Label.APPROVED if alert.state is AlertState.APPROVED else Label.DENIED
        self._restart_quiet(alert.subject, at)  # a question closed (or answered anew)
        if alert.subject == SITE:
            for name in alert.detail.get("services", ()):
                vid = self.graph.vertex(VertexKind.SERVICE, name)
                if vid is not None:
                    self._restart_quiet(vid, at)
        if alert.edge == NO_EDGE:
            self._decide_about(alert, label, at, by)
            self.changes.alerts.add(alert.id)
            subject = self.graph.names[alert.subject] if alert.subject != SITE else None
            decision = Decision(
                action=action,
                by=by,
                at=at,
                reason=reason,
                alert=alert.id,
                service=subject,
                detail=alert.kind.value,
            )
            return self._audit(decision) if audit else decision
        self.graph.set_label(alert.edge, label)
        self.decided[alert.edge] = (at, by)
        if label is Label.APPROVED:
            if alert.kind is AlertKind.NEW_EDGE:
                self._learn_edge(alert.edge)  # what it does from now on is its baseline
            else:
                graph = self.graph
                self.features.widen(
                    alert.edge,
                    _KIND_CODES[alert.kind],
                    graph.size_min[alert.edge],
                    graph.size_max[alert.edge],
                )
        self.changes.alerts.add(alert.id)
        self.changes.edges.add(alert.edge)
        decision = Decision(
            action=action,
            by=by,
            at=at,
            reason=reason,
            alert=alert.id,
            edge=self.edge_names(alert.edge),
        )
        return self._audit(decision) if audit else decision

    def _decide_about(self, alert: Alert, label: Label, at: float, by: str) -> None:
        """Carry out a decision on an alert about a service, an address or the site."""
        kind = alert.kind
        if kind is AlertKind.NEW_SERVICE:
            if alert.subject == SITE:  # a grouped question: every newcomer it names
                for name in alert.detail.get("services", ()):
                    vid = self.graph.vertex(VertexKind.SERVICE, name)
                    if vid is not None and vid in self.phases.states:
                        self._decide_newcomer(vid, label, at, by)
            else:
                self._decide_newcomer(alert.subject, label, at, by)
        elif kind is AlertKind.EDGE_BURST:
            # its edges: the pending ones of the service that have no question of their own,
            # and the deliveries of its storm's topics
            graph = self.graph
            topics = set()
            for e, _direction, counterpart in self._edges_of(alert.subject):
                if graph.label[e] == _PENDING and (e, AlertKind.NEW_EDGE) not in self._open:
                    self._relabel(e, label, at, by)
                if graph.kind(counterpart) is VertexKind.TOPIC:
                    topics.add(counterpart)
            endpoints = graph.endpoints
            for e in range(graph.edge_count):
                src, _dst, _ = endpoints(e)
                if (
                    src in topics
                    and graph.label[e] == _PENDING
                    and (e, AlertKind.NEW_EDGE) not in self._open
                ):
                    self._relabel(e, label, at, by)
        elif kind is AlertKind.FLOOD and alert.subject < len(self._flood_next):
            # approved: the service may send this much; denied: it stays at its ceiling
            self._flood_next[alert.subject] = 0
        # address alerts: approved exempts the address, denied refuses it in protect mode;
        # both are read from the alert book when it matters

    def _decide_newcomer(self, vid: int, label: Label, at: float, by: str) -> None:
        state = self.phases.states[vid]
        graph = self.graph
        if label is Label.APPROVED:
            for e, _direction, _counterpart in self._edges_of(vid):
                if graph.label[e] in (_PENDING, int(Label.DENIED)):
                    self._relabel(e, Label.APPROVED, at, by)
            if state.phase in (Phase.HELD, Phase.DENIED):
                name = state.service
                if name in self.models:
                    change = self.phases.adopt(vid, name, at, self.model_sources[name])
                else:
                    change = self.phases.admit(vid, at)
                self._phase_changed(vid, change)
                self._forget_addresses(vid)  # its next event starts its learning clock
            return
        for e, _direction, _counterpart in self._edges_of(vid):
            if graph.label[e] != int(Label.DENIED):
                self._relabel(e, Label.DENIED, at, by)
        if state.phase is not Phase.DENIED:
            self._phase_changed(vid, self.phases.deny(vid, at))

    def _relabel(self, e: int, label: Label, at: float, by: str) -> None:
        self.graph.set_label(e, label)
        self.decided[e] = (at, by)
        self.changes.edges.add(e)
        if label is Label.APPROVED:
            self._learn_edge(e)

    def _forget_addresses(self, vid: int) -> None:
        """Drop a service's addresses from the caches: its next event passes through
        sighting again."""
        for cache in (self._caches[VertexKind.SERVICE], self._caches[VertexKind.HOST]):
            for address in [a for a, v in cache.items() if v == vid]:
                del cache[address]

    def set_mode(
        self,
        service: str,
        mode: Mode | None,
        *,
        by: str,
        at: float,
        reason: str = "",
        audit: bool = True,
    ) -> Decision:
        """Set a service's mode (None: back to the configured one), remembering who set it
        and when. Anyone but commgraph setting it stops the service's promotion for good."""
        vid = self._service(service)
        state = self.phases.states[vid]
        state.mode, state.mode_by, state.mode_at = mode, by, at
        self.changes.modes.add(vid)
        detail = mode.value if mode is not None else f"config ({self.phases.mode(vid).value})"
        decision = Decision(
            action=Action.MODE, by=by, at=at, reason=reason, service=service, detail=detail
        )
        return self._audit(decision) if audit else decision

    def reset_learning(
        self, service: str, *, by: str, at: float, reason: str = "", audit: bool = True
    ) -> Decision:
        """Restart a service's learning phase; its clock starts at its next event."""
        vid = self._service(service)
        self._phase_changed(vid, self.phases.reset(vid, at))
        self._forget_addresses(vid)  # its next event passes through sighting
        decision = Decision(action=Action.RESET, by=by, at=at, reason=reason, service=service)
        return self._audit(decision) if audit else decision

    def _service(self, name: str) -> int:
        vid = self.graph.vertex(VertexKind.SERVICE, name)
        if vid is None or vid not in self.phases.states:
            raise UnknownItemError(f"there is no service '{name}'")
        return vid

    def _audit(self, decision: Decision) -> Decision:
        self.changes.decisions.append(decision)
        return decision

    # -- site models --------------------------------------------------------------------

    def adopt(self, model: ServiceModel, source: str) -> list[Decision]:
        """Take in a trusted model of a service (from node ``source``, or a file).

        It joins the site model of the service: services of that type sighted from now on
        adopt it instead of learning, and their new edges it covers get its labels. Decisions
        in it newer than this node's own on a matching edge are carried out here (the edge is
        relabelled, its alert decided) and audited as made by the same person at the same
        time. Returns those decisions. Pure: the caller has checked the signature.
        """
        service = model.service
        known = self.models.get(service)
        merged = model if known is None else merge(known.model, model)
        if known is None or merged != known.model:
            self.models[service] = index = ModelIndex(merged)
        else:
            index = known
        # A service adopting the model is credited to the first node it came from.
        self.model_sources.setdefault(service, source)
        vid = self.graph.vertex(VertexKind.SERVICE, service)
        if vid is None:
            return []
        return [
            decision
            for e, direction, counterpart in self._edges_of(vid)
            if (decision := self._follow(index, e, direction, counterpart, source)) is not None
        ]

    def _edges_of(self, vid: int) -> list[tuple[int, str, int]]:
        """``(edge, direction, counterpart)`` of every edge of a service (a scan: rare path)."""
        found = []
        endpoints = self.graph.endpoints
        for e in range(self.graph.edge_count):
            src, dst, _ = endpoints(e)
            if src == vid:
                found.append((e, "out", dst))
            elif dst == vid:
                found.append((e, "in", src))
        return found

    def _follow(
        self, index: ModelIndex, e: int, direction: str, counterpart: int, source: str
    ) -> Decision | None:
        graph = self.graph
        rid = graph.endpoints(e)[2]
        known = self._covering(index, counterpart, graph.relations[rid], direction)
        if known is None or known.decided_at is None or known.decided_by is None:
            return None
        if known.label not in ("approved", "denied"):
            return None
        mine = self.decided.get(e)
        if mine is not None and mine >= (known.decided_at, known.decided_by):
            return None
        self.decided[e] = (known.decided_at, known.decided_by)
        label = _MODEL_LABELS[known.label]
        action = Action.APPROVE if label is Label.APPROVED else Action.DENY
        alert_id = None
        for alert in self.alerts.by_id.values():
            if alert.edge == e and alert.kind is AlertKind.NEW_EDGE:
                alert_id = alert.id
        changed = False
        if alert_id is not None and self.alerts.by_id[alert_id].state.value != known.label:
            self.alerts.decide(alert_id, action)
            self.changes.alerts.add(alert_id)
            self._restart_quiet(self.alerts.by_id[alert_id].subject, known.decided_at)
            changed = True
        if graph.label[e] != label:
            graph.set_label(e, label)
            self.changes.edges.add(e)
            changed = True
        if not changed:
            return None
        return self._audit(
            Decision(
                action=action,
                by=known.decided_by,
                at=known.decided_at,
                reason=f"site model from node {source}",
                alert=alert_id,
                edge=self.edge_names(e),
                detail=f"from node {source}",
            )
        )

    def model_of(self, service: str, *, node: str, issued_at: float, version: int) -> ServiceModel:
        """This node's view of ``service``'s model: what it learned and decided here, joined
        with the site model it holds. Pending edges are left out; topics are templated.
        Raises UnknownItemError for a service this node has never seen."""
        self._service(service)
        return self.models_of([service], node=node, issued_at=issued_at, version=version)[0]

    def models_of(
        self, services: Sequence[str], *, node: str, issued_at: float, version: int
    ) -> list[ServiceModel]:
        """:meth:`model_of` for several known services, with one scan of the edges."""
        graph = self.graph
        wanted = {self._service(name): name for name in services}
        rows: dict[int, list[dict[str, Any]]] = {vid: [] for vid in wanted}
        kinds: dict[tuple[str, str, str], VertexKind] = {}
        for e in range(graph.edge_count):
            src, dst, rid = graph.endpoints(e)
            for vid, counterpart in ((src, dst), (dst, src)):
                if vid not in wanted:
                    continue
                decided = self.decided.get(e)
                row = {
                    "src": graph.names[src],
                    "dst": graph.names[dst],
                    "relation": graph.relations[rid],
                    "label": Label(graph.label[e]).text,
                    "decided_at": None if decided is None else decided[0],
                    "decided_by": None if decided is None else decided[1],
                    "figures": self.features.learned_figures(e),
                }
                rows[vid].append(row)
                kinds[(graph.relations[rid], graph.names[src], graph.names[dst])] = graph.kind(
                    counterpart
                )
        built = []
        for vid, service in wanted.items():
            instances = tuple(sorted(self.instances.get(vid, ())))

            def semantic(
                relation: str,
                direction: str,
                peer: str,
                service: str = service,
                instances: tuple[str, ...] = instances,
            ) -> str:
                src, dst = (service, peer) if direction == "out" else (peer, service)
                return self._peer_form(service, instances, kinds.get((relation, src, dst)), peer)

            own = build_model(
                service,
                rows[vid],
                node=node,
                issued_at=issued_at,
                version=version,
                peer_form=semantic,
            )
            site = self.models.get(service)
            built.append(own if site is None else merge(site.model, own))
        return built

    def _peer_form(
        self, service: str, instances: tuple[str, ...], kind: VertexKind | None, peer: str
    ) -> str:
        """The semantic form of a counterpart: topic and route templates, names as they are."""
        if kind is VertexKind.TOPIC:
            for instance in instances:
                form = self.templates.topic(peer, service=service, instance=instance)
                if form != peer:
                    return form
            return self.templates.topic(peer, service=service, instance=None)
        if kind is VertexKind.ROUTE:
            return self.templates.route(peer)
        return peer

    # -- reading --------------------------------------------------------------------------

    def edge_names(self, edge: int) -> tuple[str, str, str]:
        """``(src, dst, relation)`` of an edge, by name."""
        src, dst, rid = self.graph.endpoints(edge)
        return self.graph.names[src], self.graph.names[dst], self.graph.relations[rid]

    def edge_of(self, src: str, dst: str, relation: str) -> int | None:
        """The edge concrete addresses were last counted on, if they have been observed."""
        rel = self._relations.get(relation)
        if rel is None:
            return None
        s, d = rel[1].get(src), rel[2].get(dst)
        if s is None or d is None:
            return None
        e = self.graph.find(s, d, rel[0])
        return e if e >= 0 else None

    def alert_edge(self, alert: Alert) -> tuple[str, str, str]:
        """``(src, dst, relation)`` of the edge an alert is about; for an alert about a
        service, an address or the site: (its name, the node, the kind)."""
        if alert.edge == NO_EDGE:
            name = "site" if alert.subject == SITE else self.graph.names[alert.subject]
            return name, alert.node or self.node or "this node", alert.kind.value
        return self.edge_names(alert.edge)

    def resumed(self) -> None:
        """Rebuild what is derived from the graph and the alerts, after a restore: the
        site's start, edges per service, and the subjects of edge alerts."""
        graph = self.graph
        if graph.vertex_count > 1:
            self.site_started = min(graph.first_seen[1:])
        counts: dict[int, int] = {}
        subject_is_dst = [self._relation_subject_is_dst(rid) for rid in range(len(graph.relations))]
        for e in range(graph.edge_count):
            src, dst, rid = graph.endpoints(e)
            subject = dst if subject_is_dst[rid] else src
            counts[subject] = counts.get(subject, 0) + 1
        self._edges_of_service = counts
        for alert in self.alerts.by_id.values():
            if alert.edge != NO_EDGE and not alert.subject:
                src, dst, rid = graph.endpoints(alert.edge)
                alert.subject = dst if subject_is_dst[rid] else src
                self.changes.alerts.add(alert.id)
        self.alerts.recount()

    def mode_of(self, vid: int) -> Mode:
        return self.phases.mode(vid)

    # -- persistence hand-off -------------------------------------------------------------

    def take_changes(self) -> Changes:
        """Structural changes since the last call (the caller writes them at once)."""
        taken, self.changes = self.changes, Changes()
        return taken

    def take_counters(self) -> Counters:
        """The counters moved since the last call, as values (written behind)."""
        edges = self.graph.take_dirty()
        alerts, self._bumped = sorted(self._bumped), set()
        graph, by_id = self.graph, self.alerts.by_id
        subjects: set[int] = set()
        for e in edges:
            src, dst, _ = graph.endpoints(e)
            subjects.update((src, dst))
        return Counters(
            edges=[self._counts(e) for e in edges],
            vertices=[(v, graph.events[v]) for v in sorted(subjects)],
            alerts=[_copy(by_id[a]) for a in alerts],
        )

    def delta(self, changes: Changes) -> Delta:
        """The values of what ``changes`` (from :meth:`take_changes`) names, for the store."""
        graph, states, by_id = self.graph, self.phases.states, self.alerts.by_id
        instance_of = changes.edge_instances.get
        return Delta(
            relations=[(rid, graph.relations[rid]) for rid in sorted(changes.relations)],
            vertices=[
                VertexRow(
                    vid,
                    graph.names[vid],
                    graph.kind(vid),
                    graph.owner[vid],
                    graph.first_seen[vid],
                    graph.events[vid],
                )
                for vid in sorted(changes.vertices)
            ],
            instances=list(changes.instances),
            edges=[
                EdgeRow(*graph.endpoints(e), Label(graph.label[e]), self._counts(e), instance_of(e))
                for e in sorted(changes.edges)
            ],
            services=[(v, replace(states[v])) for v in sorted(changes.services | changes.modes)],
            modes=[(v, replace(states[v])) for v in sorted(changes.modes)],
            quiet=[
                (v, quiet)
                for v in sorted(changes.quiet)
                if (quiet := states[v].quiet_since) is not None
            ],
            alerts=[_copy(by_id[a]) for a in sorted(changes.alerts)],
            decisions=list(changes.decisions),
            phase_changes=list(changes.phase_changes),
            timeline=list(changes.timeline),
        )

    def _counts(self, e: int) -> EdgeCounts:
        g = self.graph
        return EdgeCounts(
            e,
            g.count[e],
            g.bytes[e],
            g.first[e],
            g.last[e],
            g.ia_mean[e],
            g.ia_m2[e],
            g.size_min[e],
            g.size_max[e],
            self.features.pack(e),
        )

    def restore(self, state: Snapshot) -> None:
        """Resume, in an empty engine, exactly where the stored one stopped (site models
        apart: the caller checks their signatures and adopts them). Raises ValueError when
        the state does not hang together (ids out of order, damaged figures)."""
        graph = self.graph
        if graph.vertex_count > 1 or graph.edge_count:
            raise ValueError("an engine resumes only when it is empty")
        for v in state.vertices:
            if graph.add_vertex(v.kind, v.name, v.first_seen) != v.id:
                raise ValueError(f"vertex ids are not contiguous at {v.id}")
            graph.owner[v.id] = v.owner
            graph.events[v.id] = v.events
        for rid, name in state.relations:
            if graph.relation_id(name) != rid:
                raise ValueError(f"relation ids are not contiguous at {rid}")
        instances: list[tuple[int, str]] = []
        for row in state.edges:
            c = row.counts
            e = graph.restore_edge(
                row.src,
                row.dst,
                row.relation,
                label=row.label,
                count=c.count,
                nbytes=c.nbytes,
                first=c.first_seen,
                last=c.last_seen,
                ia_mean=c.ia_mean,
                ia_m2=c.ia_m2,
                size_min=c.size_min,
                size_max=c.size_max,
            )
            if e != c.id:
                raise ValueError(f"edge ids are not contiguous at {c.id + 1}")
            if c.figures is not None:
                self.features.restore(e, c.figures)
            if row.instance is not None:
                instances.append((e, row.instance))
        graph.take_dirty()
        for vid, phase in state.services:
            self.phases.states[vid] = phase
        for alert in state.alerts:
            self.alerts.add(alert)
        for vid, instance in state.instances:
            self.instances.setdefault(vid, set()).add(instance)
        for e, instance in instances:  # the templates an instance's topics taught
            src, dst, _ = graph.endpoints(e)
            service, topic = (src, dst) if graph.kind(dst) is VertexKind.TOPIC else (dst, src)
            self.templates.observe(graph.names[service], instance, graph.names[topic])
        for src_name, dst_name, relation, at, by in state.decided:
            found = self._edge_by_names(src_name, dst_name, relation)
            if found is not None and self.decided.get(found, (float("-inf"), "")) <= (at, by):
                self.decided[found] = (at, by)
        if state.last_minute is not None:
            self.restore_minute(state.last_minute)
        self.take_changes()
        self.resumed()  # alerts of an older schema get their subjects (written next time)

    def _edge_by_names(self, src: str, dst: str, relation: str) -> int | None:
        """The edge between two named vertices (either namespace), if there is one."""
        graph = self.graph
        rid = graph.relation_id_of(relation)
        if rid is None:
            return None
        for s in graph.vertex_ids(src):
            for d in graph.vertex_ids(dst):
                e = graph.find(s, d, rid)
                if e >= 0:
                    return e
        return None

    def flush_minute(self) -> None:
        """Emit the row of the minute in progress (before a shutdown); it is re-emitted later."""
        if self._minute is not None:
            learned, anomalies = self._minute_learned, self._minute_anomalies
            self._close_minute()
            # The minute is still open: keep counting into it.
            self._minute_learned, self._minute_anomalies = learned, anomalies

    def restore_minute(self, row: TimelineRow) -> None:
        """Continue the last stored minute after a restart."""
        self._minute = row.minute
        self._minute_learned = row.learned
        self._minute_anomalies = row.anomalies
        self._last_row = row
