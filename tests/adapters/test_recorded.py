"""Replaying recorded traffic of every kind through the real command: the format is told
from the first bytes, and a capture gives the graph a site owner expects."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from commgraph.adapters.recorded import Format, sniff
from conftest import DATA

COMMGRAPH = Path(sys.executable).parent / "commgraph"
LOCKLY = DATA / "oconnor_lockly-hub-01.pcap"
HUB = "192.168.1.128"
BROKER_NAME = "a1guxefynxg.iot-as-mqtt.us-west-1.aliyuncs.com"


def data(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: the project's test data (../shared/data) is needed")
    return path


def cli(*args: str | Path) -> Any:
    done = subprocess.run(
        [str(COMMGRAPH), *map(str, args)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\xd4\xc3\xb2\xa1\x02\x00", Format.PCAP),
        (b"\x0a\x0d\x0d\x0a\x1c\x00", Format.PCAP),
        (b"#separator \\x09\n#path\tconn\n", Format.CONNLOG),
        (b"ts,uid,id.orig_h,id.orig_p\n1.0,C1,10.0.0.1,5\n", Format.CONNLOG),
        (b'{"ts": 1.0, "uid": "C1", "id.orig_h": "10.0.0.1"}\n', Format.CONNLOG),
        (b'{"ts": 1.0, "src": "a", "dst": "b", "relation": "publish"}\n', Format.EVENTS),
        (b"{not json\n", Format.EVENTS),
        (b"", Format.EVENTS),
    ],
)
def test_the_format_is_told_from_the_first_bytes(head: bytes, expected: Format) -> None:
    assert sniff(head) == expected


def edges(db: Path) -> set[tuple[str, str, str, str]]:
    rows = cli("--db", db, "edges", "--json")
    return {(r["src"], r["relation"], r["dst"], r["label"]) for r in rows}


def test_the_lockly_hub_capture_gives_its_broker_dhcp_and_dns(tmp_path: Path) -> None:
    db = tmp_path / "lockly.db"
    report = cli("--db", db, "replay", data(LOCKLY), "--learning", "1h", "--json")
    assert (report["format"], report["events"], report["skipped"]) == ("pcap", 32989, 0)
    assert report["events_per_s"] > 0
    assert edges(db) == {
        (HUB, "tcp/1883", "47.89.226.20", "learned"),  # the broker, all week long
        (HUB, "udp/67", "dhcp@lan", "learned"),  # DHCP (the default profile): renewals hourly
        # DNS and ICMP port-unreachable first come at the first reconnect, 2.15 h in
        (HUB, "udp/53", "192.168.1.1", "pending"),
        (HUB, "icmp", "192.168.1.1", "pending"),
        ("::", "icmp", "nd@lan", "learned"),  # IPv6 router solicitations to ff02::2
        ("10.0.192.2", "icmp", HUB, "learned"),  # time exceeded, from a router
        ("192.168.2.50", "icmp", HUB, "learned"),  # pings: a new sender learns
    }
    # The capture has no NTP: the hub never asks for the time in these 7 days.
    assert not any(relation == "udp/123" for _, relation, _, _ in edges(db))


def test_dns_answers_in_the_capture_name_the_broker(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text("[[identity.rules]]\ndns = true\n")
    db = tmp_path / "named.db"
    cli("--db", db, "replay", data(LOCKLY), "--learning", "1h", "--config", config, "--json")
    assert (HUB, "tcp/1883", BROKER_NAME, "learned") in edges(db)
    assert not any(dst == "47.89.226.20" for _, _, dst, _ in edges(db))


def test_a_conn_log_replays_in_time_order(tmp_path: Path) -> None:
    db = tmp_path / "hakai.db"
    csv = data(DATA / "iot23_CTU-Malware-Capture-8-1-labeled.csv")
    report = cli("--db", db, "replay", csv, "--learning", "68m", "--json")
    assert (report["format"], report["events"], report["skipped"]) == ("conn.log", 10403, 0)
    assert report["first_event"] < report["last_event"]
    pending = {
        (src, relation, dst) for src, relation, dst, label in edges(db) if label != "learned"
    }
    assert pending == {
        ("192.168.100.113", "tcp/50", "178.128.185.250"),
        ("192.168.100.113", "tcp/50", "128.185.250.50"),
    }


def test_a_truncated_capture_is_replayed_up_to_the_cut_with_one_error(tmp_path: Path) -> None:
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data(LOCKLY).read_bytes()[:200_000])
    db = tmp_path / "cut.db"
    report = cli("--db", db, "replay", cut, "--json")
    assert report["format"] == "pcap" and report["events"] > 1000
    assert report["skipped"] == 1 and report["errors"][0].startswith("packet ")


# -- a conn.log with its dns.log -----------------------------------------------------------


def zeek_logs_from_the_capture(directory: Path) -> tuple[Path, Path, int]:
    """A Zeek conn.log of the capture's TCP and UDP flows and a Zeek dns.log of its DNS
    answers, both tab-separated with Zeek's headers; and how many answers there were."""
    from commgraph.adapters.pcap import DNSAnswer, PacketDecoder, read_packets

    answers: list[DNSAnswer] = []
    decoder = PacketDecoder(on_dns=answers.append)
    rows = []
    for _, item in read_packets(data(LOCKLY), decoder=decoder):
        if isinstance(item, tuple) and item[3].startswith(("tcp/", "udp/")):
            ts, src, dst, relation, size = item
            proto, port = relation.split("/")
            rows.append(
                f"{ts:.6f}\tC{len(rows)}\t{src}\t40000\t{dst}\t{port}\t{proto}\t-\t{size or 0}"
            )
    directory.mkdir()
    conn = directory / "conn.log"
    conn.write_text(
        "#separator \\x09\n#path\tconn\n"
        "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\torig_bytes\n"
        + "".join(row + "\n" for row in rows)
    )
    dns = directory / "dns.log"
    dns.write_text(
        "#separator \\x09\n#set_separator\t,\n#path\tdns\n"
        "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tquery\tqtype_name"
        "\tanswers\n"
        + "".join(
            f"{a.ts:.6f}\tD{i}\t{HUB}\t5353\t192.168.1.1\t53\tudp\t{a.name}\tA\t{a.ip}\n"
            for i, a in enumerate(answers)
        )
        # a query with no answer and a CNAME-only answer name nothing
        + f"{answers[0].ts:.6f}\tDx\t{HUB}\t5353\t192.168.1.1\t53\tudp\tnothing.example\tA\t-\n"
        + f"{answers[0].ts:.6f}\tDy\t{HUB}\t5353\t192.168.1.1\t53\tudp\talias.example\tCNAME"
        "\tcname.example\n"
    )
    return conn, dns, len(answers)


def test_a_dns_log_beside_the_conn_log_names_its_addresses(tmp_path: Path) -> None:
    from commgraph.adapters.zeek_logs import dns_answers

    conn, dns, count = zeek_logs_from_the_capture(tmp_path / "zeek")
    with dns.open("rb") as lines:
        answers, bad = dns_answers(lines)
    assert count > 0 and len(answers) == count and bad == 0
    assert {(a.ip, a.name) for a in answers} == {("47.89.226.20", BROKER_NAME)}
    config = tmp_path / "site.toml"
    config.write_text("[[identity.rules]]\ndns = true\n")
    cli("--db", tmp_path / "named.db", "replay", conn, "--config", config, "--json")
    edges = cli("--db", tmp_path / "named.db", "edges", "--json")
    assert ("tcp/1883", BROKER_NAME) in {(e["relation"], e["dst"]) for e in edges}
    assert "47.89.226.20" not in {e["dst"] for e in edges}
    # the same log elsewhere, given with --dns; without it, the broker is its address
    alone = tmp_path / "alone"
    alone.mkdir()
    moved = alone / "conn.log"
    moved.write_bytes(conn.read_bytes())
    cli("--db", tmp_path / "plain.db", "replay", moved, "--config", config, "--json")
    plain = {e["dst"] for e in cli("--db", tmp_path / "plain.db", "edges", "--json")}
    assert "47.89.226.20" in plain and BROKER_NAME not in plain
    cli("--db", tmp_path / "given.db", "replay", moved, "--config", config, "--dns", dns, "--json")
    given = {e["dst"] for e in cli("--db", tmp_path / "given.db", "edges", "--json")}
    assert BROKER_NAME in given
    # eval hears the same answers
    evaluated = cli("eval", moved, "--learning", "1h", "--config", config, "--dns", dns, "--json")
    assert BROKER_NAME in {a["dst"] for a in evaluated["alert_edges"]}
