"""The verdict of a chaos run: was anything acknowledged lost? Pure; no I/O.

The chaos harness records every QoS 1 message it sent (and whether the cluster
acknowledged it to the sender) and everything each device received. Then:

* **lost** — an acknowledged message that some device of its user never received;
* **duplicates** — receipts of a message id the device already had (allowed: QoS 1 is
  at least once; counted);
* **reordered** — a first receipt whose sequence number is lower than one the device had
  already received for that user (per-user order is the cluster's promise; reported);
* unacknowledged messages may or may not arrive; those that did are counted.

A run fails (non-zero exit) on any loss.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Sent:
    id: str
    user: str
    seq: int
    acknowledged: bool


@dataclass(frozen=True, slots=True)
class Receipt:
    id: str
    seq: int


@dataclass(slots=True)
class Verdict:
    sent: int = 0
    acknowledged: int = 0
    delivered: int = 0  # acknowledged messages that reached every device of their user
    unacknowledged_delivered: int = 0
    lost: list[tuple[str, str]] = field(default_factory=list)  # (message id, device)
    duplicates: int = 0
    reordered: list[tuple[str, str, int, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.lost

    def summary(self) -> dict[str, object]:
        return {
            "sent": self.sent, "acknowledged": self.acknowledged, "delivered": self.delivered,
            "lost": len(self.lost), "duplicates": self.duplicates,
            "reordered": len(self.reordered),
            "unacknowledged_delivered": self.unacknowledged_delivered, "ok": self.ok,
        }


def judge(sent: Iterable[Sent], devices: Mapping[str, Iterable[str]],
          received: Mapping[str, Iterable[Receipt]]) -> Verdict:
    """``devices``: user -> device names; ``received``: device -> receipts in arrival order."""
    verdict = Verdict()
    firsts: dict[str, set[str]] = {}
    for device, receipts in received.items():
        have: set[str] = set()
        top = -1
        for receipt in receipts:
            if receipt.id in have:
                verdict.duplicates += 1
                continue
            have.add(receipt.id)
            if receipt.seq < top:
                verdict.reordered.append((device, receipt.id, receipt.seq, top))
            top = max(top, receipt.seq)
        firsts[device] = have
    for message in sent:
        verdict.sent += 1
        targets = list(devices.get(message.user, ()))
        reached = [d for d in targets if message.id in firsts.get(d, set())]
        if message.acknowledged:
            verdict.acknowledged += 1
            missing = [d for d in targets if d not in reached]
            verdict.lost.extend((message.id, d) for d in missing)
            if not missing:
                verdict.delivered += 1
        elif reached:
            verdict.unacknowledged_delivered += 1
    return verdict
