"""Demo mode, demo data and the CLI (`coup initdb`, `coup seed-demo`, `coup token`, `coup serve --demo`)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import socketio
from tornado.httpclient import AsyncHTTPClient
from tornado.testing import bind_unused_port

from coup.app import coup_node
from coup.config import Secret, Settings
from coup.domain import queries
from coup.domain.database import Database
from coup.domain.demo import DEMO_SECRET_KEY
from coup.domain.models import Group, GroupMember, Message, Study, StudyMember, Task, User
from tests.domain.support import Client, DomainNode
from tests.waiting import eventually

pytestmark = [pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
DEMO_SNAPSHOT = {
    "users": [(1, "Alice"), (2, "Bob"), (3, "Chloe"), (4, "Dan"), (5, "Eve")],
    "groups": [(1, "Algorithms Club")],
    "group_members": [(1, 1), (1, 2), (1, 3), (1, 4)],
    "studies": [(1, 1, "Graph Theory"), (2, 1, "Dynamic Programming")],
    "study_members": [(1, 1, "ACTIVE"), (1, 2, "ACTIVE"), (1, 3, "ACTIVE"), (1, 4, "PENDING"),
                      (2, 1, "ACTIVE"), (2, 4, "ACTIVE")],
    "tasks": [(1, 1, "Read chapter 3", "TODO", None), (2, 1, "Solve problem set", "IN_PROGRESS", 2)],
}


def snapshot() -> dict[str, list[tuple[Any, ...]]]:
    return {
        "users": [(u.id, u.name) for u in User.select().order_by(User.id)],
        "groups": [(g.id, g.name) for g in Group.select().order_by(Group.id)],
        "group_members": sorted((m.group_id, m.user_id) for m in GroupMember.select()),
        "studies": [(s.id, s.group_id, s.name) for s in Study.select().order_by(Study.id)],
        "study_members": sorted((m.study_id, m.user_id, m.status) for m in StudyMember.select()),
        "tasks": [(t.id, t.study_id, t.title, t.status, t.assignee_id) for t in Task.select().order_by(Task.id)],
    }


def read_db(url: str, fn: Any, *args: Any) -> Any:
    database = Database(url, workers=1)
    try:
        with database.db.connection_context():
            return fn(*args)
    finally:
        database.close()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("JWT_SECRET", "DATABASE_URL", "COUP_DEMO", "COUP_SERVICE_TOKEN", "PORT")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def coup(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coup", *args], env=clean_env(**env), cwd=ROOT,
                          capture_output=True, text=True, timeout=30, check=False)


# ---------------------------------------------------------------------- CLI on both databases


def test_initdb_is_idempotent_and_seed_demo_loads_exactly_the_demo_data(database_url: str) -> None:
    for _ in range(2):
        result = coup("initdb", DATABASE_URL=database_url)
        assert result.returncode == 0, result.stderr
    refused = coup("seed-demo", DATABASE_URL=database_url)  # the fixture seeded it already
    assert refused.returncode == 1 and "--reset" in refused.stderr
    read_db(database_url, lambda: Message.create(study=1, user=1, seq=1, content="old"))
    result = coup("seed-demo", "--reset", DATABASE_URL=database_url)
    assert result.returncode == 0, result.stderr
    assert read_db(database_url, snapshot) == DEMO_SNAPSHOT
    assert read_db(database_url, lambda: Message.select().count()) == 0
    # ids continue after the fixed ones (PostgreSQL sequences were moved on)
    assert read_db(database_url, lambda: User.create(name="Frank").id) == 6


def test_token_with_jwt_secret() -> None:
    secret = "tV3q-8kLmZ0pXw2rYc7nB4hJ6dF1gS9a-eU5o"
    result = coup("token", "7", "--ttl", "60", JWT_SECRET=secret)
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), secret, algorithms=["HS256"])
    assert claims["sub"] == "7" and claims["exp"] - claims["iat"] == 60


def test_token_without_secret_or_demo_database_explains(tmp_path: Path) -> None:
    result = coup("token", "1", DATABASE_URL=f"sqlite:///{tmp_path / 'none.db'}")
    assert result.returncode == 2 and "JWT_SECRET" in result.stderr
    assert coup("token", "0", JWT_SECRET="tV3q-8kLmZ0pXw2rYc7nB4hJ6dF1gS9a-eU5o").returncode == 2


def test_serve_refuses_to_start_without_a_secret_outside_demo_mode(tmp_path: Path) -> None:
    result = coup("serve", "--port", "0", DATABASE_URL=f"sqlite:///{tmp_path / 'e.db'}")
    assert result.returncode == 2 and "JWT_SECRET" in result.stderr


# ---------------------------------------------------------------------- demo mode


def demo_settings(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"demo": True, "host": "127.0.0.1", "port": 0, "database_url": url}
    values.update(overrides)
    return Settings(**values).validated()


async def start(settings: Settings) -> DomainNode:
    sock, port = bind_unused_port()
    node = coup_node(settings)
    await node.start([sock])
    return DomainNode(node, port)


@pytest.mark.asyncio
async def test_demo_mode_seeds_a_fresh_database_and_keeps_one_secret_for_every_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    first = await start(demo_settings(url))
    client = Client(first, "websocket")
    try:
        assert await first.db(snapshot) == DEMO_SNAPSHOT
        # a separate `coup token` process signs tokens the running server accepts
        result = await asyncio.to_thread(coup, "token", "1", DATABASE_URL=url)
        assert result.returncode == 0, result.stderr
        cli_token = result.stdout.strip()
        await client.connect(1, cli_token)
        ack = await client.call("join-study", {"studyId": 1})
        assert ack == {"ok": True, "studyId": 1, "online": [1]}
        await client.call("message", {"studyId": 1, "content": "kept across restarts"})
        # the demo page's sign-in
        status, body = await first.http("POST", "/api/dev/token", body={"userId": 2})
        assert status == 200 and body["userName"] == "Bob" and body["userId"] == 2
        assert await first.http("GET", "/api/me", headers={"Authorization": f"Bearer {body['token']}"}) == (
            200, {"id": 2, "name": "Bob"})
        status, users = await first.http("GET", "/api/dev/users")
        assert [u["name"] for u in users["items"]] == ["Alice", "Bob", "Chloe", "Dan", "Eve"]
        assert (await first.http("POST", "/api/dev/token", body={"userId": 42}))[0] == 404
    finally:
        await client.close()
        await first.node.stop()
    # a second demo process (with its own made-up secret) uses the stored one: old tokens work,
    # and the data is not seeded again
    second = await start(demo_settings(url))
    try:
        assert (await second.http("GET", "/api/me", headers={"Authorization": f"Bearer {cli_token}"}))[0] == 200
        assert await second.db(lambda: [m.content for m in Message.select()]) == ["kept across restarts"]
    finally:
        await second.node.stop()


@pytest.mark.asyncio
async def test_a_node_creates_the_schema_of_an_empty_database_and_seeds_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    node = await start(Settings(host="127.0.0.1", port=0, database_url=url,
                                jwt_secret=Secret("kR2m-9vWq3LzX8pNc5tY1bJ7hG4dF6sA0eU")).validated())
    try:
        assert await node.http("GET", "/readyz") == (200, {"status": "ready",
                                                           "checks": {"serving": True, "database": True}})
        assert (await node.http("GET", "/api/me", user=1))[0] == 401  # no users: nothing was seeded
        assert await node.db(lambda: User.select().count()) == 0
    finally:
        await node.node.stop()


@pytest.mark.asyncio
async def test_demo_mode_with_a_configured_secret_uses_it_and_stores_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    node = await start(demo_settings(url, jwt_secret=Secret("kR2m-9vWq3LzX8pNc5tY1bJ7hG4dF6sA0eU")))
    try:
        token = jwt.encode({"sub": "3", "exp": 4_000_000_000}, "kR2m-9vWq3LzX8pNc5tY1bJ7hG4dF6sA0eU", algorithm="HS256")
        assert await node.http("GET", "/api/me", headers={"Authorization": f"Bearer {token}"}) == (
            200, {"id": 3, "name": "Chloe"})
        assert await node.db(queries.setting, DEMO_SECRET_KEY) is None
    finally:
        await node.node.stop()


@pytest.fixture
def demo_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """`coup serve --demo` as a new user runs it: a subprocess in an empty directory."""
    sock, port = bind_unused_port()
    sock.close()
    env = clean_env()
    proc = subprocess.Popen([sys.executable, "-m", "coup", "serve", "--demo", "--port", str(port)], env=env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield f"http://127.0.0.1:{port}", str(tmp_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.asyncio
async def test_serve_demo_then_coup_token_as_a_new_user_would(demo_server: tuple[str, str]) -> None:
    url, cwd = demo_server
    http = AsyncHTTPClient()

    async def ready() -> bool:
        try:
            return (await http.fetch(url + "/readyz", raise_error=False)).code == 200
        except OSError:  # not listening yet
            return False

    await eventually(ready, "coup serve --demo became ready", timeout=15, poll=0.1)
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "coup", "token", "1"], env=clean_env(), cwd=cwd,
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    received: list[Any] = []
    sio = socketio.AsyncClient(reconnection=False)
    sio.on("message", lambda *args: received.append(args[0]))
    try:
        await sio.connect(url, auth={"userId": 1, "token": token}, transports=["polling"], wait_timeout=5)
        assert (await sio.call("join-study", {"studyId": 1}, timeout=5))["ok"] is True
        ack = await sio.call("message", {"studyId": 1, "content": "hello from a new user"}, timeout=5)
        assert ack["ok"] is True and ack["seq"] == 1
        await eventually(lambda: received, "the message came back to its sender")
        assert received[0]["content"] == "hello from a new user"
    finally:
        await sio.disconnect()
        await sio.shutdown()


@pytest.mark.asyncio
async def test_readiness_is_false_when_the_database_is_unreachable() -> None:
    sock, port = bind_unused_port()
    sock.close()  # nothing listens there
    database = Database(f"postgresql://postgres@127.0.0.1:{port}/test?connect_timeout=2", workers=1)
    try:
        assert await database.ping() is False
    finally:
        database.close()
