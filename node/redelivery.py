"""What a user's connections wrote and missed, told by the node holding them to the
user's owner, which decides on attempts and retries from it (``delivery.py`` delivers;
``clients.py`` notes what a connection wrote and missed).

Sending a QoS 1 message to the nodes that hold its user's connections is not an
attempt: a connection whose queue is full drops it, and one that carries it already
does not write it again. So the holder tells the owner what happened:

* ``tried``: a connection ended; these messages were written on it and its client did
  not ack them. Each counts one attempt (after ``max_attempts`` a message is
  dead-lettered), unless the node ended the connection itself (``NOT_TRIED``).
* ``hold``: a connection (named by its session) started dropping QoS 1 messages at its
  full queue (and again every ``clients.HOLD_RENEW`` while it goes on). The owner holds
  its retries **to that node** for up to ``HOLD``: offering a connection that does not
  drain the same messages every ack timeout only had them dropped again (77,992 drops
  for 8,000 messages). Retries to the user's other nodes go on (a device stuck on one
  node must not leave the user's other devices without their retries), and a message
  never sent goes to every node, held or not: a held node gets one offer per message.
  ``hold`` with ``on`` false releases it: the connection ended before it asked for all
  it missed (whatever the reason: a connection closed as slow is the usual one).
* ``resend``: the connection's queue has emptied into its socket; the owner sends these
  messages it missed again, to that node only, and keeps holding while the connection
  has ``more`` to ask for; without ``more`` that connection's hold is released (not
  another's: each connection holds on its own, and a node's retries resume once none
  of its connections holds them). Resends are not attempts either.

A slow or stuck reader is thus offered each message about once while it does not read,
gets them all, in step with its reading, when it reads again, and never uses up their
attempts: they wait for their TTL like a user's who is offline. A hold costs the owner
one entry per connection that asked (only for a session registered with it from that
node), forgotten on release, when the session is no longer registered, or after
``HOLD`` (``Mailboxes.expire_holds``, every tick).

The three frames are the ``redelivery`` feature (``peer_proto.REDELIVERY``): a holder
sends them only to an owner whose hello listed it (docs/push.md lists their fields).
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
    from .clients import ClientSession
    from .config import Config
    from .mailbox import Mailboxes
    from .peer_link import PeerLinks
    from .ring import HashRing
    from .routing import Router

#: how long an owner holds its retries to a node one of whose connections of the user
#: missed messages at its full queue: if the connection's word is lost, the retries take
#: over after this
HOLD = 300.0
#: a connection that ended for one of these is not counted as having failed at what it
#: was written: the node ended it (a kick; the node stopping), or closed it because its
#: client did not read (``slow``: a stuck reader must never use up a message's attempts,
#: which would make an acknowledged message disappear before its TTL)
NOT_TRIED = frozenset({"kicked", "closed", "slow"})
Frame = dict[str, Any]


class Redelivery:
    def __init__(self, config: Config, *, ring: HashRing, router: Router, links: PeerLinks,
                 mailboxes: Mailboxes, carry_out: Callable[[list[Any]], None]) -> None:
        self._me = config.name
        self._ring = ring
        self._router = router  # who has registered which sessions of a user, at its owner
        self._links = links
        self._mailboxes = mailboxes  # the mailboxes held here
        self._carry_out = carry_out  # the node's: deliver here, or send to a peer

    # ---- at the node holding the connection ---------------------------------------------

    def full(self, session: ClientSession) -> None:
        """``session`` here drops QoS 1 messages at its full queue: it will ask for them
        once it has room; the owner holds its retries to this node meanwhile."""
        self._tell(session.user, session.session, {"t": "hold", "user": session.user,
                                                   "session": session.session})

    def room(self, session: ClientSession, seqs: list[int], more: bool) -> None:
        """``session`` here has room for these messages it missed: the owner sends them
        again (to this node); ``more``: it will ask for others after them."""
        user = session.user
        owner = self._ring.owner(user)
        if owner == self._me:
            self._resend(owner, user, session.session, seqs, more)
        elif owner is not None and self._takes(owner):
            self._links.send(owner, {"t": "resend", "user": user,
                                             "session": session.session, "seqs": seqs,
                                             "more": more})

    def closed(self, session: ClientSession, written: list[int]) -> None:
        """``session`` here ended: its hold (if it asked for one and not yet for all it
        missed) is released, whatever the reason; what it wrote that its client did not
        ack counts as one attempt each at the owner (unless the node ended it)."""
        user = session.user
        if session.missed is not None:
            self._tell(user, session.session, {"t": "hold", "user": user,
                                               "session": session.session, "on": False})
        if not written or session.closed_reason in NOT_TRIED:
            return
        owner = self._ring.owner(user)
        if owner == self._me:
            self._tried(user, written)
        elif owner is not None and self._takes(owner):
            self._links.send_later(owner, {"t": "tried", "user": user,
                                                   "seqs": written})

    def _tell(self, user: str, session: str, frame: Frame) -> None:
        """A ``hold`` (or its release) of ``session`` for ``user``'s owner."""
        owner = self._ring.owner(user)
        if owner == self._me:
            self._hold(owner, user, session, frame.get("on", True))
        elif owner is not None and self._takes(owner):
            self._links.send(owner, frame)

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
        session = frame.get("session")
        if kind != "tried" and not isinstance(session, str):
            return False
        if kind == "hold":
            on = frame.get("on", True)
            if not isinstance(on, bool):
                return False
            self._hold(node, user, session, on)  # type: ignore[arg-type]
            return True
        seqs = frame.get("seqs")
        if not isinstance(seqs, list):
            return False
        seqs = seqs_of(seqs)
        if kind == "tried":
            self._tried(user, seqs)
        else:
            self._resend(node, user, session, seqs,  # type: ignore[arg-type]
                         frame.get("more") is True)
        return True

    def _hold(self, node: str, user: str, session: str, on: bool) -> None:
        """Hold (``on``) or release the retries to ``node`` for ``session`` there: held
        only for a session registered here from that node (one entry per connection)."""
        if self._ring.owner(user) != self._me:
            return
        if not on:
            self._mailboxes.hold(user, (node, session), 0.0)
        elif session in self._router.register.get(user, {}).get(node, ()):
            self._mailboxes.hold(user, (node, session), time.time() + HOLD)

    def _resend(self, node: str, user: str, session: str, seqs: list[int], more: bool
                ) -> None:
        """Send ``seqs`` of ``user`` again to ``node``, which missed them (not counted as
        attempts); hold its retries while ``session`` there has ``more`` to ask for."""
        if self._ring.owner(user) != self._me:
            return  # a new owner sends everything to the user's connections anyway
        self._hold(node, user, session, more)
        now = time.time()
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
