"""Random stream bodies at the gossip TCP port: push-pulls, pings, user messages, headers
with integers at their bounds, junk, decompression bombs; plaintext, labelled, sealed
with the right key or a wrong one, compressed; then truncated, mutated and fed in random
slices. Every input ends in a message or a :class:`DecodeError` (nothing else), within a
CPU budget, without the reader holding more than its limits; then the same at a real
node over 127.0.0.1, which goes on answering probes — seeded, bounded."""

from __future__ import annotations

import functools
import random
import time
import tracemalloc

import msgpack
import pytest
import trio

from tests.fuzzing import fuzz_seeds

from gossip import codec
from gossip.codec import Envelope, encode
from gossip.errors import DecodeError
from gossip.keyring import Keyring
from gossip.stream import StreamLimits, StreamReader, encode_push_pull, encode_stream
from gossip.stream import encode_user_stream
from gossip.wire import Ack, Err, Ping, PushNodeState, PushPull
from tests.membership.test_service_limits import gossip_node, tcp_ping

INPUTS, SOCKET_INPUTS = 300, 40
#: safety nets, not benchmarks: a generous bound per input
CPU_SECONDS = 0.5
LIMITS = StreamLimits(max_bytes=64 * 1024, max_nodes=64)
KEY, WRONG = b"k" * 16, b"w" * 16
NUMBERS = [0, 1, 7, 255, 65535, 2**31 - 1, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1, -1,
           -(2**63), True, None, b"", 0.5]


def _state(rng: random.Random, i: int) -> PushNodeState:
    return PushNodeState(f"n{i}", rng.randbytes(rng.choice([4, 16])), rng.randrange(65536),
                         rng.randbytes(rng.randrange(20)), rng.randrange(2**32), rng.randrange(4),
                         bytes((1, 5, 2, 2, 5, 5)))


@functools.cache
def _bombs() -> tuple[bytes, ...]:
    return tuple(codec.compress_message(b"\x06" + bytes(size))
                 for size in (1000, LIMITS.max_bytes - 100, 3 * LIMITS.max_bytes))


def message(rng: random.Random) -> bytes:
    """One stream message before framing (type byte and body)."""
    kind = rng.randrange(8)
    if kind == 0:
        states = tuple(_state(rng, i) for i in range(rng.randrange(6)))
        return encode_push_pull(PushPull(rng.random() < 0.5, states, rng.randbytes(
            rng.randrange(40))))
    if kind == 1:
        return encode(Ping(rng.randrange(2**32), rng.choice(["", "n0", "x" * 300])))
    if kind == 2:
        return encode_user_stream(rng.randbytes(rng.randrange(100)))
    if kind == 3:
        return encode(rng.choice([Err("no"), Ack(rng.randrange(2**32))]))
    if kind == 4:  # a push-pull or user header with integers at their bounds
        header = {b"Nodes": rng.choice(NUMBERS), b"UserStateLen": rng.choice(NUMBERS),
                  b"Join": rng.choice(NUMBERS), b"UserMsgLen": rng.choice(NUMBERS)}
        return bytes((rng.choice([6, 8]),)) + msgpack.packb(header) + rng.randbytes(
            rng.randrange(64))
    if kind == 5:  # a decompression bomb, up to three times what the stream may carry
        return rng.choice(_bombs())
    if kind == 6:
        return bytes((rng.randrange(256),)) + rng.randbytes(rng.randrange(200))
    return rng.randbytes(rng.randrange(300))


def framed(rng: random.Random) -> bytes:
    """A message framed as some sender would: plain, labelled, compressed, sealed with
    our key or another; then maybe truncated or mutated."""
    keys = rng.choice([None, None, KEY, WRONG])
    sender = Envelope(Keyring([keys], rng.randbytes) if keys else None,
                      label=rng.choice(["", "", "blue"]), compress=rng.random() < 0.4)
    data = bytearray(encode_stream(message(rng), sender))
    roll = rng.random()
    if roll < 0.2 and data:
        del data[rng.randrange(len(data)):]
    elif roll < 0.5:
        for _ in range(rng.randrange(1, 4)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
    elif roll < 0.6:
        at = rng.randrange(len(data) + 1)
        data[at:at] = rng.randbytes(rng.randrange(1, 9))
    return bytes(data)


def slices(rng: random.Random, data: bytes) -> list[bytes]:
    """``data`` cut as a network might deliver it: whole, or trickled."""
    if rng.random() < 0.3:
        return [data]
    out, at = [], 0
    while at < len(data):
        step = rng.choice([1, 2, 7, 64, 512, 4096])
        out.append(data[at : at + step])
        at += step
    return out


def receiver(rng: random.Random) -> Envelope:
    return rng.choice([Envelope(), Envelope(Keyring([KEY])), Envelope(label="blue"),
                       Envelope(Keyring([KEY]), label="blue")])


@pytest.mark.fuzz
@pytest.mark.parametrize("fuzz_seed", fuzz_seeds(1, 2))
def test_random_stream_bodies_end_in_a_message_or_a_refusal(fuzz_seed: int) -> None:
    rng = random.Random(fuzz_seed)
    outcomes: dict[str, int] = {}
    tracemalloc.start()
    try:
        for _ in range(INPUTS):
            data = framed(rng)
            reader = StreamReader(receiver(rng), limits=LIMITS)
            tracemalloc.reset_peak()
            start = time.process_time()
            outcome = "incomplete"
            try:
                for piece in slices(rng, data):
                    if reader.feed(piece) is not None:
                        outcome = "message"
                        break
                else:
                    reader.eof()
            except DecodeError as exc:
                outcome = exc.reason
            cpu = time.process_time() - start
            _, peak = tracemalloc.get_traced_memory()
            assert cpu < CPU_SECONDS, (fuzz_seed, data[:40], cpu)
            assert reader.received <= LIMITS.max_bytes or outcome == "oversized"
            assert reader.inflated <= LIMITS.max_bytes
            # what one input may hold: its limit a few times over (copies, parsed objects)
            assert peak < 8 * LIMITS.max_bytes + 256 * 1024, (fuzz_seed, data[:40], peak)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    finally:
        tracemalloc.stop()
    # the fuzz got both far and nowhere (which refusals a seed reaches is its luck)
    assert outcomes.get("message") and len(set(outcomes) - {"message"}) >= 3, outcomes
    assert "incomplete" not in outcomes


@pytest.mark.fuzz
@pytest.mark.parametrize("fuzz_seed", fuzz_seeds(1))
async def test_random_streams_at_a_node_leave_it_answering(fuzz_seed: int) -> None:
    rng = random.Random(fuzz_seed)
    async with gossip_node("fuzzed", keys=(KEY,)) as node:
        for _ in range(SOCKET_INPUTS):
            data = framed(rng)
            stream = await trio.open_tcp_stream(*node.address)
            async with stream:
                with trio.move_on_after(0.5):  # a truncated input waits for more: close it
                    try:
                        for piece in slices(rng, data)[:64]:
                            await stream.send_all(piece)
                        await stream.receive_some(65536)
                    except (trio.BrokenResourceError, OSError):
                        pass  # refused and closed: allowed
        with trio.fail_after(5):
            assert await tcp_ping(node, Envelope(Keyring([KEY]))) == Ack(7)
        refused = {k: v for k, v in node.counters.items() if k.startswith("streams_refused_")}
        assert refused.get("streams_refused_key")
        assert node.statistics().members == 1
