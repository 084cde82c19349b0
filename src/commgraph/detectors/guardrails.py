"""Guardrails: limits that hold whatever a client sends, learning or not.

Learning must not mean "anything goes". Per service there is a ceiling on messages per
second (``flood``) and on new edges per minute (``edge-burst``: a topic storm), and a cap on
the edges one service may create; per address there are ceilings on refused CONNECTs
(``auth-failure``: brute force), protocol errors (``malformed``: fuzzing), and connections
opened per second or held open without traffic (``connection-flood``: SlowITe). Each is one
alert per service (or address) and kind whose count grows, never thousands.

The per-address bookkeeping lives here (:class:`AddressBook`, bounded); the engine raises
the alerts. Everything is pure: time comes with the signals.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["AddressBook", "AddressState", "GuardrailSettings", "Signal", "SignalNote"]


class Signal(StrEnum):
    """What a protocol adapter tells the engine about one connection of an address."""

    OPENED = "opened"  # a TCP connection was accepted
    ACTIVE = "active"  # it sent its first PUBLISH or SUBSCRIBE (or request)
    CLOSED = "closed"  # it closed (``active`` says whether it ever was)
    REFUSED = "refused"  # the broker refused its CONNECT (bad credentials, not authorized)
    MALFORMED = "malformed"  # it broke the protocol


@dataclass(frozen=True, slots=True)
class SignalNote:
    """A signal as a record of a capture (the pcap adapter's MQTT streams), replayed in
    event time like the events around it."""

    ts: float
    signal: Signal
    address: str
    active: bool = False
    client_id: str | None = None
    username: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardrailSettings:
    """``[guardrails]`` in the site config; 0 turns a limit off."""

    messages_per_second: int = 500  # per service
    new_edges_per_minute: int = 1000  # per service while it learns
    new_alerts_per_minute: int = 3  # per service after learning: more are grouped
    max_edges_per_service: int = 5000  # beyond: one overflow count, no graph entries
    new_services_per_minute: int = 5  # site-wide: more newcomers are one grouped question
    auth_failures_per_minute: int = 5  # per address
    malformed_per_minute: int = 3  # per address
    connections_per_second: int = 20  # per address
    idle_connections: int = 100  # per address: open, but no PUBLISH or SUBSCRIBE yet
    addresses: int = 10_000  # addresses followed at once (least recently seen go first)

    def __post_init__(self) -> None:
        for name in self.__slots__:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.addresses < 1:
            raise ValueError("addresses must be at least 1")


class AddressState:
    """What one address did lately: counts per window and its open connections."""

    __slots__ = ("idle", "malformed", "minute", "open", "opened", "refused", "second")

    def __init__(self, ts: float) -> None:
        self.minute = ts  # start of the one-minute window of refusals and errors
        self.refused = 0
        self.malformed = 0
        self.second = ts  # start of the one-second window of connections opened
        self.opened = 0
        self.open = 0  # connections open now
        self.idle = 0  # ... of which never active


class AddressBook:
    """Recent behaviour of up to ``limit`` addresses, least recently seen dropped first.

    An address dropped while it has open connections loses only its counts: its next
    signal starts afresh, so memory stays bounded whatever arrives.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.states: OrderedDict[str, AddressState] = OrderedDict()

    def state(self, address: str, ts: float) -> AddressState:
        states = self.states
        state = states.get(address)
        if state is None:
            state = states[address] = AddressState(ts)
            if len(states) > self.limit:
                states.popitem(last=False)
        else:
            states.move_to_end(address)
        return state

    def note(
        self, address: str, signal: Signal, ts: float, *, active: bool = False
    ) -> AddressState:
        """Count one signal; returns the address's state with its windows rolled to ``ts``."""
        state = self.state(address, ts)
        if ts - state.minute >= 60.0:
            state.minute, state.refused, state.malformed = ts, 0, 0
        if ts - state.second >= 1.0:
            state.second, state.opened = ts, 0
        if signal is Signal.OPENED:
            state.opened += 1
            state.open += 1
            state.idle += 1
        elif signal is Signal.ACTIVE:
            state.idle = max(0, state.idle - 1)
        elif signal is Signal.CLOSED:
            state.open = max(0, state.open - 1)
            if not active:
                state.idle = max(0, state.idle - 1)
        elif signal is Signal.REFUSED:
            state.refused += 1
        elif signal is Signal.MALFORMED:
            state.malformed += 1
        return state
