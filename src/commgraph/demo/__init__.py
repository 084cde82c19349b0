"""The simulated heating site and the demos (``commgraph demo``); never imported by the daemon.

:mod:`.site` generates the site's events and runs it live against a broker; :mod:`.live`
runs the live demo (Mosquitto, a node, the dashboard and the site); :mod:`.offline` the
earlier demo that generates the events and replays them.
"""

from __future__ import annotations

from commgraph.demo.site import (
    DEMO_START,
    Pace,
    SimulatedSite,
    free_port,
    heating_site,
    live_config,
    start_broker,
)

__all__ = [
    "DEMO_START",
    "Pace",
    "SimulatedSite",
    "free_port",
    "heating_site",
    "live_config",
    "start_broker",
]
