"""Mailboxes as a pure core: numbering, exact acks, retries, expiry."""

from __future__ import annotations

import gc
import random

import pytest

from node.clients import (
    READ_KEPT, WRITTEN_KEPT, ClientSession, LocalClients, Written, take_through,
)
from node.mailbox import DEVICE_REWRITE, MAX_DEVICES, Limits, Mailboxes, Stored, as_stored

NOW = 1_800_000_000.0


def fill(boxes: Mailboxes, user: str, count: int, now: float = NOW) -> list[Stored]:
    out = []
    for i in range(count):
        stored = boxes.new(user, f"{user}-{i}", f"body {i}", now, ttl=60)
        assert boxes.put(stored)
        out.append(stored)
    return out


def test_sequence_numbers_increase_and_follow_the_clock() -> None:
    boxes = Mailboxes()
    first, second = fill(boxes, "u", 2)
    assert first.seq == int(NOW * 1_000_000) and second.seq == first.seq + 1
    later = boxes.new("u", "x", "b", NOW - 100, ttl=None)  # a clock that went back
    assert later.seq == second.seq + 1
    other = Mailboxes()  # a new owner that has not heard of them
    assert other.new("u", "y", "b", NOW + 0.5, None).seq > second.seq


def test_an_ack_removes_exactly_the_messages_it_names() -> None:
    boxes = Mailboxes()
    boxes.see_device("u", "phone", NOW)
    a, b, c = fill(boxes, "u", 3)
    assert [s.seq for s in boxes.ack("u", [a.seq, c.seq], "phone", NOW)] == [a.seq, c.seq]
    assert [s.seq for s in boxes.pending("u")] == [b.seq]  # not named: kept
    assert boxes.ack("nobody", [5], "phone", NOW) == []
    assert boxes.ack("u", [12345], "phone", NOW) == []  # unknown numbers are ignored
    assert [s.seq for s in boxes.remove("u", [b.seq])] == [b.seq]


def test_every_known_device_must_ack() -> None:
    boxes = Mailboxes()
    for device in ("phone", "laptop"):
        boxes.see_device("u", device, NOW)
    first, second = fill(boxes, "u", 2)
    assert boxes.ack("u", [first.seq, second.seq], "phone", NOW) == []  # the laptop lacks both
    assert [s.seq for s in boxes.ack("u", [second.seq], "laptop", NOW)] == [second.seq]
    assert [s.seq for s in boxes.pending("u")] == [first.seq]
    assert [s.seq for s in boxes.ack("u", [first.seq], "laptop", NOW)] == [first.seq]


def test_a_cumulative_ack_covers_only_what_its_connection_wrote_before() -> None:
    """A lower number that went another way (a broken link, a full queue, another
    owner) is not covered by the ack of a higher one."""
    written = Written()
    assert all(written.add(seq) for seq in (10, 30, 20, 40))
    assert written.take_through(30) == [10, 30]
    assert list(written) == [20, 40]
    assert written.take_through(25) == []  # never written here: covers nothing
    assert written.take_through(40) == [20, 40] and not list(written)
    assert take_through([10, 30, 20], 30) == [10, 30]  # a parked connection's list
    assert take_through([10, 30, 20], 25) == []


def test_a_connection_carries_an_unacked_message_once_so_acks_stay_exact() -> None:
    """Found by a partition run: a message written twice on one connection (a retry, a
    second device's reconnect) made the ack of its first copy cover what was written
    between the two copies — which the client had not read yet. If the connection then
    broke, those messages were lost for that device."""
    reread: list[list[int]] = []
    session = ClientSession("s", "u", "d", "", set(),
                            on_read=lambda _session, seqs: reread.append(seqs))
    first = session.wrote([{"t": "msg", "qos": 1, "seq": 5}, {"t": "msg", "qos": 1, "seq": 7}])
    assert [m["seq"] for m in first] == [5, 7]
    again = session.wrote([{"t": "msg", "qos": 1, "seq": 5}, {"t": "msg", "qos": 0, "seq": 0},
                           {"t": "msg", "qos": 1, "seq": 9}])
    assert [m["seq"] for m in again] == [0, 9] and session.rewrites_skipped == 1
    assert session.acked_through(5) == [5]  # the client read 5, not yet 7
    assert session.acked_through(9) == [7, 9]
    assert reread == []
    # acked, 5 comes again (a retry whose ack went astray): acked again, not written
    assert session.wrote([{"t": "msg", "qos": 1, "seq": 5}]) == []
    assert reread == [[5]]


def test_a_resume_naming_the_last_read_message_covers_nothing_written_after_it() -> None:
    """Found by a chaos run (1 loss in 450,000): the client read and acked 5; an owner
    that came back with an old copy sent 5 again after 8, and the connection broke with
    neither read. The client resumed naming 5, the last it read — and the parked list
    [8, 5] made that cover 8, unread: lost. A read message is never written again on its
    connection, so the resume covers nothing and 8 is sent again."""
    reread: list[list[int]] = []
    session = ClientSession("s", "u", "d", "", set(),
                            on_read=lambda _session, seqs: reread.append(seqs))
    session.wrote([{"t": "msg", "qos": 1, "seq": 5}])
    assert session.acked_through(5) == [5]
    out = session.wrote([{"t": "msg", "qos": 1, "seq": 8}, {"t": "msg", "qos": 1, "seq": 5}])
    assert [m["seq"] for m in out] == [8] and reread == [[5]]
    parked = list(session.written or ())
    assert parked == [8] and take_through(parked, 5) == []


def test_a_resumed_connection_does_not_write_what_its_hello_says_was_read() -> None:
    """A hello's ``last_seq`` names a message read before: not written on the new
    connection (acked again instead), so a later resume naming it covers nothing here."""
    reread: list[list[int]] = []
    session = ClientSession("s", "u", "d", "", set(), read_before=[5],
                            on_read=lambda _session, seqs: reread.append(seqs))
    out = session.wrote([{"t": "msg", "qos": 1, "seq": 8}, {"t": "msg", "qos": 1, "seq": 5}])
    assert [m["seq"] for m in out] == [8] and reread == [[5]]
    assert take_through(list(session.written or ()), 5) == []


def test_a_full_written_list_leaves_more_to_their_owner_rather_than_forget_any() -> None:
    """Forgetting the oldest unacked message would let it be written again: ambiguous."""
    session = ClientSession("s", "u", "d", "", set())
    batch = [{"t": "msg", "qos": 1, "seq": seq} for seq in range(WRITTEN_KEPT + 5)]
    assert len(session.wrote(batch)) == WRITTEN_KEPT and session.dropped == 5
    assert session.acked_through(3) == [0, 1, 2, 3]
    again = session.wrote(batch[WRITTEN_KEPT:])  # room for four: the fifth waits again
    assert [m["seq"] for m in again] == list(range(WRITTEN_KEPT, WRITTEN_KEPT + 4))
    assert session.dropped == 6


def test_written_remembers_the_last_read_messages_the_last_named_always() -> None:
    written = Written()
    written.read(range(READ_KEPT + 5))
    assert not written.has_read(4) and written.has_read(5) and written.has_read(READ_KEPT + 4)
    for seq in range(1000, 1000 + 3 * READ_KEPT):  # read and acked one by one
        assert written.add(seq) and written.take_through(seq) == [seq]
        assert written.has_read(seq)


def test_devices_not_seen_for_the_ttl_are_forgotten() -> None:
    boxes = Mailboxes(Limits(default_ttl=100))
    boxes.see_device("u", "old", NOW)
    boxes.see_device("u", "new", NOW + 90)
    [stored] = fill(boxes, "u", 1, now=NOW + 95)
    boxes.expire(NOW + 150)
    assert set(boxes.devices("u")) == {"new"}
    assert [s.id for s in boxes.ack("u", [stored.seq], "new", NOW + 150)] == [stored.id]


def test_a_device_record_is_to_be_stored_when_new_and_then_once_in_a_while() -> None:
    """Every replicate request brings its users' devices: a replica stores a record when
    it is new or was stored DEVICE_REWRITE before, not with every message."""
    boxes = Mailboxes(Limits(default_ttl=10 * DEVICE_REWRITE))
    assert boxes.see_device("u", "phone", NOW)
    assert not boxes.see_device("u", "phone", NOW + 5)  # known, stored just now
    assert not boxes.see_device("u", "phone", NOW + 1)  # older news moves nothing back
    assert boxes.devices("u") == {"phone": NOW + 5}
    assert boxes.see_device("u", "laptop", NOW + 5)
    assert boxes.see_device("u", "phone", NOW + DEVICE_REWRITE)
    assert not boxes.see_device("u", "phone", NOW + DEVICE_REWRITE + 60)
    boxes.expire(NOW + 12 * DEVICE_REWRITE)  # both forgotten: new again when seen again
    assert boxes.devices("u") == {} and boxes.see_device("u", "phone", NOW + 12 * DEVICE_REWRITE)


def test_what_to_send_now_on_reconnect_and_after_the_ack_timeout() -> None:
    boxes = Mailboxes(Limits(ack_timeout=10))
    a, b = fill(boxes, "u", 2)
    assert boxes.to_send("u", NOW) == [a, b]  # never sent
    boxes.sent(a, NOW)
    assert boxes.to_send("u", NOW + 1) == [b]
    assert [s.seq for s in boxes.to_send("u", NOW + 1, reconnect=True)] == [a.seq, b.seq]
    boxes.sent(b, NOW + 1)
    assert boxes.retry_users(NOW + 5, ["u"]) == []
    assert boxes.retry_users(NOW + 10, ["u", "nobody"]) == ["u"]
    assert boxes.retry_users(NOW + 10, []) == []  # without sessions, nothing to send
    assert [s.seq for s in boxes.to_send("u", NOW + 10)] == [a.seq]
    boxes.sent(a, NOW + 10)
    assert boxes.counters["redelivered"] == 1 and boxes.counters["sent"] == 3
    assert boxes.pending("u")[0].attempts == 0  # sending is not an attempt: writing is


def test_expiry_and_the_cap_on_attempts() -> None:
    """An attempt is a connection that wrote the message and ended before its client
    acked it (``tried``); sending it however often is none."""
    boxes = Mailboxes(Limits(ack_timeout=1, max_attempts=2))
    short = boxes.new("u", "short", "b", NOW, ttl=5)
    boxes.put(short)
    [poison] = fill(boxes, "v", 1)
    for n in range(10):
        boxes.sent(poison, NOW + n / 10)
    assert boxes.expire(NOW + 1) == []
    assert [s.attempts for s in boxes.tried("v", [poison.seq, 12345])] == [1]
    assert boxes.expire(NOW + 1.5) == []
    assert boxes.tried("nobody", [poison.seq]) == []
    boxes.tried("v", [poison.seq])
    removed = boxes.expire(NOW + 5)
    assert {s.id for s in removed} == {"short", "v-0"}
    assert boxes.counters["expired"] == 1 and boxes.counters["dead_lettered"] == 1
    assert boxes.pending_count() == 0


def test_a_message_whose_ttl_is_up_is_never_sent_even_before_it_is_swept() -> None:
    boxes = Mailboxes()
    short = boxes.new("u", "short", "b", NOW, ttl=5)
    boxes.put(short)
    [long] = fill(boxes, "u", 1)
    assert boxes.to_send("u", NOW + 5, reconnect=True) == [long]
    assert boxes.pending_count("u") == 2  # still held: the sweep removes it


def test_a_sweep_looks_at_a_bounded_slice_and_at_every_mailbox_in_turn() -> None:
    """A tick must not cost more with more users waiting offline: each sweep looks at
    about ``budget`` messages, taking up where the last one stopped."""
    boxes = Mailboxes()
    for user in range(100):
        for i in range(3):
            boxes.put(boxes.new(f"u{user}", f"{user}-{i}", "b", NOW, ttl=10 + user % 2 * 100))
    removed_per_sweep = []
    for _ in range(10):
        removed_per_sweep.append(len(boxes.sweep(NOW + 50, budget=40)))
    assert max(removed_per_sweep) <= 3 * 10  # ten mailboxes of four (three + one) at most
    assert sum(removed_per_sweep) == 150  # the fifty users whose messages had 10 s
    assert boxes.pending_count() == 150 and boxes.counters["expired"] == 150
    # a new round: what expired since is found, and a sweep never looks twice at one box
    assert len(boxes.sweep(NOW + 500, budget=10_000)) == 150
    assert boxes.sweep(NOW + 500, budget=10_000) == [] and boxes.pending_count() == 0


def test_replicas_and_handovers_are_idempotent_and_move_the_numbering() -> None:
    owner, replica = Mailboxes(), Mailboxes()
    for stored in fill(owner, "u", 3):
        assert replica.put(stored)
        assert not replica.put(stored)
    assert replica.last_seq("u") == owner.last_seq("u")
    assert replica.new("u", "n", "b", NOW, None).seq == owner.last_seq("u") + 1
    assert [s.id for s in replica.drop_user("u")] == ["u-0", "u-1", "u-2"]
    assert replica.pending("u") == [] and replica.users() == []


def test_a_full_mailbox_refuses_more() -> None:
    boxes = Mailboxes(Limits(max_pending_per_user=2))
    fill(boxes, "u", 2)
    with pytest.raises(OverflowError, match="limit"):
        boxes.new("u", "x", "b", NOW, None)


def test_wire_form_round_trips_and_refuses_junk() -> None:
    [stored] = fill(Mailboxes(), "u", 1)
    assert Stored.from_wire(stored.to_wire()) == stored
    assert stored.to_client()["qos"] == 1 and stored.to_client()["seq"] == stored.seq
    for junk in (None, {}, {**stored.to_wire(), "seq": "1"}, {**stored.to_wire(), "ts": "x"}):
        with pytest.raises(ValueError):
            Stored.from_wire(junk)


def test_messages_that_come_out_of_order_are_sent_in_order() -> None:
    """A handover or a replica's copy may bring lower numbers after higher ones: what a
    user is sent, and what a mailbox holds, still go by seq."""
    boxes = Mailboxes()
    stored = [Stored("u", seq, f"m{seq}", "b", NOW, NOW + 60) for seq in (50, 20, 70, 10, 60)]
    for one in stored:
        assert boxes.put(one)
    assert not boxes.put(stored[1])  # known
    assert [s.seq for s in boxes.to_send("u", NOW)] == [10, 20, 50, 60, 70]
    boxes.remove("u", [20, 60])
    assert boxes.put(Stored("u", 30, "m30", "b", NOW, NOW + 60))
    assert boxes.put(Stored("u", 80, "m80", "b", NOW, NOW + 60))
    assert [s.seq for s in boxes.pending("u")] == [10, 30, 50, 70, 80]
    assert boxes.new("u", "n", "b", 0.0, None).seq == 81
    assert [s.seq for s in boxes.drop_user("u")] == [10, 30, 50, 70, 80]


def test_the_count_of_all_pending_messages_follows_every_way_in_and_out() -> None:
    """``pending_count()`` is kept as messages come and go (status and metrics ask for it
    often; summing a million mailboxes each time was not free): it always equals the
    sum of the mailboxes, whatever the order of puts, acks, removals, expiry and
    handovers."""
    rnd = random.Random(7)
    boxes = Mailboxes(Limits(ack_timeout=1, max_attempts=2))
    users = [f"u{n}" for n in range(6)]
    now = NOW
    for _ in range(3000):
        now += rnd.random()
        user = rnd.choice(users)
        move = rnd.randrange(8)
        if move < 3:
            stored = Stored(user, rnd.randrange(1, 60), "m", "b", now, now + rnd.uniform(1, 30))
            boxes.put(stored)
        elif move == 3 and (pending := boxes.pending(user)):
            boxes.sent(rnd.choice(pending), now)
            boxes.tried(user, [rnd.choice(pending).seq])
        elif move == 4:
            boxes.ack(user, rnd.sample(range(1, 60), 5), "", now)
        elif move == 5:
            boxes.remove(user, rnd.sample(range(1, 60), 5))
        elif move == 6:
            boxes.sweep(now, budget=rnd.randrange(1, 20))
        elif rnd.random() < 0.1:
            boxes.drop_user(user)
        assert boxes.pending_count() == sum(boxes.pending_count(u) for u in users)
    assert boxes.pending_count() > 0  # the walk did not just empty everything


def test_waiting_messages_leave_the_garbage_collector_alone() -> None:
    """A full collection walks every object it tracks: with a message in a named tuple
    each, a node holding a million offline users' messages paused for about a second.
    Kept as plain tuples they are untracked once the collector has looked at them; what
    stays tracked grows with the users, not with their messages."""
    boxes = Mailboxes()
    users = [f"u{n}" for n in range(20)]
    gc.collect()
    before = len(gc.get_objects())
    for user in users:
        fill(boxes, user, 200)
    boxes.tried("u1", [boxes.pending("u1")[3].seq])  # an attempt keeps it untracked too
    gc.collect()
    gc.collect()  # a mailbox's dict is untracked at a full collection after its messages
    assert len(gc.get_objects()) - before <= 3 * len(users)
    assert sum(type(o) is Stored for o in gc.get_objects()) == 0
    # and they are the same messages
    assert [s.attempts for s in boxes.pending("u1")[2:5]] == [0, 1, 0]
    assert [s.body for s in boxes.to_send("u2", NOW)[:2]] == ["body 0", "body 1"]


def test_a_kept_copy_is_the_pending_messages_and_no_work_for_the_collector() -> None:
    """What a handover round keeps while its copies are under way (``kept``): with a
    ``Stored`` each in a list per user, a collection during a round over 100,000 users
    walked them all (~180 ms; ~100 ms now)."""
    boxes = Mailboxes()
    fill(boxes, "u", 3)
    kept = boxes.kept("u")
    gc.collect()
    assert not any(gc.is_tracked(p) for p in kept)
    gc.collect()  # the tuple holding them, once it holds only untracked ones
    assert not gc.is_tracked(kept)
    assert [as_stored(p) for p in kept] == boxes.pending("u")
    assert boxes.kept("nobody") == ()


def test_a_held_holder_is_not_retried_and_what_a_connection_missed_is_sent_again() -> None:
    """A connection that dropped messages at its full queue asks for them itself once it
    has room: meanwhile the owner's retries to its node are held, so a reader that does
    not drain is not offered the same messages every ack timeout."""
    boxes = Mailboxes(Limits(ack_timeout=10))
    a, b, c = fill(boxes, "u", 3)
    for stored in (a, b, c):
        boxes.sent(stored, NOW)
    phone = ("node-2", "s1")
    boxes.hold("u", phone, NOW + 300)
    boxes.hold("nobody", phone, NOW + 300)  # no mailbox: nothing to hold
    assert boxes.held("u", NOW + 20) == (phone,) and boxes.held("nobody", NOW) == ()
    assert boxes.held("u", NOW + 300) == ()  # if its word is lost (and forgotten)
    boxes.hold("u", phone, NOW + 300)
    assert boxes.to_send("u", NOW + 20, held=True) == []  # all sent once: held
    assert [s.seq for s in boxes.resend("u", [c.seq, 999, a.seq], NOW + 20)] == [c.seq, a.seq]
    assert boxes.counters["resent"] == 2 and boxes.counters["redelivered"] == 0
    boxes.hold("u", phone, 0.0)
    assert boxes.held("u", NOW + 20) == ()
    assert boxes.retry_users(NOW + 20, ["u"]) == ["u"]
    assert [s.seq for s in boxes.to_send("u", NOW + 20)] == [b.seq]  # c, a: sent again
    assert boxes.resend("nobody", [a.seq], NOW) == []
    assert all(s.attempts == 0 for s in boxes.pending("u"))


def test_a_new_message_for_a_held_holder_brings_no_retry_with_it() -> None:
    """Review of #17, 2.1: the hold stopped working as soon as a message came, since
    what was sent for it carried every due retry too; under steady traffic a stuck
    connection was offered every pending message once per ack timeout. A held holder
    gets only what was never sent (all of it on a new session)."""
    boxes = Mailboxes(Limits(ack_timeout=10))
    a = fill(boxes, "u", 1)[0]
    boxes.sent(a, NOW)
    boxes.hold("u", ("node-2", "s1"), NOW + 300)
    assert boxes.retry_users(NOW + 20, ["u"]) == ["u"]  # a is due: to holders not held
    b = boxes.new("u", "b", "b", NOW + 20, ttl=60)
    boxes.put(b)
    assert [s.seq for s in boxes.to_send("u", NOW + 20, held=True)] == [b.seq]
    assert [s.seq for s in boxes.to_send("u", NOW + 20)] == [a.seq, b.seq]
    assert [s.seq for s in boxes.to_send("u", NOW + 20, held=True, reconnect=True)] == [
        a.seq, b.seq]
    short = boxes.new("u", "short", "b", NOW + 20, ttl=1)
    boxes.put(short)
    assert [s.seq for s in boxes.to_send("u", NOW + 21, held=True)] == [b.seq]  # TTL up


def test_holds_are_per_connection_and_expire() -> None:
    """Review of #17, 2.2: the hold was per user, so one device's stuck connection held
    the retries to the user's other devices, and one connection finishing its resends
    released a hold another still needed. Each connection (node, session) holds and
    releases its own; a hold past its time is forgotten, so they take no memory after."""
    boxes = Mailboxes()
    fill(boxes, "u", 1)
    fill(boxes, "v", 1)
    phone, tablet = ("node-2", "s1"), ("node-2", "s2")
    boxes.hold("u", phone, NOW + 300)
    boxes.hold("u", tablet, NOW + 100)
    boxes.hold("v", ("node-3", "s3"), NOW + 50)
    assert set(boxes.held("u", NOW)) == {phone, tablet}
    boxes.hold("u", tablet, 0.0)  # the tablet asked for all it missed
    assert boxes.held("u", NOW) == (phone,)  # the phone still holds node-2's retries
    boxes.hold("u", tablet, 0.0)  # released twice: nothing more
    boxes.hold("u", phone, NOW + 400)  # renewed
    boxes.expire_holds(NOW + 60)
    assert boxes._holds == {"u": {phone: NOW + 400}}
    boxes.expire_holds(NOW + 400)
    assert boxes._holds == {}
    boxes.hold("u", phone, NOW + 300)
    boxes.drop_user("u")  # handed over: its holds go with it
    assert boxes._holds == {} and boxes.held("u", NOW) == ()


def test_a_message_whose_ttl_is_up_is_not_sent_again_either() -> None:
    boxes = Mailboxes()
    short = boxes.new("u", "short", "b", NOW, ttl=5)
    boxes.put(short)
    assert boxes.resend("u", [short.seq], NOW + 5) == []


def test_a_connection_asks_for_what_its_full_queue_dropped_half_a_queue_at_a_time() -> None:
    """A QoS 1 message dropped at a full queue is noted; the owner is told once to hold
    its retries, and each time the queue has emptied into the socket the connection asks
    for the next half queue of what it missed, in order, until it has asked for all. A
    retry of one it carries already is no loss; one it asked for comes back once."""
    held: list[str] = []
    asked: list[tuple[list[int], bool]] = []
    session = ClientSession("s", "u", "d", "r", set(), limit=4,
                            on_full=lambda s: held.append(s.session),
                            on_room=lambda _s, seqs, more: asked.append((seqs, more)))

    def message(seq: int) -> dict:
        return {"t": "msg", "qos": 1, "seq": seq, "id": f"m{seq}", "body": "b"}
    taken = [session.offer(message(seq)) for seq in range(1, 11)]
    assert taken == [True] * 4 + [False] * 6 and held == ["s"]
    assert not session.offer(message(7)) and held == ["s"]  # held already
    assert not session.offer({"t": "msg", "qos": 0, "seq": 0, "body": "b"})  # QoS 0: gone
    assert asked == []  # no room yet
    session.wrote(session.take(256))  # written: the queue has room
    assert asked == [([5, 6], True)]
    session.take(256)  # empty again, but 5 and 6 are still on their way: wait for them
    assert asked == [([5, 6], True)]
    for seq in (5, 6):
        assert session.offer(message(seq))
    session.wrote(session.take(256))
    assert asked[-1] == ([7, 8], True)
    for seq in (7, 8):
        session.offer(message(seq))
    session.wrote(session.take(256))
    assert asked[-1] == ([9, 10], False) and session.missed is None  # all asked for
    for seq in (1, 2, 3, 4):  # retries of what it carries fill the queue ...
        session.offer(message(seq))
    assert not session.offer(message(4)) and session.missed is None  # ... and are no loss
    assert held == ["s"]


def test_a_connection_with_its_list_of_unacked_messages_full_asks_after_acks() -> None:
    """Messages beyond ``WRITTEN_KEPT`` unacked on one connection are dropped as from a
    full queue, and asked for once acks make room (not at once: they would be dropped
    again)."""
    asked: list[list[int]] = []
    session = ClientSession("s", "u", "d", "r", set(), limit=WRITTEN_KEPT + 10,
                            on_room=lambda _s, seqs, _more: asked.append(seqs))
    for seq in range(1, WRITTEN_KEPT + 3):
        session.offer({"t": "msg", "qos": 1, "seq": seq, "body": "b"})
    written = session.wrote(session.take(WRITTEN_KEPT + 10))
    assert len(written) == WRITTEN_KEPT and session.dropped == 2
    assert asked == []  # the list is full
    assert session.acked_through(1) == [1]
    assert asked == [[WRITTEN_KEPT + 1, WRITTEN_KEPT + 2]]


def test_what_a_connection_missed_beyond_its_limit_is_counted_and_left_to_retries(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("node.clients.MISSED_KEPT", 3)
    asked: list[list[int]] = []
    session = ClientSession("s", "u", "d", "r", set(), limit=1,
                            on_room=lambda _s, seqs, _more: asked.append(seqs))
    clients = LocalClients()
    clients.attach(session)
    for seq in range(1, 7):  # 1 queued, 2-4 noted, 5-6 beyond the limit
        session.offer({"t": "msg", "qos": 1, "seq": seq, "body": "b"})
    assert session.missed is not None and list(session.missed.seqs) == [2, 3, 4]
    clients.detach(session)
    assert clients.counters["client_missed_over_limit"] == 2


def test_a_user_keeps_its_most_recently_seen_devices_up_to_the_bound() -> None:
    """Every replicate request and handover carries the devices of its users: one client
    naming thousands in its hellos made those frames larger than a link carries."""
    boxes = Mailboxes()
    for i in range(MAX_DEVICES + 10):
        assert boxes.see_device("u", f"d{i}", NOW + i)
    kept = boxes.devices("u")
    assert set(kept) == {f"d{i}" for i in range(10, MAX_DEVICES + 10)}
    assert boxes.counters["devices_evicted"] == 10
    # a record from a peer older than all of them is not kept (nor to be stored)
    assert not boxes.see_device("u", "stale", NOW - 1)
    assert "stale" not in boxes.devices("u")
    # an ack names a device too: a new one evicts the least recently seen
    boxes.ack("u", [], "acker", NOW + 1000)
    assert len(boxes.devices("u")) == MAX_DEVICES and "d10" not in boxes.devices("u")
    # an evicted device that comes back is a device again
    assert boxes.see_device("u", "d0", NOW + 2000)
    assert "d0" in boxes.devices("u") and len(boxes.devices("u")) == MAX_DEVICES
