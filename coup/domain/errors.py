"""Every refusal the domain gives, with its code, its (Korean, as the product's UI) message
and its HTTP status: one table for the socket `error` event and the HTTP API alike.

Room commands may run on another node, so they return refusals as JSON
(`refusal(error)`) and the caller turns them back into a `ClientError` (`raise_refusal`).
"""

from __future__ import annotations

from typing import Any

from coup.core import ClientError

AUTH_FAILED_MESSAGE = "인증 실패"

#: code -> (HTTP status, default message)
ERRORS: dict[str, tuple[int, str]] = {
    "BAD_REQUEST": (400, "잘못된 요청입니다"),
    "UNKNOWN_EVENT": (400, "알 수 없는 이벤트입니다"),
    "AUTH_FAILED": (401, AUTH_FAILED_MESSAGE),
    "NOT_MEMBER": (403, "스터디 멤버가 아닙니다"),
    "NOT_IN_STUDY": (403, "스터디 채팅방에 입장하지 않았습니다"),
    "FORBIDDEN": (403, "권한이 없습니다"),
    "NOT_FOUND": (404, "찾을 수 없습니다"),
    "CONFLICT": (409, "이미 다른 요청에 사용된 clientMessageId입니다"),
    "CONTENT_TOO_LONG": (413, "메시지가 너무 깁니다"),
    "PAYLOAD_TOO_LARGE": (413, "요청 본문이 너무 큽니다"),
    "RATE_LIMITED": (429, "요청이 너무 많습니다. 잠시 후 다시 시도하세요"),
    "RETRY": (503, "일시적인 오류입니다. 같은 clientMessageId로 다시 시도하세요"),
}


def client_error(code: str, message: str | None = None, **data: Any) -> ClientError:
    """A refusal with the table's message unless a more precise one is given."""
    return ClientError(code, message or ERRORS[code][1], data or None)


def http_status(code: str) -> int:
    return ERRORS.get(code, (500, ""))[0]


def bad_request(message: str) -> ClientError:
    return client_error("BAD_REQUEST", message)


def not_found(what: str) -> ClientError:
    return client_error("NOT_FOUND", f"{what}을(를) 찾을 수 없습니다")


def refusal(error: ClientError) -> dict[str, Any]:
    """A refusal as a room command's JSON result."""
    body: dict[str, Any] = {"ok": False, "error": {"code": error.code, "message": error.message}}
    if error.data:
        body["error"]["data"] = error.data
    return body


def raise_refusal(result: Any) -> dict[str, Any]:
    """Return a successful room command result; raise the `ClientError` of a refusal."""
    if not isinstance(result, dict):
        raise TypeError(f"room command returned {type(result).__name__}, not a dict")
    if result.get("ok") is False:
        error = result.get("error") or {}
        raise ClientError(str(error.get("code", "INTERNAL")), str(error.get("message", "")),
                          error.get("data") or None)
    return result
