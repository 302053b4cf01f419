"""Test support for the CoUp domain: a running node handle, a recording client, waits."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import peewee as pw
import socketio
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from coup.app import CoupNode
from coup.config import Secret, Settings
from coup.domain.models import database_proxy
from coup.domain.service import CoupDomain

SERVICE_TOKEN = "service-token-for-tests-0123456789"
DEFAULT_TIMEOUT = 5.0

class DomainNode:
    def __init__(self, node: CoupNode, port: int) -> None:
        self.node = node
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        assert node.domain is not None
        self.domain: CoupDomain = node.domain

    def token(self, user_id: int, ttl: float = 3600) -> str:
        return self.domain.tokens.issue(user_id, ttl=ttl)

    async def db(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a query function on the node's database threads (never on the loop)."""
        return await self.domain.db.run(fn, *args)

    async def http(self, method: str, path: str, *, user: int | None = None, body: Any = None,
                   headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, Any]:
        all_headers = dict(headers or {})
        if user is not None:
            all_headers["Authorization"] = f"Bearer {self.token(user)}"
        data: bytes | None = raw
        if body is not None:
            data = json.dumps(body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        if data is None and method in ("POST", "PATCH", "PUT"):
            data = b""
        response: HTTPResponse = await AsyncHTTPClient().fetch(
            self.url + path, method=method, body=data, headers=all_headers, raise_error=False,
            request_timeout=DEFAULT_TIMEOUT)
        payload = json.loads(response.body) if response.body else None
        return response.code, payload


def domain_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "host": "127.0.0.1", "port": 0, "database_url": database_url,
        "jwt_secret": Secret(secrets.token_urlsafe(48)), "service_token": Secret(SERVICE_TOKEN),
        "message_rate": 1000.0, "message_burst": 1000, "db_workers": 2,
        # presence transitions at once unless a test asks for the grace (test_presence_grace.py)
        "presence_grace": 0.0,
    }
    values.update(overrides)
    return Settings(**values).validated()



NodeFactory = Callable[..., Awaitable[DomainNode]]


class Client:
    """A python-socketio client that records every event it receives."""

    def __init__(self, node: DomainNode, transport: str) -> None:
        self.node = node
        self.transport = transport
        self.sio = socketio.AsyncClient(reconnection=False)
        self.received: list[tuple[str, Any]] = []
        self.connect_error: Any = None
        self._arrived = asyncio.Event()

        @self.sio.on("*")
        async def any_event(event: str, *args: Any) -> None:
            # the last argument of a room event is the recovery offset; replies to one socket
            # (`error`) carry none
            self.received.append((event, args[0] if args else None))
            self._arrived.set()

        @self.sio.event
        async def connect_error(data: Any = None, *args: Any) -> None:
            self.connect_error = data

    async def connect(self, user_id: Any, token: str | None = None, *, auth: Any = ...) -> None:
        """Sign in as `user_id` (with a valid token unless given one), or send `auth` as it is."""
        if auth is ...:
            auth = {"userId": user_id, "token": token if token is not None else self.node.token(int(user_id))}
        await self.sio.connect(self.node.url, auth=auth, transports=[self.transport], wait_timeout=DEFAULT_TIMEOUT)

    async def call(self, event: str, *args: Any) -> Any:
        """Send `event` with `args` and return the acknowledgement's first argument."""
        return await self.sio.call(event, _data(args), timeout=DEFAULT_TIMEOUT)

    async def emit(self, event: str, *args: Any) -> None:
        await self.sio.emit(event, _data(args))

    def got(self, event: str) -> list[Any]:
        return [payload for name, payload in self.received if name == event]

    async def wait(self, event: str, where: Callable[[Any], bool] | None = None,
                   timeout: float = DEFAULT_TIMEOUT) -> Any:
        """The first payload of `event` (matching `where`) received so far or within `timeout`."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for name, payload in self.received[seen:]:
                if name == event and (where is None or where(payload)):
                    return payload
            seen = len(self.received)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {event!r} event within {timeout}s; got {self.received!r}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                pass

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()
        await self.sio.shutdown()


def _data(args: tuple[Any, ...]) -> Any:
    """python-socketio's `data`: one argument as itself, several as a tuple, none as None."""
    if len(args) == 1 and not isinstance(args[0], tuple):
        return args[0]
    return args if args else None


ClientFactory = Callable[..., Awaitable[Client]]


async def refused(client: Client, event: str, *args: Any, code: str) -> dict[str, Any]:
    """Send `event` asking for an ack; check the failed ack and the `error` event; return the error."""
    before = len(client.got("error"))
    ack = await client.call(event, *args)
    assert isinstance(ack, dict) and ack.get("ok") is False, ack
    assert ack["error"]["code"] == code, ack
    await client.wait("error", lambda _: len(client.got("error")) > before)
    errors = client.got("error")
    assert len(errors) == before + 1, errors
    error: dict[str, Any] = errors[before]
    assert error["code"] == code and error["event"] == event, error
    assert error["message"] == ack["error"]["message"] and error["message"]
    return error


# ---------------------------------------------------------------------- database failures

PG_TRIGGER = """
CREATE OR REPLACE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF left(NEW.content, 4) = 'boom' THEN RAISE EXCEPTION 'refused by the test trigger'; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER refuse_boom BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION refuse_boom();
"""
SQLITE_TRIGGER = """
CREATE TRIGGER refuse_boom BEFORE INSERT ON messages WHEN substr(NEW.content, 1, 4) = 'boom'
BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END
"""


def is_postgres() -> bool:
    return isinstance(database_proxy.obj, pw.PostgresqlDatabase)


def add_trigger() -> None:
    database_proxy.execute_sql(PG_TRIGGER if is_postgres() else SQLITE_TRIGGER)


def drop_trigger() -> None:
    database_proxy.execute_sql("DROP TRIGGER IF EXISTS refuse_boom" + (" ON messages" if is_postgres() else ""))


@asynccontextmanager
async def boom_refused(node: DomainNode) -> AsyncIterator[None]:
    """The database refuses messages starting with "boom" while inside."""
    await node.db(add_trigger)
    try:
        yield
    finally:
        await node.db(drop_trigger)
