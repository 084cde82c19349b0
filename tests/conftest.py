"""Shared fixtures: free ports, a real Mosquitto broker, and a real ``commgraph run`` proxy.

Every wait is bounded by a deadline; nothing here sleeps without one.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

MOSQUITTO = Path("/usr/sbin/mosquitto")
# The real IoT traffic the tests use, by path (never copied into the repository):
# $COMMGRAPH_DATA, else ../shared/data beside the checkout (as bench/shared_data.py).
DATA = Path(
    os.environ.get("COMMGRAPH_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)


def data_file(name: str) -> Path:
    """A file of the shared test data; fails the test (it is no optional part) if missing."""
    path = DATA / name
    if not path.exists():
        pytest.fail(
            f"{path} is missing: the tests need the real IoT traffic of ../shared/data "
            "(or set COMMGRAPH_DATA to its directory)"
        )
    return path


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's real database, and tables are not truncated."""
    monkeypatch.delenv("COMMGRAPH_DB", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("NO_COLOR", "1")


@pytest.fixture
def shared_data() -> Path:
    """The shared test data directory; fails the test if it is missing."""
    if not DATA.is_dir():
        data_file("README.md")
    return DATA


COMMGRAPH = Path(sys.executable).parent / "commgraph"
HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on the loopback interface that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def raise_nofile_limit() -> None:
    """Raise RLIMIT_NOFILE to its hard limit (for this process and, via preexec_fn, children)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def port_accepts(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what or predicate}")
        time.sleep(interval)


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


# -- Mosquitto --------------------------------------------------------------------------------


@dataclass
class Broker:
    host: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path


def write_password_file(path: Path, users: dict[str, str]) -> None:
    """A Mosquitto password file for ``users`` (name -> password), by ``mosquitto_passwd -b``."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.fail("mosquitto_passwd is missing; it comes with: sudo apt-get install -y mosquitto")
    path.write_text("")
    for user, password in users.items():
        subprocess.run([tool, "-b", str(path), user, password], check=True, timeout=30)


def launch_mosquitto(
    directory: Path,
    *,
    name: str = "mosquitto",
    extra: str = "",
    users: dict[str, str] | None = None,
) -> Broker:
    """Start a private Mosquitto on a free loopback port; ``extra`` is more mosquitto.conf
    (e.g. a bridge). With ``users`` (name -> password) only they may connect: a password
    file and ``allow_anonymous false``. Fails the test if it does not accept connections
    within 10 s."""
    if not MOSQUITTO.exists() and shutil.which("mosquitto") is None:
        pytest.fail(
            "mosquitto is not installed; install it with: sudo apt-get install -y mosquitto"
        )
    binary = str(MOSQUITTO) if MOSQUITTO.exists() else str(shutil.which("mosquitto"))
    port = free_port()
    conf = directory / f"{name}.conf"
    access = "allow_anonymous true\n"
    if users is not None:
        passwords = directory / f"{name}.passwd"
        write_password_file(passwords, users)
        access = f"allow_anonymous false\npassword_file {passwords}\n"
        if os.geteuid() == 0:
            # as root, Mosquitto reads the file after dropping to its own user, who cannot
            # enter the test's private directory
            access += "user root\n"
    conf.write_text(
        f"listener {port} {HOST}\n{access}persistence false\nmax_connections -1\n" + extra
    )
    log = directory / f"{name}.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [binary, "-c", str(conf)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=raise_nofile_limit,
        )
    try:
        deadline = time.monotonic() + 10
        while not port_accepts(port):
            if process.poll() is not None:
                pytest.fail(f"mosquitto exited with {process.returncode}: {_tail(log)}")
            if time.monotonic() >= deadline:
                pytest.fail(f"mosquitto did not accept on port {port} within 10 s: {_tail(log)}")
            time.sleep(0.05)
    except BaseException:
        stop_mosquitto(Broker(HOST, port, process, log))
        raise
    return Broker(HOST, port, process, log)


def stop_mosquitto(broker: Broker) -> None:
    if broker.process.poll() is None:
        broker.process.terminate()
        try:
            broker.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            broker.process.kill()
            broker.process.wait(timeout=10)


@pytest.fixture
def mosquitto(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Broker]:
    """A private Mosquitto on a free loopback port, for one test.

    ``@pytest.mark.mosquitto(users={"name": "password"}, extra="max_queued_messages 0\\n")``
    on a test gives it a broker with a password file (no anonymous clients) and more
    configuration; :func:`launch_mosquitto` says what they mean.
    """
    marker = request.node.get_closest_marker("mosquitto")
    options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    broker = launch_mosquitto(tmp_path, **options)
    try:
        yield broker
    finally:
        stop_mosquitto(broker)


# -- the commgraph proxy ----------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_toml(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    lines: list[str] = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
        lines.append("")
    path.write_text("\n".join(lines))


@dataclass
class Proxy:
    """A running ``commgraph run --config site.toml``."""

    port: int
    db: Path
    config: Path
    process: subprocess.Popen[bytes]
    stderr_path: Path
    stopped: bool = field(default=False)

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """``commgraph --db DB ARGS...``; never raises on a non-zero exit status."""
        return subprocess.run(
            [str(COMMGRAPH), "--db", str(self.db), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def cli_json(self, *args: str) -> list[dict[str, Any]]:
        """A listing command with ``--json``; fails the test on a non-zero exit status."""
        done = self.cli(*args, "--json")
        assert done.returncode == 0, f"commgraph {' '.join(args)} --json: {done.stderr.strip()}"
        rows: list[dict[str, Any]] = json.loads(done.stdout)
        return rows

    @property
    def stderr(self) -> str:
        return _tail(self.stderr_path)

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM, wait, and assert a clean exit (status 0)."""
        self.stopped = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            pytest.fail(f"commgraph run did not exit within {timeout:g} s of SIGTERM")
        assert code == 0, f"commgraph run exited with {code}; stderr:\n{self.stderr}"
        return code


@pytest.fixture
def start_proxy(tmp_path: Path, mosquitto: Broker) -> Iterator[Callable[..., Proxy]]:
    """Factory: ``start_proxy(mode="protect", learning="2s", **sections)`` -> a running proxy.

    Keyword arguments other than ``mode`` and ``learning`` name config sections whose keys
    override or extend the defaults, e.g. ``start_proxy(mqtt={"fail": "closed"})``.
    """
    started: list[Proxy] = []

    def start(mode: str = "protect", learning: str = "2s", **extra: dict[str, Any]) -> Proxy:
        n = len(started)
        port = free_port()
        db = tmp_path / f"node-{n}.db"
        sections: dict[str, dict[str, Any]] = {
            "node": {"name": "node-a", "db": str(db)},
            "learning": {"duration": learning},
            "modes": {"default": mode},
            "protect": {"pending": "block"},
            "mqtt": {
                "listen": f"{HOST}:{port}",
                "upstream": f"{mosquitto.host}:{mosquitto.port}",
                "fail": "open",
                "connect_timeout": "5s",
                "max_packet_size": 16777216,
            },
        }
        for section, keys in extra.items():
            sections.setdefault(section, {}).update(keys)
        db = Path(sections["node"]["db"])
        config = tmp_path / f"site-{n}.toml"
        write_toml(config, sections)
        stderr_path = tmp_path / f"commgraph-{n}.stderr"
        with (tmp_path / f"commgraph-{n}.stdout").open("wb") as out, stderr_path.open("wb") as err:
            process = subprocess.Popen(
                [str(COMMGRAPH), "run", "--config", str(config)],
                stdout=out,
                stderr=err,
                cwd=tmp_path,
                preexec_fn=raise_nofile_limit,
            )
        proxy = Proxy(port=port, db=db, config=config, process=process, stderr_path=stderr_path)
        started.append(proxy)
        deadline = time.monotonic() + 15
        while not port_accepts(port):
            if process.poll() is not None:
                pytest.fail(
                    f"commgraph run exited early with {process.returncode}; stderr:\n{proxy.stderr}"
                )
            if time.monotonic() >= deadline:
                pytest.fail(f"commgraph run did not accept on port {port} within 15 s")
            time.sleep(0.05)
        return proxy

    yield start

    for proxy in started:
        if proxy.process.poll() is None:
            proxy.process.send_signal(signal.SIGTERM)
            try:
                proxy.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proxy.process.kill()
                proxy.process.wait(timeout=10)


# -- a node with many alerts ------------------------------------------------------------------

SEEDED_START = 1_700_000_000.0  # the seeded services learn for ten minutes from here


def seeded_state(alert_id: int) -> str:
    """The state of alert ``alert_id`` in :func:`seed_alerts`' database."""
    return {1: "approved", 2: "denied"}.get(alert_id % 5, "pending")


def seed_alerts(path: Path, count: int, *, services: int = 50) -> None:
    """A node database whose ``services`` services learned one edge each, then raised
    ``count`` new-edge alerts: alert i is service ``svc-{i % services}`` publishing to
    ``site/svc-{i % services}/t{i}`` at SEEDED_START + 1000 + i, in :func:`seeded_state`
    (decided ones by ``owner``, in the audit log). Written with executemany straight into a
    fresh store's schema, so it takes well under a second; a Store or Daemon opened on it
    afterwards loads it like any other."""
    from commgraph.store import Store

    Store(path).close()  # the current schema
    t0 = SEEDED_START
    names = [f"svc-{s}" for s in range(services)]
    vertices = [(s + 1, name, "service", None, t0, 0) for s, name in enumerate(names)]
    edges: list[tuple[Any, ...]] = []
    alerts: list[tuple[Any, ...]] = []
    decisions: list[tuple[Any, ...]] = []
    for i in range(-services + 1, count + 1):  # ids <= 0: the learned edges, one per service
        service = i % services
        topic = f"site/{names[service]}/t{i}" if i > 0 else f"site/{names[service]}/learned"
        at = t0 + 1000 + i if i > 0 else t0 + 1
        vertices.append((len(vertices) + 1, topic, "topic", service + 1, at, 0))
        state = seeded_state(i) if i > 0 else "learned"
        edges.append(
            (len(edges) + 1, service + 1, len(vertices), 0, state, 1, 5, at, at, 0.0, 0.0, 5, 5)
        )
        if i <= 0:
            continue
        alerts.append((i, len(edges), "new-edge", state, 1, at, at, None, service + 1))
        if state != "pending":
            action = "approve" if state == "approved" else "deny"
            decisions.append((action, "owner", at + 60, f"seeded {i}", i, names[service], topic))
    db = sqlite3.connect(path)
    with db:
        db.execute("INSERT INTO relations (id, name) VALUES (0, 'publish')")
        db.executemany("INSERT INTO vertices VALUES (?, ?, ?, ?, ?, ?)", vertices)
        db.executemany(
            "INSERT INTO edges (id, src, dst, relation, label, count, bytes, first_seen,"
            " last_seen, ia_mean, ia_m2, size_min, size_max) VALUES"
            " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            edges,
        )
        db.executemany(
            "INSERT INTO services (vertex, name, phase, started_at, ends_at, learned_at,"
            " events_at_start) VALUES (?, ?, 'active', ?, ?, ?, 0)",
            [(s + 1, name, t0, t0 + 600, t0 + 600) for s, name in enumerate(names)],
        )
        db.executemany(
            "INSERT INTO alerts (id, edge, kind, state, count, first_seen, last_seen, node,"
            " subject) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            alerts,
        )
        db.executemany(
            "INSERT INTO decisions (action, by, at, reason, alert, src, dst, relation)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 'publish')",
            decisions,
        )
        db.execute(
            "UPDATE vertices SET events = (SELECT COUNT(*) FROM edges WHERE src = vertices.id)"
        )
    db.close()
