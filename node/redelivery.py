"""What a user's connections wrote and missed, told by the node holding them to the
user's owner, which decides on attempts and retries from it (``delivery.py`` delivers;
``clients.py`` notes what a connection wrote and missed).

Sending a QoS 1 message to the nodes that hold its user's connections is not an
attempt: a connection whose queue is full drops it, and one that carries it already
does not write it again. So the holder tells the owner what happened:

* ``tried``: a connection ended; these messages were written on it and its client did
  not ack them. Each counts one attempt (after ``max_attempts`` a message is
  dead-lettered), unless the node ended the connection itself (``NOT_TRIED``).
* ``hold``: a connection started dropping QoS 1 messages at its full queue (and again
  every ``clients.HOLD_RENEW`` while it goes on). The owner holds its retries for the
  user for up to ``HOLD``: offering a connection that does not drain the same messages
  every ack timeout only had them dropped again (77,992 drops for 8,000 messages).
* ``resend``: the connection's queue has emptied into its socket; the owner sends these
  messages it missed again, to that node only, and keeps holding its retries while the
  connection has ``more`` to ask for (they are not attempts either).

A slow or stuck reader is thus offered each message about once while it does not read,
gets them all, in step with its reading, when it reads again, and never uses up their
attempts: they wait for their TTL like a user's who is offline.

The three frames are the ``redelivery`` feature (``peer_proto.REDELIVERY``): a holder
sends them only to an owner whose hello listed it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .frames import seqs_of
from .names import is_user
from .peer_proto import REDELIVERY
from .routing import DeliverLocal, SendPeer

if TYPE_CHECKING:
    from .config import Config
    from .mailbox import Mailboxes
    from .peer_link import PeerLinks
    from .ring import HashRing

#: how long an owner holds its retries for a user one of whose connections missed
#: messages at its full queue: if the connection's word is lost, the retries take over
#: after this
HOLD = 300.0
#: a connection that ended for one of these is not counted as having failed at what it
#: was written: the node ended it (a kick; the node stopping), or closed it because its
#: client did not read (``slow``: a stuck reader must never use up a message's attempts,
#: which would make an acknowledged message disappear before its TTL)
NOT_TRIED = frozenset({"kicked", "closed", "slow"})
Frame = dict[str, Any]


class Redelivery:
    def __init__(self, config: Config, *, ring: HashRing, links: PeerLinks,
                 mailboxes: Mailboxes, carry_out: Callable[[list[Any]], None]) -> None:
        self._me = config.name
        self._ring = ring
        self._links = links
        self._mailboxes = mailboxes  # the mailboxes held here
        self._carry_out = carry_out  # the node's: deliver here, or send to a peer

    # ---- at the node holding the connection ---------------------------------------------

    def full(self, user: str) -> None:
        """A connection of ``user`` here drops QoS 1 messages at its full queue: it will
        ask for them once it has room; the owner holds its retries meanwhile."""
        owner = self._ring.owner(user)
        if owner == self._me:
            self._hold(user)
        elif owner is not None and self._takes(owner):
            self._links.send(owner, {"t": "hold", "user": user})

    def room(self, user: str, seqs: list[int], more: bool) -> None:
        """A connection of ``user`` here has room for these messages it missed: the owner
        sends them again (to this node); ``more``: it will ask for others after them."""
        owner = self._ring.owner(user)
        if owner == self._me:
            self._resend(self._me, user, seqs, more)
        elif owner is not None and self._takes(owner):
            self._links.send(owner, {"t": "resend", "user": user, "seqs": seqs, "more": more})

    def closed(self, user: str, written: list[int], reason: str) -> None:
        """A connection of ``user`` here ended: what it wrote that its client did not ack
        counts as one attempt each at the owner (unless the node ended it)."""
        if not written or reason in NOT_TRIED:
            return
        owner = self._ring.owner(user)
        if owner == self._me:
            self._tried(user, written)
        elif owner is not None and self._takes(owner):
            self._links.send_later(owner, {"t": "tried", "user": user, "seqs": written})

    def _takes(self, owner: str) -> bool:
        """Whether ``owner`` takes these frames; an older one (a rolling upgrade) retries
        every ``ack_timeout`` as before and counts no attempt of ours."""
        return self._links.lists(owner, REDELIVERY)

    # ---- at the owner -------------------------------------------------------------------

    def from_peer(self, node: str, frame: Frame) -> bool:
        """A ``tried``, ``hold`` or ``resend`` frame from ``node``; False if malformed."""
        kind, user = frame.get("t"), frame.get("user")
        if not isinstance(user, str) or not is_user(user):
            return False
        if kind == "hold":
            self._hold(user)
            return True
        seqs = frame.get("seqs")
        if not isinstance(seqs, list):
            return False
        seqs = seqs_of(seqs)
        if kind == "tried":
            self._tried(user, seqs)
        else:
            self._resend(node, user, seqs, frame.get("more") is True)
        return True

    def _hold(self, user: str) -> None:
        if self._ring.owner(user) == self._me:
            self._mailboxes.hold(user, time.time() + HOLD)

    def _resend(self, node: str, user: str, seqs: list[int], more: bool) -> None:
        """Send ``seqs`` of ``user`` again to ``node``, which missed them (not counted as
        attempts); hold the retries while it has ``more`` to ask for."""
        if self._ring.owner(user) != self._me:
            return  # a new owner sends everything to the user's connections anyway
        now = time.time()
        self._mailboxes.hold(user, now + HOLD if more else 0.0)
        actions: list[Any] = []
        for stored in self._mailboxes.resend(user, seqs, now):
            message = stored.to_client()
            if node == self._me:
                actions.append(DeliverLocal(user, message))
            else:
                actions.append(SendPeer(node, {"t": "deliver", "user": user, "msg": message}))
        self._carry_out(actions)

    def _tried(self, user: str, seqs: list[int]) -> None:
        if self._ring.owner(user) == self._me:
            self._mailboxes.tried(user, seqs)
