"""Deploys, daily restarts and crashes lose nothing (issue 12), on the PaaS bed: 3 isolated
nodes behind HAProxy round-robin (with its /readyz health check, as a platform router stops
routing to a stopping dyno), one PostgreSQL, one Redis.

Users chat in study 1 the whole time from the stock socket.io-client (polling, websocket,
the default) and sockjs-client (xhr-polling, xhr-streaming), every send with a
`clientMessageId`, resent after a reconnect until acknowledged (socket.io-client's
`retries`; the SockJS client's sends are resent by the test). Meanwhile:

- `test_rolling_restart`: n0, n1, n2 each get SIGTERM, exit, start again, one after the other;
- `test_owner_of_study_1_crashes`: the owner of `study:1` gets SIGKILL and is started again.

Then, checked against PostgreSQL and printed: every client saw every message stored during
the run exactly once, in seq order (live or replayed; a message stored but not broadcast
before the crash arrives with its sender's resend, after later ones); every reconnect caused by a restart
was `recovered` (after a crash too); nobody heard a user-offline or member-left about users
who only reconnected; every send was acknowledged once and stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from tests.clients.jsclient import JsClient, node_available
from tests.conftest import require
from tests.paas.bed import Bed, CoupServe, http_get
from tests.paas.conftest import BedFactory, RedisFactory
from tests.sockjs.conftest import NodeClient

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(240)]

STUDY = 1
#: the demo data's ACTIVE members of study 1 (Alice, Bob, Chloe)
USERS = (1, 2, 3)
#: seconds between two sends of one client
PACE = 0.25
#: seconds one attempt at a send waits for its ack before it is sent again
ATTEMPT = 2.0
PATIENCE = 30.0
GRACE = 3.0
SPREAD = 1.0
FLAPS = ("user-offline", "member-left")


class Chatter:
    """One client of the scenario; subclasses drive socket.io-client or sockjs-client."""

    name: str
    user: int

    async def start(self, bed: Bed) -> None:
        raise NotImplementedError

    async def call(self, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send until acknowledged (the same payload each time); the one ack."""
        raise NotImplementedError

    def events(self, event: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    def connects(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def timeline(self) -> list[dict[str, Any]]:
        """Its connects, disconnects and events in the order it saw them (for diagnostics)."""
        raise NotImplementedError

    @property
    def connected(self) -> bool:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class SocketIoChatter(Chatter):
    def __init__(self, js: JsClient, name: str, user: int, transports: list[str] | None) -> None:
        self.js, self.name, self.user, self.transports = js, name, user, transports

    async def start(self, bed: Bed) -> None:
        options: dict[str, Any] = {"auth": {"userId": self.user, "token": bed.token(self.user)},
                                   "retries": 60, "reconnectionDelay": 300, "reconnectionDelayMax": 1000,
                                   "reconnectionAttempts": 50}
        if self.transports is not None:
            options["transports"] = self.transports
        record = await self.js.connect(self.name, bed.url, timeout=PATIENCE, **options)
        assert record["type"] == "connect", f"{self.name} did not connect: {record}"

    async def call(self, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        cmd_id = self.js.send("emit", socket=self.name, event=event, args=[payload], ack=True,
                              timeout=int(ATTEMPT * 1000))
        record = await self.js.expect(lambda r: r.get("id") == cmd_id and r["type"] in ("ack", "ack_error", "error"),
                                      timeout=PATIENCE * 2)
        assert record["type"] == "ack", f"{self.name}: {event} never acknowledged: {record}"
        return dict(record["args"][0])

    def events(self, event: str) -> list[dict[str, Any]]:
        return [r["args"][0] for r in self.js.events(self.name, event)]

    def connects(self) -> list[dict[str, Any]]:
        return self.js.seen("connect", socket=self.name)

    def timeline(self) -> list[dict[str, Any]]:
        return [r for r in self.js.records if r.get("socket") == self.name
                and r["type"] in ("connect", "disconnect", "event")]

    @property
    def connected(self) -> bool:
        ups = [r for r in self.js.records if r.get("socket") == self.name and r["type"] in ("connect", "disconnect")]
        return bool(ups) and ups[-1]["type"] == "connect"

    async def close(self) -> None:
        pass  # the Node process is closed once for all its sockets


class SockJSChatter(Chatter):
    def __init__(self, client: NodeClient, name: str, user: int) -> None:
        self.client, self.name, self.user = client, name, user
        self._acks = 1000

    async def start(self, bed: Bed) -> None:
        self.client.send(cmd="connect", auth={"userId": self.user, "token": bed.token(self.user)}, reconnection=True)
        record = await self.client.log.expect(lambda r: r["type"] in ("connect", "connect_error"), timeout=PATIENCE)
        assert record["type"] == "connect", f"{self.name} did not connect: {record}"

    async def call(self, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        """sockjs-coup.js does not resend by itself: send again, same payload, until acknowledged."""
        deadline = time.monotonic() + PATIENCE * 2
        while True:
            self._acks += 1
            ack_id = self._acks
            self.client.send(cmd="emit", event=event, args=[payload], ack=ack_id, timeout=int(ATTEMPT * 1000))
            record = await self.client.log.expect("ack", id=ack_id, timeout=ATTEMPT + 5)
            if record.get("error") is None:
                return dict(record["args"][0])
            assert time.monotonic() < deadline, f"{self.name}: {event} never acknowledged"

    def events(self, event: str) -> list[dict[str, Any]]:
        return [r["args"][0] for r in self.client.log.seen("event", event=event)]

    def connects(self) -> list[dict[str, Any]]:
        return self.client.log.seen("connect")

    def timeline(self) -> list[dict[str, Any]]:
        return [r for r in self.client.log.records if r["type"] in ("connect", "disconnect", "event")]

    @property
    def connected(self) -> bool:
        ups = [r for r in self.client.log.records if r["type"] in ("connect", "disconnect")]
        return bool(ups) and ups[-1]["type"] == "connect"

    async def close(self) -> None:
        await self.client.close()


@pytest.fixture(scope="module")
def restart_bed(make_redis: RedisFactory, make_bed: BedFactory) -> Bed:
    return make_bed(make_redis().url(), "restarts", health_checks=True,
                    env={"COUP_PRESENCE_GRACE": str(GRACE), "COUP_DRAIN_SPREAD": str(SPREAD)})


@pytest_asyncio.fixture
async def chatters(restart_bed: Bed, node_js: str) -> AsyncIterator[list[Chatter]]:
    require(node_available(), "node with tests/js/node_modules (npm ci in tests/js)")
    js = await JsClient.start(lifetime_ms=300_000)
    made: list[Chatter] = [
        *(SocketIoChatter(js, f"{kind}-{user}", user, transports) for user in USERS
          for kind, transports in (("polling", ["polling"]), ("websocket", ["websocket"]), ("default", None))),
        SockJSChatter(await NodeClient.start(node_js, f"{restart_bed.url}/sockjs", "xhr-polling"), "sockjs-polling", 1),
        SockJSChatter(await NodeClient.start(node_js, f"{restart_bed.url}/sockjs", "xhr-streaming"),
                      "sockjs-streaming", 2),
    ]
    try:
        for chatter in made:
            await chatter.start(restart_bed)
        for chatter in made:
            ack = await chatter.call("join-study", {"studyId": STUDY})
            assert ack["ok"] is True, ack
        yield made
    finally:
        for chatter in made:
            await chatter.close()
        await js.close()


class Load:
    """Every chatter sends a message every `PACE` seconds until stopped; what was sent and acked."""

    def __init__(self, chatters: list[Chatter], label: str) -> None:
        self.chatters = chatters
        self.label = label
        self.sent: dict[str, Chatter] = {}  # clientMessageId -> who
        self.acks: list[tuple[str, dict[str, Any]]] = []
        #: sends refused because a socket that reconnected without recovery was not in the room
        #: yet: the client joins again and sends again, as the product's client does
        self.rejoins: Counter[str] = Counter()
        #: sends refused with the retryable UNAVAILABLE and sent again, and why (its message)
        self.retried: Counter[str] = Counter()
        self.retry_reasons: Counter[str] = Counter()
        self._running = True
        self._tasks: list[asyncio.Task[None]] = []

    async def _chat(self, chatter: Chatter) -> None:
        number = 0
        while self._running:
            number += 1
            cid = f"{self.label}-{chatter.name}-{number}"
            self.sent[cid] = chatter
            payload = {"studyId": STUDY, "content": f"{self.label} {chatter.name} #{number}", "clientMessageId": cid}
            ack = await chatter.call("message", payload)
            for _ in range(50):
                code = ack.get("error", {}).get("code")
                if code == "NOT_IN_STUDY" and self.rejoins[chatter.name] < 20:
                    self.rejoins[chatter.name] += 1
                    await chatter.call("join-study", {"studyId": STUDY})
                elif code == "UNAVAILABLE":
                    # numbering is refused while a node's pub/sub link is (re)connecting: the error
                    # says to retry, and the same clientMessageId makes the retry safe
                    self.retried[chatter.name] += 1
                    self.retry_reasons[str(ack["error"].get("message"))] += 1
                    await asyncio.sleep(0.1)
                else:
                    break
                ack = await chatter.call("message", payload)
            self.acks.append((cid, ack))
            await asyncio.sleep(PACE)

    def start(self) -> None:
        self._tasks = [asyncio.get_running_loop().create_task(self._chat(c)) for c in self.chatters]

    async def stop(self) -> None:
        self._running = False
        await asyncio.gather(*self._tasks)


async def wait_until(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


def connects_so_far(chatters: list[Chatter]) -> dict[str, int]:
    return {c.name: len(c.connects()) for c in chatters}


def moment(record: dict[str, Any], by_id: dict[int, dict[str, Any]]) -> str:
    """One record of a client's timeline, short: ``s<seq>@<offset>`` for a message (the
    offset the client keeps for recovery, when the server sent one), ``C``/``C+`` for a
    connect (recovered), ``D`` for a disconnect."""
    if record["type"] == "connect":
        return "C+" if record.get("recovered") else "C"
    if record["type"] == "disconnect":
        return f"D({record.get('reason')})"
    args = record.get("args") or [{}]
    if record.get("event") != "message" or not isinstance(args[0], dict):
        return str(record.get("event"))
    row = by_id.get(args[0].get("id"))
    offset = args[-1] if len(args) > 1 and isinstance(args[-1], str) else "-"
    return f"s{row['seq'] if row else '?'}@{offset}"


def around_duplicates(chatter: Chatter, duplicated: set[int], by_id: dict[int, dict[str, Any]]) -> str:
    """Where each copy of a duplicated message came in its client's timeline, with what came around it."""
    timeline = chatter.timeline()
    copies = [i for i, r in enumerate(timeline) if r["type"] == "event" and r.get("event") == "message"
              and isinstance((r.get("args") or [None])[0], dict) and r["args"][0].get("id") in duplicated]
    if not copies:
        return ""
    start, end = max(0, copies[0] - 8), min(len(timeline), copies[-1] + 4)
    marks = set(copies)
    return " ".join(("*" if i in marks else "") + moment(timeline[i], by_id) for i in range(start, end))


async def check(bed: Bed, chatters: list[Chatter], load: Load, seq_before: int,
                connects_before: dict[str, int], *, crashed: bool) -> None:
    rows = await asyncio.to_thread(bed.messages, STUDY, seq_before)

    def everyone_has_everything() -> bool:
        ids = {row["id"] for row in rows}
        return all(ids <= {m["id"] for m in c.events("message")} for c in chatters)

    with contextlib.suppress(AssertionError):
        await wait_until(everyone_has_everything, timeout=PATIENCE, what="every client to have every message")
    label = load.label
    by_cid = Counter(row["clientMessageId"] for row in rows)
    acked = Counter(cid for cid, _ in load.acks)
    print(f"\n[{label}] sent {len(load.sent)}, acknowledged {len(load.acks)} "
          f"({sum(1 for c in acked.values() if c > 1)} twice), stored {len(rows)} "
          f"({sum(1 for c in by_cid.values() if c > 1)} twice), "
          f"acks saying duplicate (a resend of a stored one) {sum(1 for _, a in load.acks if a.get('duplicate'))}")
    refused = Counter(str(a.get("error", a)) for _, a in load.acks if a.get("ok") is not True)
    print(f"[{label}]   refusals: {dict(refused)}; joined again after a reconnect without recovery: "
          f"{dict(load.rejoins)}; sent again after UNAVAILABLE: {dict(load.retried)} {dict(load.retry_reasons)}")
    assert sorted(by_cid) == sorted(load.sent), "stored rows differ from the sends (lost, or not ours)"
    assert all(count == 1 for count in by_cid.values()), "a send was stored twice"
    assert all(count == 1 for count in acked.values()) and sorted(acked) == sorted(load.sent), \
        "a send was not acknowledged exactly once"
    by_id = {row["id"]: row for row in rows}
    for cid, ack in load.acks:
        assert ack.get("ok") is True, (cid, ack)
        assert by_id[ack["id"]]["clientMessageId"] == cid and by_id[ack["id"]]["seq"] == ack["seq"], (cid, ack)
    expected = [row["id"] for row in rows]
    # a message its dead owner stored but never broadcast goes out when its sender resends it
    # (acknowledged as a duplicate): after later ones, by design. Every other is in seq order.
    late = {ack["seq"] for _, ack in load.acks if ack.get("duplicate")}
    failures = []
    for chatter in chatters:
        got = [m["id"] for m in chatter.events("message") if m.get("studyId") == STUDY and m["seq"] > seq_before]
        counts = Counter(got)
        seqs = [by_id[i]["seq"] for i in got if i in by_id]
        inversions = [(a, b) for a, b in itertools.pairwise(s for s in seqs if s not in late) if b < a]
        reconnects = chatter.connects()[connects_before[chatter.name]:]
        recovered = sum(1 for r in reconnects if r.get("recovered"))
        flaps = Counter(name for name in FLAPS for p in chatter.events(name) if p.get("userId") in USERS)
        print(f"[{label}]   {chatter.name} (user {chatter.user}): received {len(got)} of {len(expected)}, "
              f"{sum(1 for n in counts.values() if n > 1)} duplicated, {len(set(expected) - set(got))} missing, "
              f"out of seq order {len(inversions)} times {inversions[:4]}; "
              f"reconnects {len(reconnects)}, recovered {recovered}; "
              f"heard {dict(flaps) or 'no user-offline / member-left'}")
        duplicated = {i for i, n in counts.items() if n > 1}
        if duplicated:
            print(f"[{label}]     duplicated seqs {sorted(by_id[i]['seq'] for i in duplicated if i in by_id)}; "
                  f"around them (*: a copy): {around_duplicates(chatter, duplicated, by_id)}")
        if sorted(got) != sorted(expected):
            failures.append(f"{chatter.name} did not get every stored message exactly once")
        if recovered != len(reconnects):
            failures.append(f"{chatter.name}: {len(reconnects) - recovered} reconnects not recovered")
        if flaps:
            failures.append(f"{chatter.name} heard {dict(flaps)} about users who only reconnected")
        if inversions:
            failures.append(f"{chatter.name} got messages out of seq order: {inversions[:4]}")
    restarted = sum(len(c.connects()) - connects_before[c.name] for c in chatters)
    print(f"[{label}]   reconnects in all: {restarted}; nodes that dialled another: {bed.peer_dials()}")
    assert restarted > 0, "no client reconnected: nothing was tested"
    assert not failures, "\n".join(failures) + ("\n(after a crash)" if crashed else "")


def handshake_answer(url: str) -> int | str:
    """A polling handshake's status, or "closed" when the node's port refused or dropped it
    (the node is stopping). Anything else (a node up that does not answer) raises."""
    try:
        with urllib.request.urlopen(f"{url}/socket.io/?EIO=4&transport=polling", timeout=10.0) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as err:
        return err.code
    except urllib.error.URLError as err:
        if isinstance(err.reason, ConnectionError):
            return "closed"
        raise
    except ConnectionError:  # http.client.RemoteDisconnected too: accepted, then closed unanswered
        return "closed"


async def stop_gracefully(node: CoupServe, label: str) -> float:
    """SIGTERM: /readyz 503 at once and from then on handshakes refused, then the drain; its
    duration. (A request the node reads in the loop turn that also reads the signal is served
    before the handler runs, as asyncio calls signal handlers in the next turn; so the
    handshake is tried once /readyz has said 503, not at the same time.)

    A node with little to drain may be gone before the handshake comes (0.08 s after the
    SIGTERM on a loaded machine): its closed port refuses it as surely as a 503 does. What
    must never be is a session started on a draining node, or a node up that does not answer."""
    started = time.monotonic()
    os.kill(node.pid, signal.SIGTERM)
    ready = await asyncio.to_thread(lambda: http_get(f"{node.url}/readyz", timeout=1.0)[0])
    if ready != 503:  # read with the signal (see above): the next one must say it
        ready = await asyncio.to_thread(lambda: http_get(f"{node.url}/readyz", timeout=1.0)[0])
    handshake = await asyncio.to_thread(handshake_answer, node.url)
    assert node.process is not None
    try:
        code = await asyncio.to_thread(node.process.wait, 30)
    except subprocess.TimeoutExpired:  # what it was doing says why: its log's end
        tail = node.log_tail(40)
        raise AssertionError(f"{node.name} still running 30 s after SIGTERM; its log ends:\n{tail}") from None
    took = time.monotonic() - started
    print(f"[{label}] {node.name}: SIGTERM -> /readyz {ready}, new handshake {handshake}; "
          f"exited with {code} after {took:.2f} s")
    assert ready == 503
    assert handshake in (503, "closed")
    assert code == 0
    return took


async def back(bed: Bed, node: CoupServe, chatters: list[Chatter]) -> None:
    node.start()
    await asyncio.to_thread(node.wait_ready)
    await wait_until(lambda: all(c.connected for c in chatters), timeout=PATIENCE, what="every client connected")


async def test_rolling_restart(restart_bed: Bed, chatters: list[Chatter]) -> None:
    bed = restart_bed
    seq_before = await asyncio.to_thread(bed.last_seq, STUDY)
    connects_before = connects_so_far(chatters)
    load = Load(chatters, "rolling")
    load.start()
    drains = []
    for node in bed.nodes:
        await asyncio.sleep(1.0)  # chat on the whole cluster for a moment
        drains.append(await stop_gracefully(node, "rolling"))
        await back(bed, node, chatters)
    await asyncio.sleep(1.0)
    await load.stop()
    print(f"[rolling] drain times: {', '.join(f'{t:.2f} s' for t in drains)} (budget 20 s, platforms kill at 30)")
    assert max(drains) < 15
    await check(bed, chatters, load, seq_before, connects_before, crashed=False)


async def test_owner_of_study_1_crashes(restart_bed: Bed, chatters: list[Chatter]) -> None:
    bed = restart_bed
    owner_id = await asyncio.to_thread(bed.room_owner, bed.nodes[0], f"study:{STUDY}")
    owner = next(n for n in bed.nodes if n.name == owner_id)
    seq_before = await asyncio.to_thread(bed.last_seq, STUDY)
    connects_before = connects_so_far(chatters)
    load = Load(chatters, "crash")
    load.start()
    await asyncio.sleep(1.5)
    print(f"\n[crash] SIGKILL {owner.name}, the owner of study:{STUDY}")
    await asyncio.to_thread(owner.kill)
    await asyncio.sleep(1.5)
    await back(bed, owner, chatters)
    await asyncio.sleep(1.0)
    await load.stop()
    await check(bed, chatters, load, seq_before, connects_before, crashed=True)
