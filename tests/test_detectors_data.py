"""The detectors on real traffic: the Lockly hub's week (and edited copies of it with a flood
and a silence injected by the test), and the Amazon Echo honeypot of IoT-23."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from commgraph.adapters.pcap import read_packets
from commgraph.engine import Engine
from commgraph.phases import LearningSettings
from commgraph.replay import replay_records
from conftest import data_file

COMMGRAPH = Path(sys.executable).parent / "commgraph"
HUB, BROKER, ROUTER = "192.168.1.128", "47.89.226.20", "192.168.1.1"
DAY, HOUR = 86_400.0, 3600.0
HEADER = struct.Struct("<IIII")  # a pcap record: seconds, microseconds, caplen, wire length


def cli(*args: str | Path) -> Any:
    done = subprocess.run(
        [str(COMMGRAPH), *map(str, args)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def records(path: Path) -> tuple[bytes, list[tuple[float, bytes]]]:
    """The file header and every (ts, record bytes) of a little-endian microsecond pcap."""
    data = path.read_bytes()
    assert data[:4] == b"\xd4\xc3\xb2\xa1"
    out, pos = [], 24
    while pos + 16 <= len(data):
        sec, usec, caplen, _ = HEADER.unpack_from(data, pos)
        out.append((sec + usec / 1e6, data[pos : pos + 16 + caplen]))
        pos += 16 + caplen
    return data[:24], out


def at(record: bytes, ts: float) -> bytes:
    """The record moved to ``ts``."""
    sec, usec = int(ts), round((ts - int(ts)) * 1e6)
    _, _, caplen, wire = HEADER.unpack_from(record)
    return HEADER.pack(sec, usec, caplen, wire) + record[16:]


def write(path: Path, header: bytes, items: list[tuple[float, bytes]]) -> Path:
    items.sort(key=lambda item: item[0])
    path.write_bytes(header + b"".join(record for _, record in items))
    return path


def alerts(capture: Path, learning: float = DAY) -> list[tuple[str, str, str, float]]:
    """(kind, relation, dst, hours after the first packet) of each alert of a replay."""
    engine = Engine(LearningSettings(duration=learning))
    summary = replay_records(read_packets(capture), engine, None)
    first = summary.first_ts
    assert first is not None
    found = []
    for alert in engine.alerts.by_id.values():
        _, dst, relation = engine.alert_edge(alert)
        found.append((alert.kind.value, relation, dst, (alert.first_seen - first) / HOUR))
    return found


def test_the_hubs_broker_connection_and_dhcp_are_periodic(tmp_path: Path) -> None:
    db = tmp_path / "lockly.db"
    cli(
        "--db", db, "replay", data_file("oconnor_lockly-hub-01.pcap"), "--learning", "24h", "--json"
    )
    figures = {(r["relation"], r["dst"]): r for r in cli("--db", db, "edges", "--json")}
    # the default identity profile names the router on udp/67 by its class, dhcp@lan
    mqtt, dhcp = figures[("tcp/1883", BROKER)], figures[("udp/67", "dhcp@lan")]
    assert mqtt["period_s"] == pytest.approx(60, abs=2)  # the MQTT keepalive
    assert mqtt["jitter_s"] < 1
    assert dhcp["period_s"] == pytest.approx(3600, rel=0.02)  # the lease renewal
    assert figures[("udp/53", ROUTER)]["period_s"] is None  # DNS: only at reconnects
    for row in figures.values():
        assert {"period_s", "jitter_s", "rate_per_min", "size_min", "size_max"} <= set(row)


def test_a_week_after_a_day_of_learning_only_the_outage_at_hour_71_alerts() -> None:
    found = alerts(data_file("oconnor_lockly-hub-01.pcap"))
    # At hour 71 the hub loses its broker for minutes (its packets leave with TTL 1), then
    # retries DNS again and again and gets ICMP errors back: 3 alerts in 6.3 days; and the
    # routers whose ICMP errors reach it are new talkers, asked about once each: one in the
    # outage, one more at hour 104 (10.0.192.2 and 192.168.2.50).
    assert sorted((kind, relation, dst) for kind, relation, dst, _ in found) == [
        ("new-service", "new-service", "this node"),
        ("new-service", "new-service", "this node"),
        ("periodicity", "tcp/1883", BROKER),
        ("rate", "icmp", ROUTER),
        ("rate", "udp/53", ROUTER),
    ]
    hours = sorted(h for *_, h in found)
    assert all(70.9 <= h <= 71.1 for h in hours[:-1]) and 103.8 <= hours[-1] <= 104.0


def test_an_injected_flood_and_an_injected_silence_are_each_detected(tmp_path: Path) -> None:
    header, items = records(data_file("oconnor_lockly-hub-01.pcap"))
    start = items[0][0]
    hub, broker = socket.inet_aton(HUB), socket.inet_aton(BROKER)

    def to_broker(record: bytes) -> bool:
        frame = record[16:]
        return frame[12:14] == b"\x08\x00" and frame[26:30] == hub and frame[30:34] == broker

    # A flood at hour 40: ten packets a second to the broker for five minutes. (The learned
    # peak is the burst of a TLS reconnect, about 30 packets a minute: a flood must beat it
    # five times over.)
    flood_at = start + 40 * HOUR
    template = next(record for ts, record in items if ts >= flood_at and to_broker(record))
    flood = [(flood_at + n / 10, at(template, flood_at + n / 10)) for n in range(3000)]
    flooded = write(tmp_path / "flood.pcap", header, [*items, *flood])
    found = alerts(flooded)
    rate = [(r, d, h) for kind, r, d, h in found if kind == "rate" and d == BROKER]
    assert len(rate) == 1 and 40.0 <= rate[0][2] <= 40 + 10 / 60

    # A silence at hour 40: nothing at all from the hub for two hours.
    quiet = [(ts, r) for ts, r in items if not start + 40 * HOUR <= ts < start + 42 * HOUR]
    silenced = write(tmp_path / "silence.pcap", header, quiet)
    found = alerts(silenced)
    gone = [h for kind, r, d, h in found if kind == "periodicity" and d == BROKER]
    assert len(gone) == 1 and 40.0 <= gone[0] <= 40.2  # three minutes after its last packet


def test_the_echo_honeypot_is_periodic_at_five_minutes() -> None:
    echo = data_file("iot23_CTU-Honeypot-Capture-5-1-labeled.csv")
    result = cli("eval", echo, "--learning", "1h", "--json")
    # counted and explained in the README: 10 size alerts on mDNS, 3 silences; and the LAN
    # devices (phones, by their mDNS) that joined after the first hour: 12 "is this yours?"
    # questions and one grouped for a minute in which more than five came at once; the
    # honeypot's cloud fan-out beyond three new hosts a minute is one storm question.
    assert {k: v for k, v in result["alerts_by_kind"].items() if k != "new-edge"} == {
        "rate": 0,
        "periodicity": 3,
        "size": 10,
        "new-service": 13,
        "edge-burst": 1,
        "flood": 0,
        "auth-failure": 0,
        "malformed": 0,
        "connection-flood": 0,
    }


def test_the_echo_honeypot_edges_show_their_300_s_period(tmp_path: Path) -> None:
    db = tmp_path / "echo.db"
    echo = data_file("iot23_CTU-Honeypot-Capture-5-1-labeled.csv")
    cli("--db", db, "replay", echo, "--learning", "1h", "--json")
    periods = [
        r["period_s"] for r in cli("--db", db, "edges", "--json") if r["period_s"] is not None
    ]
    near_300 = [p for p in periods if 280 <= p <= 320]
    assert len(near_300) >= 2, periods
