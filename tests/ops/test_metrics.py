"""`/metrics`: the node's counters in the Prometheus text format, read back by a real parser."""

from __future__ import annotations

import asyncio

import pytest
from tornado.httpclient import AsyncHTTPClient

from coup.config import Secret
from coup.engine.handshake import HandshakeInfo
from coup.engine.options import EngineOptions
from coup.engine.server import EngineServer
from coup.metrics import Metrics
from coup.protocol.socketio import SocketPacket, SocketPacketType, encode
from coup.protocol.wire import Outbound
from tests.domain.support import Client, DomainNode, NodeFactory
from tests.ops.scrape import Scrape, scrape
from tests.waiting import eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

TOKEN = "metrics-token-0123456789abcdef"


async def test_a_node_counts_what_its_clients_do(make_node: NodeFactory) -> None:
    node = await make_node(metrics_port=0, message_rate=0.01, message_burst=2)
    assert node.node.metrics_port
    url = f"http://127.0.0.1:{node.node.metrics_port}/metrics"
    alice, bob = Client(node, "websocket"), Client(node, "polling")
    try:
        await alice.connect(1)
        # a recovery that cannot be had (unknown session): counted as a miss, connected afresh
        await bob.connect(2, auth={"userId": 2, "token": node.token(2), "pid": "gone", "offset": "1"})
        for client in (alice, bob):
            assert (await client.call("join-study", {"studyId": 1}))["ok"] is True
        for i in range(3):  # a burst of 2: the third is refused
            await alice.call("message", {"studyId": 1, "content": f"hello {i}"})
        await bob.wait("message", lambda m: m["content"] == "hello 1")

        got = await scrape(url)
        assert got["coup_connections", {"namespace": "/", "transport": "websocket"}] == 1
        assert got["coup_connections", {"namespace": "/", "transport": "polling"}] == 1
        assert got["coup_engine_sessions", {"transport": "websocket"}] == 1
        assert got["coup_connects_total", {"namespace": "/"}] == 2
        assert got["coup_engine_connections_opened_total", {"transport": "polling"}] == 1
        for transport in ("websocket", "polling"):
            for name in ("coup_packets_received_total", "coup_packets_sent_total",
                         "coup_bytes_received_total", "coup_bytes_sent_total"):
                assert got[name, {"transport": transport}] > 0, (name, transport)
        assert got["coup_rate_limited_total", {"limit": "message"}] == 1
        assert got["coup_recoveries_total", {"result": "miss"}] == 1
        assert got["coup_event_handler_seconds_count", {"event": "message"}] == 3
        assert got["coup_event_handler_seconds_count", {"event": "join-study"}] == 2
        assert got["coup_db_query_seconds_count", {"query": "connect_context"}] == 2
        assert got["coup_presence_transitions_total", {"kind": "user", "direction": "online"}] == 2
        assert got["coup_presence_transitions_total", {"kind": "study_member", "direction": "joined"}] == 2
        assert got["coup_room_commands_total", {"where": "local"}] >= 4  # 2 joins, 2 messages
        assert got["coup_broadcast_receivers_count", {}] >= 2
        # both sockets got both stored messages: a broadcast with two receivers is in the "<= 2" bucket
        assert got["coup_broadcast_receivers_bucket", {"le": "2"}] >= 2
        assert got["coup_rooms", {"namespace": "/"}] >= 3  # study:1, user:1, user:2 (and groups)
        assert got.get("process_resident_memory_bytes") > 0

        await bob.close()
        # the offline transition comes last: the disconnect handler reads the database first
        await eventually(lambda: _scraped(url, "coup_presence_transitions_total",
                                          {"kind": "user", "direction": "offline"}, 1), poll=0.05)
        after = await scrape(url)
        assert after["coup_disconnects_total", {"namespace": "/", "reason": "client namespace disconnect"}] == 1
        assert after["coup_connections", {"namespace": "/", "transport": "polling"}] == 0
    finally:
        await alice.close()
        await bob.close()


async def _scraped(url: str, name: str, labels: dict[str, str], value: float) -> bool:
    return (await scrape(url)).get(name, labels) == value


async def test_metrics_on_the_main_port_need_the_token(make_node: NodeFactory) -> None:
    node = await make_node(metrics_token=Secret(TOKEN))
    assert node.node.metrics_port is None
    http = AsyncHTTPClient()
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
        response = await http.fetch(node.url + "/metrics", headers=headers, raise_error=False)
        assert response.code == 401, headers
        assert response.headers["WWW-Authenticate"] == "Bearer"
    got = await scrape(node.url + "/metrics", TOKEN)
    assert got["coup_connections", {"namespace": "/", "transport": "websocket"}] == 0


async def test_without_a_metrics_setting_nothing_is_counted_or_served(domain_node: DomainNode) -> None:
    assert domain_node.node.metrics is None and domain_node.node.engine.metrics is None
    response = await AsyncHTTPClient().fetch(domain_node.url + "/metrics", raise_error=False)
    assert response.code == 404


async def test_scrapes_while_clients_come_and_go_parse(make_node: NodeFactory) -> None:
    """Label values that clients influence (disconnect reasons) never break the exposition."""
    node = await make_node(metrics_token=Secret(TOKEN))
    clients = [Client(node, "websocket") for _ in range(5)]
    try:
        await asyncio.gather(*(c.connect(1 + i % 5) for i, c in enumerate(clients)))
        scrapes = await asyncio.gather(*(scrape(node.url + "/metrics", TOKEN) for _ in range(5)),
                                       *(c.close() for c in clients[:3]))
        assert all(isinstance(s, Scrape) for s in scrapes[:5])
    finally:
        for client in clients:
            await client.close()


async def test_a_slow_polling_consumer_is_cut_off_and_its_queue_counted() -> None:
    metrics = Metrics()
    engine = EngineServer(EngineOptions(max_buffered_bytes=10_000), metrics=metrics)
    handshake = HandshakeInfo(headers={}, query={"EIO": "4", "transport": "polling"}, address="127.0.0.1",
                              url="/socket.io/?EIO=4&transport=polling", secure=False, issued=0.0)
    session = engine.open_polling(handshake)
    for _ in range(30):  # never fetched: the queue outgrows its bound
        session.send(Outbound.message(encode(SocketPacket(SocketPacketType.EVENT, "/", ["big", "x" * 1000]))))
    await eventually(lambda: not session.open, "the close (it runs on a later loop turn)")
    assert metrics.slow_consumers == {"polling": 1}
    assert metrics.queue_drops["polling"] >= 9
    assert metrics.closed == {"transport error": 1} and metrics.opened == {"polling": 1}
