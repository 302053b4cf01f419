"""permessage-deflate (RFC 7692) for the server side, sans-I/O: negotiation and the codec.

`negotiate` reads a client's ``Sec-WebSocket-Extensions`` offers and returns what we agree
to (or None: the connection goes on uncompressed). We always answer
``server_no_context_takeover``: every message we send is compressed on its own, so its
compressed bytes depend only on the message and the window size, and a broadcast is
compressed once for every receiver with the same parameters (`Compression`, interned, is the
key `coup.protocol.wire.Outbound` caches under). docs/architecture.md has the cost of the
alternative.

`Inflater` decompresses what a client sends, bounded: a message never grows past the room
the reader gives it (``max_length``), so a small compressed frame that would expand to
gigabytes (a deflate bomb) is refused after at most that many bytes.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from coup.protocol.errors import DecodeError, PayloadTooLarge

#: the name of the extension in Sec-WebSocket-Extensions
EXTENSION = "permessage-deflate"
#: what a sync flush ends with; stripped from each message we send, appended to each we receive
_TAIL = b"\x00\x00\xff\xff"
_PARAMETERS = frozenset({"server_no_context_takeover", "client_no_context_takeover",
                         "server_max_window_bits", "client_max_window_bits"})


@dataclass(frozen=True, slots=True)
class Compression:
    """How we compress outgoing messages on connections that agreed to the same parameters.

    Instances are interned (`Compression.of`), so a cache can compare them by identity.
    """

    #: the LZ77 window we may use (the client's server_max_window_bits, else 15)
    window_bits: int
    #: messages shorter than this many bytes go uncompressed
    threshold: int

    @staticmethod
    def of(window_bits: int, threshold: int) -> Compression:
        key = (window_bits, threshold)
        found = _INTERNED.get(key)
        if found is None:
            found = _INTERNED[key] = Compression(window_bits, threshold)
        return found

    def compress(self, payload: bytes) -> bytes:
        """One message compressed on its own (no context from earlier messages), tail stripped."""
        return compress_message(payload, self.window_bits)


_INTERNED: dict[tuple[int, int], Compression] = {}


@dataclass(frozen=True, slots=True)
class Agreement:
    """The outcome of a successful negotiation."""

    #: the Sec-WebSocket-Extensions value of our 101 answer
    response: str
    compression: Compression
    #: the client resets its window after every message: so do we (no inflate state kept)
    client_no_context_takeover: bool
    #: the client's window (client_max_window_bits); we inflate with 15, which reads any
    client_window_bits: int = 15


def _parse_offers(header: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """``name; p; q=v, name2`` into [(name, [(p, None), (q, v)]), ...] (names lower-cased)."""
    offers = []
    for item in header.split(","):
        parts = [p.strip() for p in item.split(";")]
        if not parts[0]:
            continue
        params: list[tuple[str, str | None]] = []
        for part in parts[1:]:
            if not part:
                continue
            name, eq, value = part.partition("=")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            params.append((name.strip().lower(), value if eq else None))
        offers.append((parts[0].lower(), params))
    return offers


def _window_bits(value: str | None) -> int | None:
    """A window size parameter's value: 8..15 written as a plain decimal, else None."""
    if value is None or not value.isdigit() or value[0] == "0":
        return None
    bits = int(value)
    return bits if 8 <= bits <= 15 else None


def negotiate(header: str | None, threshold: int) -> Agreement | None:
    """Accept the first permessage-deflate offer we can honour (RFC 7692 section 5).

    An offer with an unknown or repeated parameter, or a malformed value, is declined and the
    next one is tried; with none acceptable the connection is not compressed.
    """
    if not header:
        return None
    for name, params in _parse_offers(header):
        if name != EXTENSION:
            continue
        seen: dict[str, str | None] = {}
        valid = True
        for key, value in params:
            if key not in _PARAMETERS or key in seen:
                valid = False
                break
            seen[key] = value
        if not valid:
            continue
        if any(seen.get(flag, None) is not None for flag in
               ("server_no_context_takeover", "client_no_context_takeover")):
            continue  # these two take no value
        server_bits = 15
        if "server_max_window_bits" in seen:
            bits = _window_bits(seen["server_max_window_bits"])
            if bits is None:
                continue
            server_bits = bits
        client_bits = 15
        if "client_max_window_bits" in seen and seen["client_max_window_bits"] is not None:
            bits = _window_bits(seen["client_max_window_bits"])
            if bits is None:
                continue
            client_bits = bits
        response = [EXTENSION, "server_no_context_takeover"]
        client_reset = "client_no_context_takeover" in seen
        if client_reset:
            response.append("client_no_context_takeover")
        if "server_max_window_bits" in seen:
            response.append(f"server_max_window_bits={server_bits}")
        return Agreement("; ".join(response), Compression.of(server_bits, threshold),
                         client_no_context_takeover=client_reset, client_window_bits=client_bits)
    return None


_compressors: dict[int, zlib._Compress] = {}


def compress_message(payload: bytes, window_bits: int = 15) -> bytes:
    """`payload` as one permessage-deflate message with no context takeover.

    One compressor per window size serves every message: a full flush after each one both
    ends it on a byte boundary and forgets the history, so the next message refers to nothing
    before it (the same bytes a fresh compressor would give, without allocating one per message).
    zlib cannot deflate with a 256-byte window (8 bits); for that we use run-length matching
    only, whose every back-reference is one byte, which any window decodes.
    """
    compressor = _compressors.get(window_bits)
    if compressor is None:
        if window_bits == 8:
            compressor = zlib.compressobj(6, zlib.DEFLATED, -9, 8, zlib.Z_RLE)
        else:
            compressor = zlib.compressobj(6, zlib.DEFLATED, -window_bits)
        _compressors[window_bits] = compressor
    data = compressor.compress(payload) + compressor.flush(zlib.Z_FULL_FLUSH)
    return data[:-4]  # a flush always ends with the empty stored block 00 00 ff ff


class Inflater:
    """Decompresses the messages of one connection, never past the room it is given."""

    __slots__ = ("_decompressor", "_reset", "_window_bits")

    def __init__(self, *, no_context_takeover: bool, window_bits: int = 15) -> None:
        self._reset = no_context_takeover
        self._window_bits = window_bits
        #: created on the first compressed message; dropped after each one without takeover
        self._decompressor: zlib._Decompress | None = None

    def feed(self, data: bytes, room: int) -> bytes:
        """Inflate part of a message; raise `PayloadTooLarge` when it would exceed `room` bytes."""
        decompressor = self._decompressor
        if decompressor is None:
            decompressor = self._decompressor = zlib.decompressobj(-self._window_bits)
        try:
            out = decompressor.decompress(data, room + 1)  # one byte more tells "too large"
        except zlib.error as exc:
            raise DecodeError(f"invalid compressed data: {exc}", close_code=1007) from None
        if len(out) > room:
            raise PayloadTooLarge(f"compressed message expands past {room} more bytes")
        return out

    def finish(self, room: int) -> bytes:
        """The end of a message: inflate the stripped tail, then forget the window if agreed."""
        out = self.feed(_TAIL, room)
        decompressor = self._decompressor
        if self._reset or (decompressor is not None and decompressor.eof):
            self._decompressor = None  # after a final block (BFINAL) the stream cannot go on
        return out
