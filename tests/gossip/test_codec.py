"""The wire codec: round trips, golden bytes from docs/gossip-wire.md and captured from serf."""

from __future__ import annotations

import pytest

from gossip import codec, stream
from gossip.codec import Envelope, decode_packet, encode, encode_packet
from gossip.stream import StreamReader
from gossip.errors import DecodeError
from gossip.keyring import Keyring, parse_key
from gossip.wire import (
    Ack, Alive, Dead, Err, IndirectPing, MessageType, Nack, Ping, PushNodeState, PushPull,
    Suspect, User,
)

MESSAGES = [
    Ping(1, "alpha", b"\x7f\x00\x00\x01", 7947, "beta"),
    Ping(2),
    IndirectPing(59, b"\x7f\x00\x00\x01", 7948, "gamma", True, b"\x7f\x00\x00\x01", 7946, "alpha"),
    Ack(59),
    Ack(3, b"\x01coordinate"),
    Nack(59),
    Suspect(1, "gamma", "alpha"),
    Alive(1, "gamma", b"\x7f\x00\x00\x01", 7948, b"\xff\x80", bytes((1, 5, 2, 2, 5, 5))),
    Dead(4, "gamma", "gamma"),
    Err("boom"),
    User(b"\x01serf join intent"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_type_round_trips(message: object) -> None:
    data = encode(message)  # type: ignore[arg-type]
    assert data[0] == {
        Ping: MessageType.PING, IndirectPing: MessageType.INDIRECT_PING, Ack: MessageType.ACK,
        Nack: MessageType.NACK, Suspect: MessageType.SUSPECT, Alive: MessageType.ALIVE,
        Dead: MessageType.DEAD, Err: MessageType.ERR, User: MessageType.USER,
    }[type(message)]
    assert codec.decode_message(data) == message


# Golden bytes from docs/gossip-wire.md §11 (captured from serf 0.9.4 / memberlist 0.2.2).
GOLDEN_PING = bytes.fromhex(
    "0085a44e6f6465a5616c706861a55365714e6f01aa536f7572636541646472a47f000001aa536f75726365"
    "4e6f6465a462657461aa536f75726365506f7274cd1f0b"
)
GOLDEN_ACK = bytes.fromhex("0282a75061796c6f6164c0a55365714e6f3b")
GOLDEN_ALIVE_CRC = bytes.fromhex(
    "0c46acd7da0486a441646472a47f000001ab496e6361726e6174696f6e01a44d657461a2ff80a44e6f6465"
    "a567616d6d61a4506f7274cd1f0ca356736ea6010502020505"
)
GOLDEN_INDIRECT = bytes.fromhex(
    "0188a44e61636bc3a44e6f6465a567616d6d61a4506f7274cd1f0ca55365714e6f3baa536f75726365416464"
    "72a47f000001aa536f757263654e6f6465a5616c706861aa536f75726365506f7274cd1f0aa6546172676574"
    "a47f000001"
)
GOLDEN_NACK = bytes.fromhex("0b81a55365714e6f3b")


def test_golden_ping_decodes_and_encodes_byte_for_byte() -> None:
    ping = Ping(1, "alpha", b"\x7f\x00\x00\x01", 7947, "beta")
    assert codec.decode_message(GOLDEN_PING) == ping
    assert encode(ping) == GOLDEN_PING


def test_golden_ack_with_nil_payload() -> None:
    assert codec.decode_message(GOLDEN_ACK) == Ack(59, b"")
    assert encode(Ack(59)) == GOLDEN_ACK


def test_golden_alive_with_crc() -> None:
    packet = decode_packet(GOLDEN_ALIVE_CRC, Envelope())
    alive = Alive(1, "gamma", b"\x7f\x00\x00\x01", 7948, b"\xff\x80", bytes((1, 5, 2, 2, 5, 5)))
    assert packet.messages == (alive,)
    assert encode_packet([encode(alive)], Envelope(), crc=True) == GOLDEN_ALIVE_CRC


def test_golden_indirect_ping_and_nack() -> None:
    request = codec.decode_message(GOLDEN_INDIRECT)
    assert request == IndirectPing(
        59, b"\x7f\x00\x00\x01", 7948, "gamma", True, b"\x7f\x00\x00\x01", 7946, "alpha"
    )
    assert encode(request) == GOLDEN_INDIRECT
    assert codec.decode_message(GOLDEN_NACK) == Nack(59)


def test_a_bad_crc_is_rejected() -> None:
    corrupted = bytearray(GOLDEN_ALIVE_CRC)
    corrupted[-1] ^= 0x01
    with pytest.raises(DecodeError) as info:
        decode_packet(bytes(corrupted), Envelope())
    assert info.value.reason == "crc"


def test_compound_of_many_parts_round_trips() -> None:
    parts = [encode(m) for m in MESSAGES]
    packet = decode_packet(encode_packet(parts, Envelope()), Envelope())
    assert packet.messages == tuple(MESSAGES)
    assert packet.dropped == 0


def test_truncated_compound_keeps_the_parts_that_fit() -> None:
    data = encode_packet([encode(Ack(1)), encode(Ack(2)), encode(Ack(3))], Envelope())
    packet = decode_packet(data[:-3], Envelope())
    assert packet.messages == (Ack(1), Ack(2))
    assert packet.dropped == 1 and packet.reason == "truncated"


def test_a_bad_part_of_a_compound_is_dropped_alone() -> None:
    data = encode_packet([encode(Ack(1)), b"\x63garbage", encode(Nack(2))], Envelope())
    packet = decode_packet(data, Envelope())
    assert packet.messages == (Ack(1), Nack(2))
    assert packet.dropped == 1 and packet.reason == "unknown_type"


def test_compressed_compound_decodes() -> None:
    inner = codec.make_compound([encode(Ack(7)), encode(Suspect(2, "x", "y"))])
    packet = decode_packet(codec.compress_message(inner), Envelope())
    assert packet.messages == (Ack(7), Suspect(2, "x", "y"))


def test_labels_must_match() -> None:
    labelled = Envelope(label="prod")
    data = encode_packet([encode(Ack(1))], labelled)
    assert data[:6] == b"\xf4\x04prod"
    assert decode_packet(data, labelled).messages == (Ack(1),)
    for other in (Envelope(), Envelope(label="test")):
        with pytest.raises(DecodeError) as info:
            decode_packet(data, other)
        assert info.value.reason == "label"
    with pytest.raises(DecodeError):
        decode_packet(encode_packet([encode(Ack(1))], Envelope()), labelled)


def test_encrypted_packets_open_only_with_an_installed_key() -> None:
    key, other = b"k" * 32, b"o" * 16
    sealed = encode_packet([encode(Ack(9))], Envelope(Keyring([key])))
    assert sealed[0] == 1 and len(sealed) == 1 + 12 + len(encode(Ack(9))) + 16
    assert decode_packet(sealed, Envelope(Keyring([other, key]))).messages == (Ack(9),)
    with pytest.raises(DecodeError) as info:
        decode_packet(sealed, Envelope(Keyring([other])))
    assert info.value.reason == "key"
    with pytest.raises(DecodeError):
        decode_packet(encode_packet([encode(Ack(9))], Envelope()), Envelope(Keyring([key])))


def test_plaintext_is_accepted_during_a_rollout_when_verify_incoming_is_off() -> None:
    rollout = Envelope(Keyring([b"k" * 16]), verify_incoming=False)
    assert decode_packet(encode(Ack(4)), rollout).messages == (Ack(4),)


def test_bin_typed_strings_from_lenient_peers_are_accepted_but_we_send_raw() -> None:
    import msgpack

    body = msgpack.packb({b"SeqNo": 5, b"Node": b"alpha"}, use_bin_type=True)
    assert codec.decode_message(b"\x00" + body) == Ping(5, "alpha")
    assert b"\xc4" not in encode(Ping(5, "alpha"))


@pytest.mark.parametrize("bad", [
    b"", b"\x00", b"\x00\x93\x01\x02\x03", b"\x00\x81\xa5SeqNo\xa3abc", b"\x63",
    b"\x04\x81\xabIncarnation\xcf\xff\xff\xff\xff\xff\xff\xff\xff", b"\x07\x05\x00",
])
def test_malformed_packets_raise_only_decode_error(bad: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_packet(bad, Envelope())


def test_push_pull_stream_round_trips_through_the_reader() -> None:
    states = tuple(
        PushNodeState(f"n{i}", b"\x0a\x00\x00\x01", 7946 + i, b"\xff\x80", i + 1, i % 4,
                      bytes((1, 5, 2, 2, 5, 5)))
        for i in range(40)
    )
    push_pull = PushPull(True, states, b"\x02user-state")
    data = stream.encode_stream(stream.encode_push_pull(push_pull), Envelope())
    reader = StreamReader(Envelope())
    # fed a byte at a time, the reader answers exactly when the last byte arrives
    for index in range(len(data) - 1):
        assert reader.feed(data[index : index + 1]) is None
    assert reader.feed(data[-1:]) == push_pull


def test_encrypted_and_labelled_stream_round_trips() -> None:
    envelope = Envelope(Keyring([b"s" * 24]), label="blue")
    push_pull = PushPull(False, (), b"")
    data = stream.encode_stream(stream.encode_push_pull(push_pull), envelope)
    assert data[:7] == b"\xf4\x04blue" + bytes((MessageType.ENCRYPT,))
    assert StreamReader(envelope).feed(data) == push_pull
    with pytest.raises(DecodeError):
        StreamReader(Envelope(Keyring([b"t" * 24]), label="blue")).feed(data)
    with pytest.raises(DecodeError):
        StreamReader(Envelope(label="blue")).feed(data)


@pytest.mark.parametrize("keyring", [None, Keyring([b"k" * 16])])
def test_we_compress_streams_and_packets_when_it_saves_bytes(keyring: Keyring | None) -> None:
    states = tuple(
        PushNodeState(f"node-{i}", b"\x7f\x00\x00\x01", 40000 + i, b"\xff\x80", 1, 0,
                      bytes((1, 5, 2, 2, 5, 5)))
        for i in range(20)
    )
    push_pull = PushPull(False, states, b"")
    plain, packed = Envelope(keyring), Envelope(keyring, compress=True)
    message = stream.encode_push_pull(push_pull)
    small = stream.encode_stream(message, packed)
    assert len(small) < len(stream.encode_stream(message, plain)) * 0.6
    assert StreamReader(packed).feed(small) == push_pull
    assert StreamReader(plain).feed(small) == push_pull  # compression needs no agreement
    parts = [encode(Alive(i, f"node-{i}", b"\x7f\x00\x00\x01", 7946, b"", bytes(6)))
             for i in range(10)]
    datagram = encode_packet(parts, packed)
    assert len(datagram) < len(encode_packet(parts, plain))
    assert len(decode_packet(datagram, plain).messages) == 10
    ping = encode(Ping(1, "x"))  # too small to gain: sent as it is
    assert len(encode_packet([ping], packed)) == len(encode_packet([ping], plain))


def test_stream_that_ends_early_is_an_error() -> None:
    data = stream.encode_stream(encode(Ping(3, "x")), Envelope())
    reader = StreamReader(Envelope())
    assert reader.feed(data[:-2]) is None
    with pytest.raises(DecodeError):
        reader.eof()


def test_oversized_push_pull_headers_are_refused() -> None:
    import msgpack

    header = msgpack.packb({b"Nodes": 2**40, b"UserStateLen": 0, b"Join": False})
    with pytest.raises(DecodeError) as info:
        StreamReader(Envelope()).feed(b"\x06" + header)
    assert info.value.reason == "oversized"


def test_tags_use_serfs_format() -> None:
    meta = codec.encode_tags({"role": "web", "dc": "x"})
    assert meta == bytes.fromhex("ff82a26463a178a4726f6c65a3776562")
    assert codec.decode_tags(meta) == {"role": "web", "dc": "x"}
    assert codec.encode_tags({}) == b"\xff\x80"
    assert codec.decode_tags(b"legacy") == {"role": "legacy"}
    assert codec.decode_tags(b"") == {}
    with pytest.raises(ValueError):
        codec.encode_tags({"k": "v" * 600})


def test_addresses_accept_ipv4_mapped_ipv6() -> None:
    assert codec.ip_from_bytes(bytes(10) + b"\xff\xff\x7f\x00\x00\x01") == "127.0.0.1"
    assert codec.ip_from_bytes(b"\x0a\x00\x00\x02") == "10.0.0.2"
    assert codec.ip_to_bytes("10.0.0.2") == b"\x0a\x00\x00\x02"
    with pytest.raises(DecodeError):
        codec.ip_from_bytes(b"\x01\x02\x03")


# ---- captured from Debian's serf by scripts/capture_serf.py --------------------------


def test_serf_join_push_pull_is_lzw_compressed_and_decodes(wire_data) -> None:
    raw = (wire_data / "serf_push_pull_join.bin").read_bytes()
    assert raw[0] == MessageType.COMPRESS
    message = StreamReader(Envelope()).feed(raw)
    assert isinstance(message, PushPull) and message.join
    (alpha,) = message.states
    assert alpha.name == "alpha" and alpha.state == 0 and alpha.incarnation == 1
    assert alpha.vsn == bytes((1, 5, 2, 2, 5, 5))
    assert codec.decode_tags(alpha.meta) == {"role": "web"}
    assert message.user_state[:1] == b"\x02"  # serf's push-pull user state


def test_serf_gossip_datagrams_carry_crc_and_compound(wire_data) -> None:
    for index in range(4):
        raw = (wire_data / f"serf_udp_{index}.bin").read_bytes()
        assert raw[0] == MessageType.HAS_CRC
        packet = decode_packet(raw, Envelope())
        assert packet.dropped == 0
        kinds = {type(m) for m in packet.messages}
        assert Alive in kinds
        names = {m.node for m in packet.messages if isinstance(m, Alive)}
        assert "alpha" in names


def test_serf_encrypted_stream_and_datagrams_decode_with_the_key(wire_data) -> None:
    key = parse_key((wire_data / "KEY.txt").read_text())
    envelope = Envelope(Keyring([key]))
    raw = (wire_data / "serf_enc_push_pull_join.bin").read_bytes()
    assert raw[0] == MessageType.ENCRYPT
    message = StreamReader(envelope).feed(raw)
    assert isinstance(message, PushPull) and [s.name for s in message.states] == ["alpha"]
    for index in range(4):
        raw = (wire_data / f"serf_enc_udp_{index}.bin").read_bytes()
        assert decode_packet(raw, envelope).messages
        with pytest.raises(DecodeError):
            decode_packet(raw, Envelope(Keyring([b"x" * 32])))
