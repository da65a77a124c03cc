"""memberlist's packet security: AES-GCM with a ring of keys (``docs/gossip-wire.md`` §3, §8).

A sealed message is ``version(1) nonce(12) ciphertext tag(16)``. Version 1 means no
padding (every peer speaking protocol >= 2); version 0 means the plaintext was PKCS#7
padded to a block first, which we accept but never send. The first key of the ring is
the primary: it seals. Opening tries every key in order, so a cluster can rotate keys:
install the new key everywhere, make it primary everywhere, then remove the old one.

Pure: the nonce source is injected, so the simulator can be deterministic while the
shells use ``os.urandom``.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .errors import DecodeError

if TYPE_CHECKING:  # imported by the first keyring: a node without keys never loads it
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_SIZE = 12
TAG_SIZE = 16
VERSION_SIZE = 1
#: Bytes that encryption adds to a message (version + nonce + tag).
OVERHEAD = VERSION_SIZE + NONCE_SIZE + TAG_SIZE
KEY_SIZES = (16, 24, 32)


def parse_key(text: str) -> bytes:
    """Decode serf's key format (base64 of 16, 24 or 32 bytes); raise ValueError."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("encryption key is not valid base64") from None
    if len(key) not in KEY_SIZES:
        raise ValueError(f"encryption key is {len(key)} bytes; it must be 16, 24 or 32")
    return key


def format_key(key: bytes) -> str:
    return base64.b64encode(key).decode()


class Keyring:
    """An ordered set of AES keys; ``keys[0]`` is the primary."""

    def __init__(
        self, keys: Iterable[bytes], nonce_source: Callable[[int], bytes] = os.urandom
    ) -> None:
        from cryptography.exceptions import InvalidTag  # noqa: PLC0415
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415

        self._aes_gcm, self._invalid_tag = AESGCM, InvalidTag
        self._keys: list[bytes] = []
        self._ciphers: dict[bytes, AESGCM] = {}
        self._nonce_source = nonce_source
        for key in keys:
            self.install(key)
        if not self._keys:
            raise ValueError("a keyring needs at least one key")

    @property
    def keys(self) -> tuple[bytes, ...]:
        return tuple(self._keys)

    @property
    def primary(self) -> bytes:
        return self._keys[0]

    def install(self, key: bytes) -> None:
        """Add a key for opening (it becomes primary only if the ring was empty)."""
        if len(key) not in KEY_SIZES:
            raise ValueError(f"key is {len(key)} bytes; it must be 16, 24 or 32")
        if key not in self._ciphers:
            self._keys.append(key)
            self._ciphers[key] = self._aes_gcm(key)

    def use(self, key: bytes) -> None:
        """Make an installed key the primary."""
        if key not in self._ciphers:
            raise ValueError("key is not installed")
        self._keys.remove(key)
        self._keys.insert(0, key)

    def remove(self, key: bytes) -> None:
        if key not in self._ciphers:
            raise ValueError("key is not installed")
        if key == self._keys[0]:
            raise ValueError("the primary key cannot be removed; make another key primary first")
        self._keys.remove(key)
        del self._ciphers[key]

    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        nonce = self._nonce_source(NONCE_SIZE)
        sealed = self._ciphers[self._keys[0]].encrypt(nonce, plaintext, aad)
        return b"\x01" + nonce + sealed

    def open(self, data: bytes, aad: bytes = b"") -> bytes:
        """Open with any key of the ring; raise :class:`DecodeError` (reason ``key``)."""
        if len(data) < OVERHEAD:
            raise DecodeError(f"encrypted payload too short ({len(data)} bytes)", "key")
        version = data[0]
        if version not in (0, 1):
            raise DecodeError(f"unknown encryption version {version}", "key")
        nonce = data[1 : 1 + NONCE_SIZE]
        sealed = data[1 + NONCE_SIZE :]
        for key in self._keys:
            try:
                plain = self._ciphers[key].decrypt(nonce, sealed, aad)
            except self._invalid_tag:
                continue
            return plain if version == 1 else _unpad(plain)
        raise DecodeError("no installed key opens the payload", "key")


def _unpad(plain: bytes) -> bytes:
    if not plain or not 1 <= plain[-1] <= 16 or len(plain) < plain[-1]:
        raise DecodeError("bad padding in a version 0 encrypted payload", "key")
    return plain[: -plain[-1]]
