"""Connection state recovery on memory and across nodes: a client may come back on another node."""

from __future__ import annotations

import asyncio

import pytest

from tests.cluster.conftest import wait_until
from tests.cluster.rawclient import RawClient

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


async def test_a_dropped_client_recovers_on_another_node_with_what_it_missed(nodes, peers):
    sender = await peers("sender").connect(nodes[1].url)
    await sender.call("join", {"room": "r"})
    client = RawClient()
    try:
        await client.connect(nodes[0].url, {"user": "rc"})
        assert await client.call("join", {"room": "r"}) == {"node": client_node(nodes, 0)}
        await sender.call("emit", {"rooms": ["r"], "event": "m", "data": 1})
        await wait_until(lambda: client.received("m") == [1], what="first message")
        sid, pid, offset = client.sid, client.pid, client.offset
        assert offset is not None

        await client.drop()
        await asyncio.sleep(0.3)
        for n in (2, 3):
            await sender.call("emit", {"rooms": ["r"], "event": "m", "data": n})
        await sender.call("emit", {"rooms": ["elsewhere"], "event": "m", "data": "not for us"})
        await asyncio.sleep(0.2)

        back = RawClient()
        try:
            reply = await back.connect(nodes[2].url, {"user": "rc", "pid": pid, "offset": offset})
            assert reply["sid"] == sid  # recovered: same socket id, rooms restored
            await wait_until(lambda: back.received("m") == [2, 3], what="the missed messages")
            await sender.call("emit", {"rooms": ["r"], "event": "m", "data": 4})
            await wait_until(lambda: back.received("m") == [2, 3, 4], what="live traffic after recovery")
            found = await sender.call("fetch", {"room": "r"})
            assert sid in [s["id"] for s in found]
        finally:
            await back.close()
    finally:
        await client.close()


async def test_an_unknown_offset_gives_a_fresh_session(nodes, peers):
    client = RawClient()
    try:
        await client.connect(nodes[0].url, {"user": "rc"})
        await client.call("join", {"room": "r"})
        pid = client.pid
        await client.drop()
        await asyncio.sleep(0.3)
        back = RawClient()
        try:
            reply = await back.connect(nodes[1].url, {"user": "rc", "pid": pid, "offset": "999999"})
            assert reply["sid"] != client.sid
        finally:
            await back.close()
    finally:
        await client.close()


def client_node(nodes, index: int) -> str:
    return nodes[index].node.sio.node_id
