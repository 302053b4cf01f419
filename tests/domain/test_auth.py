"""Authentication in the connection middleware: a JWT whose `sub` is the claimed userId."""

from __future__ import annotations

import datetime as dt
from typing import Any

import jwt
import pytest
import socketio

from coup.domain import queries
from tests.domain.support import Client, ClientFactory, DomainNode

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

AUTH_FAILED = {"message": "인증 실패", "data": {"code": "AUTH_FAILED"}}


def forged(node: DomainNode, claims: dict[str, Any], *, secret: str | None = None, algorithm: str = "HS256") -> str:
    key = secret if secret is not None else node.domain.tokens._secret
    return jwt.encode(claims, key, algorithm=algorithm)


def soon(seconds: float = 3600) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)


async def refused(node: DomainNode, transport: str, auth: Any) -> Client:
    client = Client(node, transport)
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(None, auth=auth)
    finally:
        await client.close()
    return client


@pytest.mark.parametrize("user_id", [1, "1"])
async def test_valid_token_connects_with_number_or_string_user_id(
        domain_node: DomainNode, transport: str, user_id: Any) -> None:
    client = Client(domain_node, transport)
    try:
        await client.connect(user_id, domain_node.token(1))
        assert client.sio.connected
        sockets = await domain_node.node.sio.main.fetch_sockets()
        assert [s.data for s in sockets] == [{"userId": 1, "userName": "Alice"}]
        assert sockets[0].rooms == {sockets[0].id, "user:1", "group:1"}
    finally:
        await client.close()


def bad_auths(node: DomainNode) -> list[tuple[str, Any]]:
    good = node.token(1)
    return [
        ("no auth", {}),
        ("auth not an object", None),
        ("no token", {"userId": 1}),
        ("no userId", {"token": good}),
        ("token of another user", {"userId": 2, "token": good}),
        ("userId as a float", {"userId": 1.0, "token": good}),
        ("userId as a bool", {"userId": True, "token": good}),
        ("garbage token", {"userId": 1, "token": "not.a.jwt"}),
        ("token not a string", {"userId": 1, "token": 12345}),
        ("wrong secret", {"userId": 1, "token": forged(node, {"sub": "1", "exp": soon()}, secret="x" * 40)}),
        ("expired", {"userId": 1, "token": forged(node, {"sub": "1", "exp": soon(-120)})}),
        ("no exp", {"userId": 1, "token": forged(node, {"sub": "1"})}),
        ("no sub", {"userId": 1, "token": forged(node, {"exp": soon()})}),
        ("sub not canonical", {"userId": "01", "token": forged(node, {"sub": "01", "exp": soon()})}),
        ("HS512 when HS256 is pinned", {"userId": 1, "token": forged(node, {"sub": "1", "exp": soon()},
                                                                   algorithm="HS512")}),
        ("alg none", {"userId": 1, "token": jwt.encode({"sub": "1", "exp": soon()}, None, algorithm="none")}),
        ("user does not exist", {"userId": 99, "token": node.token(99)}),
    ]


async def test_every_bad_credential_is_refused_with_auth_failed(domain_node: DomainNode, transport: str) -> None:
    for what, auth in bad_auths(domain_node):
        client = await refused(domain_node, transport, auth)
        assert client.connect_error == AUTH_FAILED, what
    # nothing was joined and nobody is online
    assert await domain_node.node.sio.main.fetch_sockets() == []
    assert await domain_node.domain.presence.online(range(1, 6)) == set()


async def test_expired_within_leeway_is_accepted(domain_node: DomainNode, transport: str) -> None:
    token = forged(domain_node, {"sub": "2", "exp": soon(-3)})
    client = Client(domain_node, transport)
    try:
        await client.connect(2, token)
        assert client.sio.connected
    finally:
        await client.close()


def about(user_id: int) -> Any:
    return lambda payload: payload == {"userId": user_id}


async def test_user_online_goes_to_study_rooms_once_and_offline_after_last_tab(
        domain_node: DomainNode, connect: ClientFactory) -> None:
    # Alice is ACTIVE in studies 1 (with Bob, Chloe) and 2 (with Dan); Eve shares none
    bob = await connect(2, join=(1,))
    dan = await connect(4, join=(2,))
    eve = await connect(5)
    chloe = await connect(3)  # connected, but in no study room
    alice1 = await connect(1)
    await bob.wait("user-online", about(1))
    await dan.wait("user-online", about(1))
    alice2 = await connect(1, join=(1, 2))  # a second tab: no second user-online
    await alice2.call("message", {"studyId": 1, "content": "sentinel"})
    await bob.wait("message")
    assert bob.got("user-online").count({"userId": 1}) == 1
    assert {"userId": 1} not in eve.got("user-online") + chloe.got("user-online")
    assert {"userId": 1} not in alice1.got("user-online") + alice2.got("user-online")

    await alice1.close()
    await alice2.call("message", {"studyId": 1, "content": "still here"})
    await bob.wait("message", lambda m: m["content"] == "still here")
    assert {"userId": 1} not in bob.got("user-offline")
    await alice2.close()
    await bob.wait("user-offline", about(1))
    await dan.wait("user-offline", about(1))
    assert await domain_node.domain.presence.online([1, 2]) == {2}


async def test_user_in_two_shared_studies_is_announced_once(domain_node: DomainNode, connect: ClientFactory) -> None:
    # Dan becomes ACTIVE in study 1 too, so Alice (in both rooms) shares two studies with him
    from coup.domain.models import StudyMember

    def activate() -> None:
        StudyMember.update(status="ACTIVE").where((StudyMember.study == 1) & (StudyMember.user == 4)).execute()

    await domain_node.db(activate)
    alice = await connect(1, join=(1, 2))
    dan = await connect(4)
    await alice.wait("user-online", lambda p: p["userId"] == 4)
    await dan.close()
    await alice.wait("user-offline", lambda p: p["userId"] == 4)
    await alice.call("message", {"studyId": 1, "content": "sentinel"})
    await alice.wait("message")
    assert alice.got("user-online") == [{"userId": 4}]
    assert alice.got("user-offline") == [{"userId": 4}]
    assert await domain_node.db(queries.active_study_ids, 4) == [1, 2]
