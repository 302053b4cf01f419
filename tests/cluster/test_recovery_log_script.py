"""The recovery log script (`LOG_PUBLISH`) on a real redis-server: its bounds and bookkeeping.

The script trims in chunks (a 64th below a bound once the bound is passed) and charges an
origin before it knows whether the origin's share admits the broadcast (giving it back when
not): these tests hold it to what the log promises whatever the trimming's rhythm — offsets
consecutive and in the published messages, the bounds kept, the per-origin and byte counts
equal to what the list holds, a trimmed offset read as gone, a refused broadcast delivered
without an offset.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from coup.cluster.scripts import LOG_READ, log_publish
from tests.cluster.conftest import RedisServer

pytestmark = [pytest.mark.timeout(60)]

MAX_PACKETS = 64
MAX_BYTES = 64 * 1024
ORIGIN_PACKETS = 16
ORIGIN_BYTES = 16 * 1024


class Log:
    """One namespace's log keys on the module's redis-server, and a subscriber to its channel."""

    def __init__(self, client: redis.Redis) -> None:
        prefix = "t" + secrets.token_hex(3)
        self.client = client
        self.key, self.meta, self.channel = f"{prefix}:rlog", f"{prefix}:rlog:m", f"{prefix}:r:room"
        self.pubsub = client.pubsub()
        self.pubsub.subscribe(self.channel)
        assert self.pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]

    def publish(self, *messages: tuple[str, bytes], window_ms: int = 120_000) -> list[bytes]:
        """One script call carrying `messages` ((origin, data) each, stamped); -> refused origins."""
        script = log_publish(window_ms, MAX_PACKETS, MAX_BYTES, ORIGIN_PACKETS, ORIGIN_BYTES, 180_000, 120_000,
                             sharded=False)
        args: list[Any] = []
        for origin, data in messages:
            args += [1, self.channel, "1" + origin, data]
        return list(self.client.eval(script, 2, self.key, self.meta, *args))

    def heard(self) -> list[bytes]:
        out = []
        while (message := self.pubsub.get_message(timeout=0.2)) is not None:
            if message["type"] == "message":
                out.append(message["data"])
        return out

    def entries(self) -> list[tuple[str, bytes]]:
        """(origin, data) of every entry the list holds, oldest first."""
        out = []
        for raw in self.client.lrange(self.key, 0, -1):
            _at, origin, data = raw.split(b" ", 2)
            out.append((origin.decode(), data))
        return out

    def meta_fields(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.client.hgetall(self.meta).items()}


@pytest.fixture
def log(redis_server: RedisServer) -> Iterator[Log]:
    client = redis.Redis(port=redis_server.port)
    made = Log(client)
    yield made
    made.pubsub.close()
    client.close()


def offsets_of(heard: list[bytes]) -> list[int]:
    return [int(m[1:m.index(b" ")]) for m in heard if m[1:2] != b" "]


def assert_books_match_the_list(log: Log) -> None:
    entries = log.entries()
    books = log.meta_fields()
    assert books["bytes"] == sum(len(data) for _, data in entries)
    held: dict[str, list[int]] = {}
    for origin, data in entries:
        if origin:
            counts = held.setdefault(origin, [0, 0])
            counts[0] += 1
            counts[1] += len(data)
    assert {k: v for k, v in books.items() if k.startswith(("p:", "b:"))} == {
        **{f"p:{o}": c[0] for o, c in held.items()}, **{f"b:{o}": c[1] for o, c in held.items()}}


def test_past_its_packet_bound_the_log_is_trimmed_in_chunks_and_its_books_stay_exact(log: Log) -> None:
    heard: list[bytes] = []
    for i in range(300):
        # one broadcast per call, as most loop turns carry; origins of their own and none
        assert log.publish((f"s{i % 7}" if i % 3 else "", f"message {i}".encode())) == []
        if i % 50 == 49:
            heard += log.heard()
            assert log.client.llen(log.key) <= MAX_PACKETS
            assert_books_match_the_list(log)
    heard += log.heard()
    offsets = offsets_of(heard)
    assert len(offsets) == 300 and offsets == list(range(offsets[0], offsets[0] + 300))  # consecutive, in order
    entries = log.entries()
    # a 64th below the bound after a trim, and never above it
    assert MAX_PACKETS - MAX_PACKETS // 64 - 1 <= len(entries) <= MAX_PACKETS
    assert [data for _, data in entries] == [f"message {i}".encode() for i in range(300 - len(entries), 300)]
    assert_books_match_the_list(log)
    # the newest offsets replay; one whose follower was trimmed is gone (never a partial replay)
    kept_from = offsets[-len(entries)]
    replay = log.client.eval(LOG_READ, 2, log.key, log.meta, str(kept_from - 1), "0")
    assert int(replay[0]) == kept_from and len(replay) == 1 + len(entries)
    assert log.client.eval(LOG_READ, 2, log.key, log.meta, str(kept_from - 2), "0") == []


def test_entries_older_than_the_window_are_trimmed_once_an_offset_is_looked_at_and_only_they(log: Log) -> None:
    # (origins of their own or none: no share refuses one, so each takes an offset)
    for i in range(40):
        log.publish((f"s{i % 5}" if i % 2 else "", f"old {i}".encode()), window_ms=300)
    time.sleep(0.4)
    # the age is looked at every 16th offset: within 16 more, all 40 old ones go (in chunks of 16)
    for i in range(16):
        assert log.publish((f"n{i}", f"new {i}".encode()), window_ms=300) == []
    entries = [data for _, data in log.entries()]
    assert entries and all(data.startswith(b"new ") for data in entries)
    assert_books_match_the_list(log)
    # while the oldest is young nothing is trimmed
    for i in range(16, 48):
        assert log.publish((f"n{i}", f"new {i}".encode()), window_ms=300) == []
    assert [data for _, data in log.entries()][:len(entries)] == entries
    assert_books_match_the_list(log)


def test_past_its_byte_bound_the_log_drops_its_oldest_entries(log: Log) -> None:
    for i in range(120):
        log.publish((f"s{i % 6}", b"x" * 1000))
    assert 0 < sum(len(data) for _, data in log.entries()) <= MAX_BYTES
    assert_books_match_the_list(log)


def test_an_origin_over_its_share_is_delivered_without_an_offset_and_charged_nothing(log: Log) -> None:
    # within one call: the share counts the broadcasts before it in the same call
    refused = log.publish(*[("greedy", b"y" * 100) for _ in range(ORIGIN_PACKETS + 3)], ("other", b"z"))
    assert refused == [b"greedy"] * 3
    heard = log.heard()
    # consecutive messages for one channel travel as one batch; its parts say which were kept
    assert len(heard) == 1 and heard[0][:1] == b"M"
    parts = unpack(heard[0])
    assert [p[:2] == b"L " for p in parts] == [False] * ORIGIN_PACKETS + [True] * 3 + [False]
    assert log.meta_fields()["p:greedy"] == ORIGIN_PACKETS
    assert_books_match_the_list(log)
    # larger than any share: delivered, neither kept nor refused, nothing charged
    assert log.publish(("huge", b"h" * (ORIGIN_BYTES + 1))) == []
    assert log.heard()[0][:2] == b"L "
    assert "p:huge" not in log.meta_fields()
    assert_books_match_the_list(log)


def unpack(batch: bytes) -> list[bytes]:
    parts, i = [], 1
    while i < len(batch):
        size = int.from_bytes(batch[i:i + 4], "big")
        parts.append(batch[i + 4:i + 4 + size])
        i += 4 + size
    return parts
