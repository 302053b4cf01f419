"""The HTTP API (JSON). Users authenticate with ``Authorization: Bearer <JWT>``; trusted
backends post notifications with the service token instead.

Errors are ``{"error": {"code", "message"}}`` with the status of `coup.domain.errors`:
handlers raise the same `ClientError`s as the socket events, and `ApiHandler.write_error`
is the one place that turns them into responses. Mutating calls go through the same code
as the socket events (room commands, notifier, task service), so each produces its live event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from http.client import responses
from typing import TYPE_CHECKING, Any

from tornado.web import HTTPError, RequestHandler

from coup.core import ClientError
from coup.domain import queries, validation
from coup.domain.access import require_active
from coup.domain.auth import Actor, bearer
from coup.domain.errors import bad_request, client_error, http_status, not_found
from coup.domain.models import TASK_STATUSES

if TYPE_CHECKING:
    from coup.domain.service import CoupDomain

log = logging.getLogger(__name__)

#: a JSON request body larger than this is refused with 413
MAX_BODY = 64 * 1024
DEFAULT_LIMIT = 50
MAX_LIMIT = 100
ID = r"(\d{1,18})"

OriginCheck = Callable[[str | None, str | None], bool]


class ApiHandler(RequestHandler):
    domain: CoupDomain
    origin_allowed: OriginCheck

    def initialize(self, domain: CoupDomain, origin_allowed: OriginCheck) -> None:
        self.domain = domain
        self.origin_allowed = origin_allowed

    # ------------------------------------------------------------------ plumbing

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")

    def _cors(self) -> bool:
        origin = self.request.headers.get("Origin")
        if origin is None:
            return True
        if not self.origin_allowed(origin, self.request.headers.get("Host")):
            return False
        self.set_header("Access-Control-Allow-Origin", origin)
        self.set_header("Access-Control-Allow-Credentials", "true")
        self.add_header("Vary", "Origin")
        return True

    def prepare(self) -> None:
        if not self._cors():
            raise client_error("FORBIDDEN", "허용되지 않은 출처입니다 (origin not allowed)")

    def options(self, *_: str) -> None:
        """CORS preflight."""
        self.set_header("Access-Control-Allow-Methods", "GET, POST, PATCH, OPTIONS")
        self.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type")
        self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)
        self.finish()

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, ClientError):
            log.debug("%s %s refused: %s %s", self.request.method, self.request.path, value.code, value.message)
            return
        super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self._cors()  # send_error cleared the headers; the browser must be able to read the error
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ClientError):
            self.set_status(http_status(exc.code))
            body: dict[str, Any] = {"code": exc.code, "message": exc.message}
            if exc.data:
                body["data"] = exc.data
            if exc.code == "RATE_LIMITED" and exc.data and "retryAfter" in exc.data:
                self.set_header("Retry-After", str(max(1, round(float(exc.data["retryAfter"])))))
        elif isinstance(exc, HTTPError) and status_code < 500:
            body = {"code": "BAD_REQUEST" if status_code != 405 else "METHOD_NOT_ALLOWED",
                    "message": responses.get(status_code, "Bad request")}
        else:
            body = {"code": "INTERNAL", "message": "Internal server error"}
        self.finish(json.dumps({"error": body}, ensure_ascii=False))

    def send_json(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(body, ensure_ascii=False))

    def body(self) -> dict[str, Any]:
        raw = self.request.body
        if len(raw) > MAX_BODY:
            raise client_error("PAYLOAD_TOO_LARGE", f"요청 본문은 {MAX_BODY}바이트 이하여야 합니다")
        return validation.payload([validation.json_body(raw)])

    def query_id(self, name: str) -> int | None:
        raw = self.get_query_argument(name, None)
        if raw is None or raw == "":
            return None
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 18) or int(raw) == 0:
            raise bad_request(f"{name}: 양의 정수여야 합니다 (must be a positive integer)")
        return int(raw)

    def limit(self) -> int:
        value = self.query_id("limit")
        if value is None:
            return DEFAULT_LIMIT
        if value > MAX_LIMIT:
            raise bad_request(f"limit: {MAX_LIMIT} 이하여야 합니다")
        return value

    async def actor(self) -> Actor:
        """The user of the bearer JWT; 401 without a valid token for an existing user."""
        user_id = self.domain.tokens.user_id(bearer(self.request.headers.get("Authorization")))
        user = None if user_id is None else await self.domain.db.run(queries.user, user_id)
        if user is None:
            raise client_error("AUTH_FAILED")
        return Actor(user["id"], user["name"])

    async def active_member(self, study_id: int) -> Actor:
        who = await self.actor()
        await require_active(self.domain.db, study_id, who.id)
        return who


class MeHandler(ApiHandler):
    async def get(self) -> None:
        who = await self.actor()
        self.send_json({"id": who.id, "name": who.name})


class StudiesHandler(ApiHandler):
    async def get(self) -> None:
        who = await self.actor()
        items = await self.domain.db.run(queries.my_studies, who.id)
        self.send_json({"items": items, "hasMore": False})


class StudyMembersHandler(ApiHandler):
    async def get(self, study: str) -> None:
        study_id = int(study)
        await self.active_member(study_id)
        members = await self.domain.db.run(queries.study_members, study_id)
        online = await self.domain.presence.online(m["userId"] for m in members)
        in_room = await self.domain.rooms.users_in(study_id)
        for m in members:
            m["online"] = m["userId"] in online
            m["inRoom"] = m["userId"] in in_room
        self.send_json({"items": members, "hasMore": False})


class StudyMessagesHandler(ApiHandler):
    async def get(self, study: str) -> None:
        study_id = int(study)
        await self.active_member(study_id)
        page = await self.domain.db.run(queries.message_page, study_id, self.query_id("before"), self.limit())
        self.send_json(page)

    async def post(self, study: str) -> None:
        study_id = int(study)
        who = await self.active_member(study_id)
        data = self.body()
        content = validation.content(data)
        file_id = validation.optional_id(data, "fileId")
        client_message_id = validation.client_message_id(data)
        self.domain.events.check_message_rate(who.id)
        ack = await self.domain.rooms.post_message(who, study_id, content, file_id, client_message_id)
        ack.pop("ok", None)
        self.send_json(ack, 200 if ack.get("duplicate") else 201)


class StudyTasksHandler(ApiHandler):
    async def get(self, study: str) -> None:
        study_id = int(study)
        await self.active_member(study_id)
        self.send_json({"items": await self.domain.db.run(queries.study_tasks, study_id), "hasMore": False})


class NotificationsHandler(ApiHandler):
    async def get(self) -> None:
        who = await self.actor()
        unread = self.get_query_argument("unread", "0") in ("1", "true")
        page = await self.domain.db.run(queries.notification_page, who.id, unread, self.query_id("before"),
                                        self.limit())
        self.send_json(page)

    async def post(self) -> None:
        """For trusted backends: authorised by `COUP_SERVICE_TOKEN`, not a user JWT."""
        if not self.domain.service_token.matches(bearer(self.request.headers.get("Authorization"))):
            raise client_error("AUTH_FAILED", "서비스 토큰이 필요합니다 (service token required)")
        data = self.body()
        to_group = data.get("groupId") is not None
        if to_group == (data.get("userId") is not None):
            raise bad_request("userId 또는 groupId 중 하나가 필요합니다 (exactly one of userId, groupId)")
        target = validation.required_id(data, "groupId" if to_group else "userId")
        type_ = validation.required_text(data, "type", max_length=64)
        message = validation.required_text(data, "message", max_length=2000)
        study_id = validation.optional_id(data, "studyId")
        extra = validation.json_object(data, "data")
        notifier = self.domain.notifier
        if to_group:
            created = await notifier.create_for_group(target, type_, message, study_id, extra)
            self.send_json({"groupId": target, "items": [{"userId": uid, **n} for uid, n in created]}, 201)
        else:
            self.send_json(await notifier.create(target, type_, message, study_id, extra), 201)


class NotificationReadHandler(ApiHandler):
    async def post(self, notification: str) -> None:
        who = await self.actor()
        notification_id = int(notification)
        changed = await self.domain.notifier.mark_read(who.id, notification_id)
        self.send_json({"notificationId": notification_id, "changed": changed})


class TaskHandler(ApiHandler):
    async def patch(self, task: str) -> None:
        who = await self.actor()
        status = validation.choice(self.body(), "status", TASK_STATUSES)
        self.send_json(await self.domain.tasks.update_status(who.id, int(task), status))


class TaskAssignHandler(ApiHandler):
    async def post(self, task: str) -> None:
        who = await self.actor()
        assignee_id = validation.required_id(self.body(), "assigneeId")
        self.send_json(await self.domain.tasks.assign(who.id, int(task), assignee_id))


class DevTokenHandler(ApiHandler):
    """Demo mode only: sign in as any demo user (the demo page's login)."""

    async def post(self) -> None:
        if not self.domain.settings.demo:
            raise client_error("NOT_FOUND", "없는 API입니다 (no such API)")
        user_id = validation.required_id(self.body(), "userId")
        user = await self.domain.db.run(queries.user, user_id)
        if user is None:
            raise not_found("사용자")
        self.send_json({"token": self.domain.tokens.issue(user_id), "userId": user_id, "userName": user["name"]})


class DevUsersHandler(ApiHandler):
    """Demo mode only: who one can sign in as."""

    async def get(self) -> None:
        if not self.domain.settings.demo:
            raise client_error("NOT_FOUND", "없는 API입니다 (no such API)")
        self.send_json({"items": await self.domain.db.run(queries.all_users), "hasMore": False})


class NotFoundHandler(ApiHandler):
    def prepare(self) -> None:
        super().prepare()
        if self.request.method != "OPTIONS":
            raise client_error("NOT_FOUND", "없는 API입니다 (no such API)")


def api_rules(domain: CoupDomain, origin_allowed: OriginCheck) -> list[Any]:
    kwargs = {"domain": domain, "origin_allowed": origin_allowed}
    routes: list[tuple[str, type[ApiHandler]]] = [
        (r"/api/me", MeHandler),
        (r"/api/studies", StudiesHandler),
        (rf"/api/studies/{ID}/members", StudyMembersHandler),
        (rf"/api/studies/{ID}/messages", StudyMessagesHandler),
        (rf"/api/studies/{ID}/tasks", StudyTasksHandler),
        (r"/api/notifications", NotificationsHandler),
        (rf"/api/notifications/{ID}/read", NotificationReadHandler),
        (rf"/api/tasks/{ID}", TaskHandler),
        (rf"/api/tasks/{ID}/assign", TaskAssignHandler),
        (r"/api/dev/token", DevTokenHandler),
        (r"/api/dev/users", DevUsersHandler),
        (r"/api(?:/.*)?", NotFoundHandler),
    ]
    return [(pattern, handler, kwargs) for pattern, handler in routes]

