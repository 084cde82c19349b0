"""``commgraph export``: from a node's database to files the broker or the network enforces.

The site is replayed through the real CLI; the ACL file it writes is loaded into a real
Mosquitto and checked with real clients logged in as the services.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import launch_mosquitto, stop_mosquitto
from test_enforce import MOSQUITTO_PASSWD, Session, _need

COMMGRAPH = Path(sys.executable).parent / "commgraph"
T0 = 1_700_000_000.0


def run(*args: str | Path, db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(COMMGRAPH), "--db", str(db), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(*args: str | Path, db: Path) -> str:
    done = run(*args, db=db)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, Path]:
    """A database where thermostats (two instances) and a controller have learned, one
    thermostat then tried a new topic (denied) and another (approved)."""
    config = tmp_path / "site.toml"
    config.write_text(
        '[node]\nname = "node-a"\n'
        "[[identity.rules]]\n"
        'match = "any"\npattern = "^(?P<service>thermo)-(?P<instance>.+)$"\n'
    )
    events = []
    for minute in range(5):
        ts = T0 + minute * 60
        events += [
            {"ts": ts, "src": "thermo-kitchen", "dst": "home/kitchen/temp", "relation": "publish"},
            {"ts": ts, "src": "thermo-hall", "dst": "home/hall/temp", "relation": "publish"},
            {"ts": ts, "src": "controller", "dst": "home/+/temp", "relation": "subscribe"},
            {"ts": ts, "src": "home/kitchen/temp", "dst": "controller", "relation": "deliver"},
            {"ts": ts, "src": "controller", "dst": "ntp.example", "relation": "udp/123"},
        ]
    later = T0 + 20 * 60
    events += [
        {"ts": later, "src": "thermo-kitchen", "dst": "home/kitchen/door", "relation": "publish"},
        {"ts": later, "src": "thermo-hall", "dst": "home/hall/light", "relation": "publish"},
    ]
    log = tmp_path / "site.jsonl"
    log.write_text("".join(json.dumps(e) + "\n" for e in events))
    db = tmp_path / "node.db"
    ok("replay", log, "--learning", "10m", "--config", config, db=db)
    alerts = {a["dst"]: a["id"] for a in json.loads(ok("alerts", "--json", db=db))}
    ok("deny", str(alerts["home/kitchen/door"]), db=db)
    ok("approve", str(alerts["home/hall/light"]), db=db)
    return db, config


def test_the_acl_file_has_one_section_per_service_with_templates(
    site: tuple[Path, Path], tmp_path: Path
) -> None:
    db, config = site
    out = tmp_path / "acl"
    ok("export", "mosquitto-acl", "--config", config, "-o", out, db=db)
    lines = [line for line in out.read_text().splitlines() if line and not line.startswith("#")]
    assert lines == [
        "user controller",
        "topic read home/+/temp",
        "topic read home/kitchen/temp",
        "user thermo",
        "topic write home/+/light",
        "topic write home/+/temp",
    ]
    # stdout gives the same text
    assert ok("export", "mosquitto-acl", "--config", config, db=db) == out.read_text()


def test_the_exported_acl_lets_through_exactly_what_was_learned_and_approved(
    site: tuple[Path, Path], tmp_path: Path
) -> None:
    db, config = site
    _need(MOSQUITTO_PASSWD)
    acl = tmp_path / "acl"
    ok("export", "mosquitto-acl", "--config", config, "-o", acl, db=db)
    passwords = tmp_path / "passwords"
    with acl.open("a") as extra:  # the owner's own addition: a logger that reads all
        extra.write("\nuser logger\ntopic read #\n")
    for index, user in enumerate(("thermo", "controller", "stranger", "logger")):
        create = ["-c"] if index == 0 else []
        subprocess.run(
            [str(MOSQUITTO_PASSWD), "-b", *create, str(passwords), user, f"pw-{user}"],
            check=True,
            capture_output=True,
            timeout=10,
        )
    # Started as root, Mosquitto would become the user "mosquitto", who cannot read files in
    # pytest's private directory: it stays who we are.
    me = pwd.getpwuid(os.geteuid()).pw_name
    broker = launch_mosquitto(
        tmp_path,
        extra=f"user {me}\nallow_anonymous false\npassword_file {passwords}\nacl_file {acl}\n",
    )
    sessions: list[Session] = []
    try:
        thermo, controller, stranger, logger = (
            Session(broker.port, user, f"pw-{user}")
            for user in ("thermo", "controller", "stranger", "logger")
        )
        sessions += [thermo, controller, stranger, logger]
        for reader in (controller, stranger, logger):
            reader.subscribe("home/#")  # granted: an acl_file does not check subscriptions
        for topic in ("home/attic/temp", "home/kitchen/door", "home/x/light", "home/y/z"):
            thermo.publish(topic, b"1")
        stranger.publish("home/attic/temp", b"2")  # no section: may publish nothing
        thermo.publish("home/attic/temp", b"fence")
        # The owner's logger reads everything: it sees what the broker let through.
        assert logger.until("home/attic/temp", b"fence") == [
            ("home/attic/temp", b"1"),  # learned, by template
            ("home/x/light", b"1"),  # approved
            ("home/attic/temp", b"fence"),
        ]
        assert controller.until("home/attic/temp", b"fence") == [
            ("home/attic/temp", b"1"),
            ("home/attic/temp", b"fence"),
        ]
        assert stranger.messages.empty()  # and may read nothing
    finally:
        for session in sessions:
            session.close()
        stop_mosquitto(broker)


def test_dynsec_and_mud_exports(site: tuple[Path, Path], tmp_path: Path) -> None:
    db, config = site
    dynsec = json.loads(ok("export", "mosquitto-dynsec", "--config", config, db=db))
    assert sorted(c["username"] for c in dynsec["clients"]) == ["controller", "thermo"]
    assert dynsec["defaultACLAccess"]["publishClientSend"] is False
    document = json.loads(
        ok(
            "export",
            "mud",
            "controller",
            "--mud-url",
            "https://example.com/controller.json",
            "--broker",
            "broker.local",
            "--config",
            config,
            db=db,
        )
    )
    assert document["ietf-mud:mud"]["mud-url"] == "https://example.com/controller.json"
    text = json.dumps(document)
    assert "ntp.example" in text and "broker.local" in text
    missing = run("export", "mud", "nobody", "--mud-url", "https://x/y.json", db=db)
    assert missing.returncode == 1 and "no model of 'nobody'" in missing.stderr
    empty = run("export", "mosquitto-acl", db=tmp_path / "empty.db")
    assert empty.returncode == 1 and "no database" in empty.stderr


def test_http_routes_export_lists_what_each_caller_may_call(tmp_path: Path) -> None:
    events = []
    for minute in range(5):
        ts = T0 + minute * 60
        route = "GET rooms/rooms/{id}/temperature"
        events += [
            {"ts": ts, "src": "heating", "dst": route, "relation": "http"},
            {"ts": ts, "src": route, "dst": "rooms", "relation": "serve"},
        ]
    later = T0 + 20 * 60
    for route in ("POST rooms/locks/front/unlock", "PUT rooms/valves/{id}"):
        events += [
            {"ts": later, "src": "heating", "dst": route, "relation": "http"},
            {"ts": later, "src": route, "dst": "rooms", "relation": "serve"},
        ]
    log = tmp_path / "site.jsonl"
    log.write_text("".join(json.dumps(e) + "\n" for e in events))
    db = tmp_path / "node.db"
    ok("replay", log, "--learning", "10m", db=db)
    alerts = json.loads(ok("alerts", "--json", db=db))
    for alert in alerts:
        if "valves" in alert["src"] + alert["dst"]:
            ok("approve", str(alert["id"]), db=db)
    routes = json.loads(ok("export", "http-routes", db=db))
    assert routes["callers"] == {
        "heating": [
            {"service": "rooms", "method": "GET", "path": "/rooms/{id}/temperature"},
            {"service": "rooms", "method": "PUT", "path": "/valves/{id}"},
        ]
    }
    assert [r["path"] for r in routes["services"]["rooms"]] == [
        "/rooms/{id}/temperature",
        "/valves/{id}",
    ]
    out = tmp_path / "routes.json"
    ok("export", "http-routes", "-o", out, db=db)
    assert json.loads(out.read_text()) == routes
