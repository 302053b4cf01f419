"""Notifications: stored first, then pushed to `user:{id}` (every tab of that user)."""

from __future__ import annotations

from typing import Any

from coup.core import Namespace
from coup.domain import queries
from coup.domain.database import Database
from coup.domain.errors import not_found
from coup.domain.event_names import ServerEvent
from coup.domain.roomnames import user_room


class Notifier:
    def __init__(self, nsp: Namespace, db: Database) -> None:
        self.nsp = nsp
        self.db = db

    def push(self, user_id: int, notification: dict[str, Any]) -> None:
        """Send a stored notification to every socket of its user."""
        self.nsp.to(user_room(user_id)).emit(ServerEvent.NOTIFICATION, notification)

    async def create(self, user_id: int, type_: str, message: str, study_id: int | None = None,
                     data: dict[str, Any] | None = None) -> dict[str, Any]:
        """Store and push one notification; NOT_FOUND when the user or the study does not exist."""
        notification = await self.db.run(queries.create_notification, user_id, type_, message, study_id, data)
        if notification is None:
            raise not_found("사용자 또는 스터디")
        self.push(user_id, notification)
        return notification

    async def create_for_group(self, group_id: int, type_: str, message: str, study_id: int | None = None,
                               data: dict[str, Any] | None = None) -> list[tuple[int, dict[str, Any]]]:
        """Store one notification per group member and push each to its user; NOT_FOUND when
        the group or the study does not exist."""
        created = await self.db.run(queries.create_group_notifications, group_id, type_, message, study_id, data)
        if created is None:
            raise not_found("그룹 또는 스터디")
        for user_id, notification in created:
            self.push(user_id, notification)
        return created

    async def mark_read(self, user_id: int, notification_id: int, *, except_sid: str | None = None) -> bool:
        """Mark the user's own notification read; the user's other sockets learn of it.

        Returns True when it was unread until now; NOT_FOUND for someone else's or a missing one.
        """
        outcome = await self.db.run(queries.mark_notification_read, notification_id, user_id)
        if outcome == "not_found":
            raise not_found("알림")
        if outcome == "read":
            target = self.nsp.to(user_room(user_id))
            if except_sid is not None:
                target = target.except_(except_sid)
            target.emit(ServerEvent.NOTIFICATION_READ, {"notificationId": notification_id})
        return outcome == "read"
