"""Evaluation on labelled flows: scripted flows with known answers, then the real IoT-23
captures with the numbers the README explains."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from commgraph.evaluate import LabelledFlow, evaluate, sweep
from commgraph.identity import Identity, IdentityRule
from conftest import DATA

T0 = 1_600_000_000.0


def at(minute: float) -> float:
    return T0 + minute * 60


def scripted() -> list[LabelledFlow]:
    flows: list[LabelledFlow] = []
    for minute in range(10):  # learning: the device talks to its cloud and NTP
        flows.append((at(minute), "dev", "cloud", "tcp/443", 100, "benign"))
        flows.append((at(minute), "dev", "ntp", "udp/123", 90, "benign"))
    for minute in range(10, 60 * 24):  # a day of normal traffic afterwards
        flows.append((at(minute), "dev", "cloud", "tcp/443", 100, "benign"))
        flows.append((at(minute), "dev", "ntp", "udp/123", 90, "benign"))
    flows.append((at(100), "dev", "c2", "tcp/50", None, "malicious"))
    flows.append((at(101), "dev", "c2", "tcp/50", None, "malicious"))
    flows.append((at(200), "dev", "cdn", "tcp/443", 100, "benign"))  # a false alarm
    flows.append((at(300), "dev", "other", "tcp/22", None, None))  # unlabelled
    return sorted(flows)


def test_scripted_flows_are_counted_per_flow_per_edge_and_per_alert() -> None:
    r = evaluate(scripted(), 600)
    assert (r.flows, r.malicious_flows, r.malicious_flagged) == (2884, 2, 2)
    assert (r.benign_flows, r.benign_flagged, r.unlabelled_flows) == (2881, 1, 1)
    assert r.flows_while_learning == 20
    assert (r.edges, r.malicious_edges, r.malicious_edges_flagged) == (5, 1, 1)
    assert (r.benign_edges, r.benign_edges_flagged) == (3, 1)
    assert (r.alerts, r.alerts_on_malicious_edges) == (3, 1)
    assert r.alert_edges == (
        ("dev", "tcp/22", "other", "unlabelled", "new-edge"),
        ("dev", "tcp/443", "cdn", "benign", "new-edge"),
        ("dev", "tcp/50", "c2", "malicious", "new-edge"),
    )
    assert r.first_malicious_at == at(100) and r.detection_delay_s == 0.0
    assert r.days_after_learning == pytest.approx((24 * 60 - 1 - 10) / 1440)
    assert r.alerts_per_day == pytest.approx(3 / r.days_after_learning)
    assert r.detection_rate == 1.0 and r.false_alarm_rate == pytest.approx(1 / 2881)
    assert {"flows", "malicious_flows", "malicious_flagged", "benign_flows"} <= set(r.to_json())
    assert r.timeline and r.timeline[-1].edges == 5


def test_a_malicious_edge_seen_while_learning_is_learned_and_missed() -> None:
    flows = sorted([*scripted(), (at(5), "dev", "c2", "tcp/50", None, "malicious")])
    r = evaluate(flows, 600)
    assert (r.malicious_flows, r.malicious_flagged, r.alerts_on_malicious_edges) == (3, 0, 0)
    assert r.detection_delay_s is None


def test_a_longer_learning_phase_means_fewer_alerts() -> None:
    runs = sweep(scripted(), [60 * 60 * 4, 600, 60 * 150])
    assert [r.learning_s for r in runs] == [600, 9000, 14400]
    assert [r.alerts for r in runs] == [3, 2, 1]
    assert [r.malicious_flagged for r in runs] == [2, 0, 0]  # and attacks learned as normal


def test_identity_rules_apply_to_evaluated_flows() -> None:
    flows: list[LabelledFlow] = [
        (at(0), "10.0.0.2", "52.0.0.1", "tcp/443", None, "benign"),
        (at(20), "10.0.0.2", "52.0.0.9", "tcp/443", None, "benign"),
    ]
    rule = IdentityRule(scope="internet", relation="tcp/443", service="https@internet")
    assert evaluate(flows, 600).alerts == 1
    assert evaluate(flows, 600, identity=Identity([rule])).alerts == 0


# -- the real IoT-23 captures, through the command --------------------------------------------

COMMGRAPH = Path(sys.executable).parent / "commgraph"
KEYS = {
    "flows",
    "malicious_flows",
    "malicious_flagged",
    "benign_flows",
    "benign_flagged",
    "alerts",
    "alerts_per_day",
}


def capture(name: str) -> Path:
    path = DATA / f"iot23_CTU-{name}-labeled.csv"
    if not path.exists():
        pytest.fail(f"{path} is missing: the project's test data (../shared/data) is needed")
    return path


def run_eval(*args: str | Path) -> Any:
    done = subprocess.run(
        [str(COMMGRAPH), "eval", *map(str, args), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_hakai_8_1_learning_until_the_first_malicious_flow_flags_exactly_the_attack() -> None:
    # The first malicious flow comes 68.9 min after the first flow: learn for 68 min.
    r = run_eval(capture("Malware-Capture-8-1"), "--learning", "68m")
    assert set(r) >= KEYS
    assert (r["flows"], r["malicious_flows"], r["malicious_flagged"]) == (10403, 8222, 8222)
    assert (r["benign_flows"], r["benign_flagged"]) == (2181, 0)
    # the default profile folds its NTP servers into ntp@internet: 7 benign edges become 2
    assert (r["edges"], r["malicious_edges"], r["benign_edges"]) == (4, 2, 2)
    assert r["alerts"] == 2 and r["detection_delay_s"] == 0.0
    assert {(a["relation"], a["label"]) for a in r["alert_edges"]} == {("tcp/50", "malicious")}


def test_hakai_8_1_without_the_default_profile(tmp_path: Path) -> None:
    none = tmp_path / "none.toml"
    none.write_text('[identity]\nprofile = "none"\n')
    r = run_eval(capture("Malware-Capture-8-1"), "--learning", "68m", "--config", none)
    assert (r["malicious_flagged"], r["benign_flagged"]) == (8222, 0)
    assert (r["edges"], r["malicious_edges"], r["benign_edges"]) == (9, 2, 7)
    assert r["alerts"] == 2


NO_GUARDRAIL_ALERTS = {
    "new-service": 0,
    "flood": 0,
    "edge-burst": 0,
    "auth-failure": 0,
    "malformed": 0,
    "connection-flood": 0,
}


def test_mirai_44_1_and_the_honeypot_numbers_the_readme_explains(tmp_path: Path) -> None:
    # Mirai's C&C starts with the capture: any learning phase learns it as normal. Only the
    # DDoS flow 1h44m later is new, and it is the one thing the owner is asked about.
    mirai = run_eval(capture("Malware-Capture-44-1"), "--sweep", "30m,1h")
    assert [(r["malicious_flagged"], r["malicious_flows"]) for r in mirai] == [(1, 26)] * 2
    assert [r["benign_flagged"] for r in mirai] == [0, 0]
    # With the default profile its NTP servers are one ntp@internet: nothing falls silent.
    assert [r["alerts_by_kind"] for r in mirai] == [
        {"new-edge": 1, "rate": 0, "periodicity": 0, "size": 0, **NO_GUARDRAIL_ALERTS},
    ] * 2
    assert [r["edges"] for r in mirai] == [5, 5]
    none = tmp_path / "none.toml"
    none.write_text('[identity]\nprofile = "none"\n')
    mirai = run_eval(capture("Malware-Capture-44-1"), "--sweep", "30m,1h", "--config", none)
    assert [(r["malicious_flagged"], r["benign_flagged"]) for r in mirai] == [(1, 0)] * 2
    # Without it: NTP servers used while learning and then no more fall silent (periodicity).
    assert [r["alerts_by_kind"] for r in mirai] == [
        {"new-edge": 1, "rate": 0, "periodicity": 4, "size": 0, **NO_GUARDRAIL_ALERTS},
        {"new-edge": 1, "rate": 0, "periodicity": 6, "size": 0, **NO_GUARDRAIL_ALERTS},
    ]
    new_edges = [a for a in mirai[0]["alert_edges"] if a["kind"] == "new-edge"]
    assert new_edges == [
        {
            "src": "192.168.1.199",
            "relation": "udp/80",
            "dst": "86.136.151.56",
            "label": "malicious",
            "kind": "new-edge",
        }
    ]
    assert {a["relation"] for a in mirai[0]["alert_edges"] if a["kind"] == "periodicity"} == {
        "udp/123"
    }
    assert round(mirai[0]["detection_delay_s"]) == 6279
    echo = capture("Honeypot-Capture-5-1")
    plain = run_eval(echo, "--learning", "1h")
    # 13 LAN devices that joined after the first hour are asked about (their first flow is
    # flagged); the cloud fan-out beyond three new hosts a minute is one storm question.
    # The default profile names its NTP and DNS servers by class: 2 questions fewer.
    assert (plain["benign_flows"], plain["benign_flagged"], plain["alerts"]) == (1374, 194, 90)
    assert plain["alerts_by_kind"] == {
        **NO_GUARDRAIL_ALERTS,
        "new-edge": 63,
        "rate": 0,
        "periodicity": 3,
        "size": 10,
        "new-service": 13,
        "edge-burst": 1,
    }
    rules = tmp_path / "ports.toml"
    rules.write_text(
        "".join(
            f'[[identity.rules]]\nscope = "internet"\nrelation = "{relation}"\n'
            f'service = "{service}"\n'
            for relation, service in (
                ("tcp/443", "https@internet"),
                ("tcp/80", "http@internet"),
                ("udp/123", "ntp@internet"),
            )
        )
    )
    classes = run_eval(echo, "--learning", "1h", "--config", rules)
    assert (classes["benign_flagged"], classes["alerts"]) == (19, 22)
    assert classes["alerts_by_kind"] == {
        **NO_GUARDRAIL_ALERTS,
        "new-edge": 1,
        "rate": 0,
        "periodicity": 2,
        "size": 6,
        "new-service": 13,
    }


def test_sweep_table_curve_and_timeline_pictures(tmp_path: Path) -> None:
    curve, timeline = tmp_path / "curve.png", tmp_path / "timeline.png"
    done = subprocess.run(
        [
            str(COMMGRAPH),
            "eval",
            str(capture("Honeypot-Capture-5-1")),
            "--sweep",
            "5m,15m,1h,4h",
            "--plot",
            str(curve),
            "--timeline",
            str(timeline),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "4h" in done.stdout and "What the owner would have been asked" in done.stdout
    for picture in (curve, timeline):
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert picture.stat().st_size > 10_000
    bad = subprocess.run(
        [str(COMMGRAPH), "eval", str(curve)], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 1 and "no flows found" in bad.stderr


def test_a_capture_without_labels_still_counts_the_owners_work() -> None:
    lockly = DATA / "oconnor_lockly-hub-01.pcap"
    if not lockly.exists():
        pytest.fail(f"{lockly} is missing: the project's test data (../shared/data) is needed")
    hour, day = run_eval(lockly, "--sweep", "1h,24h")
    assert (hour["flows"], hour["malicious_flows"], hour["unlabelled_flows"]) == (32989, 0, 32989)
    # DNS and ICMP to the router first come at the first reconnect, 2.15 h in
    assert [(a["relation"], a["dst"]) for a in hour["alert_edges"] if a["kind"] == "new-edge"] == [
        ("icmp", "192.168.1.1"),
        ("udp/53", "192.168.1.1"),
    ]
    # a day of learning sees a reconnect: no new edge is left to ask about
    assert day["alerts_by_kind"]["new-edge"] == 0
    # the README's figures: 7 questions with 1 h of learning, 5 with a day
    assert (hour["alerts"], day["alerts"]) == (7, 5)
    kinds = ("new-edge", "new-service", "periodicity", "size", "rate")
    assert [hour["alerts_by_kind"][k] for k in kinds] == [2, 3, 1, 1, 0]
    assert [day["alerts_by_kind"][k] for k in kinds] == [0, 2, 1, 0, 2]


def test_eval_and_replay_raise_the_same_alerts_on_the_same_capture(tmp_path: Path) -> None:
    # One driver and one identity: eval hears the capture's DNS answers and protocol signals
    # where replay hears them, so a dns rule names the broker in both.
    lockly = DATA / "oconnor_lockly-hub-01.pcap"
    if not lockly.exists():
        pytest.fail(f"{lockly} is missing: the project's test data (../shared/data) is needed")
    config = tmp_path / "site.toml"
    config.write_text(
        '[learning]\nduration = "1h"\n[modes]\ndefault = "monitor"\n'
        "[[identity.rules]]\ndns = true\n"
    )
    db = tmp_path / "replay.db"
    for command in (
        ["--db", str(db), "replay", str(lockly), "--config", str(config), "--json"],
        ["--db", str(db), "alerts", "--json"],
    ):
        done = subprocess.run(
            [str(COMMGRAPH), *command], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
    replayed = sorted(
        (a["kind"], a["src"], a["relation"], a["dst"] if a["kind"] != "new-service" else "")
        for a in json.loads(done.stdout)
    )
    evaluated = run_eval(lockly, "--learning", "1h", "--config", config)
    assert evaluated["alerts"] == len(replayed) == 7
    assert (
        sorted(
            (a["kind"], a["src"], a["relation"], a["dst"] if a["kind"] != "new-service" else "")
            for a in evaluated["alert_edges"]
        )
        == replayed
    )
    broker = "a1guxefynxg.iot-as-mqtt.us-west-1.aliyuncs.com"
    assert ("periodicity", "192.168.1.128", "tcp/1883", broker) in replayed
