"""Users chat in study 1 through HAProxy (round-robin, no affinity) in front of 3 nodes that
cannot reach each other: the stock socket.io-client over WebSocket, long-polling and the
default (polling, then upgrade), and the stock sockjs-client over xhr-polling and
xhr-streaming. See tests/paas/chat.py for what is checked; the counts are printed (-s).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tests.paas.bed import Bed
from tests.paas.chat import socket_io_chat, sockjs_chat

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(180)]


async def test_no_node_can_reach_another(paas_bed: Bed) -> None:
    """What each node advertises as its address answers nobody, and that is what the others know."""
    probes = {trap.address: await asyncio.to_thread(trap.probe) for trap in paas_bed.traps}
    print(f"\nwhat dialling each node's COUP_PUBLIC_ADDRESS gets: {probes}")
    assert sorted(probes.values()) == ["no answer", "refused", "reset"]
    for node in paas_bed.nodes:
        view = await asyncio.to_thread(paas_bed.cluster_view, node)
        advertised = {n["id"]: n["address"] for n in view["nodes"]}
        assert advertised == {n.name: t.address for n, t in zip(paas_bed.nodes, paas_bed.traps, strict=True)}


# ---------------------------------------------------------------------------- socket.io-client


@pytest.mark.parametrize("transports", [["websocket"], ["polling"], None], ids=["websocket", "polling", "default"])
async def test_socket_io_client(paas_bed: Bed, js_client: Any, transports: list[str] | None) -> None:
    await socket_io_chat(paas_bed, await js_client(), transports)


# ---------------------------------------------------------------------------- sockjs-client


@pytest.mark.parametrize("transport", ["xhr-polling", "xhr-streaming"])
async def test_sockjs_client(paas_bed: Bed, node_client: Callable[..., Any], transport: str) -> None:
    """`node_client` (tests/sockjs/conftest.py): the npm sockjs-client with static/sockjs-coup.js."""
    await sockjs_chat(paas_bed, node_client, transport)
