from __future__ import annotations

import contextlib
import logging
import os
import pty
import select
import stat
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from commgraph.config import parse_config
from commgraph.daemon import Daemon
from commgraph.store import Store
from commgraph.web.auth import load_or_create, same_secret
from conftest import free_port


def test_credentials_are_made_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "node.credentials"
    first = load_or_create(path)
    assert first.created and len(first.api_token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create(path)
    assert not again.created
    assert (again.api_token, again.link_key) == (first.api_token, first.link_key)
    assert same_secret(first.api_token, again.api_token)
    assert not same_secret("nope", first.api_token) and not same_secret(None, first.api_token)


def test_unreadable_credentials_are_named(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_text("{not json")
    with pytest.raises(Exception, match="bad"):
        load_or_create(path)


# -- the token at first start: on the terminal, never in the log -------------------------------


@contextlib.asynccontextmanager
async def web_started(tmp_path: Path) -> AsyncIterator[Path]:
    """The web side of the node in ``tmp_path`` started; yields its credentials file."""
    config = parse_config(
        {"node": {"name": "node-a"}, "api": {"listen": f"127.0.0.1:{free_port()}"}}
    )
    with Store(tmp_path / "n.db") as store:
        daemon = Daemon(config, store)
        runner = await daemon._start_web()
        assert runner is not None
        try:
            yield daemon.credentials_path()
        finally:
            await runner.cleanup()


async def test_without_a_terminal_the_log_names_the_file_and_never_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    async with web_started(tmp_path) as path:
        token = load_or_create(path).api_token
    out, err = capsys.readouterr()
    assert not sys.stderr.isatty()  # pytest's capture: as under systemd
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert token not in logged and token not in out + err
    assert str(path) in caplog.text
    assert any(r.levelno >= logging.WARNING and str(path) in r.getMessage() for r in caplog.records)


async def test_on_a_terminal_the_token_is_shown_once_and_not_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    controller, terminal_fd = pty.openpty()
    with open(terminal_fd, "w", encoding="utf-8", closefd=True) as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        async with web_started(tmp_path) as path:
            token = load_or_create(path).api_token
            shown = _read_until(controller, token.encode())
        async with web_started(tmp_path) as again:  # the second start: the token exists
            assert again == path
        monkeypatch.undo()
        print("end", file=terminal, flush=True)
        rest = _read_until(controller, b"end")
    os.close(controller)
    assert shown.count(token.encode()) == 1 and str(path).encode() in shown
    assert token.encode() not in rest  # shown once: not at the second start
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert token not in logged


def _read_until(fd: int, wanted: bytes, timeout: float = 10.0) -> bytes:
    """What the terminal ``fd`` shows until ``wanted`` appears (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    seen = b""
    while wanted not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{wanted!r} not shown on the terminal; it showed {seen!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            seen += os.read(fd, 4096)
    return seen
