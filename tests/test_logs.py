"""``--log-format json``: one JSON object a line, alerts with kind, src, dst, relation, id."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from commgraph.logs import JSONFormatter
from conftest import COMMGRAPH, HOST, Broker, free_port, port_accepts, wait_until, write_toml

TIMEOUT = 20.0


def test_a_record_with_fields_is_one_json_line() -> None:
    record = logging.LogRecord("commgraph", logging.WARNING, __file__, 1, "a %s\nb", ("x",), None)
    record.fields = {"kind": "new-edge", "src": 'evil"\n', "message": "not overwritten"}
    line = JSONFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "a x\nb" and parsed["src"] == 'evil"\n'
    assert parsed["level"] == "warning" and parsed["kind"] == "new-edge"


def test_the_node_logs_json_lines_with_its_alerts(tmp_path: Path, mosquitto: Broker) -> None:
    port = free_port()
    write_toml(
        tmp_path / "site.toml",
        {
            "node": {"name": "node-a", "db": str(tmp_path / "a.db")},
            "learning": {"duration": "1s"},
            "modes": {"default": "monitor"},
            "mqtt": {"listen": f"{HOST}:{port}", "upstream": f"{mosquitto.host}:{mosquitto.port}"},
        },
    )
    stderr = tmp_path / "stderr"
    with stderr.open("wb") as err:
        process = subprocess.Popen(
            [str(COMMGRAPH), "run", "--config", "site.toml", "--log-format", "json"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        wait_until(lambda: port_accepts(port), TIMEOUT, 0.1, "the proxy")
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="thermo-1")
        connected = threading.Event()
        client.on_connect = lambda *_: connected.set()
        client.connect(HOST, port, keepalive=30)
        client.loop_start()
        assert connected.wait(TIMEOUT)

        def publish(topic: str) -> None:
            info = client.publish(topic, b"1", qos=1)
            info.wait_for_publish(TIMEOUT)
            assert info.is_published()

        publish("home/kitchen/temp")

        def alerts() -> list[dict[str, Any]]:
            lines = [json.loads(line) for line in stderr.read_text().splitlines() if line]
            return [line for line in lines if line.get("event") == "alert"]

        def learned() -> bool:
            done = subprocess.run(
                [str(COMMGRAPH), "--db", str(tmp_path / "a.db"), "services", "--json"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            return done.returncode == 0 and '"active"' in done.stdout

        wait_until(learned, TIMEOUT, 0.2, "learning to end")
        publish("home/kitchen/new")
        (alert,) = wait_until(alerts, TIMEOUT, 0.2, "an alert line")
        assert alert["kind"] == "new-edge" and alert["id"] >= 1
        assert (alert["src"], alert["dst"], alert["relation"]) == (
            "thermo-1",
            "home/kitchen/new",
            "publish",
        )
        client.disconnect()
        client.loop_stop()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    lines = stderr.read_text().splitlines()
    assert len(lines) >= 3
    for line in lines:
        parsed = json.loads(line)  # every line, the last ones at stop included
        assert {"ts", "level", "logger", "message"} <= parsed.keys()
