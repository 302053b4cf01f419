"""The scenario every client kind plays on the bed: users chat in study 1.

Each user's client joins study 1; once all have joined, every user sends `PER_USER`
messages at once, each asking for an acknowledgement. Then, checked against PostgreSQL:

- every send was acknowledged with the id and seq of a stored row, and every stored row
  (after the scenario began) is one of those sends: nothing lost, nothing stored twice;
- every client received every stored message exactly once, in `seq` order;
- no node opened a connection to another node's advertised address.

`ChatRun` collects what the clients saw; `check` asserts and prints the counts.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.clients.records import RecordTimeout
from tests.paas.bed import Bed

STUDY = 1
#: the demo data's ACTIVE members of study 1 (Alice, Bob, Chloe)
USERS = (1, 2, 3)
PER_USER = 4
#: seconds a client may take to connect or to be answered; a node that hangs shows as a timeout
PATIENCE = 20.0


def contents(label: str) -> dict[int, list[str]]:
    """What each user will send: unique texts, so a duplicate or a stranger shows."""
    run = secrets.token_hex(3)
    return {user: [f"{label} {run} u{user} #{i}" for i in range(PER_USER)] for user in USERS}


@dataclass
class ChatRun:
    label: str
    #: the study's last seq before anyone sent
    seq_before: int
    #: every acknowledgement a sender got: {"ok", "id", "seq", ...}
    acks: list[dict[str, Any]] = field(default_factory=list)
    #: per client: the `message` payloads it received, in arrival order
    received: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    sent: list[str] = field(default_factory=list)
    #: how many requests the router had logged before the run (its own come after)
    routed_before: int = 0


def received_everything(run: ChatRun, rows: list[dict[str, Any]]) -> bool:
    ids = {row["id"] for row in rows}
    return all(ids <= {m.get("id") for m in messages} for messages in run.received.values())


def check(bed: Bed, run: ChatRun) -> list[dict[str, Any]]:
    """Assert the scenario's promises against the database; print the counts checked."""
    rows = bed.messages(STUDY, run.seq_before)
    stored = [row["content"] for row in rows]
    print(f"\n[{run.label}] sent {len(run.sent)}, acknowledged {len(run.acks)}, stored {len(rows)} "
          f"(seq {rows[0]['seq'] if rows else '-'}..{rows[-1]['seq'] if rows else '-'})")
    assert sorted(stored) == sorted(run.sent), "stored rows differ from what was sent (lost or doubled)"
    assert all(ack.get("ok") is True for ack in run.acks), [a for a in run.acks if a.get("ok") is not True]
    assert len(run.acks) == len(run.sent), "a send was not acknowledged"
    by_id = {row["id"]: row for row in rows}
    assert sorted(ack["id"] for ack in run.acks) == sorted(by_id), "acks do not name the stored rows one to one"
    assert all(by_id[ack["id"]]["seq"] == ack["seq"] for ack in run.acks), "an ack carries another seq"
    expected = [row["id"] for row in rows]
    for client, messages in sorted(run.received.items()):
        got = [m["id"] for m in messages if m.get("studyId") == STUDY]
        counts = Counter(got)
        print(f"[{run.label}]   {client}: received {len(got)} messages, "
              f"{sum(1 for c in counts.values() if c > 1)} duplicated, {len(set(expected) - set(got))} missing, "
              f"in seq order: {got == sorted(got, key=lambda i: by_id.get(i, {'seq': -1})['seq'])}")
        assert got == expected, f"{client} did not get every stored message exactly once in seq order"
    dials = bed.peer_dials()
    print(f"[{run.label}]   connections nodes opened to each other's advertised address: {dials}")
    assert all(count in (0, None) for count in dials.values()), f"a node dialled another node: {dials}"
    return rows


def sessions_split(bed: Bed, run: ChatRun, path: str) -> int:
    """How many of the run's sessions the router served from more than one node (each printed)."""
    split = 0
    for session, servers in sorted(bed.spread(path, run.routed_before).items()):
        split += len(servers) > 1
        print(f"[{run.label}]   session {session}: requests per node {dict(sorted(servers.items()))}")
    return split


def begin(bed: Bed, label: str) -> ChatRun:
    """A run starting now: the study's last seq and the router's request count as of now."""
    return ChatRun(label, seq_before=bed.last_seq(STUDY), routed_before=len(bed.router.requests()))


async def finish(bed: Bed, run: ChatRun, what_received: Callable[[], dict[str, list[dict[str, Any]]]]) -> None:
    """Wait until every client has every stored message (or `PATIENCE` runs out), then check."""
    rows = await asyncio.to_thread(bed.messages, STUDY, run.seq_before)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PATIENCE
    while True:
        run.received.update(what_received())
        if received_everything(run, rows) or loop.time() > deadline:
            break  # `check` says precisely what is missing
        await asyncio.sleep(0.05)
    await asyncio.to_thread(check, bed, run)


async def socket_io_chat(bed: Bed, js: Any, transports: list[str] | None) -> ChatRun:
    """The scenario with one stock socket.io-client socket per user (one Node process, `js`)."""
    label = f"socket.io {'+'.join(transports) if transports else 'polling then websocket'}"
    run = await asyncio.to_thread(begin, bed, label)
    texts = contents(label)
    options: dict[str, Any] = {"reconnection": False}  # socket.io-client gives up connecting after 20 s
    if transports is not None:
        options["transports"] = transports

    def received() -> dict[str, list[dict[str, Any]]]:
        return {f"user {u}": [r["args"][0] for r in js.events(f"u{u}", "message")] for u in USERS}

    async def send(user: int) -> None:
        for text in texts[user]:
            run.sent.append(text)
            (ack,) = await js.emit_with_ack(f"u{user}", "message", {"studyId": STUDY, "content": text},
                                            timeout=PATIENCE)
            run.acks.append(ack)

    try:
        for user in USERS:
            record = await js.connect(f"u{user}", bed.url, auth={"userId": user, "token": bed.token(user)},
                                      timeout=PATIENCE + 5, **options)
            assert record["type"] == "connect", f"user {user} did not connect: {record}"
        for user in USERS:
            (ack,) = await js.emit_with_ack(f"u{user}", "join-study", {"studyId": STUDY}, timeout=PATIENCE)
            assert ack["ok"] is True, ack
        await asyncio.gather(*(send(user) for user in USERS))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{bed.diagnosis(run.routed_before)}") from None
    await finish(bed, run, received)
    split = sessions_split(bed, run, "/socket.io/")
    if transports != ["websocket"]:
        assert split >= 1, "the router never sent one session's requests to two nodes: nothing was tested"
    if transports is None:
        finals = {user: (await js.state(f"u{user}"))["transport"] for user in USERS}
        print(f"[{label}]   transport at the end: {finals}")
        assert set(finals.values()) == {"websocket"}, "the stock client did not end up on WebSocket"
    return run


async def sockjs_chat(bed: Bed, start_client: Callable[..., Any], transport: str) -> ChatRun:
    """The scenario with the stock sockjs-client and static/sockjs-coup.js, one Node process per user."""
    label = f"sockjs {transport}"
    run = await asyncio.to_thread(begin, bed, label)
    texts = contents(label)
    clients = {user: await start_client(f"{bed.url}/sockjs", transport) for user in USERS}

    def received() -> dict[str, list[dict[str, Any]]]:
        return {f"user {u}": [r["args"][0] for r in c.log.seen("event", event="message")]
                for u, c in clients.items()}

    async def call(user: int, ack_id: int, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        clients[user].send(cmd="emit", event=event, args=[payload], ack=ack_id)
        record = await clients[user].log.expect("ack", id=ack_id, timeout=PATIENCE)
        return dict(record["args"][0])

    async def send(user: int) -> None:
        for i, text in enumerate(texts[user]):
            run.sent.append(text)
            run.acks.append(await call(user, 100 + i, "message", {"studyId": STUDY, "content": text}))

    def opened(record: dict[str, Any]) -> bool:
        return record["type"] in ("connect", "connect_error", "disconnect")

    try:
        for user, client in clients.items():
            client.send(cmd="connect", auth={"userId": user, "token": bed.token(user)})
            try:
                record = await client.log.expect(opened, timeout=PATIENCE)
            except RecordTimeout:
                raise AssertionError(f"user {user}: SockJS neither connected nor failed in {PATIENCE:.0f} s") from None
            assert record["type"] == "connect", f"user {user} did not connect: {record}"
        for user in USERS:
            ack = await call(user, 1, "join-study", {"studyId": STUDY})
            assert ack["ok"] is True, ack
        await asyncio.gather(*(send(user) for user in USERS))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{bed.diagnosis(run.routed_before)}") from None
    await finish(bed, run, received)
    assert sessions_split(bed, run, "/sockjs") >= 1, "the router never split a session: nothing was tested"
    return run
