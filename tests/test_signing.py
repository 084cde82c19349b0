from __future__ import annotations

import hashlib
import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from commgraph.errors import CommgraphError
from commgraph.signing import (
    SigningError,
    generate_keypair,
    key_id,
    load_private,
    load_public,
    public_pem,
    sign,
    verify,
    write_keypair,
)

DATA = b'{"schema":1}'


def test_keypair_is_pem_pkcs8_and_spki() -> None:
    private, public = generate_keypair()
    assert private.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert public_pem(private) == public
    assert generate_keypair()[0] != private


def test_key_id_is_sha256_prefix_of_raw_key() -> None:
    private, public = generate_keypair()
    key = serialization.load_pem_public_key(public)
    assert isinstance(key, Ed25519PublicKey)
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert len(raw) == 32
    assert key_id(public) == hashlib.sha256(raw).hexdigest()[:16]
    assert key_id(key) == key_id(public)
    assert key_id(public_pem(private)) == key_id(public)


def test_sign_and_verify() -> None:
    private, public = generate_keypair()
    signature = sign(private, DATA)
    assert len(signature) == 64
    assert verify(public, DATA, signature)
    assert not verify(public, DATA + b" ", signature)
    assert not verify(generate_keypair()[1], DATA, signature)


@pytest.mark.parametrize("signature", [b"", b"\x00" * 64, b"\x01" * 63, b"\xff" * 200])
def test_verify_never_raises_for_a_bad_signature(signature: bytes) -> None:
    _, public = generate_keypair()
    assert verify(public, DATA, signature) is False


def test_unusable_keys_raise_signing_error() -> None:
    ec_private = ec.generate_private_key(ec.SECP256R1())
    ec_pem = ec_private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    ec_public = ec_private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(SigningError, match="not an Ed25519 private key"):
        sign(ec_pem, DATA)
    with pytest.raises(SigningError, match="not an Ed25519 public key"):
        verify(ec_public, DATA, b"")
    with pytest.raises(SigningError):
        sign(b"garbage", DATA)
    with pytest.raises(SigningError):
        key_id(b"garbage")
    assert issubclass(SigningError, CommgraphError)


def test_write_keypair_private_is_0600_and_loads(tmp_path: Path) -> None:
    private_path, public_path = tmp_path / "site.key", tmp_path / "site.pub"
    kid = write_keypair(private_path, public_path)
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    private, public = load_private(private_path), load_public(public_path)
    assert key_id(public) == kid
    assert verify(public, DATA, sign(private, DATA))
    assert verify(public_path.read_bytes(), DATA, sign(private_path.read_bytes(), DATA))


@pytest.mark.parametrize("existing", ["site.key", "site.pub"])
def test_write_keypair_refuses_to_overwrite(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_bytes(b"precious")
    with pytest.raises(SigningError, match=re.escape(existing)):
        write_keypair(tmp_path / "site.key", tmp_path / "site.pub")
    assert (tmp_path / existing).read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == [existing]


def test_load_missing_or_bad_key_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(SigningError, match=r"nope\.key"):
        load_private(tmp_path / "nope.key")
    with pytest.raises(SigningError, match=r"nope\.pub"):
        load_public(tmp_path / "nope.pub")
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(SigningError, match=r"bad\.pem"):
        load_private(bad)
    with pytest.raises(SigningError, match=r"bad\.pem"):
        load_public(bad)
    _, public = generate_keypair()
    swapped = tmp_path / "swapped.pem"
    swapped.write_bytes(public)
    with pytest.raises(SigningError, match=r"swapped\.pem"):
        load_private(swapped)
