"""What one datagram or one stream may cost before the node refuses it: bytes the LZW
decoder produces, compress layers opened, bytes the stream parser looks at."""

from __future__ import annotations

import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip import codec, lzw, stream
from gossip.codec import Envelope, decode_packet, encode, make_compound
from gossip.errors import DecodeError
from gossip.stream import MAX_NODE_STATE, StreamLimits, StreamReader
from gossip.wire import Alive, PushNodeState, PushPull
from membership.config import MembershipConfig
from membership.swim import Swim


class _Inflation:
    """Wraps ``lzw.Inflater``: what each decompression that started was allowed to
    produce, the bytes it produced and the codes it decoded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.allowed: list[int] = []
        self.produced = 0
        self.codes = 0
        outer = self

        class Counting(lzw.Inflater):
            __slots__ = ()

            def __init__(self, data: bytes, max_output: int) -> None:
                super().__init__(data, max_output)
                outer.allowed.append(max_output)

            def run(self, budget: int | None = None) -> bytes | None:
                before = self.codes
                try:
                    out = super().run(budget)
                finally:
                    outer.codes += self.codes - before
                if out is not None:
                    outer.produced += len(out)
                return out

        monkeypatch.setattr(lzw, "Inflater", Counting)

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


def _codes(*codes: int, width: int = 9) -> bytes:
    """LZW codes of one width packed LSB-first, as Go's writer packs them."""
    bits = n_bits = 0
    out = bytearray()
    for code in codes:
        bits |= code << n_bits
        n_bits += width
        while n_bits >= 8:
            out.append(bits & 0xFF)
            bits >>= 8
            n_bits -= 8
    if n_bits:
        out.append(bits & 0xFF)
    return bytes(out)


def _clears(size: int) -> bytes:
    """``size`` bytes of CLEAR codes: they cost the decoder a code each, yield nothing."""
    pattern = _codes(*[256] * 8)  # 72 bits: whole bytes
    return (pattern * (size // len(pattern) + 1))[:size]


class _Read(bytes):
    """Bytes that count how many of them the decoder read."""

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        self.read = getattr(self, "read", 0) + 1
        return super().__getitem__(index)


def test_the_decoder_reads_two_codes_of_a_run_of_clears() -> None:
    data = _Read(_clears(3075))  # lzw.max_input(2048): as long as it may be
    with pytest.raises(DecodeError):
        lzw.decompress(data, codec.MAX_PACKET_INFLATE)
    assert data.read == 3  # two 9-bit codes, not 3,075 bytes


def test_a_datagram_of_clear_codes_is_refused_before_a_code_is_read(monkeypatch) -> None:
    inflation = _Inflation(monkeypatch)
    datagram = encode(codec.Compress(algo=0, buf=_clears(64000)))
    with pytest.raises(DecodeError) as info:
        decode_packet(datagram, Envelope())
    assert info.value.reason == "oversized"
    assert inflation.allowed == [] and inflation.codes == 0
    # at the bound it is read, and a CLEAR where an encoder never sends one ends it
    datagram = encode(codec.Compress(algo=0, buf=_clears(lzw.max_input(codec.MAX_PACKET_INFLATE))))
    with pytest.raises(DecodeError):
        decode_packet(datagram, Envelope())
    assert inflation.codes == 2


def test_a_clear_is_accepted_first_and_when_the_table_is_full_only() -> None:
    assert lzw.decompress(_codes(256, 65, 257), 10) == b"A"  # Go >= 1.17
    assert lzw.decompress(_codes(65, 66, 257), 10) == b"AB"  # older Go: no leading CLEAR
    for codes in ((256, 256, 65, 257), (65, 256, 66, 257)):
        with pytest.raises(DecodeError) as info:
            lzw.decompress(_codes(*codes), 10)
        assert "CLEAR" in str(info.value)
    # the encoder's own CLEARs (one per 3,838 codes) pass: random bytes fill the table fast
    data = random.Random(3).randbytes(3 * lzw.CODES_PER_TABLE)
    inflater = lzw.Inflater(lzw.compress(data), len(data))
    assert inflater.run() == data


@pytest.mark.parametrize("size", [0, 1, 2, 255, 3837, 3838, 3839, 7676, 20_000])
def test_honest_encodings_fit_the_bounds_the_decoder_enforces(size: int) -> None:
    rng = random.Random(size)
    for data in (rng.randbytes(size), b"a" * size, bytes(rng.choice(b"ab") for _ in range(size))):
        encoded = lzw.compress(data)
        assert len(encoded) <= lzw.max_input(size)
        inflater = lzw.Inflater(encoded, size)
        assert inflater.run() == data
        assert inflater.codes <= lzw.max_codes(size)
    # random bytes come close to the bound: every code a literal or nearly
    assert len(lzw.compress(rng.randbytes(size))) >= lzw.max_input(size) * 0.6


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.integers(0, 4000))
def test_no_input_makes_the_decoder_pass_its_code_budget(data: bytes, max_output: int) -> None:
    try:
        inflater = lzw.Inflater(data, max_output)
    except DecodeError:
        assert len(data) > lzw.max_input(max_output)
        return
    try:
        inflater.run()
    except DecodeError:
        pass
    assert inflater.codes <= lzw.max_codes(max_output)


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


def test_a_stream_of_clear_codes_is_refused_at_the_second_code(monkeypatch) -> None:
    inflation = _Inflation(monkeypatch)
    limits = StreamLimits.for_cluster(3)
    data = encode(codec.Compress(algo=0, buf=_clears(limits.max_bytes - 64)))
    reader = StreamReader(Envelope(), limits=limits)
    with pytest.raises(DecodeError):
        for at in range(0, len(data), 65536):
            reader.feed(data[at : at + 65536])
    assert inflation.codes == 2 and reader.codes == 2


@pytest.mark.parametrize("keyed", [False, True])
def test_a_stream_inflates_in_steps_of_a_bounded_number_of_codes(keyed: bool) -> None:
    user_state = random.Random(5).randbytes(20_000) + b"s" * 300_000
    push_pull = PushPull(False, _states(300), user_state)
    envelope = Envelope(codec.Keyring([b"k" * 16]) if keyed else None, compress=True)
    data = stream.encode_stream(stream.encode_push_pull(push_pull), envelope)
    reader = StreamReader(envelope, inflate_in_steps=True)
    assert reader.feed(data) is None and reader.inflating
    steps = parse_steps = 0
    message = None
    while message is None:
        before = reader.codes
        message = reader.inflate(1000)
        assert reader.codes - before <= 1000
        steps += 1
        parse_steps += reader.codes == before
    assert message == push_pull and not reader.inflating
    assert steps > 10 and reader.codes > 10_000
    # then the inflated message is parsed a bounded slice at a time
    assert parse_steps == -(-reader.inflated // stream.PARSE_STEP) > 1
    with pytest.raises(DecodeError):
        reader.feed(b"x")  # nothing may follow the message
