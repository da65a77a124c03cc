"""What one datagram or one stream may cost before the node refuses it: bytes the LZW
decoder produces, compress layers opened, bytes the stream parser looks at."""

from __future__ import annotations

import random

import msgpack
import pytest

from gossip import codec, lzw, stream
from gossip.codec import Envelope, decode_packet, encode, make_compound
from gossip.errors import DecodeError
from gossip.stream import MAX_NODE_STATE, StreamLimits, StreamReader
from gossip.wire import Alive, PushNodeState, PushPull
from membership.config import MembershipConfig
from membership.swim import Swim


class _Inflation:
    """Wraps ``lzw.decompress``: what each call was allowed to produce and produced."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.allowed: list[int] = []
        self.produced = 0
        original = lzw.decompress

        def counting(data: bytes, max_output: int) -> bytes:
            self.allowed.append(max_output)
            out = original(data, max_output)
            self.produced += len(out)
            return out

        monkeypatch.setattr(lzw, "decompress", counting)

    @property
    def willing(self) -> int:
        """The most bytes the decoder could have produced for the datagram."""
        return sum(self.allowed)


def _bomb_datagram() -> bytes:
    """The issue's datagram: as many compress parts as fit, each inflating to 512 KiB."""
    part = codec.compress_message(b"\x00" * 512 * 1024)
    count = min(255, 65000 // (len(part) + 2))
    assert count >= 49
    return make_compound([part] * count)


def test_a_datagram_of_many_compressed_parts_is_refused_before_the_work(monkeypatch) -> None:
    inflation = _Inflation(monkeypatch)
    swim = Swim(MembershipConfig.lan("n0"), ("10.0.0.1", 7946), None, random.Random(0), 0.0)
    swim.receive_packet(1.0, ("10.0.0.9", 7946), _bomb_datagram())
    # a compress part inside a compound is never opened (no honest peer sends one)
    assert inflation.willing == 0
    assert swim.statistics().counters["dropped_nesting"] == 1
    assert swim.statistics().counters["packets_received"] == 1


def test_only_the_outermost_layer_is_inflated_within_the_budget(monkeypatch) -> None:
    inflation = _Inflation(monkeypatch)
    nested = codec.compress_message(make_compound([codec.compress_message(b"\x00" * 600)] * 3))
    with pytest.raises(DecodeError) as info:
        decode_packet(nested, Envelope())
    assert info.value.reason == "nesting"
    assert inflation.allowed == [codec.MAX_PACKET_INFLATE]
    with pytest.raises(DecodeError) as info:
        decode_packet(codec.compress_message(b"\x00" * 60000), Envelope())
    assert info.value.reason == "oversized"
    assert inflation.willing <= 2 * codec.MAX_PACKET_INFLATE


def test_the_lzw_decoder_stops_before_its_limit() -> None:
    data = lzw.compress(b"\x00" * 100_000)
    with pytest.raises(DecodeError) as info:
        lzw.decompress(data, 5000)
    assert info.value.reason == "oversized"
    assert lzw.decompress(lzw.compress(b"ab" * 2500), 5000) == b"ab" * 2500


def test_honest_compressed_datagrams_still_decode() -> None:
    parts = [encode(Alive(i, f"node-{i}", b"\x7f\x00\x00\x01", 7946, b"\xff\x80", bytes(6)))
             for i in range(20)]
    envelope = Envelope(compress=True)
    datagram = codec.encode_packet(parts, envelope)
    assert datagram[0] == codec.MessageType.COMPRESS
    assert len(decode_packet(datagram, Envelope()).messages) == 20
    # a packet larger than the budget (udp_buffer_size up to 65,000) goes uncompressed
    many = parts * 12
    big = codec.encode_packet(many[:255], envelope)
    assert big[0] != codec.MessageType.COMPRESS
    assert len(decode_packet(big, Envelope()).messages) == 240
    # a cluster on jumbo frames raises udp_buffer_size: the budget follows it
    jumbo = codec.compress_message(make_compound(many[:120]))
    assert len(make_compound(many[:120])) > codec.MAX_PACKET_INFLATE
    with pytest.raises(DecodeError):
        decode_packet(jumbo, Envelope())
    swim = Swim(MembershipConfig.lan("n0", udp_buffer_size=8900), ("10.0.0.1", 7946), None,
                random.Random(0), 0.0)
    assert len(decode_packet(jumbo, swim.envelope).messages) == 120


# ---- streams ------------------------------------------------------------------------


class _Scanned:
    """Counts the bytes handed to msgpack's stream parser, wherever it is made."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes = 0
        counter = self

        class Counting(msgpack.Unpacker):
            def feed(self, data: bytes) -> None:
                counter.bytes += len(data)
                super().feed(data)

        monkeypatch.setattr(msgpack, "Unpacker", Counting)


def _states(count: int) -> tuple[PushNodeState, ...]:
    return tuple(
        PushNodeState(f"node-{i}", b"\x0a\x00\x00\x01", 7946, b"\xff\x80", i + 1, 0,
                      bytes((1, 5, 2, 2, 5, 5)))
        for i in range(count)
    )


def test_a_trickled_push_pull_is_parsed_once(monkeypatch) -> None:
    push_pull = PushPull(False, _states(400), b"\x02state")
    data = stream.encode_stream(stream.encode_push_pull(push_pull), Envelope())
    scanned = _Scanned(monkeypatch)
    reader = StreamReader(Envelope())
    message = None
    for at in range(0, len(data), 50):
        assert message is None
        message = reader.feed(data[at : at + 50])
    assert message == push_pull
    # every byte is handed to the parser once (re-parsing from the start: ~300x)
    assert scanned.bytes <= len(data)


def test_a_push_pull_may_not_carry_more_than_its_header_declares() -> None:
    header = msgpack.packb({b"Join": False, b"Nodes": 1, b"UserStateLen": 0})
    state = msgpack.packb({b"Name": b"x", b"Meta": b"m" * (4 * MAX_NODE_STATE)})
    reader = StreamReader(Envelope())
    assert reader.feed(b"\x06" + header) is None
    with pytest.raises(DecodeError) as info:  # one state cannot take 4 KiB: refused
        for at in range(0, len(state), 100):  # before the reader holds it all
            assert reader.feed(state[at : at + 100]) is None
            assert at < 2 * MAX_NODE_STATE
    assert info.value.reason == "oversized"


def test_stream_limits_follow_the_cluster() -> None:
    small, large = StreamLimits.for_cluster(3), StreamLimits.for_cluster(50_000)
    assert small.max_nodes == stream.MIN_STREAM_NODES
    assert small.max_bytes < codec.MAX_STREAM_SIZE
    assert large.max_nodes == 100_000 and large.max_bytes == codec.MAX_STREAM_SIZE
    header = msgpack.packb({b"Join": False, b"Nodes": 250_000, b"UserStateLen": 0})
    with pytest.raises(DecodeError) as info:
        StreamReader(Envelope(), limits=small).feed(b"\x06" + header)
    assert info.value.reason == "oversized"
    keyed = Envelope(codec.Keyring([b"k" * 16]))
    with pytest.raises(DecodeError) as info:  # 20 MiB declared: refused before it comes
        StreamReader(keyed, limits=small).feed(b"\x0a" + (20 * 2**20).to_bytes(4, "big"))
    assert info.value.reason == "oversized"


def test_a_compressed_stream_inflates_to_the_stream_limit_at_most(monkeypatch) -> None:
    inflation = _Inflation(monkeypatch)
    bomb = codec.compress_message(b"\x06" + b"\x00" * 3_000_000)
    limits = StreamLimits(1_000_000, 100)
    with pytest.raises(DecodeError):
        StreamReader(Envelope(), limits=limits).feed(bomb)
    assert inflation.willing <= limits.max_bytes
