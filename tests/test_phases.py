from __future__ import annotations

import pytest

from commgraph.phases import (
    TRANSITIONS,
    LearningPhases,
    LearningSettings,
    Mode,
    Phase,
    PhaseChange,
    PhaseEvent,
)

T0 = 1_700_000_000.0
MIN = 60.0
THERMO, CONTROLLER = 1, 2


def counts(thermo: int = 0, controller: int = 0) -> list[int]:
    """Event counts indexed by vertex id, as the graph's ``events`` column holds them."""
    return [0, thermo, controller]


def phases(**settings: object) -> LearningPhases:
    return LearningPhases(LearningSettings(duration=5 * MIN, **settings))  # type: ignore[arg-type]


def at(minute: float) -> float:
    return T0 + minute * MIN


# -- the table ------------------------------------------------------------------------------


def test_transition_table() -> None:
    assert TRANSITIONS == {
        (None, PhaseEvent.SIGHTED): Phase.LEARNING,
        (None, PhaseEvent.ADOPTED): Phase.ACTIVE,
        (Phase.LEARNING, PhaseEvent.SIGHTED): Phase.LEARNING,
        (Phase.LEARNING, PhaseEvent.LEARNED): Phase.ACTIVE,
        (Phase.LEARNING, PhaseEvent.RESET): Phase.LEARNING,
        (Phase.ACTIVE, PhaseEvent.RESET): Phase.LEARNING,
        # admission: newcomers held for the owner, admitted or denied
        (None, PhaseEvent.HELD): Phase.HELD,
        (Phase.HELD, PhaseEvent.ADMITTED): Phase.LEARNING,
        (Phase.HELD, PhaseEvent.ADOPTED): Phase.ACTIVE,
        (Phase.HELD, PhaseEvent.DENIED): Phase.DENIED,
        (Phase.HELD, PhaseEvent.RESET): Phase.LEARNING,
        (Phase.LEARNING, PhaseEvent.DENIED): Phase.DENIED,
        (Phase.ACTIVE, PhaseEvent.DENIED): Phase.DENIED,
        (Phase.DENIED, PhaseEvent.ADMITTED): Phase.LEARNING,
        (Phase.DENIED, PhaseEvent.ADOPTED): Phase.ACTIVE,
        (Phase.DENIED, PhaseEvent.RESET): Phase.LEARNING,
    }


def test_a_held_newcomer_has_no_clock_until_admitted() -> None:
    p = phases()
    change = p.hold(THERMO, "thermo", at(0))
    assert (change.before, change.after) == (None, Phase.HELD)
    assert p.sighted(THERMO, "thermo", at(1), 0) is None, "no clock while held"
    assert p.is_learning(THERMO, at(1), 0) == (False, None)
    assert p.admit(THERMO, at(2)).after is Phase.LEARNING
    assert p.sighted(THERMO, "thermo", at(3), 0) is not None
    assert p.is_learning(THERMO, at(4), 1)[0]
    assert p.deny(THERMO, at(5)).after is Phase.DENIED
    assert p.sighted(THERMO, "thermo", at(6), 0) is None


def test_adopting_a_model_skips_learning_until_the_owner_resets() -> None:
    p = phases()
    change = p.adopt(THERMO, "thermo", at(0), "node-a")
    assert (change.before, change.after, change.why) == (None, Phase.ACTIVE, PhaseEvent.ADOPTED)
    assert p.states[THERMO].model_from == "node-a"
    assert p.is_learning(THERMO, at(1), 0) == (False, None)
    with pytest.raises(ValueError):
        p.adopt(THERMO, "thermo", at(2), "node-b")  # only at the first sighting
    p.reset(THERMO, at(3))
    assert p.states[THERMO].model_from is None
    assert p.sighted(THERMO, "thermo", at(4), 0) is not None
    assert p.is_learning(THERMO, at(5), 1)[0]


def test_every_reported_change_follows_the_table() -> None:
    p = phases()
    changes = [p.sighted(THERMO, "thermo", at(0), 0)]
    changes.append(p.is_learning(THERMO, at(6), 1)[1])
    changes.append(p.reset(THERMO, at(7)))
    changes.append(p.reset(THERMO, at(8)))
    changes.append(p.sighted(THERMO, "thermo", at(9), 1))
    changes += p.due(at(20), counts(thermo=2))
    assert [(c.why, c.after) for c in changes if c is not None] == [
        (PhaseEvent.SIGHTED, Phase.LEARNING),
        (PhaseEvent.LEARNED, Phase.ACTIVE),
        (PhaseEvent.RESET, Phase.LEARNING),
        (PhaseEvent.RESET, Phase.LEARNING),
        (PhaseEvent.SIGHTED, Phase.LEARNING),
        (PhaseEvent.LEARNED, Phase.ACTIVE),
    ]
    for change in changes:
        assert change is not None
        if change.before is not None:
            assert TRANSITIONS[(change.before, change.why)] is change.after


def test_unknown_transition_is_refused() -> None:
    p = phases()
    p.sighted(THERMO, "thermo", at(0), 0)
    p.due(at(5), counts())
    state = p.states[THERMO]
    assert state.phase is Phase.ACTIVE
    with pytest.raises(ValueError, match="no phase transition"):
        p._move(state, PhaseEvent.LEARNED)
    with pytest.raises(ValueError, match="no phase transition"):
        p._move(None, PhaseEvent.RESET)


# -- sighting and the deadline --------------------------------------------------------------


def test_first_sighting_starts_learning() -> None:
    p = phases()
    change = p.sighted(THERMO, "thermo", at(0), 0)
    assert change == PhaseChange("thermo", None, Phase.LEARNING, at(0), PhaseEvent.SIGHTED)
    state = p.states[THERMO]
    assert state.phase is Phase.LEARNING
    assert state.started_at == at(0)
    assert state.ends_at == at(5)
    assert state.service == "thermo"


def test_second_sighting_changes_nothing() -> None:
    p = phases()
    p.sighted(THERMO, "thermo", at(0), 0)
    assert p.sighted(THERMO, "thermo", at(3), 10) is None
    assert p.states[THERMO].ends_at == at(5)


def test_per_service_duration() -> None:
    p = phases(durations={"controller": 20 * MIN})
    p.sighted(THERMO, "thermo", at(0), 0)
    p.sighted(CONTROLLER, "controller", at(1), 0)
    assert p.states[THERMO].ends_at == at(5)
    assert p.states[CONTROLLER].ends_at == at(21)
    assert p.settings.duration_for("controller") == 20 * MIN
    assert p.settings.duration_for("thermo") == 5 * MIN


def test_is_learning_before_and_after_the_deadline() -> None:
    p = phases()
    p.sighted(THERMO, "thermo", at(0), 0)
    assert p.is_learning(THERMO, at(0), 1) == (True, None)
    assert p.is_learning(THERMO, at(4.99), 5) == (True, None)
    learning, change = p.is_learning(THERMO, at(9), 6)
    assert learning is False
    # the phase ends at its deadline, not when it is noticed
    assert change == PhaseChange("thermo", Phase.LEARNING, Phase.ACTIVE, at(5), PhaseEvent.LEARNED)
    assert p.states[THERMO].phase is Phase.ACTIVE
    assert p.states[THERMO].learned_at == at(5)
    assert p.is_learning(THERMO, at(10), 7) == (False, None)


def test_phase_ends_exactly_at_the_deadline() -> None:
    p = phases()
    p.sighted(THERMO, "thermo", at(0), 0)
    learning, change = p.is_learning(THERMO, at(5), 1)
    assert not learning
    assert change is not None


def test_unknown_service_is_not_learning() -> None:
    assert phases().is_learning(99, at(0), 0) == (False, None)


def test_min_events_extends_learning() -> None:
    p = phases(min_events=10)
    p.sighted(THERMO, "thermo", at(0), 3)  # 3 events were counted before the sighting
    assert p.is_learning(THERMO, at(6), 12) == (True, None)
    assert p.due(at(7), counts(thermo=12)) == []
    learning, change = p.is_learning(THERMO, at(8), 13)
    assert not learning
    # with min_events the phase ends when enough events are found, not at the deadline
    assert change == PhaseChange("thermo", Phase.LEARNING, Phase.ACTIVE, at(8), PhaseEvent.LEARNED)


def test_min_events_reached_before_the_deadline_does_not_end_early() -> None:
    p = phases(min_events=2)
    p.sighted(THERMO, "thermo", at(0), 0)
    assert p.is_learning(THERMO, at(1), 100) == (True, None)


def test_due_ends_phases_and_returns_changes() -> None:
    p = phases(durations={"controller": 10 * MIN})
    p.sighted(THERMO, "thermo", at(0), 0)
    p.sighted(CONTROLLER, "controller", at(0), 0)
    assert p.due(at(4), counts()) == []
    changes = p.due(at(6), counts(thermo=4))
    assert changes == [
        PhaseChange("thermo", Phase.LEARNING, Phase.ACTIVE, at(5), PhaseEvent.LEARNED)
    ]
    assert p.states[CONTROLLER].phase is Phase.LEARNING
    assert p.due(at(7), counts()) == []
    later = p.due(at(12), counts())
    assert [c.service for c in later] == ["controller"]
    assert later[0].at == at(10)
    assert p.due(at(100), counts()) == []


def test_due_with_min_events_uses_the_counts() -> None:
    p = phases(min_events=5)
    p.sighted(THERMO, "thermo", at(0), 0)
    assert p.due(at(6), counts(thermo=4)) == []
    assert p.due(at(6), counts()) == []
    changes = p.due(at(7), counts(thermo=5))
    assert [(c.service, c.at) for c in changes] == [("thermo", at(7))]


# -- reset ----------------------------------------------------------------------------------


def test_reset_from_active_learns_again_from_the_next_sighting() -> None:
    p = phases()
    p.sighted(THERMO, "thermo", at(0), 0)
    p.due(at(6), counts())
    change = p.reset(THERMO, at(8))
    assert change == PhaseChange("thermo", Phase.ACTIVE, Phase.LEARNING, at(8), PhaseEvent.RESET)
    state = p.states[THERMO]
    assert state.phase is Phase.LEARNING
    assert state.started_at is None and state.ends_at is None and state.learned_at is None
    # the clock has not started: learning however late it is, and due() leaves it alone
    assert p.is_learning(THERMO, at(1000), 50) == (True, None)
    assert p.due(at(1000), counts(thermo=50)) == []
    sighting = p.sighted(THERMO, "thermo", at(20), 50)
    assert sighting is not None
    assert (sighting.after, sighting.at, sighting.why) == (
        Phase.LEARNING,
        at(20),
        PhaseEvent.SIGHTED,
    )
    assert state.started_at == at(20)
    assert state.ends_at == at(25)
    assert p.is_learning(THERMO, at(24), 51) == (True, None)
    assert p.is_learning(THERMO, at(25), 52)[0] is False


def test_reset_counts_min_events_from_the_new_sighting() -> None:
    p = phases(min_events=3)
    p.sighted(THERMO, "thermo", at(0), 0)
    p.due(at(6), counts(thermo=10))
    p.reset(THERMO, at(7))
    p.sighted(THERMO, "thermo", at(8), 10)
    assert p.is_learning(THERMO, at(14), 12) == (True, None)
    assert p.is_learning(THERMO, at(14), 13)[0] is False


def test_reset_while_learning() -> None:
    p = phases()
    p.sighted(THERMO, "thermo", at(0), 0)
    change = p.reset(THERMO, at(2))
    assert (change.before, change.after) == (Phase.LEARNING, Phase.LEARNING)
    p.sighted(THERMO, "thermo", at(3), 1)
    assert p.states[THERMO].ends_at == at(8)


def test_sighting_after_reset_reports_the_phase_before() -> None:
    p = phases()
    p.sighted(THERMO, "thermo", at(0), 0)
    p.reset(THERMO, at(2))
    change = p.sighted(THERMO, "thermo", at(3), 1)
    assert change == PhaseChange(
        "thermo", Phase.LEARNING, Phase.LEARNING, at(3), PhaseEvent.SIGHTED
    )


def test_reset_of_unknown_service_raises() -> None:
    with pytest.raises(KeyError):
        phases().reset(99, at(0))


# -- modes ----------------------------------------------------------------------------------


def test_mode_defaults_to_the_site_mode() -> None:
    p = phases(mode=Mode.PROTECT)
    assert p.mode(99) is Mode.PROTECT  # not seen yet
    p.sighted(THERMO, "thermo", at(0), 0)
    assert p.mode(THERMO) is Mode.PROTECT
    assert phases().mode(THERMO) is Mode.MONITOR


def test_mode_precedence() -> None:
    p = phases(mode=Mode.MONITOR, modes={"thermo": Mode.LEARN})
    p.sighted(THERMO, "thermo", at(0), 0)
    p.sighted(CONTROLLER, "controller", at(0), 0)
    assert p.mode(THERMO) is Mode.LEARN  # config override beats the default
    assert p.mode(CONTROLLER) is Mode.MONITOR
    p.states[THERMO].mode = Mode.PROTECT  # the owner beats the config override
    p.states[CONTROLLER].mode = Mode.LEARN
    assert p.mode(THERMO) is Mode.PROTECT
    assert p.mode(CONTROLLER) is Mode.LEARN
    p.states[THERMO].mode = None
    assert p.mode(THERMO) is Mode.LEARN


def test_mode_is_independent_of_phase() -> None:
    p = phases(mode=Mode.PROTECT)
    p.sighted(THERMO, "thermo", at(0), 0)
    assert p.mode(THERMO) is Mode.PROTECT
    p.due(at(6), counts())
    assert p.mode(THERMO) is Mode.PROTECT
    p.reset(THERMO, at(7))
    assert p.mode(THERMO) is Mode.PROTECT
