"""Names that come from outside — user ids, topics, device names: one check each, used
by every way in (HTTP routes, client frames, token subjects, peer frames, the CLI).

A name is a key (in the mailboxes, the store, the routing tables) and goes into log
lines as it is, so a name is 1 to N **bytes** of UTF-8 (not characters: a user id of
256 four-byte characters would be 1 KiB in every frame and row) and holds no character
that can break a line or disguise one:

* control characters: C0 (U+0000-U+001F), DEL (U+007F), C1 (U+0080-U+009F, U+0085 the
  "next line" among them);
* the line and paragraph separators U+2028, U+2029;
* the bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069),
  which reorder what a terminal shows of the rest of a line, and U+FEFF (a byte order mark);
* half a surrogate pair (U+D800-U+DFFF, which JSON can escape): it has no UTF-8 form.

Characters not assigned yet are allowed: which ones those are depends on the Unicode
version of each node's Python, and nodes of a cluster must agree on what a name is.
Pure; a refusal is a ValueError whose text says why.
"""

from __future__ import annotations

import re

#: the longest user id, in bytes of UTF-8
MAX_USER_SIZE = 256
#: the longest topic, in bytes of UTF-8
MAX_TOPIC_SIZE = 256
#: the longest device name, in bytes of UTF-8
MAX_DEVICE_SIZE = 128
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]")


def check_name(value: object, what: str, limit: int, *, empty: bool = False) -> str:
    """``value`` if it can be a name of ``limit`` bytes at most (``empty``: or none);
    else ValueError saying why, in words that start with ``what``. On the path of every
    send: cheap for the usual names (printable ASCII)."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string")
    if value.isascii() and value.isprintable() and len(value) <= limit and (value or empty):
        return value  # the usual name: one byte a character, none a control character
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        raise ValueError(f"{what} must be valid Unicode (it has half a surrogate pair)") from None
    if size > limit or not (size or empty):
        kind = "string" if empty else "non-empty string"
        raise ValueError(f"{what} must be a {kind} of at most {limit} bytes (UTF-8)")
    bad = _FORBIDDEN.search(value)
    if bad:
        raise ValueError(f"{what} must not contain control characters, line separators or "
                         f"bidirectional controls (U+{ord(bad.group()):04X})")
    return value


def check_user(user: object) -> str:
    """``user`` if it can be a user id; else ValueError with the reason."""
    if type(user) is str and user.isascii() and user.isprintable() and (
            0 < len(user) <= MAX_USER_SIZE):
        return user  # the usual id, without a call more
    return check_name(user, "user id", MAX_USER_SIZE)


def is_user(value: object) -> bool:
    """Whether ``value`` can be a user id (for peer frames: a bad one is counted, not
    answered)."""
    try:
        check_user(value)
    except ValueError:
        return False
    return True


def check_topic(topic: object, limit: int = MAX_TOPIC_SIZE) -> str:
    """``topic`` if it can be a topic (of ``limit`` bytes at most); else ValueError."""
    return check_name(topic, "topic", limit)


def check_device(device: object) -> str:
    """``device`` if it can be a device name (empty: the default device); else ValueError."""
    return check_name(device, "device", MAX_DEVICE_SIZE, empty=True)


def is_device(value: object) -> bool:
    """Whether ``value`` can be a device name."""
    try:
        check_device(value)
    except ValueError:
        return False
    return True
