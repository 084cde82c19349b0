"""``commgraph init`` (flags and a pty) and ``commgraph check``, against a real Mosquitto."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import threading
import time
import tomllib
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from commgraph.config import load_config
from conftest import COMMGRAPH, HOST, Broker, free_port, port_accepts, wait_until

TIMEOUT = 20.0


def commgraph(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(COMMGRAPH), *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


def test_init_with_flags_passes_check_and_runs_the_site(tmp_path: Path, mosquitto: Broker) -> None:
    listen = f"{HOST}:{free_port()}"
    broker = f"{mosquitto.host}:{mosquitto.port}"
    done = commgraph(
        "init", "--yes", "--node", "pi-1", "--broker", broker, "--listen", listen,
        "--mode", "monitor", "--api", f"{HOST}:{free_port()}", "--keys", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    site = tmp_path / "site.toml"
    text = site.read_text()
    assert text.count("#") >= 10  # commented
    data = tomllib.loads(text)
    assert data["node"]["name"] == "pi-1" and data["mqtt"]["upstream"] == broker
    assert f"listener {mosquitto.port} {mosquitto.host}" in done.stdout
    assert (tmp_path / "site.key").exists() and (tmp_path / "site.pub").exists()
    credentials = tmp_path / "pi-1.db.credentials"
    assert credentials.stat().st_mode & 0o077 == 0
    assert "api_token" in credentials.read_text()
    config = load_config(site)
    assert config.private_key == tmp_path / "site.key"

    checked = commgraph("check", "--config", "site.toml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lines = checked.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["ok"] * len(lines) and len(lines) == 3

    process = subprocess.Popen(
        [str(COMMGRAPH), "run", "--config", "site.toml"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port = int(listen.rsplit(":", 1)[1])
        wait_until(lambda: port_accepts(port), TIMEOUT, 0.1, "the proxy to listen")
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="thermo-1")
        connected = threading.Event()
        client.on_connect = lambda *_: connected.set()
        client.connect(HOST, port, keepalive=30)
        client.loop_start()
        assert connected.wait(TIMEOUT)
        info = client.publish("home/kitchen/temp", b"21", qos=1)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published()
        client.disconnect()
        client.loop_stop()

        def seen() -> bool:
            rows = commgraph("--db", "pi-1.db", "edges", "--json", cwd=tmp_path)
            return rows.returncode == 0 and "home/kitchen/temp" in rows.stdout

        wait_until(seen, TIMEOUT, 0.2, "the edge in the node's database")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0


def test_check_names_what_failed_with_the_fix(tmp_path: Path) -> None:
    dead = f"{HOST}:{free_port()}"
    done = commgraph("init", "--yes", "--broker", dead, "--out", "s.toml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    checked = commgraph("check", "--config", "s.toml", "--timeout", "1", cwd=tmp_path)
    assert checked.returncode == 1
    failed = [line for line in checked.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 2 and all("fix:" in line and dead in line for line in failed)
    bad = tmp_path / "bad.toml"
    bad.write_text('[mqtt]\nlisten = "nowhere"\n')
    checked = commgraph("check", "--config", "bad.toml", cwd=tmp_path)
    assert checked.returncode == 1 and "mqtt.listen" in checked.stderr
    assert "Traceback" not in checked.stderr


def test_check_notify_sends_a_test_message(tmp_path: Path) -> None:
    dead = f"{HOST}:{free_port()}"
    site = tmp_path / "site.toml"
    done = commgraph(
        "init", "--yes", "--broker", dead, "--notify", f"ntfy://{HOST}:{free_port()}/t",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    checked = commgraph("check", "--config", str(site), "--notify", "--timeout", "1", cwd=tmp_path)
    notify = [line for line in checked.stdout.splitlines() if " notify:" in line]
    assert len(notify) == 1 and notify[0].startswith("FAIL") and "fix:" in notify[0]
    assert "/t" not in notify[0]  # the URL's path (where secrets live) is not shown


def read_until(fd: int, wanted: bytes, deadline: float) -> bytes:
    seen = b""
    while wanted not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"no {wanted!r} from init; got {seen!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                pytest.fail(f"init closed its terminal before {wanted!r}; got {seen!r}")
            seen += chunk
    return seen


def test_init_asks_on_a_terminal(tmp_path: Path) -> None:
    main, child = pty.openpty()
    process = subprocess.Popen(
        [str(COMMGRAPH), "init"], stdin=child, stdout=child, stderr=child, cwd=tmp_path
    )
    os.close(child)
    deadline = time.monotonic() + TIMEOUT
    try:
        answers = [
            (b"Node name", b"kitchen-pi"),
            (b"real broker", b""),
            (b"proxy takes", b"127.0.0.1:2883"),
            (b"Mode", b"protect"),
            (b"Notification URL", b""),
            (b"API address", b""),
            (b"signing keys", b"n"),
        ]
        for question, answer in answers:
            read_until(main, question, deadline)
            os.write(main, answer + b"\r")
        read_until(main, b"commgraph check", deadline)
        assert process.wait(timeout=TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(main)
    config = load_config(tmp_path / "site.toml")
    assert config.node == "kitchen-pi"
    assert config.learning.mode.value == "protect"
    assert config.mqtt.listen is not None and config.mqtt.listen.port == 2883
    assert config.mqtt.upstream is not None and config.mqtt.upstream.port == 1884
    assert config.private_key is None
