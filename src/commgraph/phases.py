"""Per-service learning phases and modes: a table-driven state machine.

Rules:
- A service's phase starts at its first sighting and lasts its learning duration; with
  ``min_events`` set it also lasts until that many events of the service were seen (the
  event that completes the count is still learned; the phase ends at the next check).
- While a service learns, its new edges are learned; afterwards they are anomalies.
- ``reset`` restarts the phase at the service's next sighting (time comes with the data).
- A service first sighted while a trusted model of its type is known adopts the model: it
  is active at once, with no learning phase of its own (``model_from`` names the node).
- Modes are independent of phases: ``learn`` keeps learning silently after the phase,
  ``monitor`` alerts, ``protect`` alerts and blocks. The owner's choice beats the config's
  per-service override, which beats the site default.

Every change of phase goes through :data:`TRANSITIONS`; anything else is a bug.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "TRANSITIONS",
    "LearningPhases",
    "LearningSettings",
    "Mode",
    "Phase",
    "PhaseChange",
    "PhaseEvent",
    "ServicePhase",
]


class Phase(StrEnum):
    LEARNING = "learning"
    ACTIVE = "active"


class Mode(StrEnum):
    LEARN = "learn"
    MONITOR = "monitor"
    PROTECT = "protect"


class PhaseEvent(StrEnum):
    SIGHTED = "sighted"  # first event of the service (or first after a reset)
    LEARNED = "learned"  # duration over and enough events seen
    RESET = "reset"  # the owner restarts learning
    ADOPTED = "adopted"  # first sighting with a trusted model of the service: no learning


# (phase before, what happened) -> phase after. None = not yet seen.
TRANSITIONS: dict[tuple[Phase | None, PhaseEvent], Phase] = {
    (None, PhaseEvent.SIGHTED): Phase.LEARNING,
    (None, PhaseEvent.ADOPTED): Phase.ACTIVE,
    (Phase.LEARNING, PhaseEvent.SIGHTED): Phase.LEARNING,  # after a reset: the clock starts
    (Phase.LEARNING, PhaseEvent.LEARNED): Phase.ACTIVE,
    (Phase.LEARNING, PhaseEvent.RESET): Phase.LEARNING,
    (Phase.ACTIVE, PhaseEvent.RESET): Phase.LEARNING,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class LearningSettings:
    """How long services learn and what they do afterwards (from the site config)."""

    duration: float = 3600.0
    durations: Mapping[str, float] = field(default_factory=dict)
    min_events: int = 0
    mode: Mode = Mode.MONITOR
    modes: Mapping[str, Mode] = field(default_factory=dict)
    block_pending: bool = True

    def duration_for(self, service: str) -> float:
        return self.durations.get(service, self.duration)

    def mode_for(self, service: str) -> Mode:
        return self.modes.get(service, self.mode)


@dataclass(slots=True, kw_only=True)
class ServicePhase:
    """The learning state of one service; ``started_at`` is None until the clock starts."""

    service: str
    phase: Phase
    started_at: float | None
    ends_at: float | None
    events_at_start: int = 0
    mode: Mode | None = None  # the owner's choice, overriding the config
    learned_at: float | None = None
    model_from: str | None = None  # the node whose model it adopted instead of learning


@dataclass(frozen=True, slots=True)
class PhaseChange:
    service: str
    before: Phase | None
    after: Phase
    at: float
    why: PhaseEvent


class LearningPhases:
    """Phases of all services, keyed by the service's vertex id. Pure: time is passed in."""

    def __init__(self, settings: LearningSettings) -> None:
        self.settings = settings
        self.states: dict[int, ServicePhase] = {}

    def _move(self, state: ServicePhase | None, why: PhaseEvent) -> Phase:
        before = None if state is None else state.phase
        after = TRANSITIONS.get((before, why))
        if after is None:
            raise ValueError(f"no phase transition from {before} on {why}")
        return after

    def sighted(self, vid: int, service: str, ts: float, events: int) -> PhaseChange | None:
        """The service was seen at ``ts`` (``events`` = its event count so far).

        Starts its phase on the first sighting, or restarts the clock after a reset.
        """
        state = self.states.get(vid)
        if state is not None and state.started_at is not None:
            return None
        before = None if state is None else state.phase
        after = self._move(state, PhaseEvent.SIGHTED)
        ends = ts + self.settings.duration_for(service)
        if state is None:
            state = ServicePhase(service=service, phase=after, started_at=ts, ends_at=ends)
            self.states[vid] = state
        else:
            state.phase, state.started_at, state.ends_at = after, ts, ends
        state.events_at_start = events
        return PhaseChange(service, before, after, ts, PhaseEvent.SIGHTED)

    def adopt(self, vid: int, service: str, ts: float, model_from: str) -> PhaseChange:
        """First sighting of a service whose type has a trusted model: active at once."""
        after = self._move(self.states.get(vid), PhaseEvent.ADOPTED)
        self.states[vid] = ServicePhase(
            service=service,
            phase=after,
            started_at=ts,
            ends_at=ts,
            learned_at=ts,
            model_from=model_from,
        )
        return PhaseChange(service, None, after, ts, PhaseEvent.ADOPTED)

    def is_learning(self, vid: int, ts: float, events: int) -> tuple[bool, PhaseChange | None]:
        """Whether the service learns at ``ts``; ends its phase when due (returns the change)."""
        state = self.states.get(vid)
        if state is None or state.phase is not Phase.LEARNING:
            return False, None
        if state.ends_at is None or ts < state.ends_at:
            return True, None
        if events - state.events_at_start < self.settings.min_events:
            return True, None
        # Without min_events the phase ends exactly at its deadline, whenever we notice;
        # with it, when the check first finds enough events.
        at = state.ends_at if self.settings.min_events == 0 else ts
        return False, self._end(state, at)

    def due(self, now: float, events_of: Sequence[int]) -> list[PhaseChange]:
        """End every phase that is over at ``now``; ``events_of[vid]`` is a service's count."""
        changes = []
        for vid, state in self.states.items():
            if state.phase is Phase.LEARNING and state.ends_at is not None and now >= state.ends_at:
                _, change = self.is_learning(vid, now, events_of[vid])
                if change is not None:
                    changes.append(change)
        return changes

    def _end(self, state: ServicePhase, at: float) -> PhaseChange:
        after = self._move(state, PhaseEvent.LEARNED)
        before, state.phase, state.learned_at = state.phase, after, at
        return PhaseChange(state.service, before, after, at, PhaseEvent.LEARNED)

    def reset(self, vid: int, at: float) -> PhaseChange:
        """Restart learning; the new phase's clock starts at the next sighting."""
        state = self.states[vid]
        after = self._move(state, PhaseEvent.RESET)
        before = state.phase
        state.phase, state.started_at, state.ends_at, state.learned_at = after, None, None, None
        state.model_from = None
        return PhaseChange(state.service, before, after, at, PhaseEvent.RESET)

    def mode(self, vid: int) -> Mode:
        state = self.states.get(vid)
        if state is None:
            return self.settings.mode
        return state.mode or self.settings.mode_for(state.service)
