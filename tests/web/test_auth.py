from __future__ import annotations

import stat
from pathlib import Path

import pytest

from commgraph.web.auth import load_or_create, same_secret


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
