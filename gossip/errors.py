"""Errors of the gossip layer."""


class DecodeError(ValueError):
    """Remote bytes that are not a valid memberlist packet or stream.

    The codec raises only this for bad input; the machine counts and drops it.
    ``reason`` is a short stable word for metrics (``malformed``, ``crc``, ``key``, ...).
    """

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason
