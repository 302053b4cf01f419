"""The recovery store's bounds: bytes as well as packets, and one origin socket's share.

One client whose handler broadcasts a lot must not push the others' resume data out; its
broadcasts past its share are delivered without an offset and not kept.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import pytest

from coup.core.options import RecoveryOptions, ServerOptions
from coup.core.replay_budget import ReplayBudget
from coup.core.socket import Socket
from tests.core.test_disconnect_and_recovery import assert_fresh_start, drop, joined_client, reconnect
from tests.servers import serve

pytestmark = [pytest.mark.timeout(30)]


@dataclass
class Entry:
    at: float
    size: int
    origin: str | None


def test_the_store_is_bounded_by_bytes_packets_age_and_origin_share() -> None:
    budget = ReplayBudget(RecoveryOptions(max_disconnection_duration=10, max_packets=100, max_bytes=1000,
                                          max_origin_share=0.25))
    entries: deque[Entry] = deque()
    for i in range(10):
        assert budget.admit(None, 100)
        budget.add(entries, Entry(float(i), 100, None), float(i))
    assert len(entries) == 10 and budget.bytes == 1000
    budget.add(entries, Entry(10.0, 300, None), 10.0)  # over 1000 bytes: the oldest go
    assert budget.bytes <= 1000 and entries[-1].size == 300
    assert not budget.admit("flooder", 251)  # one packet over an origin's byte share
    for _ in range(25):
        assert budget.admit("flooder", 1)
        budget.add(entries, Entry(11.0, 1, "flooder"), 11.0)
    assert not budget.admit("flooder", 1)  # its packet share (25 of 100) is used up
    assert budget.admit("someone else", 1)
    budget.add(entries, Entry(100.0, 1, None), 100.0)  # everything older than 10 s goes
    assert list(entries) == [Entry(100.0, 1, None)] and budget.bytes == 1
    assert budget.admit("flooder", 1)  # its packets left the store: its share is free again


def _spam_server(share: float) -> Any:
    options = ServerOptions(recovery=RecoveryOptions(max_packets=100, max_origin_share=share))
    return serve(server_options=options)


def _install(running: Any) -> None:
    async def join(socket: Socket, args: list[Any]) -> None:
        await socket.join(*args)

    def spam(socket: Socket, args: list[Any]) -> None:
        for i in range(int(args[0])):
            socket.nsp.to("r").emit("spam", i)

    running.sio.main.on("join", join)
    running.sio.main.on("spam", spam)
    running.sio.main.on("status", lambda socket, args: {"recovered": socket.recovered})


@pytest.mark.asyncio
@pytest.mark.parametrize("share", [0.25, 10.0])
async def test_one_socket_cannot_push_out_the_others_resume_data(share: float) -> None:
    async with _spam_server(share) as running:
        _install(running)
        bob, reply, offset = await joined_client(running, "r")
        await drop(running, bob)
        spammer, _, _ = await joined_client(running, "r")
        spammer.emit("spam", 200, ack=5)  # 200 broadcasts into a store of 100 packets
        while (await spammer.packet()).id != 5:
            pass
        running.sio.main.to("r").emit("after", 1)  # not the spammer's: stored either way
        back, new_reply = await reconnect(running, {"pid": reply["pid"], "offset": offset})
        if share > 1:  # no share to speak of: the spam evicted Bob's offset, he starts afresh
            assert new_reply["sid"] != reply["sid"]
            await assert_fresh_start(back)
        else:
            assert new_reply == reply
            replayed = []
            while not replayed or replayed[-1][0] != "after":
                replayed.append(await back.event())
            # the spammer's first 25 broadcasts were kept, the rest delivered unstored
            assert [e[1] for e in replayed if e[0] == "spam"] == list(range(25))
            await back.close()
        await spammer.close()
