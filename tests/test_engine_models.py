"""Site models in the engine, as scripted event -> verdict sequences (no sockets, no files).

Node A learns a service type; node C adopts A's model and enforces it at once; decisions
made on another node arrive inside a model and are carried out here.
"""

from __future__ import annotations

import re

from commgraph.alerts import Action, AlertState
from commgraph.engine import Engine, Verdict
from commgraph.events import Event
from commgraph.graph import Label
from commgraph.identity import AddressKind, Identity, IdentityRule
from commgraph.model import ModelEdge, ServiceModel, merge
from commgraph.phases import LearningSettings, Mode, Phase, PhaseEvent
from commgraph.templates import TemplateRule, Templates

T0 = 1_700_000_000.0
MIN = 60.0

THERMO_RULE = IdentityRule(
    match=AddressKind.ANY, pattern=re.compile(r"^(?P<service>thermo)-(?P<instance>.+)$")
)


def at(minute: float) -> float:
    return T0 + minute * MIN


def ev(minute: float, src: str, dst: str, relation: str = "publish") -> Event:
    return Event(ts=at(minute), src=src, dst=dst, relation=relation, size=10)


def node(name: str, mode: Mode = Mode.PROTECT, templates: Templates | None = None) -> Engine:
    return Engine(
        LearningSettings(duration=5 * MIN, mode=mode),
        Identity([THERMO_RULE]),
        node=name,
        templates=templates,
    )


def learned_on_a() -> tuple[Engine, ServiceModel]:
    a = node("node-a")
    for minute in range(5):
        a.observe(ev(minute, "thermo-kitchen", "home/kitchen/temp"))
        a.observe(ev(minute, "thermo-kitchen", "home/kitchen/cmd", "subscribe"))
        a.observe(ev(minute, "home/kitchen/cmd", "thermo-kitchen", "deliver"))
        a.observe(ev(minute, "thermo-kitchen", "ntp.example", "udp/123"))
    a.tick(at(6))
    return a, a.model_of("thermo", node="node-a", issued_at=at(6), version=1)


def test_a_learned_model_is_templated_by_instance() -> None:
    _, model = learned_on_a()
    assert [(e.relation, e.peer, e.direction, e.label) for e in model.edges] == [
        ("deliver", "home/+/cmd", "in", "learned"),
        ("publish", "home/+/temp", "out", "learned"),
        ("subscribe", "home/+/cmd", "out", "learned"),
        ("udp/123", "ntp.example", "out", "learned"),
    ]


def test_levels_that_vary_across_instances_become_wildcards() -> None:
    a = node("node-a")
    for minute in range(3):
        a.observe(ev(minute, "thermo-1", "sensors/attic/temp"))
        a.observe(ev(minute, "thermo-2", "sensors/cellar/temp"))
    a.tick(at(6))
    model = a.model_of("thermo", node="node-a", issued_at=at(6), version=1)
    assert [e.peer for e in model.edges] == ["sensors/+/temp"]


def test_config_templates_come_first() -> None:
    a = node("node-a", templates=Templates([TemplateRule(pattern="site/{room}/#")]))
    a.observe(ev(0, "thermo-kitchen", "site/kitchen/temp/now"))
    a.tick(at(6))
    model = a.model_of("thermo", node="node-a", issued_at=at(6), version=1)
    assert [e.peer for e in model.edges] == ["site/+/#"]


def test_a_service_with_a_trusted_model_enforces_at_once_on_another_node() -> None:
    _, model = learned_on_a()
    c = node("node-c")
    c.adopt(model, "node-a")
    # A new instance of the type, on a node that never saw it: no learning phase.
    assert c.observe(ev(100, "thermo-bath", "home/bath/temp")) == Verdict(Label.LEARNED)
    assert c.observe(ev(100, "thermo-bath", "ntp.example", "udp/123")).label is Label.LEARNED
    state = next(iter(c.phases.states.values()))
    assert (state.phase, state.model_from) == (Phase.ACTIVE, "node-a")
    assert [ch.why for ch in c.take_changes().phase_changes] == [PhaseEvent.ADOPTED]
    # What the model does not cover is an anomaly, blocked in protect mode.
    verdict = c.observe(ev(100.5, "thermo-bath", "home/bath/door"))
    assert (verdict.label, verdict.block, verdict.alert) == (Label.PENDING, True, 1)
    assert c.observe(ev(101, "thermo-bath", "evil.example", "tcp/443")).alert == 2
    assert len(c.alerts.pending()) == 2


def test_a_model_denial_is_enforced_and_beats_a_broad_template() -> None:
    _, learned = learned_on_a()
    denial = ServiceModel(
        service="thermo",
        version=2,
        node="node-b",
        issued_at=at(7),
        edges=(
            ModelEdge(
                relation="publish",
                peer="home/attic/temp",
                direction="out",
                label="denied",
                decided_at=at(7),
                decided_by="owner",
            ),
        ),
    )
    c = node("node-c")
    c.adopt(learned, "node-a")
    c.adopt(denial, "node-b")
    assert c.observe(ev(100, "thermo-attic", "home/attic/temp")) == Verdict(Label.DENIED, True)
    assert c.observe(ev(100, "thermo-hall", "home/hall/temp")).label is Label.LEARNED
    assert not c.alerts.pending()  # a known denial is enforced, not asked again


def _approval(
    minute: float, peer: str, label: str = "approved", by: str = "owner@b"
) -> ServiceModel:
    return ServiceModel(
        service="thermo",
        version=3,
        node="node-b",
        issued_at=at(minute),
        edges=(
            ModelEdge(
                relation="publish",
                peer=peer,
                direction="out",
                label=label,
                decided_at=at(minute),
                decided_by=by,
            ),
        ),
    )


def test_a_decision_made_on_another_node_decides_the_alert_here() -> None:
    _, learned = learned_on_a()
    c = node("node-c")
    c.adopt(learned, "node-a")
    alert = c.observe(ev(100, "thermo-bath", "home/bath/door")).alert
    assert alert is not None
    c.take_changes()
    decisions = c.adopt(_approval(110, "home/+/door"), "node-b")
    assert [(d.action, d.by, d.at, d.alert, d.detail) for d in decisions] == [
        (Action.APPROVE, "owner@b", at(110), alert, "from node node-b")
    ]
    assert c.alerts.by_id[alert].state is AlertState.APPROVED
    assert c.observe(ev(111, "thermo-bath", "home/bath/door")) == Verdict(Label.APPROVED)
    changes = c.take_changes()
    assert changes.decisions == decisions and alert in changes.alerts
    # The same model again changes nothing; this node's view now carries the decision.
    assert c.adopt(_approval(110, "home/+/door"), "node-b") == []
    view = c.model_of("thermo", node="node-c", issued_at=at(112), version=1)
    door = view.edge("publish", "home/+/door")
    assert door is not None and (door.label, door.decided_at) == ("approved", at(110))


def test_a_remote_denial_of_a_learned_edge_is_carried_out() -> None:
    a, _ = learned_on_a()
    decisions = a.adopt(_approval(20, "home/+/temp", label="denied"), "node-b")
    assert [(d.action, d.alert, d.edge) for d in decisions] == [
        (Action.DENY, None, ("thermo", "home/kitchen/temp", "publish"))
    ]
    assert a.observe(ev(21, "thermo-kitchen", "home/kitchen/temp")) == Verdict(Label.DENIED, True)


def test_an_older_remote_decision_does_not_undo_a_newer_local_one() -> None:
    _, learned = learned_on_a()
    c = node("node-c")
    c.adopt(learned, "node-a")
    alert = c.observe(ev(100, "thermo-bath", "home/bath/door")).alert
    assert alert is not None
    c.decide(alert, Action.DENY, by="owner@c", at=at(120))
    assert c.adopt(_approval(110, "home/+/door"), "node-b") == []
    assert c.observe(ev(121, "thermo-bath", "home/bath/door")).label is Label.DENIED
    # A later approval elsewhere is the owner changing their mind: it wins.
    assert len(c.adopt(_approval(130, "home/+/door", by="owner@b2"), "node-b")) == 1
    assert c.observe(ev(131, "thermo-bath", "home/bath/door")).label is Label.APPROVED


def test_a_service_learning_here_keeps_learning_when_a_model_arrives() -> None:
    _, learned = learned_on_a()
    c = node("node-c")
    c.observe(ev(0, "thermo-bath", "home/bath/temp"))
    c.adopt(learned, "node-a")
    assert c.observe(ev(1, "thermo-bath", "home/bath/extra")).label is Label.LEARNED
    assert next(iter(c.phases.states.values())).model_from is None


def test_views_of_two_nodes_converge_under_merge() -> None:
    a, model_a = learned_on_a()
    c = node("node-c")
    c.adopt(model_a, "node-a")
    alert = c.observe(ev(100, "thermo-bath", "home/bath/door")).alert
    assert alert is not None
    c.decide(alert, Action.APPROVE, by="owner@c", at=at(101))
    view_c = c.model_of("thermo", node="node-c", issued_at=at(102), version=2)
    a.adopt(view_c, "node-c")
    view_a = a.model_of("thermo", node="node-a", issued_at=at(103), version=3)
    assert view_a.edges == view_c.edges
    assert merge(view_a, view_c).edges == view_a.edges


def test_http_edges_travel_in_models_and_a_new_route_elsewhere_is_an_anomaly() -> None:
    a = node("node-a")
    route = "GET rooms/rooms/{id}/temperature"
    for minute in range(3):
        a.observe(ev(minute, "heating", route, "http"))
        a.observe(ev(minute, route, "rooms", "serve"))
    a.tick(at(6))
    heating = a.model_of("heating", node="node-a", issued_at=at(6), version=1)
    rooms = a.model_of("rooms", node="node-a", issued_at=at(6), version=1)
    assert [(e.relation, e.peer, e.direction) for e in heating.edges] == [("http", route, "out")]
    assert [(e.relation, e.peer, e.direction) for e in rooms.edges] == [("serve", route, "in")]
    b = node("node-b")
    b.adopt(heating, "node-a")
    b.adopt(rooms, "node-a")
    assert b.observe(ev(100, "heating", route, "http")).label is Label.LEARNED
    assert b.observe(ev(100, route, "rooms", "serve")).label is Label.LEARNED
    unlock = b.observe(ev(100, "heating", "POST rooms/unlock", "http"))
    assert (unlock.label, unlock.block) == (Label.PENDING, True)
