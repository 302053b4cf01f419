"""The four VULNs of issue 13, each as an attacker ran it against `coup serve`: every test
here failed on the code before the fix (docs/security.md lists the fix of each)."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.adversarial import attacks
from tests.adversarial.conftest import ArenaFactory
from tests.waiting import eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(180)]


async def test_error_replies_do_not_fill_the_recovery_store(arena: ArenaFactory) -> None:
    """VULN 1: 200 unknown events with 500 KB names took RSS from 54 to 446 MB (every echoed
    `error` reply was kept for replay). Replies to one socket are not stored, and echo at
    most 100 characters of the name."""
    a = await arena()
    replies = await attacks.error_reply_flood(a.attacker)
    assert len(replies) == 200 and replies[0][0]["code"] == "UNKNOWN_EVENT"
    await a.survived(max_growth_mb=60)
    assert replies[0][0]["event"] == "E" * 100
    assert len(replies[0]) == 1  # no recovery offset: the reply is not kept for replay


async def test_one_user_cannot_push_out_the_others_resume_data(arena: ArenaFactory) -> None:
    """VULN 1: 55,000 refused events (more than the store's 50,000 packets) used to evict
    every other client's resume data; Bob must still come back with what he missed."""
    a = await arena()
    bob, reply = await attacks.sio_socket(a.attacker, attacks.signed_in(a.attacker, 2))
    bob.send_text('421["join-study",{"studyId":1}]')
    offset = None
    async with asyncio.timeout(10):
        while offset is None:
            message = await bob.recv_text()
            if message.startswith("42"):
                args = json.loads(message[2:])
                if isinstance(args[-1], str):
                    offset = args[-1]
            elif message.startswith("431"):
                await a.honest.exchange()  # a room message: its offset is Bob's resume point
    await bob.close()

    await attacks.small_error_flood(a.attacker, count=55_000)
    tag = "honest-sent-while-raw-bob-was-away"
    ack = await a.honest.alice.client.call("message", {"studyId": 1, "content": tag}, timeout=10)
    assert ack["ok"] is True
    a.honest.sent.append(tag)

    again, reply2 = await attacks.sio_socket(a.attacker, attacks.signed_in(
        a.attacker, 2, pid=reply["pid"], offset=offset))
    try:
        assert reply2["sid"] == reply["sid"], "Bob's session was not recovered"
        async with asyncio.timeout(10):
            while True:
                message = await again.recv_text()
                if message.startswith("42") and tag in message:
                    break
    finally:
        await again.close()
    await a.survived(max_growth_mb=60)


async def test_a_polling_post_cut_off_mid_body_is_freed(arena: ArenaFactory) -> None:
    """VULN 2: each POST aborted after 900 KB of a 1 MB body was held until the process
    exited (200 of them: 176 MB)."""
    a = await arena()
    await attacks.aborted_posts(a.attacker, count=200)
    await eventually(lambda: a.target.rss_mb() - a.rss_start < 40, "the cut-off bodies are not held")
    await a.survived(max_growth_mb=40)


async def test_a_body_that_stops_coming_is_cut_off_on_every_route(arena: ArenaFactory) -> None:
    """VULN 3: a head plus a few body bytes, then silence, held the connection for ever.
    Now the connection is closed `COUP_BODY_TIMEOUT` after its head (polling, API, SockJS)."""
    a = await arena(COUP_BODY_TIMEOUT="2")
    fds_before = a.target.fds()
    held = await attacks.slow_bodies(a.attacker, per_path=50)
    try:
        closed = await asyncio.gather(*(attacks.closed_by_server(reader, 15) for reader, _ in held))
    finally:
        for _, writer in held:
            writer.close()
    assert all(closed), f"{closed.count(False)} of {len(held)} connections still open"
    await eventually(lambda: a.target.fds() <= fds_before + 5, "the closed connections' descriptors are freed")
    await a.survived(max_growth_mb=40)


async def test_a_message_of_endless_empty_fragments_is_refused(arena: ArenaFactory) -> None:
    """VULN 4: a 2-byte message padded with 4,000,000 empty continuation frames took peak
    memory from 31 to 389 MB. Now a message may have 4,096 frames: close 1009."""
    a = await arena()
    code = await attacks.fragment_flood(a.attacker, frames=4_000_000)
    assert code == 1009
    await a.survived(max_growth_mb=40)
