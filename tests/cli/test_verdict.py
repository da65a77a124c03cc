"""The chaos verdict on staged histories: each kind of failure is reported."""

from __future__ import annotations

from cli.verdict import Receipt, Sent, judge

DEVICES = {"ann": ["ann/phone", "ann/laptop"], "ben": ["ben/phone"]}
SENT = [Sent("m1", "ann", 1, True), Sent("m2", "ann", 2, True), Sent("m3", "ben", 1, True),
        Sent("m4", "ben", 2, False)]


def clean() -> dict[str, list[Receipt]]:
    return {"ann/phone": [Receipt("m1", 1), Receipt("m2", 2)],
            "ann/laptop": [Receipt("m1", 1), Receipt("m2", 2)],
            "ben/phone": [Receipt("m3", 1)]}


def test_a_clean_history_passes() -> None:
    verdict = judge(SENT, DEVICES, clean())
    assert verdict.ok and verdict.summary() == {
        "sent": 4, "acknowledged": 3, "delivered": 3, "lost": 0, "duplicates": 0,
        "reordered": 0, "unacknowledged_delivered": 0, "ok": True}


def test_a_message_missing_on_one_device_is_lost() -> None:
    history = clean()
    history["ann/laptop"] = [Receipt("m1", 1)]
    verdict = judge(SENT, DEVICES, history)
    assert not verdict.ok and verdict.lost == [("m2", "ann/laptop")]
    assert verdict.delivered == 2


def test_duplicates_are_counted_not_failed() -> None:
    history = clean()
    history["ben/phone"] = [Receipt("m3", 1), Receipt("m3", 1), Receipt("m4", 2)]
    verdict = judge(SENT, DEVICES, history)
    assert verdict.ok and verdict.duplicates == 1 and verdict.unacknowledged_delivered == 1


def test_a_reordering_is_reported() -> None:
    history = clean()
    history["ann/phone"] = [Receipt("m2", 2), Receipt("m1", 1)]
    verdict = judge(SENT, DEVICES, history)
    assert verdict.ok and verdict.reordered == [("ann/phone", "m1", 1, 2)]


def test_an_unacknowledged_message_may_go_missing() -> None:
    verdict = judge([Sent("x", "ben", 9, False)], DEVICES, {})
    assert verdict.ok and verdict.sent == 1 and verdict.acknowledged == 0
