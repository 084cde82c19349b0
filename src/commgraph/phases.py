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
  per-service override, which beats the site default (:meth:`LearningSettings.mode_of`, the
  one place this is decided).
- Promotion (``promote_after``, off by default): an active service in monitor mode by the
  site default alone is promoted to protect once it has been quiet that long: its count
  starts when it became active and restarts whenever a question about it is raised or
  closed (``quiet_since``), and it never ends while one is open (the engine checks that).
  Once anyone but commgraph set the service's mode (``mode_by``), even back to the
  configured one, it is never promoted: the owner's choice stands.

Admission: the site has a bootstrap period (``site``, by default the learning duration) from
its first event. A service first seen after it is a newcomer: with ``admission`` ``learn`` it
learns as before; with ``ask`` it learns and the owner is asked "is this yours?"; with
``hold`` it is ``held`` (its traffic is blocked) until the owner approves it, which starts its
learning phase. A denied newcomer is ``denied`` for good. A service that adopts a trusted
model is no newcomer.

Every change of phase goes through :data:`TRANSITIONS`; anything else is a bug.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum

__all__ = [
    "COMMGRAPH",
    "TRANSITIONS",
    "Admission",
    "LearningPhases",
    "LearningSettings",
    "Mode",
    "ModeSource",
    "Phase",
    "PhaseChange",
    "PhaseEvent",
    "ServicePhase",
    "format_duration",
]

COMMGRAPH = "commgraph"  # who the audit log names for what commgraph decides on its own


class Phase(StrEnum):
    LEARNING = "learning"
    ACTIVE = "active"
    HELD = "held"  # a newcomer waiting for the owner; its traffic is blocked
    DENIED = "denied"  # a newcomer (or service) the owner refused


class Admission(StrEnum):
    """What happens to a service first seen after the site's bootstrap period."""

    LEARN = "learn"  # it learns on its own, silently
    ASK = "ask"  # it learns, and the owner is asked whether it belongs
    HOLD = "hold"  # it is blocked until the owner approves it


class Mode(StrEnum):
    LEARN = "learn"
    MONITOR = "monitor"
    PROTECT = "protect"


class ModeSource(StrEnum):
    """Where a service's mode comes from."""

    OWNER = "owner"  # someone set it on the service
    PROMOTED = "promoted"  # commgraph promoted it (``promote_after``)
    CONFIG = "config"  # ``[modes.services]``
    DEFAULT = "default"  # ``[modes] default``


def format_duration(seconds: float) -> str:
    """Seconds as a short human duration: ``3600`` -> ``1h``, ``5400`` -> ``1h30m``."""
    if seconds < 60:
        return f"{seconds:g}s"
    rest = round(seconds)
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out[:2])


class PhaseEvent(StrEnum):
    SIGHTED = "sighted"  # first event of the service (or first after a reset)
    LEARNED = "learned"  # duration over and enough events seen
    RESET = "reset"  # the owner restarts learning
    ADOPTED = "adopted"  # first sighting with a trusted model of the service: no learning
    HELD = "held"  # first sighting of a newcomer under ``hold``
    ADMITTED = "admitted"  # the owner approved a held or denied newcomer: it learns
    DENIED = "denied"  # the owner denied a newcomer


# (phase before, what happened) -> phase after. None = not yet seen.
TRANSITIONS: dict[tuple[Phase | None, PhaseEvent], Phase] = {
    (None, PhaseEvent.SIGHTED): Phase.LEARNING,
    (None, PhaseEvent.ADOPTED): Phase.ACTIVE,
    (Phase.LEARNING, PhaseEvent.SIGHTED): Phase.LEARNING,  # after a reset: the clock starts
    (Phase.LEARNING, PhaseEvent.LEARNED): Phase.ACTIVE,
    (Phase.LEARNING, PhaseEvent.RESET): Phase.LEARNING,
    (Phase.ACTIVE, PhaseEvent.RESET): Phase.LEARNING,
    (None, PhaseEvent.HELD): Phase.HELD,
    (Phase.HELD, PhaseEvent.ADMITTED): Phase.LEARNING,
    (Phase.HELD, PhaseEvent.ADOPTED): Phase.ACTIVE,  # approved, and a site model exists
    (Phase.HELD, PhaseEvent.DENIED): Phase.DENIED,
    (Phase.HELD, PhaseEvent.RESET): Phase.LEARNING,
    (Phase.LEARNING, PhaseEvent.DENIED): Phase.DENIED,
    (Phase.ACTIVE, PhaseEvent.DENIED): Phase.DENIED,
    (Phase.DENIED, PhaseEvent.ADMITTED): Phase.LEARNING,
    (Phase.DENIED, PhaseEvent.ADOPTED): Phase.ACTIVE,
    (Phase.DENIED, PhaseEvent.RESET): Phase.LEARNING,
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
    site: float | None = None  # the site's bootstrap period; None: the learning duration
    admission: Admission | None = None  # None: ask in learn/monitor mode, hold in protect
    promote_after: float | None = None  # monitor -> protect after this long quiet; None: off

    @property
    def bootstrap(self) -> float:
        return self.duration if self.site is None else self.site

    def admission_for(self, mode: Mode) -> Admission:
        if self.admission is not None:
            return self.admission
        return Admission.HOLD if mode is Mode.PROTECT else Admission.ASK

    def changes_from(self, before: LearningSettings) -> list[str]:
        """What differs from ``before``, one ``name: old -> new`` each, in field order."""
        said = []
        for f in fields(self):
            old, new = getattr(before, f.name), getattr(self, f.name)
            if old != new:
                said.append(f"{f.name}: {_shown(old)} -> {_shown(new)}")
        return said

    def duration_for(self, service: str) -> float:
        return self.durations.get(service, self.duration)

    def mode_for(self, service: str) -> Mode:
        return self.mode_of(service)[0]

    def mode_of(
        self, service: str, chosen: Mode | None = None, chosen_by: str | None = None
    ) -> tuple[Mode, ModeSource]:
        """A service's mode and where it comes from: ``chosen`` (set on the service by
        ``chosen_by``) beats the config's per-service override, which beats the default."""
        if chosen is not None:
            return chosen, ModeSource.PROMOTED if chosen_by == COMMGRAPH else ModeSource.OWNER
        if service in self.modes:
            return self.modes[service], ModeSource.CONFIG
        return self.mode, ModeSource.DEFAULT

    def promote_at(self, state: ServicePhase) -> float | None:
        """When the service is promoted to protect if nothing is asked about it before;
        None if it is not on its way (promotion off, not active, its mode not monitor by the
        site default, or its mode set by someone). Open questions are the engine's check."""
        after = self.promote_after
        if not after or state.phase is not Phase.ACTIVE:
            return None
        if state.mode_by is not None:
            return None
        mode, source = self.mode_of(state.service, state.mode, state.mode_by)
        if mode is not Mode.MONITOR or source is not ModeSource.DEFAULT:
            return None
        quiet = max(
            -1.0 if state.quiet_since is None else state.quiet_since,
            -1.0 if state.learned_at is None else state.learned_at,
        )
        return None if quiet < 0 else quiet + after


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
    mode_by: str | None = None  # who last set its mode (None: nobody, ever)
    mode_at: float | None = None  # and when
    quiet_since: float | None = None  # became active, or a question about it raised/closed


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
        if state is not None and (
            state.started_at is not None or state.phase in (Phase.HELD, Phase.DENIED)
        ):
            return None  # its clock runs, or waits for the owner
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

    def hold(self, vid: int, service: str, ts: float) -> PhaseChange:
        """First sighting of a newcomer under ``hold``: no clock until the owner approves."""
        after = self._move(self.states.get(vid), PhaseEvent.HELD)
        self.states[vid] = ServicePhase(service=service, phase=after, started_at=None, ends_at=None)
        return PhaseChange(service, None, after, ts, PhaseEvent.HELD)

    def admit(self, vid: int, at: float) -> PhaseChange:
        """The owner approved a held (or denied) newcomer: it learns from its next event."""
        state = self.states[vid]
        before = state.phase
        state.phase = self._move(state, PhaseEvent.ADMITTED)
        state.started_at = state.ends_at = state.learned_at = None
        return PhaseChange(state.service, before, state.phase, at, PhaseEvent.ADMITTED)

    def deny(self, vid: int, at: float) -> PhaseChange:
        state = self.states[vid]
        before = state.phase
        state.phase = self._move(state, PhaseEvent.DENIED)
        return PhaseChange(state.service, before, state.phase, at, PhaseEvent.DENIED)

    def adopt(self, vid: int, service: str, ts: float, model_from: str) -> PhaseChange:
        """First sighting of a service whose type has a trusted model: active at once (also
        for a held newcomer the owner approved)."""
        before = self.states.get(vid)
        after = self._move(before, PhaseEvent.ADOPTED)
        if before is not None:
            was = before.phase
            before.phase, before.started_at, before.ends_at = after, ts, ts
            before.learned_at, before.model_from = ts, model_from
            return PhaseChange(service, was, after, ts, PhaseEvent.ADOPTED)
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
        return self.settings.mode_of(state.service, state.mode, state.mode_by)[0]


def _shown(value: object) -> str:
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_shown(v)}" for k, v in sorted(value.items())) + "}"
    return "none" if value is None else str(value)
