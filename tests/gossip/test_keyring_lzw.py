"""Keyring (AES-GCM, key rotation) and Go-compatible LZW."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip import lzw
from gossip.errors import DecodeError
from gossip.keyring import Keyring, format_key, parse_key


def test_rotation_install_use_remove() -> None:
    old, new = b"o" * 16, b"n" * 32
    sender = Keyring([old])
    receiver = Keyring([old])
    receiver.install(new)
    assert receiver.open(sender.seal(b"hi")) == b"hi"
    sender.install(new)
    sender.use(new)
    assert receiver.open(sender.seal(b"hi")) == b"hi"
    with pytest.raises(ValueError):
        receiver.remove(old)  # still primary there
    receiver.use(new)
    receiver.remove(old)
    assert receiver.keys == (new,)
    with pytest.raises(DecodeError):
        receiver.open(Keyring([old]).seal(b"hi"))


def test_additional_data_binds_the_label() -> None:
    ring = Keyring([b"k" * 24])
    sealed = ring.seal(b"payload", b"blue")
    assert ring.open(sealed, b"blue") == b"payload"
    with pytest.raises(DecodeError):
        ring.open(sealed, b"green")


def test_version_zero_is_padded() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = b"z" * 16
    nonce = bytes(12)
    padded = b"abc" + bytes([13]) * 13
    sealed = b"\x00" + nonce + AESGCM(key).encrypt(nonce, padded, b"")
    assert Keyring([key]).open(sealed) == b"abc"


@pytest.mark.parametrize("text", ["", "not base64!", "AAAA", format_key(b"x" * 20)])
def test_bad_keys_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_key(text)


def test_serf_keygen_format_is_accepted() -> None:
    key = os.urandom(32)
    assert parse_key(format_key(key)) == key


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=5000))
def test_lzw_round_trips(data: bytes) -> None:
    assert lzw.decompress(lzw.compress(data), 10**7) == data


def test_lzw_handles_table_resets_and_repetition() -> None:
    rng = random.Random(4)
    for data in (os.urandom(20000), b"ab" * 30000, bytes(rng.choice(b"abc") for _ in range(50000))):
        assert lzw.decompress(lzw.compress(data), 10**7) == data


def test_lzw_packs_codes_lsb_first_after_a_leading_clear() -> None:
    encoded = lzw.compress(b"TOBEORNOTTOBEORTOBEORNOT")
    # CLEAR (256) fills byte 0 with its low 8 bits and bit 0 of byte 1 with its 9th;
    # 'T' (0x54) follows from bit 1: 0x54 << 1 | 1 == 0xa9
    assert encoded[:2] == b"\x00\xa9"
    assert lzw.decompress(encoded, 100) == b"TOBEORNOTTOBEORTOBEORNOT"


def test_lzw_rejects_bad_codes_and_overflow() -> None:
    with pytest.raises(DecodeError):
        lzw.decompress(b"\xff\xff\xff", 100)
    with pytest.raises(DecodeError):
        lzw.decompress(lzw.compress(b"a" * 1000), 100)
    with pytest.raises(DecodeError):
        lzw.decompress(lzw.compress(b"abc")[:-1], 100)
