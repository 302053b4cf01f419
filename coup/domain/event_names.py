"""The product's Socket.IO event names (shared/MISSION.md), spelled once for the server.

`static/js/events.js` spells the same lists once for the demo page; tests/test_js_lint.py
checks that the two agree and that no module of the domain spells an event out instead.
"""

from __future__ import annotations

from typing import Final


class ClientEvent:
    """Events a client sends (client → server); the domain handles each."""

    JOIN_STUDY: Final = "join-study"
    LEAVE_STUDY: Final = "leave-study"
    MESSAGE: Final = "message"
    TYPING: Final = "typing"
    READ: Final = "read"
    NOTIFICATION_READ: Final = "notification-read"


class ServerEvent:
    """Events the server sends (server → client)."""

    MESSAGE: Final = "message"
    TYPING: Final = "typing"
    READ: Final = "read"
    NOTIFICATION: Final = "notification"
    NOTIFICATION_READ: Final = "notification-read"
    USER_ONLINE: Final = "user-online"
    USER_OFFLINE: Final = "user-offline"
    MEMBER_JOINED: Final = "member-joined"
    MEMBER_LEFT: Final = "member-left"
    TASK_UPDATED: Final = "task-updated"
    TASK_ASSIGNED: Final = "task-assigned"
    #: the socket was taken out of a study's room because its membership ended (issue 13)
    REMOVED_FROM_STUDY: Final = "removed-from-study"
    #: a refusal (`{message, code, event}`); sent by the core, `ServerOptions.error_event`
    ERROR: Final = "error"


def event_names(kind: type) -> frozenset[str]:
    """Every name a `ClientEvent` / `ServerEvent`-style class defines."""
    return frozenset(v for k, v in vars(kind).items() if k.isupper() and isinstance(v, str))
