"""Property tests: no input makes the codec or the machine raise; bad input is counted."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossip import codec
from gossip.codec import Envelope, decode_packet, encode, encode_packet
from gossip.errors import DecodeError
from gossip.keyring import Keyring
from gossip.stream import StreamReader
from gossip.wire import Ack, Alive, Dead, IndirectPing, Nack, Ping, Suspect
from membership.config import MembershipConfig
from membership.swim import Swim

VALID = [
    encode(Ping(1, "n0", b"\x0a\x00\x00\x02", 7946, "n1")),
    encode(Ack(1)),
    encode(Alive(3, "n1", b"\x0a\x00\x00\x02", 7946, b"\xff\x80", bytes((1, 5, 2, 2, 5, 5)))),
    encode(Suspect(1, "n1", "n2")),
    encode(Dead(1, "n1", "n2")),
    encode(IndirectPing(5, b"\x0a\x00\x00\x03", 7946, "n2", True)),
    encode(Nack(5)),
]
settings.register_profile("codec", deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _swim(keys: tuple[bytes, ...] = ()) -> Swim:
    keyring = Keyring(keys, random.Random(0).randbytes) if keys else None
    return Swim(MembershipConfig.lan("n0"), ("10.0.0.1", 7946), keyring, random.Random(0), 0.0)


def _dropped(swim: Swim) -> int:
    return sum(v for k, v in swim.statistics().counters.items() if k.startswith("dropped_"))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_decode_error(data: bytes) -> None:
    try:
        decode_packet(data, Envelope())
    except DecodeError:
        pass
    reader = StreamReader(Envelope())
    try:
        reader.feed(data)
        reader.eof()
    except DecodeError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1500), st.booleans())
def test_the_machine_never_raises_on_a_datagram(data: bytes, encrypted: bool) -> None:
    swim = _swim((b"k" * 16,) if encrypted else ())
    swim.receive_packet(1.0, ("10.0.0.9", 7946), data)
    stats = swim.statistics()
    assert stats.counters["packets_received"] == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(VALID), min_size=1, max_size=6), st.data())
def test_truncated_packets_are_dropped_and_counted(parts: list[bytes], data: st.DataObject) -> None:
    packet = encode_packet(parts, Envelope())
    cut = data.draw(st.integers(min_value=0, max_value=len(packet) - 1))
    swim = _swim()
    before = _dropped(swim)
    swim.receive_packet(1.0, ("10.0.0.9", 7946), packet[:cut])
    try:
        decoded = decode_packet(packet[:cut], Envelope())
    except DecodeError:
        assert _dropped(swim) == before + 1
    else:
        assert len(decoded.messages) <= len(parts)
        assert _dropped(swim) == before + decoded.dropped


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VALID), st.data())
def test_corrupted_bytes_under_crc_are_always_caught(part: bytes, data: st.DataObject) -> None:
    packet = bytearray(encode_packet([part], Envelope(), crc=True))
    index = data.draw(st.integers(min_value=5, max_value=len(packet) - 1))
    flip = data.draw(st.integers(min_value=1, max_value=255))
    packet[index] ^= flip
    swim = _swim()
    swim.receive_packet(1.0, ("10.0.0.9", 7946), bytes(packet))
    assert swim.statistics().counters.get("dropped_crc") == 1


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(VALID))
def test_wrong_key_packets_are_dropped_and_counted(part: bytes) -> None:
    sealed = encode_packet([part], Envelope(Keyring([b"a" * 32], random.Random(1).randbytes)))
    swim = _swim((b"b" * 32,))
    swim.receive_packet(1.0, ("10.0.0.9", 7946), sealed)
    assert swim.statistics().counters.get("dropped_key") == 1


def test_oversized_datagram_is_dropped_not_raised() -> None:
    swim = _swim()
    swim.receive_packet(1.0, ("10.0.0.9", 7946), b"\x07\xff" + b"\xff\xff" * 255 + b"x" * 60000)
    assert _dropped(swim) >= 1


def test_decompression_bombs_are_bounded() -> None:
    bomb = codec.compress_message(b"\x00" * 2_000_000)
    swim = _swim()
    swim.receive_packet(1.0, ("10.0.0.9", 7946), bomb)
    assert swim.statistics().counters.get("dropped_oversized") == 1
