"""Trust no newcomer: admission of new services and the guardrails, scripted in event time."""

from __future__ import annotations

import pytest

from commgraph.alerts import NO_EDGE, SITE, Action, AlertKind, describe
from commgraph.detectors import DetectorSettings
from commgraph.detectors.guardrails import GuardrailSettings, Signal
from commgraph.engine import Engine
from commgraph.events import VertexKind
from commgraph.graph import Label
from commgraph.identity import Resolved
from commgraph.phases import Admission, LearningSettings, Mode, Phase

T0 = 1_700_000_000.0
MIN = 60.0


def at(minute: float) -> float:
    return T0 + minute * MIN


def make(mode: Mode = Mode.MONITOR, **kwargs: object) -> Engine:
    guardrails = kwargs.pop("guardrails", None)
    detectors = kwargs.pop("detectors", None)
    settings = LearningSettings(duration=5 * MIN, mode=mode, **kwargs)  # type: ignore[arg-type]
    return Engine(settings, node="node-a", guardrails=guardrails, detectors=detectors)  # type: ignore[arg-type]


def learned_site(engine: Engine) -> None:
    """The site's bootstrap: a sensor, a controller and a valve for six minutes."""
    for minute in range(6):
        ts = at(minute)
        engine.observe_fields(ts, "controller", "home/+/temp", "subscribe")
        engine.observe_fields(ts, "valve-kitchen", "valves/kitchen/set", "subscribe")
        engine.observe_fields(ts, "thermo-1", "home/kitchen/temp", "publish", 12)
        engine.observe_fields(ts, "home/kitchen/temp", "controller", "deliver", 12)
        engine.observe_fields(ts, "controller", "valves/kitchen/set", "publish", 3)
        engine.observe_fields(ts, "valves/kitchen/set", "valve-kitchen", "deliver", 3)
    engine.tick(at(6))
    assert not engine.alerts.by_id


def connect(engine: Engine, client_id: str, ts: float, ip: str = "192.168.1.90") -> str:
    address = f"mqtt:{client_id}"
    engine.bind(
        address, Resolved(client_id), ts, {"client_id": client_id, "address": ip, "username": ""}
    )
    return address


def vid(engine: Engine, name: str) -> int:
    found = engine.graph.vertex(VertexKind.SERVICE, name)
    assert found is not None
    return found


def test_an_intruder_in_protect_mode_is_held_and_named() -> None:
    engine = make(Mode.PROTECT)
    learned_site(engine)
    address = connect(engine, "intruder-7", at(7))
    verdicts = [
        engine.observe_fields(at(7) + i, address, "valves/kitchen/set", "publish", 4)
        for i in range(5)
    ]
    assert all(v.block for v in verdicts), "no command of the newcomer gets through"
    (alert,) = engine.alerts.by_id.values()
    assert alert.kind is AlertKind.NEW_SERVICE and alert.edge == NO_EDGE
    assert alert.detail["client_id"] == "intruder-7"
    assert alert.detail["address"] == "192.168.1.90"
    assert alert.detail["examples"] == ["publish valves/kitchen/set"]
    assert alert.count == 5
    assert engine.phases.states[alert.subject].phase is Phase.HELD
    src, dst, relation = engine.alert_edge(alert)
    words = describe(alert.kind.value, src, dst, relation, alert.detail)
    assert words == (
        "a new device intruder-7 (192.168.1.90) connected to node-a "
        "and published to valves/kitchen/set"
    )

    # approval: its edges are approved and it learns from its next event
    engine.decide(alert.id, Action.APPROVE, by="owner", at=at(8))
    assert engine.phases.states[alert.subject].phase is Phase.LEARNING
    verdict = engine.observe_fields(at(9), address, "valves/kitchen/set", "publish", 4)
    assert not verdict.block and verdict.label is Label.APPROVED
    assert engine.observe_fields(at(9), address, "intruder/status", "publish", 4).label is (
        Label.LEARNED
    )
    assert engine.phases.states[alert.subject].ends_at == at(14)
    assert engine.admits("192.168.1.90", "intruder-7")


def test_a_denied_newcomer_is_blocked_and_refused() -> None:
    engine = make(Mode.PROTECT)
    learned_site(engine)
    address = connect(engine, "intruder-7", at(7))
    engine.observe_fields(at(7), address, "valves/kitchen/set", "publish", 4)
    (alert,) = engine.alerts.by_id.values()
    decision = engine.decide(alert.id, Action.DENY, by="owner", at=at(8))
    assert decision.service == "intruder-7" and decision.detail == "new-service"
    assert engine.phases.states[alert.subject].phase is Phase.DENIED
    assert not engine.admits("192.168.1.90", "intruder-7")
    assert engine.observe_fields(at(8), address, "other/topic", "publish", 4).block
    assert engine.admits("192.168.1.91", "thermo-1"), "the others still connect"


def test_in_monitor_mode_a_newcomer_learns_and_is_asked_once() -> None:
    engine = make(Mode.MONITOR)
    learned_site(engine)
    address = connect(engine, "thermo-9", at(7))
    for i in range(20):
        verdict = engine.observe_fields(at(7) + i, address, f"home/bath/t{i % 3}", "publish", 9)
        assert not verdict.block and verdict.label is Label.LEARNED
    (alert,) = engine.alerts.by_id.values()
    assert alert.kind is AlertKind.NEW_SERVICE
    assert len(alert.detail["examples"]) == 3
    assert engine.phases.states[alert.subject].phase is Phase.LEARNING
    engine.decide(alert.id, Action.APPROVE, by="owner", at=at(8))
    assert engine.phases.states[alert.subject].phase is Phase.LEARNING
    engine.tick(at(13))
    assert engine.phases.states[alert.subject].phase is Phase.ACTIVE
    questions = [a for a in engine.alerts.by_id.values() if a.kind is not AlertKind.PERIODICITY]
    assert questions == [alert], "one question, however much it learned"


def test_admission_learn_keeps_the_papers_behaviour() -> None:
    engine = make(Mode.PROTECT, admission=Admission.LEARN)
    learned_site(engine)
    address = connect(engine, "intruder-7", at(7))
    verdict = engine.observe_fields(at(7), address, "valves/kitchen/set", "publish", 4)
    assert verdict.label is Label.LEARNED and not verdict.block
    assert not engine.alerts.by_id


def test_services_of_the_bootstrap_and_model_adopters_are_no_newcomers() -> None:
    engine = make(Mode.PROTECT, site=10 * MIN)
    learned_site(engine)  # minute 6 < site bootstrap of 10 minutes
    address = connect(engine, "thermo-2", at(7))
    assert engine.observe_fields(at(7), address, "home/living/temp", "publish").label is (
        Label.LEARNED
    )
    assert not engine.alerts.by_id


def test_a_storm_of_newcomers_is_one_question() -> None:
    engine = make(Mode.MONITOR)
    learned_site(engine)
    for i in range(40):
        address = connect(engine, f"bot-{i}", at(7) + i)
        engine.observe_fields(at(7) + i, address, "valves/kitchen/set", "publish", 4)
    alerts = list(engine.alerts.by_id.values())
    own = [a for a in alerts if a.kind is AlertKind.NEW_SERVICE and a.subject != SITE]
    grouped = [a for a in alerts if a.subject == SITE]
    assert len(own) == 5 and len(grouped) == 1
    assert len(grouped[0].detail["services"]) == 35
    src, dst, relation = engine.alert_edge(grouped[0])
    assert describe("new-service", src, dst, relation, grouped[0].detail).startswith(
        "35 new devices connected to node-a at once: bot-5, bot-6, bot-7 and 32 more"
    )
    engine.decide(grouped[0].id, Action.DENY, by="owner", at=at(8))
    assert engine.phases.states[vid(engine, "bot-20")].phase is Phase.DENIED


def test_a_topic_storm_after_learning_is_a_few_alerts_and_bounded() -> None:
    engine = make(Mode.MONITOR, guardrails=GuardrailSettings(max_edges_per_service=500))
    learned_site(engine)
    vertices = engine.graph.vertex_count
    for i in range(20_000):
        engine.observe_fields(at(7) + i * 0.001, "thermo-1", f"storm/{i}", "publish", 4)
    kinds = sorted(a.kind.value for a in engine.alerts.by_id.values())
    assert kinds == ["edge-burst"] + ["new-edge"] * 3
    burst = next(a for a in engine.alerts.by_id.values() if a.kind is AlertKind.EDGE_BURST)
    assert burst.detail["edges"] + 3 + 1 == 500  # its learned edge counts toward the cap
    assert burst.detail["overflow"] > 19_000
    assert engine.graph.vertex_count - vertices <= 500, "no graph entries beyond the cap"
    # approving the burst approves its edges
    engine.decide(burst.id, Action.APPROVE, by="owner", at=at(9))
    assert engine.observe_fields(at(9), "thermo-1", "storm/100", "publish", 4).label is (
        Label.APPROVED
    )


def test_a_storm_delivered_to_a_subscriber_is_part_of_the_storms_question() -> None:
    engine = make(Mode.MONITOR)
    learned_site(engine)
    engine.observe_fields(at(6), "dashboard", "#", "subscribe")  # a wildcard subscriber
    engine.tick(at(13))
    before = len(engine.alerts.by_id)
    for i in range(2000):
        ts = at(14) + i * 0.01
        engine.observe_fields(ts, "thermo-1", f"storm/{i}", "publish", 4)
        engine.observe_fields(ts, f"storm/{i}", "dashboard", "deliver", 4)
    new = [a for a in engine.alerts.by_id.values() if a.id > before]
    kinds = sorted(a.kind.value for a in new)
    # 3 questions of the publisher, the 3 deliveries of them, then one storm for the rest
    assert kinds == ["edge-burst"] + ["new-edge"] * 6
    (burst,) = [a for a in new if a.kind is AlertKind.EDGE_BURST]
    assert engine.graph.names[burst.subject] == "thermo-1"
    assert not any(a.kind is AlertKind.FLOOD for a in new), "receiving is no flood"
    # a repeated delivery counts on the storm, asks nothing new
    engine.observe_fields(at(15), "storm/1000", "dashboard", "deliver", 4)
    assert len(engine.alerts.by_id) == before + 7
    engine.decide(burst.id, Action.DENY, by="owner", at=at(16))
    delivered = engine.edge_of("storm/1000", "dashboard", "deliver")
    assert delivered is not None and engine.graph.label[delivered] == int(Label.DENIED)


def test_a_storm_while_learning_stops_being_learned_beyond_the_ceiling() -> None:
    engine = make(Mode.PROTECT, guardrails=GuardrailSettings(new_edges_per_minute=100))
    for i in range(300):
        engine.observe_fields(T0 + i * 0.01, "sensor", f"t/{i}", "publish", 4)
    (burst,) = engine.alerts.by_id.values()
    assert burst.kind is AlertKind.EDGE_BURST and burst.detail["edges"] == 200
    assert engine.observe_fields(T0 + 5, "sensor", "t/250", "publish", 4).block
    assert not engine.observe_fields(T0 + 5, "sensor", "t/50", "publish", 4).block


def test_a_flood_is_one_alert_and_dropped_in_protect_mode() -> None:
    engine = make(Mode.PROTECT, guardrails=GuardrailSettings(messages_per_second=100))
    learned_site(engine)
    blocked = 0
    for i in range(1000):  # 1,000 messages in half a second
        blocked += engine.observe_fields(
            at(7) + i * 0.0005, "thermo-1", "home/kitchen/temp", "publish", 12
        ).block
    (alert,) = [a for a in engine.alerts.by_id.values() if a.kind is AlertKind.FLOOD]
    assert 800 <= blocked <= 900 and alert.count == blocked
    # the next second starts afresh: normal traffic passes
    assert not engine.observe_fields(at(8), "thermo-1", "home/kitchen/temp", "publish", 12).block
    engine.decide(alert.id, Action.APPROVE, by="owner", at=at(8))
    more = [
        engine.observe_fields(at(9) + i * 0.0005, "thermo-1", "home/kitchen/temp", "publish", 12)
        for i in range(500)
    ]
    assert not any(v.block for v in more), "approved: the service may send this much"


def test_a_flood_in_monitor_mode_is_reported_not_dropped() -> None:
    engine = make(Mode.MONITOR, guardrails=GuardrailSettings(messages_per_second=100))
    learned_site(engine)
    verdicts = [
        engine.observe_fields(at(7) + i * 0.001, "thermo-1", "home/kitchen/temp", "publish", 12)
        for i in range(500)
    ]
    assert not any(v.block for v in verdicts)
    floods = [a for a in engine.alerts.by_id.values() if a.kind is AlertKind.FLOOD]
    # detected within twice the ceiling: the check is due every `ceiling` messages
    assert len(floods) == 1 and 500 - 2 * 100 <= floods[0].count <= 400


def test_rate_limit_drops_what_the_rate_detector_flags_in_protect_mode() -> None:
    engine = make(Mode.PROTECT, detectors=DetectorSettings(rate_limit=True))
    learned_site(engine)
    verdicts = [
        engine.observe_fields(at(7) + i * 0.5, "thermo-1", "home/kitchen/temp", "publish", 12)
        for i in range(200)
    ]
    rate = [a for a in engine.alerts.by_id.values() if a.kind is AlertKind.RATE]
    assert len(rate) == 1
    assert any(v.block for v in verdicts) and not verdicts[0].block


@pytest.mark.parametrize(
    ("signal", "kind", "limit"),
    [
        (Signal.REFUSED, AlertKind.AUTH_FAILURE, 5),
        (Signal.MALFORMED, AlertKind.MALFORMED, 3),
    ],
)
def test_address_signals_give_one_alert_per_address(
    signal: Signal, kind: AlertKind, limit: int
) -> None:
    engine = make(Mode.PROTECT)
    for i in range(200):
        engine.signal(signal, "10.0.0.66", T0 + i * 0.1, client_id=f"guess-{i % 7}")
    for i in range(limit - 1):
        engine.signal(signal, "10.0.0.5", T0 + i, client_id="forgetful")
    (alert,) = engine.alerts.by_id.values()
    assert alert.kind is kind and alert.count == 200 - limit + 1
    assert engine.graph.names[alert.subject] == "10.0.0.66"
    assert len(alert.detail["client_ids"]) == 5, "a few examples, not all"


def test_idle_connections_and_denied_addresses_are_refused_in_protect_mode() -> None:
    engine = make(Mode.PROTECT, guardrails=GuardrailSettings(idle_connections=10))
    refused = [engine.signal(Signal.OPENED, "10.0.0.66", T0 + i) for i in range(30)]
    assert refused == [False] * 10 + [True] * 20
    (alert,) = engine.alerts.by_id.values()
    assert alert.kind is AlertKind.CONNECTION_FLOOD
    engine.decide(alert.id, Action.DENY, by="owner", at=T0 + 60)
    for _ in range(30):
        engine.signal(Signal.CLOSED, "10.0.0.66", T0 + 61)
    assert engine.signal(Signal.OPENED, "10.0.0.66", T0 + 62), "a denied address is refused"
    assert not engine.admits("10.0.0.66", "anyone")
    assert not engine.signal(Signal.OPENED, "10.0.0.5", T0 + 62)


def test_bindings_are_released_when_connections_close() -> None:
    engine = make()
    for i in range(1000):
        address = connect(engine, f"fresh-{i}", T0 + i)
        engine.unbind(address)
    assert engine.bound == 0
    assert engine.graph.vertex_count == 0, "a client that did nothing leaves no vertex"
    a = connect(engine, "twice", T0)
    b = connect(engine, "twice", T0)
    assert a == b
    engine.unbind(a)
    assert engine.bound == 1, "the second connection of the id still holds it"
    engine.unbind(b)
    assert engine.bound == 0


def test_flood_and_edge_burst_alerts_name_the_connection_behind_the_client_id() -> None:
    engine = make(Mode.MONITOR, guardrails=GuardrailSettings(messages_per_second=100))
    learned_site(engine)
    flooder = connect(engine, "thermo-1", at(7), ip="10.0.0.66")
    for i in range(400):  # 400 messages in 0.4 s, on the connection of 10.0.0.66
        engine.observe_fields(at(7) + i * 0.001, flooder, "home/kitchen/temp", "publish", 12)
    stormer = connect(engine, "storm-1", at(8), ip="10.0.0.67")
    for i in range(2000):
        engine.observe_fields(at(8) + i * 0.01, stormer, f"storm/{i}", "publish", 4)
    by_kind = {a.kind: a for a in engine.alerts.by_id.values()}
    flood, burst = by_kind[AlertKind.FLOOD], by_kind[AlertKind.EDGE_BURST]
    assert engine.graph.names[flood.subject] == "thermo-1"
    assert (flood.detail["address"], flood.detail["client_id"]) == ("10.0.0.66", "thermo-1")
    assert engine.graph.names[burst.subject] == "storm-1"
    assert (burst.detail["address"], burst.detail["client_id"]) == ("10.0.0.67", "storm-1")
    # events without a connection (a replay) name nothing
    for i in range(400):
        engine.observe_fields(at(9) + i * 0.001, "pump-1", "home/pump", "publish", 2)
    pump = [a for a in engine.alerts.by_id.values() if a.kind is AlertKind.FLOOD and a is not flood]
    assert pump and "address" not in pump[0].detail


def test_a_port_probe_before_the_first_client_starts_no_bootstrap() -> None:
    # A health check (or a test's readiness probe) opens and closes a connection long before
    # the first device: the site's bootstrap starts at the first event, so that device learns.
    engine = make(Mode.PROTECT)
    engine.signal(Signal.OPENED, "127.0.0.1", at(0))
    engine.signal(Signal.CLOSED, "127.0.0.1", at(0))
    address = connect(engine, "thermo-1", at(30), ip="127.0.0.1")
    verdict = engine.observe_fields(at(30), address, "home/kitchen/temp", "publish", 12)
    assert not verdict.block
    assert engine.phases.states[vid(engine, "thermo-1")].phase is Phase.LEARNING
    assert not engine.alerts.by_id
