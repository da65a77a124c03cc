"""LZW exactly as Go's ``compress/lzw`` writes it (LSB-first, literal width 8).

memberlist's ``compress`` message carries LZW bytes, and Go peers compress every stream
when compression is enabled (serf's default), so a peer must decode them.

Codes 0-255 are literals, 256 is CLEAR, 257 is EOF, new codes start at 258, codes grow
from 9 to 12 bits. When the table is full the decoder freezes it until the next CLEAR;
the encoder emits CLEAR and starts over (``docs/gossip-wire.md`` §5).

What an honest encoder can send for ``n`` bytes of output bounds the decoder's work
before it starts (Go's writer, and :func:`compress`, which writes the same codes):

* every data code yields at least one byte, so at most ``n`` data codes;
* a CLEAR goes first (Go since 1.17; older writers start with a literal) and then only
  when the table is full: after every :data:`CODES_PER_TABLE` data codes (the code
  that makes the next free code 4095), so at most ``1 + n // 3838`` of them;
* one EOF.

So at most :func:`max_codes` ``= n + n // 3838 + 2`` codes, each at most 12 bits wide:
at most :func:`max_input` ``= ceil(12 * max_codes(n) / 8)`` bytes. The decoder refuses
longer input before reading a code, refuses a CLEAR anywhere else (the first code, or
a full table), and counts codes against :func:`max_codes`, so its CPU is bounded by the
output it may produce (about half a microsecond a code in CPython) whatever the input.
"""

from __future__ import annotations

from .errors import DecodeError

_CLEAR = 256
_EOF = 257
_MAX_WIDTH = 12
_MAX_CODE = (1 << _MAX_WIDTH) - 1
_LITERALS = (*(bytes((i,)) for i in range(256)), b"", b"")
#: Data codes an honest encoder sends between two CLEARs: from the first free code
#: (258 is assigned after the first code) until the next free code is 4095.
CODES_PER_TABLE = _MAX_CODE - _EOF


def max_codes(max_output: int) -> int:
    """Most codes (CLEAR and EOF included) an honest encoding of ``max_output`` bytes has."""
    return max_output + max_output // CODES_PER_TABLE + 2


def max_input(max_output: int) -> int:
    """Most bytes an honest encoding of at most ``max_output`` bytes takes."""
    return (max_codes(max_output) * _MAX_WIDTH + 7) // 8


def decompress(data: bytes, max_output: int) -> bytes:
    """Decode Go LZW bytes; raise :class:`DecodeError` on bad input or past ``max_output``.

    Input longer than :func:`max_input` is refused before any code is read; then each
    code is counted (:func:`max_codes`) and ``max_output`` is checked before each
    code's bytes are appended."""
    inflater = Inflater(data, max_output)
    out = inflater.run()
    assert out is not None
    return out


class Inflater:
    """One decompression that can run in steps: :meth:`run` decodes up to ``budget``
    codes and returns the output once the EOF code is read (None until then).

    Its work is bounded before it starts: the constructor refuses input longer than
    :func:`max_input`, and no more than :func:`max_codes` codes are ever decoded."""

    __slots__ = (
        "_bits", "_data", "_hi", "_max_codes", "_max_output", "_n_bits", "_out", "_pos",
        "_prev", "_table", "_width", "codes",
    )

    def __init__(self, data: bytes, max_output: int) -> None:
        limit = max_input(max_output)
        if len(data) > limit:
            raise DecodeError(
                f"lzw: {len(data)} bytes is more than an encoding of {max_output} bytes takes"
                f" ({limit})", "oversized",
            )
        self._data = data
        self._max_output = max_output
        self._max_codes = max_codes(max_output)
        self._out = bytearray()
        self._table: list[bytes] = list(_LITERALS)
        self._width = 9
        self._hi = _EOF  # the code the next table entry will get, minus one
        self._prev: bytes | None = None
        self._bits = 0
        self._n_bits = 0
        self._pos = 0
        #: codes decoded so far (CLEAR and EOF included)
        self.codes = 0

    def run(self, budget: int | None = None) -> bytes | None:
        """Decode up to ``budget`` more codes (all if None); the output once done."""
        data = self._data
        size = len(data)
        max_output = self._max_output
        out = self._out
        table = self._table
        width = self._width
        hi = self._hi
        prev = self._prev
        bits = self._bits
        n_bits = self._n_bits
        pos = self._pos
        codes = self.codes
        stop = self._max_codes if budget is None else min(codes + budget, self._max_codes)
        while True:
            if codes >= stop:
                self.codes = codes
                if codes >= self._max_codes:
                    raise DecodeError(
                        f"lzw: more than {self._max_codes} codes for {max_output} bytes",
                        "oversized",
                    )
                self._width, self._hi, self._prev = width, hi, prev
                self._bits, self._n_bits, self._pos = bits, n_bits, pos
                return None
            while n_bits < width:
                if pos >= size:
                    self.codes = codes
                    raise DecodeError("lzw: data ends before the EOF code")
                bits |= data[pos] << n_bits
                pos += 1
                n_bits += 8
            code = bits & ((1 << width) - 1)
            bits >>= width
            n_bits -= width
            codes += 1
            if code == _CLEAR:
                # an honest encoder clears first, or once the table is full (not frozen)
                if codes != 1 and (hi != _MAX_CODE or prev is None):
                    self.codes = codes
                    raise DecodeError(f"lzw: CLEAR with the table not full ({hi})")
                del table[258:]
                width = 9
                hi = _EOF
                prev = None
                continue
            if code == _EOF:
                self.codes = codes
                return bytes(out)
            if code < len(table):
                entry = table[code]  # a literal or a defined code (the table may be frozen)
            elif code == hi and prev is not None:
                entry = prev + prev[:1]
            else:
                self.codes = codes
                raise DecodeError(f"lzw: code {code} is past the table ({hi})")
            if len(out) + len(entry) > max_output:
                self.codes = codes
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
