from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commgraph.alerts import NO_EDGE, Action, AlertKind, AlertState
from commgraph.engine import Engine, Verdict
from commgraph.errors import DecisionError, EventDecodeError, UnknownItemError
from commgraph.events import MAX_SIZE, Event, VertexKind
from commgraph.graph import Label
from commgraph.identity import AddressKind, Identity, IdentityRule, Resolved
from commgraph.phases import LearningSettings, Mode, Phase, PhaseChange, PhaseEvent

T0 = 1_700_000_000.0
MIN = 60.0
LEARN_5 = 5 * MIN

LEARNED = Verdict(Label.LEARNED)
APPROVED = Verdict(Label.APPROVED)


def at(minute: float) -> float:
    return T0 + minute * MIN


def ev(
    minute: float, src: str, dst: str, relation: str = "publish", size: int | None = None
) -> Event:
    return Event(ts=at(minute), src=src, dst=dst, relation=relation, size=size)


def make(**settings: object) -> Engine:
    settings.setdefault("duration", LEARN_5)
    return Engine(LearningSettings(**settings))  # type: ignore[arg-type]


def site_traffic(minute: float) -> list[Event]:
    """One round of the site's normal traffic: two sensors, a controller, a valve."""
    return [
        ev(minute, "thermo-1", "home/kitchen/temp", size=12),
        ev(minute, "home/kitchen/temp", "controller", "deliver", size=12),
        ev(minute, "thermo-2", "home/living/temp", size=12),
        ev(minute, "home/living/temp", "controller", "deliver", size=12),
        ev(minute, "controller", "valves/kitchen/set", size=3),
        ev(minute, "valves/kitchen/set", "valve-kitchen", "deliver", size=3),
    ]


def learned_site(engine: Engine, until: int = 5) -> list[Verdict]:
    """Everyone starts at minute 0 and talks every minute until ``until``."""
    verdicts = [
        engine.observe(ev(0, "controller", "home/+/temp", "subscribe")),
        engine.observe(ev(0, "valve-kitchen", "valves/kitchen/set", "subscribe")),
    ]
    for minute in range(until):
        verdicts += [engine.observe(e) for e in site_traffic(minute)]
    return verdicts


def edge_label(engine: Engine, src: str, dst: str, relation: str = "publish") -> Label:
    stats = engine.graph.stats(edge_id(engine, src, dst, relation))
    return stats.label


def edge_id(engine: Engine, src: str, dst: str, relation: str = "publish") -> int:
    for e in range(engine.graph.edge_count):
        stats = engine.graph.stats(e)
        if (stats.src, stats.dst, stats.relation) == (src, dst, relation):
            return e
    raise AssertionError(f"no edge {src} -> {dst} ({relation})")


def service(engine: Engine, name: str) -> int:
    vid = engine.graph.vertex(VertexKind.SERVICE, name)
    assert vid is not None
    return vid


def phase_of(engine: Engine, name: str) -> Phase:
    return engine.phases.states[service(engine, name)].phase


# -- the storyline of the paper's evaluation -------------------------------------------------


def test_storyline_of_the_papers_evaluation() -> None:
    engine = make()
    # minutes 0..5: every service learns, nothing is anomalous
    assert all(v == LEARNED for v in learned_site(engine))
    assert engine.alerts.by_id == {}
    assert {s.service for s in engine.phases.states.values()} == {
        "thermo-1",
        "thermo-2",
        "controller",
        "valve-kitchen",
    }
    assert all(s.ends_at == at(5) for s in engine.phases.states.values())

    # minute 6: the known traffic goes on, still learned, no alert
    assert all(engine.observe(e) == LEARNED for e in site_traffic(6))
    assert engine.alerts.by_id == {}

    # minute 7: a new sensor joins and learns on its own; the controller reading it does too.
    # It came after the site's bootstrap: the owner is asked once whether it is theirs.
    joined = engine.observe(ev(7, "thermo-3", "home/bath/temp"))
    assert joined.label is Label.LEARNED and not joined.block and joined.alert is not None
    (question,) = engine.alerts.by_id.values()
    assert question.kind is AlertKind.NEW_SERVICE
    assert question.detail["examples"] == ["publish home/bath/temp"]
    assert engine.observe(ev(7, "home/bath/temp", "controller", "deliver")) == LEARNED
    for minute in (8, 9.5, 11, 11.9):
        assert engine.observe(ev(minute, "thermo-3", "home/bath/temp")) == LEARNED
        assert engine.observe(ev(minute, "home/bath/temp", "controller", "deliver")) == LEARNED
    assert engine.observe(ev(11.5, "thermo-3", "home/bath/humidity")) == LEARNED
    assert engine.phases.states[service(engine, "thermo-3")].ends_at == at(12)
    assert edge_label(engine, "home/bath/temp", "controller", "deliver") is Label.LEARNED
    assert list(engine.alerts.by_id.values()) == [question]
    engine.decide(question.id, Action.APPROVE, by="owner", at=at(9))  # "yes, it is mine"

    # minute 10: an unknown connection, repeated, is one pending alert
    first = engine.observe(ev(10, "valve-kitchen", "home/kitchen/temp"))
    assert first.label is Label.PENDING and first.anomalous
    assert first.block is False  # monitor mode
    assert first.alert is not None
    for i in range(1, 6):
        again = engine.observe(ev(10 + i / 10, "valve-kitchen", "home/kitchen/temp"))
        assert again == Verdict(Label.PENDING)
    assert list(engine.alerts.by_id) == [question.id, first.alert]
    alert = engine.alerts.get(first.alert)
    assert alert.count == 6
    assert alert.last_seen == at(10.5)
    assert engine.alert_edge(alert) == ("valve-kitchen", "home/kitchen/temp", "publish")

    # the owner approves: no more alerts, the edge is approved
    decision = engine.decide(first.alert, Action.APPROVE, by="owner", at=at(11))
    assert decision.edge == ("valve-kitchen", "home/kitchen/temp", "publish")
    for minute in (11, 12, 30):
        assert engine.observe(ev(minute, "valve-kitchen", "home/kitchen/temp")) == APPROVED
    assert alert.count == 6
    assert len(engine.alerts.by_id) == 2

    # another unknown edge, denied: not blocked in monitor mode, blocked in protect mode
    wrong = engine.observe(ev(13, "thermo-1", "valves/kitchen/set"))
    assert wrong.label is Label.PENDING and wrong.alert is not None
    assert wrong.alert != first.alert
    engine.decide(wrong.alert, Action.DENY, by="owner", at=at(14))
    assert engine.observe(ev(15, "thermo-1", "valves/kitchen/set")) == Verdict(Label.DENIED)
    engine.set_mode("thermo-1", Mode.PROTECT, by="owner", at=at(16))
    assert engine.observe(ev(17, "thermo-1", "valves/kitchen/set")) == Verdict(Label.DENIED, True)
    assert engine.observe(ev(17, "thermo-1", "home/kitchen/temp")) == LEARNED

    # the new sensor's phase is over: its next new topic is an anomaly
    late = engine.observe(ev(12.5, "thermo-3", "home/attic/temp"))
    assert late.label is Label.PENDING
    assert engine.observe(ev(18, "thermo-3", "home/bath/temp")) == LEARNED
    assert len(engine.alerts.by_id) == 4


def test_new_sensor_topic_is_an_anomaly_for_the_controller_after_the_sensor_learned() -> None:
    engine = make()
    learned_site(engine)
    joined = engine.observe(ev(7, "thermo-3", "home/bath/temp"))
    assert joined.label is Label.LEARNED and joined.alert is not None  # "is it yours?"
    # the controller reads the topic only after thermo-3's phase ended (minute 12)
    verdict = engine.observe(ev(13, "home/bath/temp", "controller", "deliver"))
    assert verdict.label is Label.PENDING
    alert = engine.alerts.get(verdict.alert or 0)
    assert engine.alert_edge(alert) == ("home/bath/temp", "controller", "deliver")


def test_topic_owner_is_its_first_publisher() -> None:
    engine = make()
    learned_site(engine)
    engine.observe(ev(7, "thermo-3", "home/kitchen/temp"))  # an existing topic keeps its owner
    topic = engine.graph.vertex(VertexKind.TOPIC, "home/kitchen/temp")
    assert topic is not None
    assert engine.graph.owner[topic] == service(engine, "thermo-1")


# -- modes and blocking ---------------------------------------------------------------------


def test_protect_mode_blocks_pending_and_denied() -> None:
    engine = make(mode=Mode.PROTECT)
    learned_site(engine)
    pending = engine.observe(ev(10, "valve-kitchen", "home/kitchen/temp"))
    assert pending.label is Label.PENDING and pending.block is True
    assert engine.observe(ev(11, "valve-kitchen", "home/kitchen/temp")) == Verdict(
        Label.PENDING, True
    )
    assert pending.alert is not None
    engine.decide(pending.alert, Action.DENY, by="owner", at=at(12))
    assert engine.observe(ev(13, "valve-kitchen", "home/kitchen/temp")) == Verdict(
        Label.DENIED, True
    )
    # the owner changes their mind
    engine.decide(pending.alert, Action.APPROVE, by="owner", at=at(14))
    assert engine.observe(ev(15, "valve-kitchen", "home/kitchen/temp")) == APPROVED
    # known traffic is never blocked
    assert all(not engine.observe(e).block for e in site_traffic(16))


def test_protect_mode_without_blocking_pending() -> None:
    engine = make(mode=Mode.PROTECT, block_pending=False)
    learned_site(engine)
    pending = engine.observe(ev(10, "thermo-1", "valves/kitchen/set"))
    assert pending.label is Label.PENDING and pending.block is False
    assert pending.alert is not None
    assert engine.observe(ev(10.5, "thermo-1", "valves/kitchen/set")).block is False
    engine.decide(pending.alert, Action.DENY, by="owner", at=at(11))
    assert engine.observe(ev(12, "thermo-1", "valves/kitchen/set")) == Verdict(Label.DENIED, True)


def test_monitor_mode_never_blocks() -> None:
    engine = make(mode=Mode.MONITOR)
    learned_site(engine)
    pending = engine.observe(ev(10, "thermo-1", "valves/kitchen/set"))
    assert pending.block is False and pending.alert is not None
    engine.decide(pending.alert, Action.DENY, by="owner", at=at(11))
    denied = engine.observe(ev(12, "thermo-1", "valves/kitchen/set"))
    assert denied == Verdict(Label.DENIED, False)
    assert denied.anomalous


def test_set_mode_to_protect_and_back_to_config() -> None:
    engine = make()
    learned_site(engine)
    pending = engine.observe(ev(10, "thermo-1", "valves/kitchen/set"))
    assert pending.alert is not None
    engine.decide(pending.alert, Action.DENY, by="owner", at=at(11))
    decision = engine.set_mode("thermo-1", Mode.PROTECT, by="owner", at=at(12), reason="test")
    assert (decision.action, decision.service, decision.detail) == (
        Action.MODE,
        "thermo-1",
        "protect",
    )
    assert engine.mode_of(service(engine, "thermo-1")) is Mode.PROTECT
    assert engine.observe(ev(13, "thermo-1", "valves/kitchen/set")).block is True
    # other services keep the site mode
    other = engine.observe(ev(13, "thermo-2", "valves/kitchen/set"))
    assert other.label is Label.PENDING and other.block is False
    back = engine.set_mode("thermo-1", None, by="owner", at=at(14))
    assert back.detail == "config (monitor)"
    assert engine.observe(ev(15, "thermo-1", "valves/kitchen/set")).block is False


def test_owner_mode_beats_configured_override() -> None:
    engine = make(modes={"thermo-1": Mode.PROTECT})
    learned_site(engine)
    assert engine.observe(ev(10, "thermo-1", "valves/kitchen/set")).block is True
    assert engine.observe(ev(10, "thermo-2", "valves/kitchen/set")).block is False
    engine.set_mode("thermo-1", Mode.MONITOR, by="owner", at=at(11))
    assert engine.observe(ev(12, "thermo-1", "valves/kitchen/set")).block is False


def test_learn_mode_never_raises_alerts() -> None:
    engine = make(mode=Mode.LEARN)
    learned_site(engine)
    for minute in (10, 20, 100):
        assert engine.observe(ev(minute, "valve-kitchen", f"home/{minute}/temp")) == LEARNED
        assert engine.observe(ev(minute, "thermo-1", f"valves/{minute}/set")) == LEARNED
    assert engine.alerts.by_id == {}
    assert engine.graph.stats(edge_id(engine, "thermo-1", "valves/20/set")).label is Label.LEARNED


def test_learn_mode_override_for_one_service() -> None:
    engine = make(modes={"valve-kitchen": Mode.LEARN})
    learned_site(engine)
    assert engine.observe(ev(10, "valve-kitchen", "home/kitchen/temp")) == LEARNED
    assert engine.observe(ev(10, "thermo-1", "valves/kitchen/set")).label is Label.PENDING
    assert len(engine.alerts.by_id) == 1


# -- time -----------------------------------------------------------------------------------


def test_tick_ends_phases_without_traffic() -> None:
    engine = make(durations={"controller": 10 * MIN})
    learned_site(engine, until=1)
    engine.take_changes()
    engine.tick(at(4))
    assert engine.take_changes().phase_changes == []
    engine.tick(at(6))
    changes = engine.take_changes()
    ended = {c.service: c for c in changes.phase_changes}
    assert set(ended) == {"thermo-1", "thermo-2", "valve-kitchen"}
    assert ended["thermo-1"] == PhaseChange(
        "thermo-1", Phase.LEARNING, Phase.ACTIVE, at(5), PhaseEvent.LEARNED
    )
    assert service(engine, "thermo-1") in changes.services
    assert phase_of(engine, "controller") is Phase.LEARNING
    engine.tick(at(10))
    assert [c.service for c in engine.take_changes().phase_changes] == ["controller"]
    engine.tick(at(60))
    assert engine.take_changes().phase_changes == []


def test_phase_ends_on_the_next_new_edge_without_tick() -> None:
    engine = make()
    learned_site(engine, until=1)
    engine.take_changes()
    verdict = engine.observe(ev(9, "thermo-1", "home/other/temp"))
    assert verdict.label is Label.PENDING
    changes = engine.take_changes().phase_changes
    assert PhaseChange("thermo-1", Phase.LEARNING, Phase.ACTIVE, at(5), PhaseEvent.LEARNED) in (
        changes
    )


def test_min_events_keeps_a_quiet_service_learning() -> None:
    engine = make(min_events=5)
    engine.observe(ev(0, "thermo-1", "home/kitchen/temp"))
    engine.observe(ev(1, "thermo-1", "home/kitchen/temp"))
    assert engine.observe(ev(9, "thermo-1", "home/a/temp")) == LEARNED  # event 3
    assert engine.observe(ev(10, "thermo-1", "home/b/temp")) == LEARNED  # event 4
    assert phase_of(engine, "thermo-1") is Phase.LEARNING
    engine.tick(at(11))  # time alone does not end it
    assert phase_of(engine, "thermo-1") is Phase.LEARNING
    # the fifth event completes the count and is still learned ...
    assert engine.observe(ev(12, "thermo-1", "home/c/temp")) == LEARNED
    assert phase_of(engine, "thermo-1") is Phase.LEARNING
    # ... the phase ends at the next check, and the next new edge is an anomaly
    assert engine.observe(ev(12.5, "thermo-1", "home/d/temp")).label is Label.PENDING
    changes = [c for c in engine.take_changes().phase_changes if c.why is PhaseEvent.LEARNED]
    assert [(c.service, c.at) for c in changes] == [("thermo-1", at(12.5))]
    assert phase_of(engine, "thermo-1") is Phase.ACTIVE


def test_min_events_phase_ends_at_the_first_check_after_the_count_is_reached() -> None:
    engine = make(min_events=3)
    engine.observe(ev(0, "thermo-1", "home/kitchen/temp"))
    assert engine.observe(ev(11, "thermo-1", "home/b/temp")) == LEARNED  # 2 of 3
    assert engine.observe(ev(12.5, "thermo-1", "home/c/temp")) == LEARNED  # 3 of 3
    engine.tick(at(13))  # closes minute 12: its end is the first check
    changes = [c for c in engine.take_changes().phase_changes if c.why is PhaseEvent.LEARNED]
    assert [c.service for c in changes] == ["thermo-1"]
    assert at(12.5) < changes[0].at < at(13)


def test_reset_learning_restarts_at_the_next_event() -> None:
    engine = make()
    learned_site(engine)
    assert engine.observe(ev(8, "thermo-1", "home/a/temp")).label is Label.PENDING
    engine.take_changes()
    decision = engine.reset_learning("thermo-1", by="owner", at=at(9), reason="new firmware")
    assert (decision.action, decision.service, decision.reason) == (
        Action.RESET,
        "thermo-1",
        "new firmware",
    )
    changes = engine.take_changes()
    assert changes.decisions == [decision]
    assert [(c.service, c.why, c.after) for c in changes.phase_changes] == [
        ("thermo-1", PhaseEvent.RESET, Phase.LEARNING)
    ]
    assert phase_of(engine, "thermo-1") is Phase.LEARNING
    engine.tick(at(19))  # no clock runs until the service is seen again
    assert phase_of(engine, "thermo-1") is Phase.LEARNING
    # the clock starts at its next event, minute 20, and runs to minute 25
    assert engine.observe(ev(20, "thermo-1", "home/kitchen/temp")) == LEARNED
    state = engine.phases.states[service(engine, "thermo-1")]
    assert (state.started_at, state.ends_at) == (at(20), at(25))
    assert engine.observe(ev(24, "thermo-1", "home/b/temp")) == LEARNED
    assert engine.observe(ev(26, "thermo-1", "home/c/temp")).label is Label.PENDING
    # an edge pending before the reset stays pending
    assert engine.observe(ev(21, "thermo-1", "home/a/temp")).label is Label.PENDING


def test_reset_learning_of_a_receiver_restarts_at_its_next_delivery() -> None:
    engine = make()
    learned_site(engine)
    engine.reset_learning("controller", by="owner", at=at(9))
    assert engine.observe(ev(20, "home/kitchen/temp", "controller", "deliver")) == LEARNED
    assert engine.phases.states[service(engine, "controller")].ends_at == at(25)
    assert engine.observe(ev(21, "home/x/temp", "controller", "deliver")) == LEARNED


# -- identity -------------------------------------------------------------------------------


def test_identity_rules_group_instances_into_one_service() -> None:
    rule = IdentityRule(
        match=AddressKind.CLIENT_ID,
        pattern=re.compile(r"^(?P<service>thermo)-(?P<instance>.+)$"),
    )
    engine = Engine(LearningSettings(duration=LEARN_5), Identity([rule]))
    assert engine.observe(ev(0, "thermo-kitchen-7", "home/kitchen/temp")) == LEARNED
    assert engine.observe(ev(1, "thermo-living-2", "home/kitchen/temp")) == LEARNED
    assert engine.observe(ev(2, "thermo-living-2", "home/living/temp")) == LEARNED
    vid = service(engine, "thermo")
    assert engine.graph.vertex(VertexKind.SERVICE, "thermo-kitchen-7") is None
    assert engine.instances[vid] == {"kitchen-7", "living-2"}
    assert list(engine.phases.states) == [vid]
    assert engine.phases.states[vid].started_at == at(0)
    stats = engine.graph.stats(edge_id(engine, "thermo", "home/kitchen/temp"))
    assert stats.count == 2
    changes = engine.take_changes()
    assert changes.instances == [(vid, "kitchen-7"), (vid, "living-2")]
    # the second instance joins after the phase: it is still the same service, no new phase
    assert engine.observe(ev(9, "thermo-bath-1", "home/kitchen/temp")) == LEARNED
    assert engine.observe(ev(9, "thermo-bath-1", "home/bath/temp")).label is Label.PENDING
    assert engine.take_changes().instances == [(vid, "bath-1")]


# -- hand-off to the store ------------------------------------------------------------------


def test_take_changes_after_a_new_edge() -> None:
    engine = make()
    engine.observe(ev(0, "thermo-1", "home/kitchen/temp"))
    changes = engine.take_changes()
    thermo = service(engine, "thermo-1")
    topic = engine.graph.vertex(VertexKind.TOPIC, "home/kitchen/temp")
    assert changes.vertices == {thermo, topic}
    assert changes.relations == {engine.graph.relation_id("publish")}
    assert changes.edges == {0}
    assert changes.services == {thermo}
    assert changes.phase_changes == [
        PhaseChange("thermo-1", None, Phase.LEARNING, at(0), PhaseEvent.SIGHTED)
    ]
    assert changes.alerts == set() and changes.decisions == []
    assert not engine.take_changes()
    # a known edge changes nothing structural
    engine.observe(ev(1, "thermo-1", "home/kitchen/temp"))
    assert not engine.take_changes()


def test_take_changes_after_an_alert_and_a_decision() -> None:
    engine = make()
    learned_site(engine)
    engine.take_changes()
    verdict = engine.observe(ev(10, "valve-kitchen", "home/kitchen/temp"))
    assert verdict.alert is not None
    e = edge_id(engine, "valve-kitchen", "home/kitchen/temp")
    changes = engine.take_changes()
    assert changes.alerts == {verdict.alert}
    assert e in changes.edges
    assert changes.decisions == []
    engine.observe(ev(10.5, "valve-kitchen", "home/kitchen/temp"))  # a repeat: counters only
    assert not engine.take_changes().alerts
    decision = engine.decide(verdict.alert, Action.DENY, by="owner", at=at(11), reason="no")
    changes = engine.take_changes()
    assert changes.decisions == [decision]
    assert (decision.action, decision.by, decision.at, decision.reason, decision.alert) == (
        Action.DENY,
        "owner",
        at(11),
        "no",
        verdict.alert,
    )
    assert changes.alerts == {verdict.alert}
    assert changes.edges == {e}
    assert engine.alerts.get(verdict.alert).state is AlertState.DENIED
    assert engine.graph.stats(e).label is Label.DENIED


def test_take_counters_lists_dirty_edges_and_bumped_alerts() -> None:
    engine = make()
    learned_site(engine, until=1)

    def taken() -> tuple[list[int], list[int]]:
        counters = engine.take_counters()
        return [c.id for c in counters.edges], [a.id for a in counters.alerts]

    edges, alerts = taken()
    assert edges == list(range(engine.graph.edge_count))
    assert alerts == []
    assert taken() == ([], [])
    engine.observe(ev(1, "thermo-2", "home/living/temp"))
    engine.observe(ev(1, "thermo-2", "home/living/temp"))
    assert taken() == ([edge_id(engine, "thermo-2", "home/living/temp")], [])
    first = engine.observe(ev(9, "thermo-1", "valves/kitchen/set"))
    engine.observe(ev(9.5, "thermo-1", "valves/kitchen/set"))
    edges, alerts = taken()
    # the phases ended at minute 5: the learned edges' figures became their baseline
    learned = [e for e in range(engine.graph.edge_count) if engine.features.baseline[e]]
    assert edges == sorted([*learned, edge_id(engine, "thermo-1", "valves/kitchen/set")])
    assert alerts == [first.alert]


def test_counters_follow_the_events() -> None:
    engine = make()
    learned_site(engine)
    stats = engine.graph.stats(edge_id(engine, "thermo-1", "home/kitchen/temp"))
    assert (stats.count, stats.bytes, stats.first_seen, stats.last_seen) == (5, 60, at(0), at(4))
    assert stats.interval_mean == pytest.approx(MIN)


# -- the owner's mistakes -------------------------------------------------------------------


def test_unknown_service_in_set_mode_and_reset() -> None:
    engine = make()
    learned_site(engine, until=1)
    engine.observe(ev(0, "cam", "10.0.0.5", "tcp/80"))
    for name in ("nobody", "home/kitchen/temp", "10.0.0.5"):
        with pytest.raises(UnknownItemError, match=name):
            engine.set_mode(name, Mode.PROTECT, by="owner", at=at(1))
        with pytest.raises(UnknownItemError):
            engine.reset_learning(name, by="owner", at=at(1))
    assert engine.take_changes().decisions == []


def test_decide_errors() -> None:
    engine = make()
    learned_site(engine)
    verdict = engine.observe(ev(10, "thermo-1", "valves/kitchen/set"))
    assert verdict.alert is not None
    with pytest.raises(UnknownItemError):
        engine.decide(verdict.alert + 100, Action.APPROVE, by="owner", at=at(11))
    with pytest.raises(DecisionError):
        engine.decide(verdict.alert, Action.MODE, by="owner", at=at(11))
    engine.decide(verdict.alert, Action.APPROVE, by="owner", at=at(11))
    with pytest.raises(DecisionError, match="already approved"):
        engine.decide(verdict.alert, Action.APPROVE, by="owner", at=at(12))
    assert len(engine.take_changes().decisions) == 1


# -- hosts that turn out to be services ------------------------------------------------------


def test_host_that_starts_initiating_becomes_a_service_with_its_own_phase() -> None:
    engine = make()
    assert engine.observe(ev(0, "cam", "10.0.0.5", "tcp/80")) == LEARNED
    host = engine.graph.vertex(VertexKind.HOST, "10.0.0.5")
    assert host is not None
    assert engine.graph.kind(host) is VertexKind.HOST
    assert host not in engine.phases.states
    engine.tick(at(6))
    # minute 8: the host initiates a connection; it learns from now until minute 13
    assert engine.observe(ev(8, "10.0.0.5", "10.0.0.9", "tcp/443")) == LEARNED
    assert engine.graph.kind(host) is VertexKind.SERVICE
    assert host in engine.take_changes().vertices
    state = engine.phases.states[host]
    assert (state.phase, state.started_at, state.ends_at) == (Phase.LEARNING, at(8), at(13))
    # a new edge towards a learning service's host is learned too
    assert engine.observe(ev(9, "cam", "10.0.0.5", "tcp/22")) == LEARNED
    assert engine.observe(ev(12, "10.0.0.5", "10.0.0.10", "udp/123")) == LEARNED
    assert engine.observe(ev(14, "10.0.0.5", "10.0.0.11", "tcp/443")).label is Label.PENDING
    assert engine.observe(ev(14, "cam", "10.0.0.5", "tcp/23")).label is Label.PENDING
    engine.set_mode("10.0.0.5", Mode.PROTECT, by="owner", at=at(15))  # now a known service


def test_absurd_size_is_refused_at_the_boundary_and_the_largest_is_survived() -> None:
    engine = make()
    with pytest.raises(EventDecodeError, match="'size'"):
        ev(0, "thermo-1", "home/kitchen/temp", size=2**64)
    for _ in range(3):  # the byte counter saturates instead of overflowing
        engine.observe(ev(0, "thermo-1", "home/kitchen/temp", size=MAX_SIZE))
    engine.observe(ev(0, "thermo-2", "home/living/temp", size=5))
    engine.observe(ev(1, "thermo-2", "home/living/temp", size=5))
    stats = engine.graph.stats(edge_id(engine, "thermo-2", "home/living/temp"))
    assert (stats.count, stats.bytes) == (2, 10)


# -- properties -----------------------------------------------------------------------------

traffic = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=3, allow_nan=False),  # minutes since the last event
        st.sampled_from(["thermo-1", "thermo-2", "controller", "10.0.0.5"]),
        st.sampled_from(["home/kitchen/temp", "valves/set", "10.0.0.5", "controller"]),
        st.sampled_from(["publish", "deliver", "tcp/80"]),
    ),
    max_size=60,
)


@settings(max_examples=100, deadline=None)
@given(traffic, st.sampled_from([Mode.MONITOR, Mode.PROTECT]))
def test_one_alert_per_pending_edge(script: list[tuple[float, str, str, str]], mode: Mode) -> None:
    engine = make(mode=mode)
    minute = 0.0
    alerts_seen: set[int] = set()
    for gap, src, dst, relation in script:
        minute += gap
        verdict = engine.observe(ev(minute, src, dst, relation))
        assert verdict.label in (Label.LEARNED, Label.PENDING)
        assert verdict.block == (verdict.label is Label.PENDING and mode is Mode.PROTECT)
        if verdict.alert is not None:
            assert verdict.alert not in alerts_seen
            alerts_seen.add(verdict.alert)
    assert alerts_seen == set(engine.alerts.by_id)
    pending = [
        e for e in range(engine.graph.edge_count) if engine.graph.stats(e).label is Label.PENDING
    ]
    # Each pending edge has its own alert, or is one of a held newcomer's (asked about once).
    edge_alerts = [a for a in engine.alerts.by_id.values() if a.edge != NO_EDGE]
    questions = {
        a.subject: a for a in engine.alerts.by_id.values() if a.kind is AlertKind.NEW_SERVICE
    }
    own = sorted(a.edge for a in edge_alerts)
    assert len(own) == len(set(own)) and set(own) <= set(pending)
    for alert in edge_alerts:
        assert alert.count == engine.graph.stats(alert.edge).count

    def subject_of(e: int) -> int:
        src, dst, rid = engine.graph.endpoints(e)
        return dst if engine.graph.relations[rid] == "deliver" else src

    for e in set(pending) - set(own):
        assert subject_of(e) in questions
    for subject, question in questions.items():
        held = [e for e in pending if subject_of(e) == subject and e not in own]
        assert question.count == max(1, sum(engine.graph.stats(e).count for e in held))
    assert sum(engine.graph.count) == len(script)


def test_observe_fields_is_observe_without_an_event() -> None:
    by_event, by_fields = make(), make()
    script = [
        (0, "thermo-1", "home/kitchen/temp", "publish"),
        (1, "home/kitchen/temp", "controller", "deliver"),
        (12, "thermo-1", "valves/kitchen/set", "publish"),
        (13, "thermo-1", "valves/kitchen/set", "publish"),
    ]
    for minute, src, dst, relation in script:
        event = ev(minute, src, dst, relation)
        assert by_event.observe(event) == by_fields.observe_fields(
            event.ts, src, dst, relation, event.size, event.node
        )
    assert by_event.graph.stats(2) == by_fields.graph.stats(2)
    assert by_event.alerts.by_id.keys() == by_fields.alerts.by_id.keys() == {1}


def test_bind_ties_a_connection_to_the_service_an_adapter_resolved() -> None:
    engine = make()
    engine.bind("mqtt:c-17", Resolved("thermo", "kitchen"), at(0))
    assert engine.observe(ev(0, "mqtt:c-17", "home/kitchen/temp")) == LEARNED
    vid = engine.graph.vertex(VertexKind.SERVICE, "thermo")
    assert vid is not None and engine.instances[vid] == {"kitchen"}
    assert phase_of(engine, "thermo") is Phase.LEARNING
    # after a reset the binding still names the service (not the raw address)
    engine.tick(at(20))
    engine.reset_learning("thermo", by="owner", at=at(21))
    assert engine.observe(ev(22, "mqtt:c-17", "home/new/temp")) == LEARNED
    assert engine.graph.vertex(VertexKind.SERVICE, "mqtt:c-17") is None
    engine.unbind("mqtt:c-17")
    engine.observe(ev(23, "mqtt:c-17", "home/x"))
    assert engine.graph.vertex(VertexKind.SERVICE, "mqtt:c-17") is not None


def test_destinations_named_by_dns_and_port_classes() -> None:
    identity = Identity(
        [
            IdentityRule(scope="internet", relation="udp/123", service="ntp@internet"),
            IdentityRule(dns=True),
        ]
    )
    engine = Engine(LearningSettings(duration=LEARN_5), identity)
    engine.observe(ev(0, "hub", "35.1.2.3", "tcp/8883"))
    engine.learn_name("35.1.2.4", "a1b2.iot.eu-west-1.amazonaws.com")
    engine.observe(ev(1, "hub", "35.1.2.4", "tcp/8883"))
    engine.learn_name("35.1.2.3", "a1b2.iot.eu-west-1.amazonaws.com")
    engine.observe(ev(2, "hub", "35.1.2.3", "tcp/8883"))  # now the same name: the same edge
    for n, server in enumerate(("162.159.200.1", "162.159.200.123", "192.168.1.1")):
        engine.observe(ev(3 + n, "hub", server, "udp/123"))
    engine.observe(ev(6, "hub", "162.159.200.1", "tcp/443"))
    graph = engine.graph
    edges = sorted(
        (graph.names[d], graph.relations[r], graph.count[e])
        for e, (s, d, r) in ((e, graph.endpoints(e)) for e in range(graph.edge_count))
    )
    assert edges == [
        ("162.159.200.1", "tcp/443", 1),
        ("192.168.1.1", "udp/123", 1),  # a LAN time server is not "internet"
        # seen before its name was known, and the name was taken by then: stays an address
        ("35.1.2.3", "tcp/8883", 1),
        ("a1b2.iot.eu-west-1.amazonaws.com", "tcp/8883", 2),
        ("ntp@internet", "udp/123", 2),
    ]


def test_a_host_seen_before_its_dns_answer_takes_the_name() -> None:
    engine = Engine(LearningSettings(duration=LEARN_5), Identity([IdentityRule(dns=True)]))
    engine.observe(ev(0, "hub", "47.89.226.20", "tcp/1883"))
    engine.tick(at(10))
    engine.learn_name("47.89.226.20", "broker.example")
    engine.learn_name("47.89.226.21", "broker.example")
    # after learning: the old address and a new one of the same name are the known edge
    for address in ("47.89.226.20", "47.89.226.21"):
        assert engine.observe(ev(11, "hub", address, "tcp/1883")) == LEARNED
    assert engine.graph.edge_count == 1
    assert engine.graph.names[engine.graph.endpoints(0)[1]] == "broker.example"
