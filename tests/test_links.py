"""Signed action links: made by the notifier, read by the web side, pure over bytes and time."""

from __future__ import annotations

import pytest

from commgraph.links import TokenError, is_sound, make_action_token, read_action_token

KEY = b"k" * 32


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


def test_a_refused_token_that_is_sound_has_only_expired() -> None:
    token = make_action_token(KEY, 7, "deny", now=1000.0, valid_for=60)
    with pytest.raises(TokenError):
        read_action_token(KEY, token, now=1061.0)
    assert is_sound(KEY, token)
    assert not is_sound(b"x" * 32, token) and not is_sound(KEY, token[:-3])
