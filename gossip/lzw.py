"""LZW exactly as Go's ``compress/lzw`` writes it (LSB-first, literal width 8).

memberlist's ``compress`` message carries LZW bytes, and Go peers compress every stream
when compression is enabled (serf's default), so a peer must decode them.

Codes 0-255 are literals, 256 is CLEAR, 257 is EOF, new codes start at 258, codes grow
from 9 to 12 bits. When the table is full the decoder freezes it until the next CLEAR;
the encoder emits CLEAR and starts over (``docs/gossip-wire.md`` §5).
"""

from __future__ import annotations

from .errors import DecodeError

_CLEAR = 256
_EOF = 257
_MAX_WIDTH = 12
_MAX_CODE = (1 << _MAX_WIDTH) - 1
_LITERALS = (*(bytes((i,)) for i in range(256)), b"", b"")


def decompress(data: bytes, max_output: int) -> bytes:
    """Decode Go LZW bytes; raise :class:`DecodeError` on bad input or past ``max_output``.

    ``max_output`` is checked before each code's bytes are appended, so the decoder never
    holds more than that and stops at the first code that would pass it: its work is
    bounded by ``max_output`` whatever the input claims."""
    out = bytearray()
    table: list[bytes] = list(_LITERALS)
    width = 9
    hi = _EOF  # the code the next table entry will get, minus one until a code is read
    prev: bytes | None = None
    bits = 0
    n_bits = 0
    pos = 0
    size = len(data)
    while True:
        while n_bits < width:
            if pos >= size:
                raise DecodeError("lzw: data ends before the EOF code")
            bits |= data[pos] << n_bits
            pos += 1
            n_bits += 8
        code = bits & ((1 << width) - 1)
        bits >>= width
        n_bits -= width
        if code == _CLEAR:
            del table[258:]
            width = 9
            hi = _EOF
            prev = None
            continue
        if code == _EOF:
            return bytes(out)
        if code < len(table):
            entry = table[code]  # a literal or a defined code (the table may be frozen)
        elif code == hi and prev is not None:
            entry = prev + prev[:1]
        else:
            raise DecodeError(f"lzw: code {code} is past the table ({hi})")
        if len(out) + len(entry) > max_output:
            raise DecodeError(f"lzw: output larger than {max_output} bytes", "oversized")
        out += entry
        if prev is not None:
            table.append(prev + entry[:1])
        prev = entry
        hi += 1
        if hi >= 1 << width:
            if width == _MAX_WIDTH:
                prev = None
                hi -= 1
            else:
                width += 1


def compress(data: bytes) -> bytes:
    """Encode as Go 1.19's ``lzw.NewWriter(w, lzw.LSB, 8)`` does, leading CLEAR included."""
    out = bytearray()
    bits = 0
    n_bits = 0
    width = 9

    def emit(code: int) -> None:
        nonlocal bits, n_bits
        bits |= code << n_bits
        n_bits += width
        while n_bits >= 8:
            out.append(bits & 0xFF)
            bits >>= 8
            n_bits -= 8

    table: dict[int, int] = {}
    hi = _EOF

    def bump() -> bool:
        """Advance ``hi``; True when the table was reset (no entry may be added)."""
        nonlocal hi, width
        hi += 1
        if hi == 1 << width:
            width += 1
        if hi == _MAX_CODE:
            emit(_CLEAR)
            width = 9
            hi = _EOF
            table.clear()
            return True
        return False

    emit(_CLEAR)
    if data:
        code = data[0]
        for byte in data[1:]:
            key = code << 8 | byte
            found = table.get(key)
            if found is not None:
                code = found
                continue
            emit(code)
            code = byte
            if not bump():
                table[key] = hi
        emit(code)
        bump()
    emit(_EOF)
    if n_bits > 0:
        out.append(bits & 0xFF)
    return bytes(out)
