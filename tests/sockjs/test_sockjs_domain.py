"""CoUp over SockJS: the npm sockjs-client meets the real domain (JWT auth, study rooms,
messages persisted and broadcast, notifications) next to a Socket.IO client, per transport."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from tornado.testing import bind_unused_port

from coup.app import coup_node
from tests.domain.conftest import reset_database
from tests.domain.support import SERVICE_TOKEN, Client, DomainNode, domain_settings
from tests.sockjs.test_sockjs_clients import REPORTED, TRANSPORTS

pytestmark = pytest.mark.asyncio

ALICE, BOB, DAN = 1, 2, 4  # demo users: Alice and Bob are ACTIVE in study 1, Dan is PENDING there
STUDY = 1


@pytest_asyncio.fixture
async def coup_server(tmp_path: Path) -> AsyncIterator[DomainNode]:
    """The CoUp server (domain installed) on a SQLite file holding the demo data."""
    url = f"sqlite:///{tmp_path / 'coup.db'}"
    await asyncio.to_thread(reset_database, url)
    sock, port = bind_unused_port()
    node = coup_node(domain_settings(url))
    await node.start([sock])
    try:
        yield DomainNode(node, port)
    finally:
        await node.stop()


async def sockjs_user(server: DomainNode, node_client: Any, transport: str, user: int, token: str) -> Any:
    client = await node_client(server.url + "/sockjs", transport)
    client.send(cmd="connect", auth={"userId": user, "token": token})
    return client


@pytest.mark.timeout(90)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_coup_events_over_sockjs_with_a_socketio_member(
        coup_server: DomainNode, node_client: Any, transport: str) -> None:
    alice = await sockjs_user(coup_server, node_client, transport, ALICE, coup_server.token(ALICE))
    connected = await alice.expect("connect")
    assert connected["transport"] == REPORTED[transport]

    alice.send(cmd="emit", event="join-study", args=[{"studyId": STUDY}], ack=1)
    joined = (await alice.expect("ack", id=1))["args"][0]
    assert joined["ok"] is True and joined["studyId"] == STUDY

    bob = Client(coup_server, "websocket")
    try:
        await bob.connect(BOB)
        assert (await bob.call("join-study", {"studyId": STUDY}))["ok"] is True
        arrived = await alice.expect("event", event="member-joined")
        assert arrived["args"][0]["userId"] == BOB

        # SockJS -> the study room: persisted, broadcast to the Socket.IO member and the sender
        alice.send(cmd="emit", event="message", args=[{"studyId": STUDY, "content": "hello from sockjs"}], ack=2)
        sent = (await alice.expect("ack", id=2))["args"][0]
        assert sent["ok"] is True
        at_bob = await bob.wait("message", lambda m: m["content"] == "hello from sockjs")
        assert at_bob["id"] == sent["id"] and at_bob["user"]["id"] == ALICE
        echo = await alice.expect("event", event="message")
        assert echo["args"][0]["id"] == sent["id"]

        # Socket.IO -> the room: the SockJS member gets it, and typing (sender excluded)
        assert (await bob.call("message", {"studyId": STUDY, "content": "hello from socket.io"}))["ok"] is True
        from_bob = await alice.expect("event", event="message")
        assert from_bob["args"][0]["content"] == "hello from socket.io"
        assert from_bob["args"][0]["user"]["id"] == BOB
        await bob.call("typing", {"studyId": STUDY})
        typing = await alice.expect("event", event="typing")
        assert typing["args"][0]["userId"] == BOB

        # a notification for Alice, created by a trusted backend through the HTTP API
        status, created = await coup_server.http(
            "POST", "/api/notifications", headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
            body={"userId": ALICE, "type": "TASK_ASSIGNED", "message": "과제가 배정되었습니다", "studyId": STUDY})
        assert status == 201
        note = await alice.expect("event", event="notification")
        assert note["args"][0]["id"] == created["id"]
        assert note["args"][0]["message"] == "과제가 배정되었습니다"
    finally:
        await bob.close()


@pytest.mark.timeout(60)
async def test_coup_refusals_reach_sockjs_clients_as_they_reach_socketio(
        coup_server: DomainNode, node_client: Any) -> None:
    forged = await sockjs_user(coup_server, node_client, "xhr-streaming", ALICE, coup_server.token(BOB))
    refused = await forged.expect("connect_error")
    assert refused["message"] == "인증 실패"
    assert refused["data"] == {"code": "AUTH_FAILED"}

    dan = await sockjs_user(coup_server, node_client, "xhr-polling", DAN, coup_server.token(DAN))
    await dan.expect("connect")
    dan.send(cmd="emit", event="join-study", args=[{"studyId": STUDY}], ack=1)
    error = await dan.expect("error")
    assert error["args"][0]["message"] == "스터디 멤버가 아닙니다"
    ack = (await dan.expect("ack", id=1))["args"][0]
    assert ack["ok"] is False and ack["error"]["code"] == "NOT_MEMBER"
    sockets = coup_server.node.sio.main.sockets.values()
    assert all(f"study:{STUDY}" not in s.rooms for s in sockets)
