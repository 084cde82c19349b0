"""A small heating site, generated: the events of the first ``commgraph demo``.

Two temperature sensors publish every 30 s, a heating controller subscribes to them and sets
two valves once a minute. Everything starts at minute 0 and learns for ``learning`` seconds.
A bedroom sensor is installed at minute 15 (its own learning phase: nothing to approve), and
at minute 25 the kitchen sensor starts publishing to the kitchen valve's command topic: never
seen before, so the owner is asked.
"""

from __future__ import annotations

from collections.abc import Iterator

from commgraph.events import Event

__all__ = ["DEMO_START", "heating_site"]

DEMO_START = 1_767_600_000.0  # 2026-01-05 08:00 UTC: fixed, so every run tells the same story
SENSOR_PERIOD = 30.0
VALVE_PERIOD = 60.0


def heating_site(minutes: int = 40, *, start: float = DEMO_START) -> Iterator[Event]:
    """Yield the site's events in time order."""
    rooms = {"kitchen": 0.0, "living": 0.0}
    events: list[Event] = []

    def add(at: float, src: str, dst: str, relation: str, size: int | None = None) -> None:
        events.append(Event(ts=start + at, src=src, dst=dst, relation=relation, size=size))

    add(0.5, "heating-controller", "home/+/temperature", "subscribe")
    for room in rooms:
        add(0.7, f"valve-{room}", f"valves/{room}/set", "subscribe")

    def sensor(room: str, since: float) -> None:
        at = since
        while at < minutes * 60:
            topic = f"home/{room}/temperature"
            add(at, f"thermo-{room}", topic, "publish", 5)
            add(at + 0.01, topic, "heating-controller", "deliver", 5)
            at += SENSOR_PERIOD

    sensor("kitchen", 1.0)
    sensor("living", 2.0)
    sensor("bedroom", 15 * 60 + 3.0)  # installed at minute 15

    at = 10.0
    while at < minutes * 60:
        for room in rooms:
            topic = f"valves/{room}/set"
            add(at, "heating-controller", topic, "publish", 9)
            add(at + 0.02, topic, f"valve-{room}", "deliver", 9)
        at += VALVE_PERIOD

    # Minute 25: the kitchen sensor starts driving the kitchen valve.
    at = 25 * 60 + 4.0
    while at < minutes * 60:
        add(at, "thermo-kitchen", "valves/kitchen/set", "publish", 11)
        add(at + 0.02, "valves/kitchen/set", "valve-kitchen", "deliver", 11)
        at += 120.0

    events.sort(key=lambda e: e.ts)
    yield from events
