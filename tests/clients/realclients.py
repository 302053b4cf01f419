"""Two real Socket.IO clients behind one small interface, so one test runs against both.

`PyClient` is python-socketio's `AsyncClient`; `NodeClient` is the npm socket.io-client run
by Node through `JsClient`. Each is one Engine.IO connection carrying one socket per
namespace. Both record into a `RecordLog` with the same record shapes (tests/clients/records.py),
take and give `bytes` for binary, and answer the server's acks with what `reply` set (by
default they echo the arguments they got, recovery offset included).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import socketio

from tests.clients.jsclient import JsClient
from tests.clients.records import TIMEOUT, Record, RecordLog

#: the three ways a client can reach us: name -> transports option
TRANSPORTS: dict[str, list[str]] = {
    "websocket": ["websocket"],
    "polling": ["polling"],
    "upgrade": ["polling", "websocket"],
}
#: seconds a client waits before reconnecting; small, so reconnection tests stay short
RECONNECT_DELAY = 0.3


class RealClient:
    """What the tests use; see `PyClient` and `NodeClient`."""

    kind: str
    log: RecordLog

    async def open(self, url: str, transports: Sequence[str], namespaces: Sequence[str] = ("/",), *,
                   auth: dict[str, Any] | None = None, reconnect_delay: float = RECONNECT_DELAY,
                   timeout: float = TIMEOUT) -> dict[str, str]:
        """Connect every namespace over one connection; return namespace -> socket id."""
        raise NotImplementedError

    async def call(self, event: str, *args: Any, namespace: str = "/", timeout: float = TIMEOUT) -> list[Any]:
        """Emit with an acknowledgement; return the acknowledgement's arguments."""
        raise NotImplementedError

    async def emit(self, event: str, *args: Any, namespace: str = "/") -> None:
        raise NotImplementedError

    async def reply(self, event: str, args: list[Any], namespace: str = "/") -> None:
        """Answer the server's `event` (when it asks for an ack) with `args`."""
        raise NotImplementedError

    async def transport(self) -> str:
        """The transport the connection uses now ("polling" or "websocket")."""
        raise NotImplementedError

    async def disconnect(self) -> None:
        """Disconnect on purpose (no reconnection); returns when the client says it is done."""
        raise NotImplementedError

    async def close(self) -> None:
        """Tear down whatever is left (fixtures call this)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared helpers

    async def expect_event(self, event: str, namespace: str = "/", *, timeout: float = TIMEOUT) -> list[Any]:
        """The arguments of the next `event` received on `namespace`."""
        record = await self.log.expect("event", socket=namespace, event=event, timeout=timeout)
        return list(record["args"])

    def events(self, event: str, namespace: str = "/") -> list[list[Any]]:
        """Arguments of every `event` received on `namespace` so far."""
        return [list(r["args"]) for r in self.log.seen("event", socket=namespace, event=event)]

    async def expect_connect(self, namespace: str = "/", *, timeout: float = TIMEOUT) -> Record:
        """The next "connect" record of `namespace` (the first call returns the first connect)."""
        return await self.log.expect("connect", socket=namespace, timeout=timeout)


class PyClient(RealClient):
    """python-socketio's `AsyncClient`. It has no connection state recovery."""

    kind = "python"

    def __init__(self) -> None:
        self.log = RecordLog()
        self.sio: socketio.AsyncClient | None = None
        self._replies: dict[tuple[str, str], list[Any]] = {}

    def _client(self) -> socketio.AsyncClient:
        assert self.sio is not None, "open() first"
        return self.sio

    def _watch(self, sio: socketio.AsyncClient, namespace: str) -> None:
        log = self.log

        def on_connect(*_: Any) -> None:
            log.add({"type": "connect", "socket": namespace, "sid": sio.get_sid(namespace),
                     "transport": sio.transport(), "recovered": False})

        def on_connect_error(*args: Any) -> None:
            log.add({"type": "connect_error", "socket": namespace, "data": list(args)})

        def on_disconnect(*args: Any) -> None:
            log.add({"type": "disconnect", "socket": namespace, "reason": str(args[0]) if args else None})

        def on_event(event: str, *args: Any) -> Any:
            reply = self._replies.get((namespace, event))
            log.add({"type": "event", "socket": namespace, "event": event, "args": list(args)})
            # returned values become the ack when the server asked for one
            return tuple(reply) if reply is not None else tuple(args)

        sio.on("connect", on_connect, namespace=namespace)
        sio.on("connect_error", on_connect_error, namespace=namespace)
        sio.on("disconnect", on_disconnect, namespace=namespace)
        sio.on("*", on_event, namespace=namespace)

    async def open(self, url: str, transports: Sequence[str], namespaces: Sequence[str] = ("/",), *,
                   auth: dict[str, Any] | None = None, reconnect_delay: float = RECONNECT_DELAY,
                   timeout: float = TIMEOUT) -> dict[str, str]:
        sio = self.sio = socketio.AsyncClient(
            reconnection=True, reconnection_delay=reconnect_delay, reconnection_delay_max=reconnect_delay,
            randomization_factor=0)
        for namespace in namespaces:
            self._watch(sio, namespace)
        await asyncio.wait_for(
            sio.connect(url, transports=list(transports), namespaces=list(namespaces), auth=auth,
                        wait_timeout=timeout),
            timeout + 1)
        sids = {}
        for namespace in namespaces:
            sid = sio.get_sid(namespace)
            assert sid is not None, f"{namespace} not connected"
            sids[namespace] = sid
        return sids

    async def call(self, event: str, *args: Any, namespace: str = "/", timeout: float = TIMEOUT) -> list[Any]:
        done: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()

        def on_ack(*answer: Any) -> None:
            if not done.done():
                done.set_result(list(answer))

        await self._client().emit(event, args, namespace=namespace, callback=on_ack)
        return await asyncio.wait_for(done, timeout)

    async def emit(self, event: str, *args: Any, namespace: str = "/") -> None:
        await self._client().emit(event, args, namespace=namespace)

    async def reply(self, event: str, args: list[Any], namespace: str = "/") -> None:
        self._replies[(namespace, event)] = list(args)

    async def transport(self) -> str:
        return str(self._client().transport())

    async def disconnect(self) -> None:
        await self._client().disconnect()

    async def close(self) -> None:
        if self.sio is not None:
            await asyncio.wait_for(self.sio.shutdown(), 10)


class NodeClient(RealClient):
    """The npm socket.io-client 4.8, one Node process; sockets are named by namespace."""

    kind = "node"

    def __init__(self, js: JsClient) -> None:
        self.js = js
        self.log = js.log
        self._first: str | None = None
        self._names: list[str] = []

    async def open(self, url: str, transports: Sequence[str], namespaces: Sequence[str] = ("/",), *,
                   auth: dict[str, Any] | None = None, reconnect_delay: float = RECONNECT_DELAY,
                   timeout: float = TIMEOUT) -> dict[str, str]:
        options: dict[str, Any] = {
            "transports": list(transports),
            "reconnectionDelay": int(reconnect_delay * 1000),
            "reconnectionDelayMax": int(reconnect_delay * 1000),
            "randomizationFactor": 0,
        }
        if auth is not None:
            options["auth"] = auth
        sids = {}
        for namespace in namespaces:
            record = await self.js.connect(namespace, url, namespace=namespace, manager=self._first,
                                           timeout=timeout, **options)
            assert record["type"] == "connect", f"{namespace}: {record}"
            sids[namespace] = record["sid"]
            self._names.append(namespace)
            self._first = self._first or namespace
        return sids

    async def call(self, event: str, *args: Any, namespace: str = "/", timeout: float = TIMEOUT) -> list[Any]:
        return await self.js.emit_with_ack(namespace, event, *args, timeout=timeout)

    async def emit(self, event: str, *args: Any, namespace: str = "/") -> None:
        await self.js.emit(namespace, event, *args)

    async def reply(self, event: str, args: list[Any], namespace: str = "/") -> None:
        await self.js.reply(namespace, event, args)

    async def transport(self) -> str:
        assert self._first is not None, "open() first"
        return str((await self.js.state(self._first))["transport"])

    async def drop(self, namespace: str = "/") -> None:
        """Cut the Engine.IO transport as a network failure would; the client reconnects by itself."""
        await self.js.command("drop", socket=namespace)

    async def disconnect(self) -> None:
        for name in self._names:
            await self.js.command("disconnect", socket=name)

    async def close(self) -> None:
        await self.js.close()
