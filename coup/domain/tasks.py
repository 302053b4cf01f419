"""Task changes from the HTTP API, announced live to the study room (and the assignee)."""

from __future__ import annotations

from typing import Any

from coup.core import Namespace
from coup.domain import queries
from coup.domain.access import require_active
from coup.domain.database import Database
from coup.domain.errors import bad_request, not_found
from coup.domain.event_names import ServerEvent
from coup.domain.notifications import Notifier
from coup.domain.roomnames import study_room, user_room


class TaskService:
    def __init__(self, nsp: Namespace, db: Database, notifier: Notifier) -> None:
        self.nsp = nsp
        self.db = db
        self.notifier = notifier

    async def _study_of(self, task_id: int, user_id: int) -> int:
        """The task's study, after checking the user may act in it."""
        study_id = await self.db.run(queries.task_study, task_id)
        if study_id is None:
            raise not_found("할 일")
        await require_active(self.db, study_id, user_id)
        return study_id

    async def update_status(self, user_id: int, task_id: int, status: str) -> dict[str, Any]:
        study_id = await self._study_of(task_id, user_id)
        task = await self.db.run(queries.update_task_status, task_id, user_id, status)
        if task is None:
            raise not_found("할 일")
        self.nsp.to(study_room(study_id)).emit(
            ServerEvent.TASK_UPDATED,
            {"taskId": task_id, "status": task["status"], "updatedBy": user_id, "studyId": study_id})
        return task

    async def assign(self, user_id: int, task_id: int, assignee_id: int) -> dict[str, Any]:
        study_id = await self._study_of(task_id, user_id)
        result = await self.db.run(queries.assign_task, task_id, user_id, assignee_id)
        if result["outcome"] == "no_task":
            raise not_found("할 일")
        if result["outcome"] == "not_member":
            raise bad_request("assigneeId: 이 스터디의 활성 멤버가 아닙니다 (not an ACTIVE member of the study)")
        self.nsp.to(study_room(study_id), user_room(assignee_id)).emit(
            ServerEvent.TASK_ASSIGNED, {"taskId": task_id, "assigneeId": assignee_id, "studyId": study_id})
        self.notifier.push(assignee_id, result["notification"])
        task: dict[str, Any] = result["task"]
        return task
