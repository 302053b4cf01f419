"""Log lines an operator can read and a machine can parse: one format for the whole process.

``COUP_LOG_FORMAT=text`` (the default, for a terminal) writes logfmt-like lines on stderr:
``time=... level=INFO logger=coup.engine node=n1 sid=... msg="..."``; ``json`` writes one
object per line on stdout with ``time``, ``level``, ``logger``, ``node``, ``sid`` and
``user`` where known, ``message`` and, after a failure, ``exception`` (the traceback).

Where a log line comes from the handling of one client, the core and the domain say which
(`log_context`, `bind_user`): a context variable, so the many ``log.info(...)`` calls need
no extra arguments, and it follows the handler's task across awaits.

HTTP access lines (`AccessLog`): the API, pages and static files at INFO; Engine.IO and
SockJS transport requests (every long-poll) and health checks only at DEBUG.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

#: (sid, user) of the client whose request is being handled, when there is one
_CONTEXT: contextvars.ContextVar[tuple[str | None, str | None]] = contextvars.ContextVar(
    "coup_log_context", default=(None, None))

#: record attributes (set through ``extra=``) that both formats print as fields
FIELDS = ("method", "path", "status", "duration_ms", "remote_ip", "transport", "event", "reason")


def log_context(sid: str | None, user: str | None = None) -> contextvars.Token[tuple[str | None, str | None]]:
    """Say that what follows in this context handles client `sid` (of `user`, when known);
    `reset_context(token)` ends it."""
    return _CONTEXT.set((sid, user))


def reset_context(token: contextvars.Token[tuple[str | None, str | None]]) -> None:
    _CONTEXT.reset(token)


def bind_user(user: object) -> None:
    """Add the user being served to the current context (the domain knows who it is)."""
    sid, _ = _CONTEXT.get()
    _CONTEXT.set((sid, str(user)))


class ContextFilter(logging.Filter):
    """Puts the node id, and the sid / user of the current context, on every record."""

    def __init__(self, node: str | None) -> None:
        super().__init__()
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        sid, user = _CONTEXT.get()
        if not hasattr(record, "node"):
            record.node = self.node
        if sid is not None and not hasattr(record, "sid"):
            record.sid = sid
        if user is not None and not hasattr(record, "user"):
            record.user = user
        return True


def _iso(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


def _fields(record: logging.LogRecord, names: Iterable[str]) -> list[tuple[str, Any]]:
    return [(name, value) for name in names if (value := getattr(record, name, None)) is not None]


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (tracebacks are a string field)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            **dict(_fields(record, ("node", "sid", "user"))),
            "message": record.getMessage(),
            **dict(_fields(record, FIELDS)),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


def _logfmt(value: Any) -> str:
    text = str(value)
    if text and not any(c in text for c in ' ="\\\n\t'):
        return text
    return json.dumps(text, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """logfmt-like ``key=value`` pairs; a traceback follows on its own lines."""

    def format(self, record: logging.LogRecord) -> str:
        pairs = [("time", _iso(record.created)), ("level", record.levelname), ("logger", record.name),
                 *_fields(record, ("node", "sid", "user")), ("msg", record.getMessage()),
                 *_fields(record, FIELDS)]
        line = " ".join(f"{key}={_logfmt(value)}" for key, value in pairs)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def set_node(node: str) -> None:
    """Name the node on every line from now on (its id is known once it is built)."""
    for handler in logging.getLogger().handlers:
        for log_filter in handler.filters:
            if isinstance(log_filter, ContextFilter):
                log_filter.node = node


def configure_logging(level: str, fmt: str, node: str | None, *, stream: TextIO | None = None) -> logging.Handler:
    """Replace the root logger's handlers with one in the chosen format; return it."""
    if stream is None:
        stream = sys.stdout if fmt == "json" else sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter(node))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


class AccessLog:
    """Tornado's ``log_function``: one line per HTTP request, at a level that depends on what it was."""

    def __init__(self, quiet_prefixes: Iterable[str], quiet_paths: Iterable[str]) -> None:
        #: transport requests: a long-polling client makes one every few seconds
        self.quiet_prefixes = tuple(p.rstrip("/") for p in quiet_prefixes)
        self.quiet_paths = frozenset(quiet_paths) | frozenset(self.quiet_prefixes)
        self._under = tuple(prefix + "/" for prefix in self.quiet_prefixes)
        self.log = logging.getLogger("coup.access")

    def quiet(self, path: str) -> bool:
        return path in self.quiet_paths or path.startswith(self._under)

    def __call__(self, handler: Any) -> None:
        request = handler.request
        # no query string in the path: it may carry what does not belong in a log
        self.entry(request.method, request.path, handler.get_status(), request.request_time, request.remote_ip)

    def entry(self, method: str, path: str, status: int, seconds: Callable[[], float], remote_ip: Any) -> None:
        """One request's line (Tornado's requests through `__call__`, the front door's directly)."""
        if status == 503 and self.quiet(path):
            level = logging.INFO  # a probe or a handshake told "not now" (not ready, draining): no error
        elif status >= 500:
            level = logging.ERROR
        elif self.quiet(path):
            level = logging.DEBUG
        else:
            level = logging.WARNING if status >= 400 else logging.INFO
        if not self.log.isEnabledFor(level):
            return
        duration = 1000.0 * seconds()
        self.log.log(level, "%d %s %s %.1fms", status, method, path, duration, extra={
            "method": method, "path": path, "status": status, "duration_ms": round(duration, 2),
            "remote_ip": remote_ip})


__all__ = ["AccessLog", "ContextFilter", "JsonFormatter", "TextFormatter", "bind_user", "configure_logging",
           "log_context", "reset_context", "set_node"]
