"""Presence without flaps (COUP_PRESENCE_GRACE): a user whose connection drops is still online
for the grace; back inside it, nobody hears anything; not back, user-offline and member-left
come once the grace is over. Leaving on purpose (disconnect) is announced at once.
(The cluster's side, with restarts and a crash, is tests/paas/test_restarts.py.)
"""

from __future__ import annotations

import asyncio
import time

import pytest
from socketio import packet

from tests.domain.support import Client, DomainNode, NodeFactory

pytestmark = pytest.mark.asyncio

GRACE = 1.0
STUDY = 1
ALICE, BOB = 1, 2
FLAPS = ("user-offline", "member-left", "user-online", "member-joined")


async def signed_in(node: DomainNode, user_id: int) -> Client:
    client = Client(node, "websocket")
    await client.connect(user_id)
    ack = await client.call("join-study", {"studyId": STUDY})
    assert ack["ok"] is True, ack
    return client


async def drop(client: Client) -> None:
    """The connection ends without a Socket.IO disconnect, as a restart or a network cut does."""
    await client.sio.eio.disconnect(abort=True)


async def settled(node: DomainNode) -> None:
    """Every dropped socket's grace is over and what it decided is announced."""
    assert await node.node.sio.presence.settle(GRACE * 5)


def about(user_id: int, client: Client) -> list[str]:
    return [name for name, payload in client.received
            if name in FLAPS and isinstance(payload, dict) and payload.get("userId") == user_id]


async def test_a_reconnect_inside_the_grace_announces_nothing(make_node: NodeFactory) -> None:
    node = await make_node(presence_grace=GRACE)
    alice = await signed_in(node, ALICE)
    bob = await signed_in(node, BOB)
    await alice.wait("member-joined", lambda p: p["userId"] == BOB)
    before = len(alice.received)
    await drop(bob)
    again = await signed_in(node, BOB)
    await settled(node)
    ack = await again.call("message", {"studyId": STUDY, "content": "marker"})
    await alice.wait("message", lambda p: p["id"] == ack["id"])  # everything sent before it is in
    heard = [name for name, payload in alice.received[before:]
             if name in FLAPS and isinstance(payload, dict) and payload.get("userId") == BOB]
    print(f"\nwhat Alice heard about Bob after his drop and reconnect: {heard}")
    assert heard == []
    for client in (alice, again):
        await client.close()


async def test_not_back_within_the_grace_is_offline_once_it_ends(make_node: NodeFactory) -> None:
    node = await make_node(presence_grace=GRACE)
    alice = await signed_in(node, ALICE)
    bob = await signed_in(node, BOB)
    await alice.wait("member-joined", lambda p: p["userId"] == BOB)
    dropped = time.monotonic()
    await drop(bob)
    await alice.wait("user-offline", lambda p: p["userId"] == BOB, timeout=GRACE + 5)
    after = time.monotonic() - dropped
    await alice.wait("member-left", lambda p: p["userId"] == BOB, timeout=5)
    print(f"\nuser-offline {after:.2f} s after the drop (grace {GRACE} s)")
    assert after >= GRACE * 0.9
    assert about(BOB, alice).count("user-offline") == 1
    assert about(BOB, alice).count("member-left") == 1
    await alice.close()


async def test_leaving_while_another_tab_lingers_waits_for_that_tab(make_node: NodeFactory) -> None:
    """Bob has two tabs in the room; one drops (it is in no room now, but may come back within
    the grace, recovered, with no member-joined), then he leaves with the other: he is not gone
    from the room yet, so member-left waits until the grace of the dropped tab ends."""
    node = await make_node(presence_grace=GRACE)
    alice = await signed_in(node, ALICE)
    bob_1 = await signed_in(node, BOB)
    bob_2 = await signed_in(node, BOB)
    await alice.wait("member-joined", lambda p: p["userId"] == BOB)
    await drop(bob_1)
    left = await bob_2.call("leave-study", {"studyId": STUDY})
    assert left["ok"] is True, left
    ack = await alice.call("message", {"studyId": STUDY, "content": "after the leave"})
    await alice.wait("message", lambda p: p["id"] == ack["id"])  # the leave's broadcasts are in by then
    print(f"\nwhat Alice heard about Bob after his leave, a tab lingering: {about(BOB, alice)}")
    assert "member-left" not in about(BOB, alice)
    await settled(node)  # the dropped tab did not come back
    await alice.wait("member-left", lambda p: p["userId"] == BOB, timeout=5)
    assert about(BOB, alice).count("member-left") == 1
    for client in (alice, bob_2):
        await asyncio.wait_for(client.close(), 5)


async def test_leaving_on_purpose_is_announced_at_once(make_node: NodeFactory) -> None:
    node = await make_node(presence_grace=30.0)
    alice = await signed_in(node, ALICE)
    bob = await signed_in(node, BOB)
    await alice.wait("member-joined", lambda p: p["userId"] == BOB)
    await bob.call("leave-study", {"studyId": STUDY})
    await alice.wait("member-left", lambda p: p["userId"] == BOB, timeout=2)
    # socket.disconnect(): the user signed out (python-socketio's own disconnect() may close
    # the transport before its DISCONNECT packet is out, so the packet goes first here)
    await bob.sio._send_packet(bob.sio.packet_class(packet.DISCONNECT, namespace="/"))
    await alice.wait("user-offline", lambda p: p["userId"] == BOB, timeout=2)
    for client in (alice, bob):
        await asyncio.wait_for(client.close(), 5)
