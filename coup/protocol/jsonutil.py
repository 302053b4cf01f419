"""JSON exactly as JavaScript's JSON.stringify / JSON.parse see it.

Compact separators and raw UTF-8 (like JSON.stringify); NaN and Infinity are refused in
both directions (JSON.parse rejects them, Python's json would accept them), and so are
numbers that overflow to infinity; deep nesting and huge integers become a `DecodeError`
instead of a RecursionError or ValueError.
"""

from __future__ import annotations

import json
import json.encoder
import math
from typing import Any

from coup.protocol.errors import DecodeError, EncodeError


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _finite_float(text: str) -> float:
    """``1e999`` is valid JSON but overflows to infinity, which we could never send back."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
_decode = _decoder.decode
#: the C scanner under `JSONDecoder.decode`, which also matches a whitespace regex at both ends
_scan_once = _decoder.scan_once  # type: ignore[attr-defined]

# The C encoder built once (JSONEncoder.encode builds one per call; bench/README.md has the
# figure). Without the markers dict a circular value ends in RecursionError instead of
# ValueError; both become EncodeError below.
_c_encoder = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    None, _not_json, json.encoder.encode_basestring, None, ":", ",", False, False, False,
) if json.encoder.c_make_encoder is not None else None  # type: ignore[attr-defined]


def _encode(value: Any) -> str:
    if _c_encoder is None:  # pragma: no cover - CPython always has the C encoder
        return _encoder.encode(value)
    return "".join(_c_encoder(value, 0))


def dumps(value: Any) -> str:
    """Serialise `value` as JSON.stringify would; raise `EncodeError` for what it cannot carry."""
    try:
        return _encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise EncodeError(f"value cannot be sent as JSON: {type(exc).__name__}") from None


def encode_plain(value: Any) -> str:
    """`dumps` that lets TypeError through (a value JSON cannot carry, e.g. bytes), so a caller
    can try JSON first and look for binary values only when that fails; ValueError (NaN,
    Infinity) and RecursionError still become `EncodeError`."""
    try:
        return _encode(value)
    except (ValueError, RecursionError) as exc:
        raise EncodeError(f"value cannot be sent as JSON: {type(exc).__name__}") from None


def loads(text: str) -> Any:
    """Parse JSON text from a peer; any failure is a `DecodeError`.

    A text that is one JSON value without surrounding whitespace (every packet a client
    library sends) is parsed by the scanner alone; anything else by `JSONDecoder.decode`,
    which gives the same value or the same refusal."""
    try:
        try:
            value, end = _scan_once(text, 0)
        except StopIteration:  # not a value at 0 (whitespace first, or invalid): decode says which
            return _decode(text)
        if end != len(text):  # whitespace or more after the value
            return _decode(text)
        return value
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise DecodeError(f"invalid JSON: {type(exc).__name__}") from None
