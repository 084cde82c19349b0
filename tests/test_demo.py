"""The live demo runs headless for a bounded time and produces its alert."""

from __future__ import annotations

from pathlib import Path

from commgraph.demo import Pace, free_port
from commgraph.demo.live import run_live_demo
from commgraph.store import Store

FAST = Pace(tick=0.3, learning=3.0, bedroom_at=5.0, anomaly_at=8.0)


def test_live_demo_raises_exactly_the_scripted_alert(tmp_path: Path) -> None:
    said: list[str] = []
    alerts = run_live_demo(tmp_path, seconds=12, pace=FAST, api_port=free_port(), say=said.append)
    assert [(a["kind"], a["src"], a["state"]) for a in alerts] == [
        ("new-service", "thermo-bedroom", "pending"),
        ("new-edge", "thermo-kitchen", "pending"),
        # the REST call: caller -> route, and the route -> the callee (the sidecar's two events)
        ("new-edge", "heating-controller", "pending"),
        ("new-edge", "POST room-service/locks/front/unlock", "pending"),
    ]
    question, alert, call, served = alerts
    assert (call["relation"], call["dst"]) == ("http", "POST room-service/locks/front/unlock")
    assert (served["relation"], served["dst"]) == ("serve", "room-service")
    assert call["count"] >= 2
    assert question["detail"]["examples"] == ["publish home/bedroom/temperature"]
    assert (alert["relation"], alert["dst"]) == ("publish", "valves/kitchen/set")
    assert alert["count"] >= 2  # it kept trying: still one alert
    text = "\n".join(said)
    assert "thermo-kitchen started publishing to valves/kitchen/set, never seen before" in text
    assert "a new device thermo-bedroom (127.0.0.1) connected to demo-node" in text
    assert (
        "heating-controller started talking to POST room-service/locks/front/unlock over http"
        in text
    )
    assert text.index("calls POST /locks/front/unlock") < text.index("started talking to POST")
    assert "HTTP sidecar on 127.0.0.1:" in text
    assert "/act/" in text and f"approve {alert['id']}" in text
    assert "dashboard  http://127.0.0.1:" in text and "API token" in text
    # the story is told on the demo's clock, each line before what it announces happens
    told = [line[:9] for line in said if line.startswith("[")]
    assert told == ["[  0.0 s]", "[  4.0 s]", "[  5.0 s]", "[  8.0 s]"]
    assert text.index("A bedroom sensor is installed") < text.index("a new device thermo-bedroom")
    assert text.index("starts commanding the kitchen") < text.index("started publishing to valves")
    with Store(tmp_path / "demo.db") as store:
        services = {s["name"]: s for s in store.services()}
    # the sensor installed later learned on its own, and was asked about once
    assert (
        services["thermo-bedroom"]["learning_started_at"]
        > services["thermo-kitchen"]["learning_started_at"] + FAST.bedroom_at - 1
    )
    assert set(services) == {
        "heating-controller",
        "room-service",
        "thermo-bedroom",
        "thermo-kitchen",
        "thermo-living",
        "valve-kitchen",
        "valve-living",
    }
    with Store(tmp_path / "demo.db") as store:
        polled = [
            e for e in store.edges() if e["src"] == "heating-controller" and e["relation"] == "http"
        ]
    # the poll learned as one route template, whatever the room id
    assert {e["dst"] for e in polled} == {
        "GET room-service/rooms/{id}/temperature",
        "POST room-service/locks/front/unlock",
    }
    assert not (tmp_path / "mosquitto.pid").exists()
