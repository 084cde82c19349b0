"""The site file ``commgraph init`` writes, and the broker advice (pure parts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from commgraph.config import parse_config
from commgraph.phases import Mode
from commgraph.sitefile import Finding, SiteAnswers, broker_advice, render_site


def test_every_answer_lands_in_a_valid_config(tmp_path: Path) -> None:
    import tomllib

    answers = SiteAnswers(
        node='pi "quoted" \\ node',
        broker="10.0.0.2:1884",
        listen="0.0.0.0:1883",
        mode=Mode.PROTECT,
        notify="ntfy://127.0.0.1:8090/x",
        api="127.0.0.1:9000",
        keys=True,
    )
    config = parse_config(tomllib.loads(render_site(answers)), "site.toml", tmp_path)
    assert config.node == answers.node
    assert (
        str(config.mqtt.upstream) == "10.0.0.2:1884" and str(config.sync_broker) == "10.0.0.2:1884"
    )
    assert config.learning.mode is Mode.PROTECT
    assert config.notify.urls == ("ntfy://127.0.0.1:8090/x",)
    assert str(config.api.listen) == "127.0.0.1:9000"
    assert config.private_key == tmp_path / "site.key"
    plain = parse_config(tomllib.loads(render_site(SiteAnswers())), "s", tmp_path)
    assert plain.private_key is None and plain.notify.urls == ()


def test_the_advice_shows_the_listener_line() -> None:
    advice = broker_advice(SiteAnswers(broker="127.0.0.1:1884", listen="0.0.0.0:1883"))
    assert "listener 1884 127.0.0.1" in advice and "1883" in advice
    assert "point your clients" in broker_advice(SiteAnswers(listen="127.0.0.1:2883"))
    same = broker_advice(SiteAnswers(broker="127.0.0.1:1883", listen="127.0.0.1:1883"))
    assert "cannot share" in same


def test_bad_answers_are_refused() -> None:
    with pytest.raises(ValueError, match="host:port"):
        SiteAnswers(broker="nowhere")
    with pytest.raises(ValueError, match="empty"):
        SiteAnswers(node=" ")


def test_a_finding_is_one_line_with_its_fix() -> None:
    assert Finding("broker", True, "up").line() == "ok   broker: up"
    assert (
        Finding("broker", False, "down", "start it").line() == "FAIL broker: down (fix: start it)"
    )
