"""``[modes] promote_after``: a quiet monitored service is promoted to protect on a timer.

Scripted engine runs drive ``tick(now)`` with explicit clocks (no sleeps); then the store
(reload, audit, listing), the notification, the config, and a live daemon behind its real
proxy and Mosquitto whose own periodic tick promotes, its clock moved by the test.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from commgraph.alerts import SITE, Action, AlertKind
from commgraph.config import NotifySettings, parse_config
from commgraph.daemon import Daemon
from commgraph.detectors.guardrails import GuardrailSettings
from commgraph.engine import Engine
from commgraph.errors import ConfigError
from commgraph.events import Event, VertexKind
from commgraph.graph import Label
from commgraph.notify import Message, ModeNotice, Notifier, describe
from commgraph.phases import COMMGRAPH, LearningSettings, Mode, ModeSource, Phase
from commgraph.store import Store
from conftest import Broker, free_port

T0 = 1_700_000_000.0
MIN = 60.0
DAY = 86400.0
WEEK = 7 * DAY
LEARNED_AT = T0 + 5 * MIN  # the site below learns for five minutes from T0
SERVICES = ("controller", "thermo-1", "valve-kitchen")


def at(minute: float) -> float:
    return T0 + minute * MIN


def ev(ts: float, src: str, dst: str, relation: str = "publish", size: int = 12) -> Event:
    return Event(ts=ts, src=src, dst=dst, relation=relation, size=size)


def make(guardrails: GuardrailSettings | None = None, **settings: Any) -> Engine:
    settings.setdefault("duration", 5 * MIN)
    settings.setdefault("promote_after", WEEK)
    return Engine(LearningSettings(**settings), guardrails=guardrails)


def learned_site(engine: Engine) -> None:
    """Three rounds of a small site from minute 0 (too few for a rhythm: silence is no
    anomaly), then its learning ends at minute 5."""
    engine.observe(ev(at(0), "valve-kitchen", "valves/kitchen/set", "subscribe"))
    engine.observe(ev(at(0), "controller", "home/+/temp", "subscribe"))
    for minute in range(3):
        engine.observe(ev(at(minute), "thermo-1", "home/kitchen/temp"))
        engine.observe(ev(at(minute), "home/kitchen/temp", "controller", "deliver"))
        engine.observe(ev(at(minute), "controller", "valves/kitchen/set", size=3))
        engine.observe(ev(at(minute), "valves/kitchen/set", "valve-kitchen", "deliver", 3))
    engine.tick(LEARNED_AT)
    assert all(s.phase is Phase.ACTIVE for s in engine.phases.states.values())


def mode(engine: Engine, service: str) -> Mode:
    vid = engine.graph.vertex(VertexKind.SERVICE, service)
    assert vid is not None
    return engine.phases.mode(vid)


def modes(engine: Engine) -> dict[str, Mode]:
    return {name: mode(engine, name) for name in SERVICES}


def promoted(engine: Engine) -> list[str]:
    """The services commgraph promoted since the last take, from its audited decisions."""
    return sorted(
        d.service or ""
        for d in engine.take_changes().decisions
        if d.by == COMMGRAPH and d.action is Action.MODE and d.detail == "protect"
    )


# -- the engine, on explicit clocks -------------------------------------------------------------


def test_promoted_after_exactly_promote_after_of_quiet_and_then_it_blocks() -> None:
    engine = make()
    learned_site(engine)
    engine.take_changes()
    engine.tick(LEARNED_AT + WEEK - 0.001)
    assert promoted(engine) == []
    assert set(modes(engine).values()) == {Mode.MONITOR}
    # before: something new is only reported
    assert not engine.observe(ev(LEARNED_AT + DAY, "thermo-1", "home/kitchen/humidity")).block
    engine.decide(1, Action.APPROVE, by="owner", at=LEARNED_AT + DAY)  # the count restarts
    engine.take_changes()
    engine.tick(LEARNED_AT + WEEK)
    assert promoted(engine) == ["controller", "valve-kitchen"]
    engine.tick(LEARNED_AT + DAY + WEEK)
    assert promoted(engine) == ["thermo-1"]
    assert set(modes(engine).values()) == {Mode.PROTECT}
    state = engine.phases.states[engine.graph.vertex(VertexKind.SERVICE, "thermo-1") or 0]
    assert (state.mode_by, state.mode_at) == (COMMGRAPH, LEARNED_AT + DAY + WEEK)
    # after: what it never learned is blocked, what it learned flows
    verdict = engine.observe(ev(LEARNED_AT + 9 * DAY, "controller", "valves/kitchen/boost"))
    assert (verdict.label, verdict.block) == (Label.PENDING, True)
    assert not engine.observe(ev(LEARNED_AT + 9 * DAY, "controller", "valves/kitchen/set")).block
    engine.tick(LEARNED_AT + 30 * DAY)
    assert promoted(engine) == []  # once is enough


def test_any_new_alert_restarts_the_count() -> None:
    engine = make()
    learned_site(engine)
    # day 2: a size alert about the sensor's known edge; day 3: a new edge of the valve
    size = engine.observe(ev(LEARNED_AT + 2 * DAY, "thermo-1", "home/kitchen/temp", size=9000))
    assert size.alert is not None
    assert engine.alerts.by_id[size.alert].kind is AlertKind.SIZE
    new = engine.observe(ev(LEARNED_AT + 3 * DAY, "valve-kitchen", "valves/kitchen/state"))
    assert new.alert is not None
    engine.decide(size.alert, Action.APPROVE, by="owner", at=LEARNED_AT + 2 * DAY + 60)
    engine.decide(new.alert, Action.APPROVE, by="owner", at=LEARNED_AT + 3 * DAY + 60)
    engine.take_changes()
    engine.tick(LEARNED_AT + WEEK)
    assert promoted(engine) == ["controller"]
    engine.tick(LEARNED_AT + 2 * DAY + 60 + WEEK)
    assert promoted(engine) == ["thermo-1"]
    engine.tick(LEARNED_AT + 3 * DAY + 60 + WEEK - 1)
    assert promoted(engine) == []
    engine.tick(LEARNED_AT + 3 * DAY + 60 + WEEK)
    assert promoted(engine) == ["valve-kitchen"]


def test_a_flood_restarts_the_count_too() -> None:
    engine = make(GuardrailSettings(messages_per_second=5))
    learned_site(engine)
    t = LEARNED_AT + 2 * DAY
    for i in range(20):  # twenty messages in a second: beyond the ceiling of five
        engine.observe(ev(t + i / 25, "controller", "valves/kitchen/set", size=3))
    raised = engine.alerts.pending()
    assert AlertKind.FLOOD in {a.kind for a in raised}
    assert {engine.graph.names[a.subject] for a in raised} == {"controller"}
    for alert in raised:  # the flood, and the rate detector's view of it
        engine.decide(alert.id, Action.APPROVE, by="owner", at=t + 60)
    engine.take_changes()
    engine.tick(LEARNED_AT + WEEK)
    assert promoted(engine) == ["thermo-1", "valve-kitchen"]
    engine.tick(t + 60 + WEEK)
    assert promoted(engine) == ["controller"]


def test_an_open_question_blocks_promotion_until_it_is_answered() -> None:
    engine = make()
    learned_site(engine)
    new = engine.observe(ev(LEARNED_AT + DAY, "controller", "valves/living/set"))
    assert new.alert is not None
    engine.take_changes()
    engine.tick(LEARNED_AT + 40 * DAY)  # long past a week, but the question is open
    assert promoted(engine) == ["thermo-1", "valve-kitchen"]
    assert mode(engine, "controller") is Mode.MONITOR
    engine.decide(new.alert, Action.DENY, by="owner", at=LEARNED_AT + 41 * DAY)
    engine.tick(LEARNED_AT + 41 * DAY + WEEK - 1)
    assert promoted(engine) == []
    engine.tick(LEARNED_AT + 41 * DAY + WEEK)
    assert promoted(engine) == ["controller"]


def test_a_grouped_question_naming_a_newcomer_blocks_it() -> None:
    engine = make(GuardrailSettings(new_services_per_minute=1))
    learned_site(engine)
    t = LEARNED_AT + DAY
    for name in ("cam-1", "cam-2"):  # the second is grouped into the site's question
        engine.observe(ev(t, name, f"cams/{name}"))
    grouped = engine.alerts.open_about(SITE, AlertKind.NEW_SERVICE)
    assert grouped is not None and grouped.detail["services"] == ["cam-2"]
    first = engine.alerts.open_about(
        engine.graph.vertex(VertexKind.SERVICE, "cam-1") or 0, AlertKind.NEW_SERVICE
    )
    assert first is not None
    engine.decide(first.id, Action.APPROVE, by="owner", at=t + 60)
    engine.tick(t + 60 + 5 * MIN)  # both learned: active
    engine.take_changes()
    engine.tick(t + 60 + 5 * MIN + WEEK)
    assert "cam-1" in promoted(engine)
    assert mode(engine, "cam-2") is Mode.MONITOR  # named in an open question
    engine.decide(grouped.id, Action.APPROVE, by="owner", at=t + 9 * DAY)
    engine.tick(t + 16 * DAY)
    assert promoted(engine) == ["cam-2"]


def test_a_mode_set_by_anyone_else_stops_promotion() -> None:
    engine = make(modes={"thermo-1": Mode.MONITOR})  # monitor by the config's own choice
    learned_site(engine)
    engine.set_mode("controller", Mode.MONITOR, by="alice", at=LEARNED_AT + 60)
    engine.set_mode("valve-kitchen", Mode.LEARN, by="bob", at=LEARNED_AT + 60)
    engine.set_mode("valve-kitchen", None, by="bob", at=LEARNED_AT + 120)  # back to default
    engine.take_changes()
    engine.tick(LEARNED_AT + 60 * DAY)
    assert promoted(engine) == []
    assert set(modes(engine).values()) == {Mode.MONITOR}


def test_a_promoted_service_set_back_by_the_owner_stays_where_the_owner_put_it() -> None:
    engine = make()
    learned_site(engine)
    engine.tick(LEARNED_AT + WEEK)
    engine.set_mode("valve-kitchen", Mode.MONITOR, by="alice", at=LEARNED_AT + WEEK + 60)
    engine.take_changes()
    engine.tick(LEARNED_AT + 30 * DAY)
    assert promoted(engine) == []
    assert mode(engine, "valve-kitchen") is Mode.MONITOR


@pytest.mark.parametrize("default", [Mode.LEARN, Mode.PROTECT])
def test_only_a_monitor_default_is_promoted(default: Mode) -> None:
    engine = make(mode=default)
    learned_site(engine)
    engine.take_changes()
    engine.tick(LEARNED_AT + 30 * DAY)
    assert promoted(engine) == []
    assert set(modes(engine).values()) == {default}


def test_off_by_default() -> None:
    assert LearningSettings().promote_after is None
    assert parse_config({}).learning.promote_after is None
    assert parse_config({"modes": {"promote_after": "0"}}).learning.promote_after is None
    assert parse_config({"modes": {"promote_after": "7d"}}).learning.promote_after == WEEK
    engine = Engine(LearningSettings(duration=5 * MIN))
    learned_site(engine)
    engine.take_changes()
    engine.tick(LEARNED_AT + 365 * DAY)
    assert promoted(engine) == []
    assert set(modes(engine).values()) == {Mode.MONITOR}


def test_learning_again_restarts_the_count_when_it_is_over() -> None:
    engine = make()
    learned_site(engine)
    engine.reset_learning("thermo-1", by="owner", at=LEARNED_AT + DAY)
    engine.observe(ev(LEARNED_AT + 2 * DAY, "thermo-1", "home/kitchen/temp"))
    engine.tick(LEARNED_AT + 2 * DAY + 5 * MIN)  # learned again
    engine.take_changes()
    engine.tick(LEARNED_AT + WEEK)
    assert "thermo-1" not in promoted(engine)
    engine.tick(LEARNED_AT + 2 * DAY + 5 * MIN + WEEK)
    assert promoted(engine) == ["thermo-1"]


# -- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("a week", "is not a duration"),
        ("-1d", "is not a duration"),
        (True, "expected a string or an integer or a number, got a boolean"),
    ],
)
def test_config_errors_name_the_key(value: object, words: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({"modes": {"promote_after": value}}, "site.toml")
    assert str(error.value).startswith("site.toml: modes.promote_after: ")
    assert words in str(error.value)


# -- the store ---------------------------------------------------------------------------------


def test_the_count_survives_a_reload_and_the_promotion_is_audited(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    settings = LearningSettings(duration=5 * MIN, promote_after=WEEK)
    with Store(db) as store:
        store.save_settings(settings)
        engine = store.load_engine()
        learned_site(engine)
        new = engine.observe(ev(LEARNED_AT + 3 * DAY, "thermo-1", "home/kitchen/humidity"))
        assert new.alert is not None
        store.flush(engine)
        rows = {r["name"]: r for r in store.services()}
        assert rows["thermo-1"]["promotion"] == "waiting"
        assert rows["thermo-1"]["promote_at"] is None
        assert rows["controller"]["promotion"] == "counting"
        assert rows["controller"]["promote_at"] == LEARNED_AT + WEEK
    with Store(db) as store:  # a restart: the open question is still open
        engine = store.load_engine()
        assert engine.settings.promote_after == WEEK
        engine.tick(LEARNED_AT + 4 * DAY)
        engine.decide(new.alert, Action.APPROVE, by="owner", at=LEARNED_AT + 4 * DAY)
        store.flush(engine)
    with Store(db) as store:  # another: the count restarted when it was answered
        engine = store.load_engine()
        rows = {r["name"]: r for r in store.services()}
        assert rows["thermo-1"]["quiet_since"] == LEARNED_AT + 4 * DAY
        assert rows["thermo-1"]["promote_at"] == LEARNED_AT + 4 * DAY + WEEK
        engine.tick(LEARNED_AT + WEEK)
        engine.tick(LEARNED_AT + 4 * DAY + WEEK - 1)
        store.flush(engine)
        engine.tick(LEARNED_AT + 4 * DAY + WEEK)
        store.flush(engine)
        audit = [d for d in store.decisions() if d["action"] == "mode"]
    assert [(d["service"], d["by"], d["detail"], d["at"]) for d in audit] == [
        ("controller", "commgraph", "protect", LEARNED_AT + WEEK),
        ("valve-kitchen", "commgraph", "protect", LEARNED_AT + WEEK),
        ("thermo-1", "commgraph", "protect", LEARNED_AT + 4 * DAY + WEEK),
    ]
    assert {d["reason"] for d in audit} == {"no open question for 7d"}
    with Store(db) as store:
        engine = store.load_engine()
        assert set(modes(engine).values()) == {Mode.PROTECT}
        rows = {r["name"]: r for r in store.services()}
    assert {
        (r["mode"], r["mode_source"], r["mode_set_by"], r["promotion"]) for r in rows.values()
    } == {("protect", ModeSource.PROMOTED.value, "commgraph", None)}
    assert rows["thermo-1"]["mode_set_at"] == LEARNED_AT + 4 * DAY + WEEK


def test_a_stale_writer_cannot_restart_the_count(tmp_path: Path) -> None:
    """The CLI writes with the view it loaded; the count it stores only moves forward."""
    db = tmp_path / "node.db"
    with Store(db) as store:
        store.save_settings(LearningSettings(duration=5 * MIN, promote_after=WEEK))
        daemon_view = store.load_engine()
        learned_site(daemon_view)
        store.flush(daemon_view)
        cli_view = store.load_engine()  # loaded now, written later
        alert = daemon_view.observe(ev(LEARNED_AT + DAY, "thermo-1", "home/kitchen/x")).alert
        assert alert is not None
        store.flush(daemon_view)
        cli_view.set_mode("controller", Mode.MONITOR, by="alice", at=LEARNED_AT + DAY)
        # the CLI's view of the sensor: its count as it was when it loaded, written back
        sensor = cli_view.graph.vertex(VertexKind.SERVICE, "thermo-1")
        assert sensor is not None
        assert cli_view.phases.states[sensor].quiet_since == LEARNED_AT
        cli_view.changes.services.add(sensor)
        cli_view.changes.quiet.add(sensor)
        store.write_changes(cli_view, cli_view.take_changes())
        rows = {r["name"]: r for r in store.services()}
    assert rows["thermo-1"]["quiet_since"] == LEARNED_AT + DAY
    assert (rows["controller"]["mode_set_by"], rows["controller"]["promotion"]) == ("alice", None)


def test_a_database_of_the_previous_schema_gets_who_set_modes_and_since_when(
    tmp_path: Path,
) -> None:
    import sqlite3

    from commgraph.store import MIGRATIONS

    db = tmp_path / "old.db"
    with Store(db) as store:
        store.save_settings(LearningSettings(duration=5 * MIN))
        engine = store.load_engine()
        learned_site(engine)
        engine.set_mode("controller", Mode.PROTECT, by="alice", at=LEARNED_AT + 10)
        new = engine.observe(ev(LEARNED_AT + DAY, "thermo-1", "home/kitchen/x")).alert
        assert new is not None
        engine.decide(new, Action.APPROVE, by="bob", at=LEARNED_AT + 2 * DAY)
        store.flush(engine)
    raw = sqlite3.connect(db)  # back to schema 5, as an older commgraph left it
    for column in ("mode_by", "mode_at", "quiet_since"):
        raw.execute(f"ALTER TABLE services DROP COLUMN {column}")
    raw.execute(f"PRAGMA user_version = {len(MIGRATIONS) - 1}")
    raw.commit()
    raw.close()
    with Store(db) as store:
        rows = {r["name"]: r for r in store.services()}
    assert (rows["controller"]["mode_set_by"], rows["controller"]["mode_set_at"]) == (
        "alice",
        LEARNED_AT + 10,
    )
    assert rows["thermo-1"]["quiet_since"] == LEARNED_AT + 2 * DAY
    assert rows["valve-kitchen"]["quiet_since"] == LEARNED_AT


# -- telling the owner -------------------------------------------------------------------------


async def test_the_owner_is_told_in_plain_words() -> None:
    got: list[Message] = []

    async def send(url: str, message: Message) -> None:
        got.append(message)

    notifier = Notifier(
        NotifySettings(urls=("test://",)),
        node="node-a",
        link_key=b"k" * 32,
        link_base="http://127.0.0.1:8080",
        send=send,
    )
    for name in ("valve-kitchen", "<b>cam</b> 1/2"):
        notifier.notify(
            ModeNotice(
                service=name,
                mode="protect",
                by="commgraph",
                reason="no open question for 7d",
                node="node-a",
                at=T0,
            )
        )
    await notifier.close(timeout=5.0)
    assert [m.title for m in got] == [
        "commgraph: valve-kitchen is now protected",
        "commgraph: <b>cam</b> 1/2 is now protected",  # the name as it is: text, not markup
    ]
    assert got[0].text.startswith(
        "valve-kitchen is now protected, decided by commgraph (no open question for 7d).\n"
        "Node: node-a\n"
    )
    assert [b.page for m in got for b in m.buttons] == [
        "http://127.0.0.1:8080/services/valve-kitchen",
        "http://127.0.0.1:8080/services/%3Cb%3Ecam%3C%2Fb%3E%201%2F2",
    ]
    assert got[0].alerts == ()  # nothing to approve: told, not asked
    notice = ModeNotice(service="x", mode="protect", by="commgraph", reason="", node="n", at=T0)
    assert describe(notice) == "x is now protected"


# -- the live daemon: its own periodic tick promotes ------------------------------------------


class Client:
    """A paho client through the proxy; blocking calls (run them off the event loop)."""

    def __init__(self, port: int, client_id: str) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.paho.on_connect = lambda *_: self._connected.set()
        self.paho.on_subscribe = lambda *_: self._subscribed.set()
        self.paho.on_message = lambda _c, _u, m: self.messages.put((m.topic, m.payload))
        self.paho.connect("127.0.0.1", port)
        self.paho.loop_start()
        assert self._connected.wait(10), f"{client_id} did not connect"

    def subscribe(self, topic: str) -> None:
        self.paho.subscribe(topic, qos=1)
        assert self._subscribed.wait(10), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes) -> None:
        self.paho.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


async def until(predicate: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Wait on the event loop (the daemon runs there) until ``predicate`` holds."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)
    return result


async def test_the_running_daemon_promotes_on_its_own_tick(
    tmp_path: Path, mosquitto: Broker
) -> None:
    port = free_port()
    config = parse_config(
        {
            "node": {"name": "node-a"},
            "learning": {"duration": "10m"},
            "modes": {"default": "monitor", "promote_after": "7d"},
            "mqtt": {"listen": f"127.0.0.1:{port}", "upstream": f"127.0.0.1:{mosquitto.port}"},
        }
    )
    clock = [time.time()]
    told: list[Message] = []

    async def send(url: str, message: Message) -> None:
        told.append(message)

    store = Store(tmp_path / "node.db")
    daemon = Daemon(config, store, clock=lambda: clock[0])
    daemon.notifiers.append(daemon.notifier(NotifySettings(urls=("test://",)), send))
    serving = asyncio.get_running_loop().create_task(daemon.run())
    clients: list[Client] = []
    try:
        await asyncio.wait_for(daemon.started.wait(), 15)
        valve = await asyncio.to_thread(Client, port, "valve-kitchen")
        controller = await asyncio.to_thread(Client, port, "controller")
        clients += [valve, controller]
        await asyncio.to_thread(valve.subscribe, "valves/#")
        await asyncio.to_thread(controller.publish, "valves/kitchen/set", b"21")
        assert await asyncio.to_thread(valve.messages.get, True, 10) == (
            "valves/kitchen/set",
            b"21",
        )

        def services() -> dict[str, dict[str, Any]]:
            with Store(tmp_path / "node.db") as reader:  # as `commgraph services` reads it
                return {r["name"]: r for r in reader.services()}

        clock[0] += 11 * MIN
        rows = await until(
            lambda: (r := services()) and all(s["phase"] == "active" for s in r.values()) and r,
            "both services to have learned",
        )
        assert {name: r["promotion"] for name, r in rows.items()} == {
            "controller": "counting",
            "valve-kitchen": "counting",
        }
        learned = rows["controller"]["learned_at"]
        assert rows["controller"]["promote_at"] == pytest.approx(learned + WEEK)
        assert not told

        clock[0] += WEEK
        rows = await until(
            lambda: (r := services()) and all(s["mode"] == "protect" for s in r.values()) and r,
            "the daemon's tick to promote both",
        )
        assert {(r["mode_source"], r["mode_set_by"]) for r in rows.values()} == {
            ("promoted", "commgraph")
        }
        await until(lambda: len(told) == 2, "two notifications")
        assert sorted(m.title for m in told) == [
            "commgraph: controller is now protected",
            "commgraph: valve-kitchen is now protected",
        ]
        # protect now holds in the live proxy: a topic the controller never used is
        # blocked, the one it learned is delivered
        await asyncio.to_thread(controller.publish, "valves/kitchen/boost", b"99")
        await asyncio.to_thread(controller.publish, "valves/kitchen/set", b"22")
        assert await asyncio.to_thread(valve.messages.get, True, 10) == (
            "valves/kitchen/set",
            b"22",
        )
        assert valve.messages.empty()
    finally:
        for client in clients:
            await asyncio.to_thread(client.close)
        daemon.stop()
        await asyncio.wait_for(serving, 20)
        store.close()
    with Store(tmp_path / "node.db") as reader:
        audit = [(d["service"], d["by"], d["detail"]) for d in reader.decisions()]
    assert sorted(audit) == [
        ("controller", "commgraph", "protect"),
        ("valve-kitchen", "commgraph", "protect"),
    ]
