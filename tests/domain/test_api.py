"""The HTTP API end to end: auth, every endpoint, every refusal, and the live event of each
mutating call (received by real Socket.IO clients)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import jwt
import pytest

from coup.domain.models import Message, Notification, Task
from tests.domain.support import SERVICE_TOKEN, Client, ClientFactory, DomainNode, NodeFactory

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

SERVICE = {"Authorization": f"Bearer {SERVICE_TOKEN}"}


@pytest.fixture
def transport() -> str:
    """The HTTP tests watch live events over WebSocket (the socket tests cover polling)."""
    return "websocket"


def error(code: str) -> Any:
    return lambda body: body["error"]["code"] == code and bool(body["error"]["message"])


def notifications_of(user_id: int) -> list[dict[str, Any]]:
    return [{"type": n.type, "study": n.study_id, "data": n.data, "read": n.read_at is not None}
            for n in Notification.select().where(Notification.user == user_id).order_by(Notification.id)]


def task_row(task_id: int) -> dict[str, Any]:
    t = Task.get_by_id(task_id)
    return {"status": t.status, "assignee": t.assignee_id, "updatedBy": t.updated_by_id}


# ---------------------------------------------------------------------- plumbing and auth


async def test_health_and_readiness(domain_node: DomainNode) -> None:
    assert await domain_node.http("GET", "/healthz") == (200, {"status": "ok"})
    assert await domain_node.http("GET", "/readyz") == (200, {"status": "ready",
                                                              "checks": {"serving": True, "database": True}})
    drain = asyncio.get_running_loop().create_task(domain_node.node.drain())  # what SIGTERM starts
    assert await domain_node.http("GET", "/readyz") == (503, {"status": "not ready",
                                                              "checks": {"serving": False, "database": True}})
    assert await drain < 5


async def test_requests_without_a_valid_token_get_401(domain_node: DomainNode) -> None:
    secret = domain_node.domain.tokens._secret
    expired = jwt.encode({"sub": "1", "exp": dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)}, secret)
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"},
                    {"Authorization": "Bearer not-a-jwt"}, {"Authorization": f"Bearer {expired}"},
                    {"Authorization": f"Bearer {domain_node.token(99)}"},  # no such user
                    SERVICE):  # the service token is not a user
        status, body = await domain_node.http("GET", "/api/me", headers=headers)
        assert status == 401 and error("AUTH_FAILED")(body), (headers, body)


async def test_unknown_api_paths_and_methods_answer_json(domain_node: DomainNode) -> None:
    status, body = await domain_node.http("GET", "/api/nothing-here", user=1)
    assert status == 404 and error("NOT_FOUND")(body)
    status, body = await domain_node.http("DELETE", "/api/me", user=1)
    assert status == 405 and error("METHOD_NOT_ALLOWED")(body)
    status, body = await domain_node.http("POST", "/api/dev/token", body={"userId": 1})
    assert status == 404  # demo mode only


async def test_cors_for_allowed_origins_only(make_node: NodeFactory) -> None:
    node = await make_node(allowed_origins=("https://app.example",))
    status, body = await node.http("GET", "/api/me", user=1, headers={"Origin": "https://evil.example"})
    assert status == 403 and error("FORBIDDEN")(body)
    from tornado.httpclient import AsyncHTTPClient

    response = await AsyncHTTPClient().fetch(
        node.url + "/api/me", headers={"Origin": "https://app.example", "Authorization": f"Bearer {node.token(1)}"})
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    preflight = await AsyncHTTPClient().fetch(
        node.url + "/api/tasks/1", method="OPTIONS",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "PATCH"})
    assert preflight.code == 204 and "PATCH" in preflight.headers["Access-Control-Allow-Methods"]
    # errors carry CORS headers too, so the page can read them
    failed = await AsyncHTTPClient().fetch(node.url + "/api/me", headers={"Origin": "https://app.example"},
                                           raise_error=False)
    assert failed.code == 401 and failed.headers["Access-Control-Allow-Origin"] == "https://app.example"


# ---------------------------------------------------------------------- reading


async def test_me_and_my_studies(domain_node: DomainNode) -> None:
    assert await domain_node.http("GET", "/api/me", user=2) == (200, {"id": 2, "name": "Bob"})
    status, body = await domain_node.http("GET", "/api/studies", user=4)
    assert status == 200
    assert [(s["id"], s["name"], s["status"]) for s in body["items"]] == [
        (1, "Graph Theory", "PENDING"), (2, "Dynamic Programming", "ACTIVE")]
    assert body["items"][0]["groupName"] == "Algorithms Club"
    assert await domain_node.http("GET", "/api/studies", user=5) == (200, {"items": [], "hasMore": False})


async def test_members_with_online_and_in_room_flags(domain_node: DomainNode, connect: ClientFactory) -> None:
    await connect(2, join=(1,))
    await connect(3)
    status, body = await domain_node.http("GET", "/api/studies/1/members", user=1)
    assert status == 200
    assert [(m["userId"], m["name"], m["status"], m["online"], m["inRoom"]) for m in body["items"]] == [
        (1, "Alice", "ACTIVE", False, False), (2, "Bob", "ACTIVE", True, True),
        (3, "Chloe", "ACTIVE", True, False), (4, "Dan", "PENDING", False, False)]


@pytest.mark.parametrize(("user", "path", "status", "code"), [
    (4, "/api/studies/1/members", 403, "NOT_MEMBER"),      # PENDING
    (5, "/api/studies/1/messages", 403, "NOT_MEMBER"),
    (2, "/api/studies/2/tasks", 403, "NOT_MEMBER"),
    (1, "/api/studies/99/members", 404, "NOT_FOUND"),
    (1, "/api/studies/1/messages?limit=0", 400, "BAD_REQUEST"),
    (1, "/api/studies/1/messages?limit=101", 400, "BAD_REQUEST"),
    (1, "/api/studies/1/messages?before=abc", 400, "BAD_REQUEST"),
    (1, "/api/notifications?before=-1", 400, "BAD_REQUEST"),
])
async def test_reads_refused(domain_node: DomainNode, user: int, path: str, status: int, code: str) -> None:
    got, body = await domain_node.http("GET", path, user=user)
    assert got == status and error(code)(body), body


async def test_message_history_newest_first_in_pages(domain_node: DomainNode, connect: ClientFactory) -> None:
    alice = await connect(1, join=(1,))
    ids = [(await alice.call("message", {"studyId": 1, "content": f"m{i}"}))["id"] for i in range(5)]
    status, page = await domain_node.http("GET", "/api/studies/1/messages?limit=2", user=2)
    assert status == 200
    assert [m["content"] for m in page["items"]] == ["m4", "m3"]
    assert page["hasMore"] is True and page["nextBefore"] == ids[3]
    assert page["items"][0] == (await alice.wait("message", lambda m: m["content"] == "m4"))
    _, page = await domain_node.http("GET", f"/api/studies/1/messages?limit=2&before={page['nextBefore']}", user=2)
    assert [m["content"] for m in page["items"]] == ["m2", "m1"]
    _, page = await domain_node.http("GET", f"/api/studies/1/messages?before={page['nextBefore']}", user=2)
    assert [m["content"] for m in page["items"]] == ["m0"] and page["hasMore"] is False
    assert page["nextBefore"] is None
    _, other = await domain_node.http("GET", "/api/studies/2/messages", user=1)
    assert other == {"items": [], "hasMore": False, "nextBefore": None}


# ---------------------------------------------------------------------- posting messages


async def test_post_message_follows_the_socket_rules_and_broadcasts(
        domain_node: DomainNode, connect: ClientFactory) -> None:
    bob = await connect(2, join=(1,))
    chloe = await connect(3)
    status, ack = await domain_node.http("POST", "/api/studies/1/messages", user=1,
                                         body={"content": "<b>from http</b>", "clientMessageId": "h-1"})
    assert status == 201 and ack["seq"] == 1 and ack["duplicate"] is False
    live = await bob.wait("message")
    assert live["id"] == ack["id"] and live["content"] == "<b>from http</b>"
    assert live["user"] == {"id": 1, "name": "Alice"} and live["createdAt"] == ack["createdAt"]
    note = await chloe.wait("notification")
    assert note["type"] == "NEW_MESSAGE" and note["data"] == {"messageId": ack["id"]}
    # the author, not in the room, gets no notification of her own message
    assert await domain_node.db(notifications_of, 1) == []
    status, again = await domain_node.http("POST", "/api/studies/1/messages", user=1,
                                           body={"content": "<b>from http</b>", "clientMessageId": "h-1"})
    assert status == 200 and again["id"] == ack["id"] and again["duplicate"] is True
    assert await domain_node.db(lambda: Message.select().count()) == 1


@pytest.mark.parametrize(("user", "study", "body", "status", "code"), [
    (1, 1, {"content": ""}, 400, "BAD_REQUEST"),
    (1, 1, {"content": 5}, 400, "BAD_REQUEST"),
    (1, 1, {}, 400, "BAD_REQUEST"),
    (1, 1, ["content"], 400, "BAD_REQUEST"),
    (1, 1, {"content": "x" * 4001}, 413, "CONTENT_TOO_LONG"),
    (1, 1, {"content": "x", "fileId": "a"}, 400, "BAD_REQUEST"),
    (4, 1, {"content": "pending"}, 403, "NOT_MEMBER"),
    (5, 1, {"content": "stranger"}, 403, "NOT_MEMBER"),
    (1, 99, {"content": "nowhere"}, 404, "NOT_FOUND"),
])
async def test_post_message_refused(domain_node: DomainNode, user: int, study: int, body: Any, status: int,
                                    code: str) -> None:
    got, answer = await domain_node.http("POST", f"/api/studies/{study}/messages", user=user, body=body)
    assert got == status and error(code)(answer), answer
    assert await domain_node.db(lambda: Message.select().count()) == 0


async def test_post_message_bad_bodies(domain_node: DomainNode) -> None:
    status, body = await domain_node.http("POST", "/api/studies/1/messages", user=1, raw=b"{not json")
    assert status == 400 and error("BAD_REQUEST")(body)
    status, body = await domain_node.http("POST", "/api/studies/1/messages", user=1,
                                          raw=b'{"content": "' + b"x" * 70_000 + b'"}')
    assert status == 413 and error("PAYLOAD_TOO_LARGE")(body)
    status, body = await domain_node.http("POST", "/api/studies/1/messages", user=1, raw=b'"\\ud800"')
    assert status == 400


async def test_post_message_rate_limit_is_429(make_node: NodeFactory) -> None:
    node = await make_node(message_rate=0.2, message_burst=2)
    for i in range(2):
        status, _ = await node.http("POST", "/api/studies/1/messages", user=1, body={"content": f"m{i}"})
        assert status == 201
    from tornado.httpclient import AsyncHTTPClient

    response = await AsyncHTTPClient().fetch(
        node.url + "/api/studies/1/messages", method="POST", body=b'{"content": "m3"}', raise_error=False,
        headers={"Authorization": f"Bearer {node.token(1)}"})
    assert response.code == 429 and int(response.headers["Retry-After"]) >= 1
    assert await node.db(lambda: Message.select().count()) == 2


# ---------------------------------------------------------------------- notifications


async def test_service_creates_notifications_and_pushes_them(domain_node: DomainNode, connect: ClientFactory) -> None:
    alice1 = await connect(1)
    alice2 = await connect(1)
    bob = await connect(2)
    status, note = await domain_node.http("POST", "/api/notifications", headers=SERVICE, body={
        "userId": 1, "type": "STUDY_INVITE", "message": "Join us", "studyId": 2, "data": {"inviteId": 9, "x": [1]}})
    assert status == 201
    expected = {"id": note["id"], "type": "STUDY_INVITE", "message": "Join us", "studyId": 2,
                "data": {"inviteId": 9, "x": [1]}, "createdAt": note["createdAt"], "readAt": None}
    assert note == expected
    assert await alice1.wait("notification") == expected
    assert await alice2.wait("notification") == expected
    status, plain = await domain_node.http("POST", "/api/notifications", headers=SERVICE,
                                           body={"userId": 1, "type": "HELLO", "message": "no study"})
    assert status == 201 and "studyId" not in plain and "data" not in plain
    assert bob.got("notification") == []
    assert await domain_node.db(notifications_of, 1) == [
        {"type": "STUDY_INVITE", "study": 2, "data": {"inviteId": 9, "x": [1]}, "read": False},
        {"type": "HELLO", "study": None, "data": None, "read": False}]


async def test_service_notifies_a_whole_group_one_stored_notification_per_member(
        domain_node: DomainNode, connect: ClientFactory) -> None:
    alice1, alice2, bob, dan, eve = (await connect(1), await connect(1), await connect(2), await connect(4),
                                     await connect(5))  # Eve is in no group
    status, body = await domain_node.http("POST", "/api/notifications", headers=SERVICE, body={
        "groupId": 1, "type": "GROUP_EVENT", "message": "Contest on Friday", "data": {"room": "B2"}})
    assert status == 201 and body["groupId"] == 1
    items = {item.pop("userId"): item for item in body["items"]}
    assert sorted(items) == [1, 2, 3, 4]  # every member of "Algorithms Club", Chloe offline included
    assert len({n["id"] for n in items.values()}) == 4  # each member's own row
    assert all(n["message"] == "Contest on Friday" and n["data"] == {"room": "B2"} and n["readAt"] is None
               for n in items.values())
    assert await alice1.wait("notification") == items[1]
    assert await alice2.wait("notification") == items[1]
    assert await bob.wait("notification") == items[2]
    assert await dan.wait("notification") == items[4]
    for user_id in (1, 2, 3, 4):
        assert await domain_node.db(notifications_of, user_id) == [
            {"type": "GROUP_EVENT", "study": None, "data": {"room": "B2"}, "read": False}]
    # read state is per member: Bob reading his leaves Alice's unread
    assert await bob.call("notification-read", {"notificationId": items[2]["id"]}) == {
        "ok": True, "notificationId": items[2]["id"], "changed": True}
    assert [n["read"] for n in await domain_node.db(notifications_of, 1)] == [False]
    assert eve.got("notification") == []


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"groupId": 1, "userId": 1, "type": "T", "message": "m"}, 400, "BAD_REQUEST"),  # both targets
    ({"groupId": "1", "type": "T", "message": "m"}, 400, "BAD_REQUEST"),
    ({"groupId": 0, "type": "T", "message": "m"}, 400, "BAD_REQUEST"),
    ({"groupId": 99, "type": "T", "message": "m"}, 404, "NOT_FOUND"),
    ({"groupId": 1, "type": "T", "message": "m", "studyId": 99}, 404, "NOT_FOUND"),
])
async def test_group_notification_refused(domain_node: DomainNode, body: Any, status: int, code: str) -> None:
    got, answer = await domain_node.http("POST", "/api/notifications", headers=SERVICE, body=body)
    assert got == status and error(code)(answer), answer
    assert await domain_node.db(lambda: Notification.select().count()) == 0


@pytest.mark.parametrize(("headers", "body", "status", "code"), [
    ({}, {"userId": 1, "type": "T", "message": "m"}, 401, "AUTH_FAILED"),
    ("user", {"userId": 1, "type": "T", "message": "m"}, 401, "AUTH_FAILED"),
    ({"Authorization": "Bearer wrong-service-token-xxxx"}, {"userId": 1, "type": "T", "message": "m"}, 401,
     "AUTH_FAILED"),
    (SERVICE, {"type": "T", "message": "m"}, 400, "BAD_REQUEST"),
    (SERVICE, {"userId": 1, "message": "m"}, 400, "BAD_REQUEST"),
    (SERVICE, {"userId": 1, "type": "T"}, 400, "BAD_REQUEST"),
    (SERVICE, {"userId": 1, "type": "T" * 65, "message": "m"}, 400, "BAD_REQUEST"),
    (SERVICE, {"userId": 1, "type": "T", "message": "m", "data": [1]}, 400, "BAD_REQUEST"),
    (SERVICE, {"userId": 1, "type": "T", "message": "m", "studyId": "2"}, 400, "BAD_REQUEST"),
    (SERVICE, {"userId": 99, "type": "T", "message": "m"}, 404, "NOT_FOUND"),
    (SERVICE, {"userId": 1, "type": "T", "message": "m", "studyId": 99}, 404, "NOT_FOUND"),
])
async def test_service_notification_refused(domain_node: DomainNode, headers: Any, body: Any, status: int,
                                            code: str) -> None:
    if headers == "user":
        headers = {"Authorization": f"Bearer {domain_node.token(1)}"}
    got, answer = await domain_node.http("POST", "/api/notifications", headers=headers, body=body)
    assert got == status and error(code)(answer), answer
    assert await domain_node.db(lambda: Notification.select().count()) == 0


async def test_service_api_is_off_without_a_service_token(make_node: NodeFactory) -> None:
    node = await make_node(service_token=None)
    status, body = await node.http("POST", "/api/notifications", headers={"Authorization": "Bearer "},
                                   body={"userId": 1, "type": "T", "message": "m"})
    assert status == 401 and error("AUTH_FAILED")(body)


async def test_list_and_read_notifications(domain_node: DomainNode, connect: ClientFactory) -> None:
    tab = await connect(1)
    ids = []
    for i in range(3):
        _, note = await domain_node.http("POST", "/api/notifications", headers=SERVICE,
                                         body={"userId": 1, "type": "T", "message": f"n{i}"})
        ids.append(note["id"])
    status, page = await domain_node.http("GET", "/api/notifications?limit=2", user=1)
    assert status == 200 and [n["message"] for n in page["items"]] == ["n2", "n1"]
    assert page["hasMore"] is True and page["unreadCount"] == 3
    assert await domain_node.http("POST", f"/api/notifications/{ids[1]}/read", user=1) == (
        200, {"notificationId": ids[1], "changed": True})
    assert await tab.wait("notification-read") == {"notificationId": ids[1]}
    _, unread = await domain_node.http("GET", "/api/notifications?unread=1", user=1)
    assert [n["message"] for n in unread["items"]] == ["n2", "n0"] and unread["unreadCount"] == 2
    _, everything = await domain_node.http("GET", "/api/notifications", user=1)
    assert [n["readAt"] is not None for n in everything["items"]] == [False, True, False]
    assert (await domain_node.http("POST", f"/api/notifications/{ids[1]}/read", user=1))[1]["changed"] is False
    status, body = await domain_node.http("POST", f"/api/notifications/{ids[0]}/read", user=2)
    assert status == 404 and error("NOT_FOUND")(body)
    assert [n["read"] for n in await domain_node.db(notifications_of, 1)] == [False, True, False]


# ---------------------------------------------------------------------- tasks


async def test_task_list_and_status_change_is_broadcast(domain_node: DomainNode, connect: ClientFactory) -> None:
    bob = await connect(2, join=(1,))
    eve = await connect(5)
    status, tasks = await domain_node.http("GET", "/api/studies/1/tasks", user=1)
    assert status == 200
    assert [(t["id"], t["title"], t["status"], t["assigneeId"]) for t in tasks["items"]] == [
        (1, "Read chapter 3", "TODO", None), (2, "Solve problem set", "IN_PROGRESS", 2)]
    status, task = await domain_node.http("PATCH", "/api/tasks/1", user=1, body={"status": "DONE"})
    assert status == 200 and task["status"] == "DONE" and task["updatedBy"] == 1
    assert await bob.wait("task-updated") == {"taskId": 1, "status": "DONE", "updatedBy": 1, "studyId": 1}
    assert await domain_node.db(task_row, 1) == {"status": "DONE", "assignee": None, "updatedBy": 1}
    assert eve.got("task-updated") == []


@pytest.mark.parametrize(("user", "task", "body", "status", "code"), [
    (1, 1, {"status": "FINISHED"}, 400, "BAD_REQUEST"),
    (1, 1, {"status": None}, 400, "BAD_REQUEST"),
    (1, 1, {}, 400, "BAD_REQUEST"),
    (4, 1, {"status": "DONE"}, 403, "NOT_MEMBER"),
    (5, 1, {"status": "DONE"}, 403, "NOT_MEMBER"),
    (1, 99, {"status": "DONE"}, 404, "NOT_FOUND"),
])
async def test_task_update_refused(domain_node: DomainNode, user: int, task: int, body: Any, status: int,
                                   code: str) -> None:
    got, answer = await domain_node.http("PATCH", f"/api/tasks/{task}", user=user, body=body)
    assert got == status and error(code)(answer), answer
    assert await domain_node.db(task_row, 1) == {"status": "TODO", "assignee": None, "updatedBy": None}


async def test_assigning_a_task_tells_the_room_and_notifies_the_assignee(
        domain_node: DomainNode, connect: ClientFactory) -> None:
    bob = await connect(2, join=(1,))
    chloe = await connect(3)  # not in the room: hears it as the assignee
    status, task = await domain_node.http("POST", "/api/tasks/1/assign", user=2, body={"assigneeId": 3})
    assert status == 200 and task["assigneeId"] == 3 and task["updatedBy"] == 2
    expected = {"taskId": 1, "assigneeId": 3, "studyId": 1}
    assert await bob.wait("task-assigned") == expected
    assert await chloe.wait("task-assigned") == expected
    note = await chloe.wait("notification")
    assert note["type"] == "TASK_ASSIGNED" and note["studyId"] == 1 and note["data"] == {"taskId": 1}
    assert await domain_node.db(notifications_of, 3) == [
        {"type": "TASK_ASSIGNED", "study": 1, "data": {"taskId": 1}, "read": False}]
    assert await domain_node.db(task_row, 1) == {"status": "TODO", "assignee": 3, "updatedBy": 2}
    assert bob.got("notification") == []


@pytest.mark.parametrize(("user", "task", "body", "status", "code"), [
    (1, 1, {"assigneeId": 4}, 400, "BAD_REQUEST"),   # Dan is PENDING
    (1, 1, {"assigneeId": 5}, 400, "BAD_REQUEST"),   # Eve is no member
    (1, 1, {"assigneeId": 99}, 400, "BAD_REQUEST"),
    (1, 1, {"assigneeId": "3"}, 400, "BAD_REQUEST"),
    (1, 1, {}, 400, "BAD_REQUEST"),
    (5, 1, {"assigneeId": 3}, 403, "NOT_MEMBER"),
    (1, 99, {"assigneeId": 3}, 404, "NOT_FOUND"),
])
async def test_task_assign_refused(domain_node: DomainNode, user: int, task: int, body: Any, status: int,
                                   code: str) -> None:
    got, answer = await domain_node.http("POST", f"/api/tasks/{task}/assign", user=user, body=body)
    assert got == status and error(code)(answer), answer
    assert await domain_node.db(task_row, 1) == {"status": "TODO", "assignee": None, "updatedBy": None}
    assert await domain_node.db(lambda: Notification.select().count()) == 0


async def test_a_client_on_polling_sees_http_events_too(domain_node: DomainNode) -> None:
    bob = Client(domain_node, "polling")
    try:
        await bob.connect(2)
        await bob.call("join-study", {"studyId": 1})
        await domain_node.http("PATCH", "/api/tasks/2", user=1, body={"status": "DONE"})
        assert await bob.wait("task-updated") == {"taskId": 2, "status": "DONE", "updatedBy": 1, "studyId": 1}
    finally:
        await bob.close()
