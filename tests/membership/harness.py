"""A few Swim machines wired back to back, delivering instantly (h11's ConnectionPair)."""

from __future__ import annotations

import random
from collections.abc import Callable

from gossip.errors import DecodeError
from membership.config import MembershipConfig
from membership.swim import SendPacket, SendStream, Swim

Address = tuple[str, int]


class Wires:
    def __init__(
        self, n: int, config: Callable[[str], MembershipConfig] = MembershipConfig.lan,
        now: float = 0.0,
    ):
        self.now = now
        self.swims: list[Swim] = []
        self.cut: set[Address] = set()  # addresses whose traffic is lost both ways
        for index in range(n):
            address = (f"10.0.0.{index + 1}", 7946)
            self.swims.append(
                Swim(config(f"n{index}"), address, None, random.Random(index), now)
            )
        self.by_address = {s.address: s for s in self.swims}
        self.sent: list[tuple[Address, Address, bytes]] = []

    def deliver(self, rounds: int = 20) -> None:
        """Move packets and streams between machines until nothing is left to send."""
        for _ in range(rounds):
            moved = False
            for swim in self.swims:
                for action in swim.drain_outbox():
                    moved = True
                    if isinstance(action, SendPacket):
                        self.sent.append((swim.address, action.dst, action.data))
                        target = self.by_address.get(action.dst)
                        if target and swim.address not in self.cut and action.dst not in self.cut:
                            target.receive_packet(self.now, swim.address, action.data)
                    else:
                        self._stream(swim, action)
            if not moved:
                return

    def _stream(self, swim: Swim, action: SendStream) -> None:
        target = self.by_address.get(action.dst)
        if target is None or swim.address in self.cut or action.dst in self.cut:
            swim.stream_failed(self.now, action.token)
            return
        try:
            request = target.stream_reader().feed(action.data)
            assert request is not None
            reply = target.receive_stream(self.now, swim.address, request)
            if reply is None:  # e.g. a TCP ping for another node: the shell closes it
                swim.stream_failed(self.now, action.token)
                return
            message = swim.stream_reader().feed(reply)
            assert message is not None
        except DecodeError:
            swim.stream_failed(self.now, action.token)
            return
        swim.receive_stream_reply(self.now, action.token, message)

    def advance(self, until: float) -> None:
        """Fire every deadline up to ``until`` in time order, delivering after each."""
        while True:
            swim = min(self.swims, key=lambda s: s.next_deadline())
            deadline = swim.next_deadline()
            if deadline > until:
                break
            self.now = max(self.now, deadline)
            swim.tick(self.now)
            self.deliver()
        self.now = until

    def join_all(self) -> None:
        """Everyone joins n0, then one second of protocol time lets gossip spread it."""
        for swim in self.swims[1:]:
            swim.join(self.now, [self.swims[0].address])
        self.deliver()
        self.advance(self.now + 1.0)

    def state(self, observer: int, name: str) -> object:
        member = self.swims[observer].table.get(name)
        return None if member is None else member.state
