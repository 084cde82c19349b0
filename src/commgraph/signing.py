"""Ed25519 site keys: make, store, load, sign, verify.

Keys travel as PEM bytes (private: PKCS#8, unencrypted; public: SubjectPublicKeyInfo); every
function that takes a key accepts those bytes or a loaded key object. Only
:func:`write_keypair`, :func:`load_private` and :func:`load_public` touch files. A key that
cannot be used raises :class:`SigningError` naming the file when there is one; a signature that
does not match is not an error: :func:`verify` returns False.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from commgraph.errors import SigningError

__all__ = [
    "PrivateKey",
    "PublicKey",
    "SigningError",
    "generate_keypair",
    "key_id",
    "load_private",
    "load_public",
    "load_trusted",
    "public_pem",
    "sign",
    "verify",
    "write_keypair",
]

PrivateKey = Ed25519PrivateKey | bytes
PublicKey = Ed25519PublicKey | bytes
StrPath = str | os.PathLike[str]


def generate_keypair() -> tuple[bytes, bytes]:
    """A fresh key pair as (private PEM, public PEM)."""
    private = Ed25519PrivateKey.generate()
    return _private_pem(private), _public_pem(private.public_key())


def write_keypair(private_path: StrPath, public_path: StrPath) -> str:
    """Make a key pair and write it: the private key readable by its owner only (0600).

    Refuses to replace an existing file (SigningError naming it); writes neither file then.
    Returns the new key's id.
    """
    private_file, public_file = Path(private_path), Path(public_path)
    for path in (private_file, public_file):
        if os.path.lexists(path):
            raise SigningError(f"{path}: already exists; refusing to overwrite a key")
    private_pem, public_pem = generate_keypair()
    _write_new(private_file, private_pem, 0o600)
    try:
        _write_new(public_file, public_pem, 0o644)
    except SigningError:
        private_file.unlink(missing_ok=True)
        raise
    return key_id(public_pem)


def load_private(path: StrPath) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file ``path``."""
    return _as_private(_read(path), source=str(path))


def load_public(path: StrPath) -> Ed25519PublicKey:
    """The Ed25519 public key in the PEM file ``path``."""
    return _as_public(_read(path), source=str(path))


def load_trusted(paths: Iterable[StrPath]) -> dict[str, Ed25519PublicKey]:
    """The trusted public keys in PEM files, by key id (what :func:`model.open_model` takes)."""
    trusted: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        key = load_public(path)
        trusted[key_id(key)] = key
    return trusted


def public_pem(private: PrivateKey) -> bytes:
    """The PEM public key that belongs to ``private``."""
    return _public_pem(_as_private(private).public_key())


def key_id(public: PublicKey) -> str:
    """Short name of a public key: the first 16 hex digits of SHA-256 of its 32 raw bytes."""
    raw = _as_public(public).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(private: PrivateKey, data: bytes) -> bytes:
    """The 64-byte Ed25519 signature of ``data``."""
    return _as_private(private).sign(data)


def verify(public: PublicKey, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is the key's signature of ``data``; never raises for a bad one."""
    key = _as_public(public)
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


def _private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _as_private(key: PrivateKey, *, source: str = "private key") -> Ed25519PrivateKey:
    if isinstance(key, Ed25519PrivateKey):
        return key
    try:
        loaded = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SigningError(f"{source}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(loaded, Ed25519PrivateKey):
        raise SigningError(f"{source}: not an Ed25519 private key")
    return loaded


def _as_public(key: PublicKey, *, source: str = "public key") -> Ed25519PublicKey:
    if isinstance(key, Ed25519PublicKey):
        return key
    try:
        loaded = serialization.load_pem_public_key(key)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SigningError(f"{source}: not a PEM public key ({exc})") from exc
    if not isinstance(loaded, Ed25519PublicKey):
        raise SigningError(f"{source}: not an Ed25519 public key")
    return loaded


def _read(path: StrPath) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SigningError(f"{path}: cannot read key ({exc.strerror or exc})") from exc


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise SigningError(f"{path}: already exists; refusing to overwrite a key") from exc
    except OSError as exc:
        raise SigningError(f"{path}: cannot write key ({exc.strerror or exc})") from exc
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise SigningError(f"{path}: cannot write key ({exc.strerror or exc})") from exc
