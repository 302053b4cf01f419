"""Checks on what clients send: each failure is a `BAD_REQUEST` (or a more precise code)
naming the field, raised before anything changes.

Strings are also checked for what the databases cannot store: NUL (PostgreSQL text refuses
it) and lone UTF-16 surrogates (JSON allows ``"\\ud800"``, UTF-8 does not).
"""

from __future__ import annotations

import json
from typing import Any

from coup.domain.errors import bad_request, client_error

MAX_CONTENT = 4000
#: arrays and objects inside one another in a request body (ours need 3)
MAX_JSON_DEPTH = 32
MAX_CLIENT_MESSAGE_ID = 64
#: ids are database row numbers; anything larger is not one of ours (PostgreSQL bigint)
MAX_ID = 2**63 - 1


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _too_deep(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def json_body(raw: bytes) -> Any:
    """A request body parsed as JSON. Anything else is BAD_REQUEST: bad UTF-8, bad JSON, NaN,
    and nesting deeper than `MAX_JSON_DEPTH` (deeper than Python's stack once raised a
    RecursionError: a 500 with a traceback)."""
    try:
        data = json.loads(raw or b"null", parse_constant=_no_constant)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise bad_request("요청 본문이 올바른 JSON이 아닙니다 (invalid JSON)") from None
    if _too_deep(data, MAX_JSON_DEPTH):
        raise bad_request(f"요청 본문이 너무 깊게 중첩되어 있습니다 (nested deeper than {MAX_JSON_DEPTH})")
    return data


def payload(args: list[Any]) -> dict[str, Any]:
    """The event's first argument, which must be an object."""
    if not args or not isinstance(args[0], dict):
        raise bad_request("요청 본문은 객체여야 합니다 (payload must be an object)")
    return args[0]


def positive_id(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID:
        raise bad_request(f"{field}: 양의 정수여야 합니다 (must be a positive integer)")
    return value


def required_id(data: dict[str, Any], field: str) -> int:
    if field not in data or data[field] is None:
        raise bad_request(f"{field}: 필수 항목입니다 (required)")
    return positive_id(data[field], field)


def optional_id(data: dict[str, Any], field: str) -> int | None:
    value = data.get(field)
    return None if value is None else positive_id(value, field)


def storable(value: str, field: str) -> str:
    if "\x00" in value:
        raise bad_request(f"{field}: NUL 문자는 허용되지 않습니다 (NUL not allowed)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(f"{field}: 올바른 유니코드가 아닙니다 (invalid Unicode)") from None
    return value


def text(data: dict[str, Any], field: str, *, max_length: int, required: bool = True) -> str | None:
    """A non-blank string of at most `max_length` characters (None when optional and absent)."""
    value = data.get(field)
    if value is None:
        if required:
            raise bad_request(f"{field}: 필수 항목입니다 (required)")
        return None
    if not isinstance(value, str):
        raise bad_request(f"{field}: 문자열이어야 합니다 (must be a string)")
    if not value.strip():
        raise bad_request(f"{field}: 비어 있을 수 없습니다 (must not be empty)")
    if len(value) > max_length:
        raise bad_request(f"{field}: {max_length}자 이하여야 합니다 (at most {max_length} characters)")
    return storable(value, field)


def required_text(data: dict[str, Any], field: str, *, max_length: int) -> str:
    value = text(data, field, max_length=max_length)
    assert value is not None
    return value


def content(data: dict[str, Any]) -> str:
    """A chat message's content: stored and delivered exactly as sent."""
    value = data.get("content")
    if not isinstance(value, str):
        raise bad_request("content: 문자열이어야 합니다 (must be a string)")
    if not value.strip():
        raise bad_request("content: 비어 있을 수 없습니다 (must not be empty)")
    if len(value) > MAX_CONTENT:
        raise client_error("CONTENT_TOO_LONG", f"메시지는 {MAX_CONTENT}자 이하여야 합니다", maxLength=MAX_CONTENT)
    return storable(value, "content")


def client_message_id(data: dict[str, Any]) -> str | None:
    value = data.get("clientMessageId")
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_CLIENT_MESSAGE_ID or not value.isprintable():
        raise bad_request(f"clientMessageId: 1-{MAX_CLIENT_MESSAGE_ID}자의 문자열이어야 합니다")
    return storable(value, "clientMessageId")


def choice(data: dict[str, Any], field: str, allowed: tuple[str, ...]) -> str:
    value = data.get(field)
    if not isinstance(value, str) or value not in allowed:
        raise bad_request(f"{field}: {', '.join(allowed)} 중 하나여야 합니다")
    return value


def json_object(data: dict[str, Any], field: str, *, max_bytes: int = 16_384) -> dict[str, Any] | None:
    value = data.get(field)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_request(f"{field}: 객체여야 합니다 (must be an object)")
    try:
        encoded = json.dumps(value, ensure_ascii=False)
        encoded.encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError):
        raise bad_request(f"{field}: JSON 객체여야 합니다") from None
    if len(encoded.encode("utf-8")) > max_bytes:
        raise bad_request(f"{field}: {max_bytes}바이트 이하의 JSON이어야 합니다")
    return value
