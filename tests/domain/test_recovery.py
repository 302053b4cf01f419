"""A socket restored by connection state recovery is counted back into its study rooms.

python-socketio's client does not do recovery, so this test speaks Engine.IO polling by
hand, as socket.io-client does: CONNECT with {pid, offset} after a transport close.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient

from coup.domain.models import StudyMember
from tests.domain.support import ClientFactory, DomainNode

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


@pytest.fixture
def transport() -> str:
    """The watcher's transport; the recovering client is raw polling."""
    return "websocket"


class RawPolling:
    """Just enough of an Engine.IO v4 polling client for one namespace."""

    def __init__(self, node: DomainNode) -> None:
        self.base = node.url + "/socket.io/?EIO=4&transport=polling"
        self.http = AsyncHTTPClient()
        self.sid = ""
        self.events: list[list[Any]] = []

    async def open(self) -> None:
        body = (await self.http.fetch(self.base)).body.decode()
        assert body.startswith("0")
        self.sid = json.loads(body[1:])["sid"]

    async def post(self, *packets: str) -> None:
        await self.http.fetch(f"{self.base}&sid={self.sid}", method="POST", body="\x1e".join(packets))

    async def poll(self) -> list[str]:
        body = (await self.http.fetch(f"{self.base}&sid={self.sid}", request_timeout=10)).body.decode()
        packets = body.split("\x1e")
        for packet in packets:
            if packet.startswith("42"):
                self.events.append(json.loads(packet[2:]))
        return packets

    async def connect(self, auth: dict[str, Any]) -> dict[str, Any]:
        await self.post("40" + json.dumps(auth))
        for _ in range(5):
            for packet in await self.poll():
                if packet.startswith("40"):
                    return json.loads(packet[2:])  # type: ignore[no-any-return]
                assert not packet.startswith("44"), packet
        raise AssertionError("no CONNECT reply")

    def last_offset(self) -> str:
        return str(self.events[-1][-1])


async def test_recovered_socket_is_back_in_its_study_room_with_membership_rechecked(
        domain_node: DomainNode, connect: ClientFactory) -> None:
    alice = await connect(1, join=(1,))
    raw = RawPolling(domain_node)
    await raw.open()
    auth = {"userId": 2, "token": domain_node.token(2)}
    first = await raw.connect(auth)
    await raw.post('421' + json.dumps(["join-study", {"studyId": 1}]))
    await alice.wait("member-joined")
    await alice.call("message", {"studyId": 1, "content": "before the drop"})
    while not any(e[0] == "message" for e in raw.events):
        await raw.poll()
    offset = raw.last_offset()

    await raw.post("1")  # the transport closes: Bob's socket is kept for recovery
    await alice.wait("member-left")
    await alice.wait("user-offline", lambda p: p == {"userId": 2})
    await alice.call("message", {"studyId": 1, "content": "while away"})

    again = RawPolling(domain_node)
    await again.open()
    reply = await again.connect({**auth, "pid": first["pid"], "offset": offset})
    assert reply["sid"] == first["sid"]  # recovered
    while not any(e[0] == "message" for e in again.events):
        await again.poll()
    assert [e[1]["content"] for e in again.events if e[0] == "message"] == ["while away"]
    # counted back in: Alice hears Bob join and come online, and the room lists him
    await alice.wait("user-online", lambda p: p == {"userId": 2})
    await alice.wait("member-joined", lambda p: len(alice.got("member-joined")) == 2)
    sockets = await domain_node.node.sio.main.in_("study:1").fetch_sockets()
    assert sorted(s.data["userId"] for s in sockets) == [1, 2]
    await again.post("1")
    await alice.wait("member-left", lambda p: len(alice.got("member-left")) == 2)

    # membership ended while away: recovered, but not back in the room
    def deactivate() -> None:
        StudyMember.update(status="INACTIVE").where((StudyMember.study == 1) & (StudyMember.user == 2)).execute()

    await domain_node.db(deactivate)
    offset = again.last_offset()
    third = RawPolling(domain_node)
    await third.open()
    assert (await third.connect({**auth, "pid": first["pid"], "offset": offset}))["sid"] == first["sid"]
    await alice.call("message", {"studyId": 1, "content": "sentinel"})
    await alice.wait("message", lambda m: m["content"] == "sentinel")
    sockets = await domain_node.node.sio.main.in_("study:1").fetch_sockets()
    assert sorted(s.data["userId"] for s in sockets) == [1]
    assert len(alice.got("member-joined")) == 2
    await third.post("1")
