"""Long-polling behind a router without sticky sessions: every request may hit another node."""

from __future__ import annotations

import asyncio
import itertools
import json

import aiohttp
import pytest

from tests.cluster.conftest import wait_until

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

RS = "\x1e"


class RoundRobinPoller:
    """An Engine.IO polling client whose every HTTP request goes to the next node."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = itertools.cycle(urls)
        self.session = aiohttp.ClientSession()
        self.sid = ""
        self.packets: list[str] = []

    def url(self) -> str:
        base = next(self.urls) + "/socket.io/?EIO=4&transport=polling"
        return base + (f"&sid={self.sid}" if self.sid else "")

    async def open(self) -> dict:
        async with self.session.get(self.url()) as response:
            text = await response.text()
        info = json.loads(text[1:])
        self.sid = info["sid"]
        return info

    async def post(self, *packets: str) -> None:
        async with self.session.post(self.url(), data=RS.join(packets).encode()) as response:
            assert response.status == 200, await response.text()

    async def poll(self) -> list[str]:
        async with self.session.get(self.url()) as response:
            assert response.status == 200, await response.text()
            got = [p for p in (await response.text()).split(RS) if p != "6"]
        for packet in got:
            if packet == "2":
                await self.post("3")
        self.packets += got
        return got

    async def until(self, predicate, what: str) -> None:
        for _ in range(20):
            if any(predicate(p) for p in self.packets):
                return
            await self.poll()
        raise AssertionError(f"never got {what}: {self.packets}")


async def test_polling_requests_spread_over_nodes_reach_the_session(nodes, peers):
    sender = await peers("sender").connect(nodes[2].url)
    await sender.call("join", {"room": "r"})
    poller = RoundRobinPoller([n.url for n in nodes])
    try:
        info = await poller.open()
        if nodes[0] is not nodes[1]:
            assert info["sid"].startswith("n0.")  # the session id names its node
        await poller.post('40/cluster-test,{"user":"poller"}')
        await poller.until(lambda p: p.startswith("40/cluster-test,{"), "CONNECT")
        await poller.post('42/cluster-test,1["join",{"room":"r"}]')
        await poller.until(lambda p: p.startswith("43/cluster-test,1["), "the join ack")
        await sender.call("emit", {"rooms": ["r"], "event": "hello", "data": "there"})
        await poller.until(lambda p: p.startswith('42/cluster-test,["hello","there"'), "the broadcast")
    finally:
        await poller.session.close()


async def test_websocket_upgrade_through_another_node(nodes, peers):
    sender = await peers("sender").connect(nodes[0].url)
    await sender.call("join", {"room": "r"})
    poller = RoundRobinPoller([nodes[0].url])
    try:
        await poller.open()
        await poller.post('40/cluster-test,{"user":"up"}')
        await poller.until(lambda p: p.startswith("40/cluster-test,{"), "CONNECT")
        await poller.post('42/cluster-test,1["join",{"room":"r"}]')
        await poller.until(lambda p: p.startswith("43/cluster-test,1["), "the join ack")
        url = nodes[1].url.replace("http", "ws") + f"/socket.io/?EIO=4&transport=websocket&sid={poller.sid}"
        async with poller.session.ws_connect(url) as ws:
            await ws.send_str("2probe")
            assert await asyncio.wait_for(ws.receive_str(), 5) == "3probe"
            await ws.send_str("5")
            await sender.call("emit", {"rooms": ["r"], "event": "via", "data": "ws"})
            seen: list[str] = []

            async def read() -> None:
                while True:
                    seen.append(await ws.receive_str())

            reader = asyncio.create_task(read())
            try:
                await wait_until(lambda: any(p.startswith('42/cluster-test,["via","ws"') for p in seen),
                                 what="event over ws")
            finally:
                reader.cancel()
    finally:
        await poller.session.close()


async def test_a_sid_of_an_unknown_node_is_refused_like_any_unknown_sid(nodes):
    async with aiohttp.ClientSession() as session, session.get(
            nodes[0].url + "/socket.io/?EIO=4&transport=polling&sid=ghost.abc") as response:
        assert response.status == 400
        assert (await response.json()) == {"code": 1, "message": "Session ID unknown"}
