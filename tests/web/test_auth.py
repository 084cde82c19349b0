from __future__ import annotations

import stat
from pathlib import Path

import pytest

from commgraph.web.auth import (
    TokenError,
    load_or_create,
    make_action_token,
    read_action_token,
    same_secret,
)

KEY = b"k" * 32


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


def test_action_tokens_name_one_alert_and_action_and_expire() -> None:
    token = make_action_token(KEY, 7, "approve", now=1000.0, valid_for=60)
    parsed = read_action_token(KEY, token, now=1059.0)
    assert (parsed.alert, parsed.action) == (7, "approve")
    with pytest.raises(TokenError, match="expired"):
        read_action_token(KEY, token, now=1061.0)
    with pytest.raises(TokenError, match="not issued by this node"):
        read_action_token(b"x" * 32, token, now=1000.0)
    _body, mac = token.split(".")
    forged = make_action_token(KEY, 8, "deny", now=1000.0, valid_for=60).split(".")[0]
    with pytest.raises(TokenError, match="bad signature"):
        read_action_token(KEY, f"{forged}.{mac}", now=1000.0)
    for damaged in ("", "abc", "a.b.c", token + "x"):
        with pytest.raises(TokenError):
            read_action_token(KEY, damaged, now=1000.0)
    with pytest.raises(ValueError):
        make_action_token(KEY, 1, "delete", now=0, valid_for=1)


def test_unreadable_credentials_are_named(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_text("{not json")
    with pytest.raises(Exception, match="bad"):
        load_or_create(path)
