"""The WEAK items of issue 13, attacked as they were found, plus the live-socket rules
(token lifetime, membership) the issue asked for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.adversarial import attacks
from tests.adversarial.conftest import ArenaFactory
from tests.adversarial.target import ROOT, Honest
from tests.conftest import require
from tests.waiting import eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(180)]


# ---------------------------------------------------------------------- HTTP


async def test_deeply_nested_json_is_a_400_without_a_traceback(arena: ArenaFactory) -> None:
    a = await arena()
    body = attacks.nested(30_000)  # 60 KB: under the API's 64 KB body limit
    status, _, answer = await attacks.raw_http(a.attacker, attacks.http_request(
        "POST", "/api/dev/token", body, {"Content-Type": "application/json"}))
    assert status == 400 and json.loads(answer)["error"]["code"] == "BAD_REQUEST"
    token = a.target.token(1)
    status, _, answer = await attacks.raw_http(a.attacker, attacks.http_request(
        "POST", "/api/studies/1/messages", b'{"content":' + attacks.nested(40) + b"}",
        {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}))
    assert status == 400 and json.loads(answer)["error"]["code"] == "BAD_REQUEST"
    await a.survived(max_growth_mb=40)


async def test_nul_in_a_static_path_is_a_400_without_a_traceback(arena: ArenaFactory) -> None:
    a = await arena()
    status, _, _ = await attacks.raw_http(a.attacker, attacks.http_request("GET", "/js/%00.js"))
    assert status == 400
    await a.survived(max_growth_mb=40)


async def test_security_headers_and_no_server_version(arena: ArenaFactory) -> None:
    a = await arena()
    status, headers, _ = await attacks.raw_http(a.attacker, attacks.http_request("GET", "/"))
    assert status == 200
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
    for path in ("/", "/js/main.js", "/api/me", "/socket.io/?EIO=4&transport=polling", "/healthz", "/nope"):
        _, headers, _ = await attacks.raw_http(a.attacker, attacks.http_request("GET", path))
        assert "server" not in headers, (path, headers.get("server"))
        assert headers.get("x-content-type-options") == "nosniff", path
    await a.survived(max_growth_mb=40)


async def test_forwarded_headers_from_a_client_are_not_believed(arena: ArenaFactory) -> None:
    """X-Real-Ip / X-Forwarded-For from anyone used to set the client's address (logs, and the
    per-address cap could be dodged with a new one per connection)."""
    a = await arena(COUP_MAX_CONNECTIONS_PER_ADDRESS="3")
    headers = {"X-Real-Ip": "6.6.6.6", "X-Forwarded-For": "7.7.7.7"}
    status, _, _ = await attacks.raw_http(a.attacker, attacks.http_request("GET", attacks.POLLING, headers=headers))
    assert status == 200
    # 2 honest connections from 127.0.0.1 already; a new spoofed address per connection does not help
    refused = []
    for i in range(3):
        try:
            sock, _ = await attacks.sio_socket(a.attacker, attacks.signed_in(a.attacker, 5),
                                               headers={"X-Real-Ip": f"6.6.6.{i}", "X-Forwarded-For": f"7.7.7.{i}"})
            await sock.close()
        except attacks.Refused as exc:
            refused.append((i, exc.data))
    assert refused and refused[0][1]["data"]["code"] == "TOO_MANY_CONNECTIONS"
    assert "6.6.6." not in a.target.log() and "7.7.7." not in a.target.log()
    await a.survived(max_growth_mb=40)


# ---------------------------------------------------------------------- WebSocket closes


async def test_close_1009_reaches_a_peer_still_sending(arena: ArenaFactory) -> None:
    """A close for a message over maxPayload was lost: the socket was closed with the rest of
    the frame unread, so the kernel sent a reset. Now the peer reads the close frame."""
    a = await arena()
    for _ in range(3):
        assert await attacks.oversized_message(a.attacker) == 1009
    await a.survived(max_growth_mb=40)


async def test_valid_messages_before_a_bad_frame_are_delivered(arena: ArenaFactory) -> None:
    """Frames parsed in the same read as a bad one were thrown away (Autobahn 3.2, 4.1.3, 5.15)."""
    a = await arena()
    answers, code = await attacks.valid_then_bad_frame(a.attacker)
    assert answers == ["3", "3"] and code == 1002
    await a.survived(max_growth_mb=40)


# ---------------------------------------------------------------------- sockets and rooms


async def test_sockets_per_user_are_capped(arena: ArenaFactory) -> None:
    a = await arena(COUP_MAX_SOCKETS_PER_USER="5")
    opened, refused = await attacks.many_sockets(a.attacker, 20, lambda _: attacks.signed_in(a.attacker, 5))
    try:
        assert len(opened) == 5 and len(refused) == 15
        assert refused[0]["data"] == {"code": "TOO_MANY_CONNECTIONS", "limit": 5}
    finally:
        await attacks.close_all(opened)
    # the cap counts live sockets: once they are gone the user may connect again

    async def connects_again() -> bool:
        try:
            again, _ = await attacks.sio_socket(a.attacker, attacks.signed_in(a.attacker, 5))
        except attacks.Refused:
            return False  # the server has not seen every close yet
        await again.close()
        return True

    await eventually(connects_again, "user 5 may connect again", poll=0.05)
    await a.survived(max_growth_mb=40)


async def test_connections_per_address_are_capped(arena: ArenaFactory) -> None:
    a = await arena(COUP_MAX_CONNECTIONS_PER_ADDRESS="10")
    opened, refused = await attacks.many_sockets(a.attacker, 20, lambda _: attacks.signed_in(a.attacker, 5),
                                                 local_addr="127.0.0.9")
    try:
        assert len(opened) == 10 and len(refused) == 10
        assert refused[0]["data"] == {"code": "TOO_MANY_CONNECTIONS", "limit": 10}
        # another address (the honest pair is on 127.0.0.1) is not affected
        other = Honest(a.target, 3)
        await other.connect()
        await other.close()
    finally:
        await attacks.close_all(opened)
    await a.survived(max_growth_mb=40)


async def test_join_leave_cycles_are_rate_limited(arena: ArenaFactory) -> None:
    """300 leave/join cycles made every other member receive 600 events in 1.4 s."""
    a = await arena()
    before = len(a.honest.bob.events)
    counts = await attacks.join_leave_cycles(a.attacker, user_id=3, cycles=300)
    assert counts.get("RATE_LIMITED", 0) > 200, counts  # (a leave of a room it is not in is a no-op "ok")
    await a.honest.exchange()  # a marker: Bob gets Alice's message after every earlier announcement
    announced = [e for e, p in a.honest.bob.events[before:] if e in ("member-joined", "member-left")]
    assert len(announced) <= 60, len(announced)
    await a.survived(max_growth_mb=40)


async def test_a_socket_is_disconnected_when_its_token_expires(arena: ArenaFactory) -> None:
    """A 3 s token still posted at +16 s. Now: `error {code: TOKEN_EXPIRED}`, then a server
    disconnect, at expiry plus the leeway (JWT_LEEWAY, 2 s here; 10 s by default)."""
    a = await arena(JWT_LEEWAY="2")
    short = Honest(a.target, 3)
    await short.client.connect(a.target.url, transports=["websocket"], wait_timeout=10,
                               auth={"userId": 3, "token": a.target.token(3, ttl=2)})
    started = time.monotonic()
    await short.wait_for(lambda: any(e == "error" for e, _ in short.events), timeout=30)
    error = next(p for e, p in short.events if e == "error")
    assert error["code"] == "TOKEN_EXPIRED"
    await short.wait_for(lambda: short.disconnects == 1, timeout=5)
    assert 2.5 <= time.monotonic() - started < 10  # a token of 2 s (exp in whole seconds) plus 2 s of leeway, not 10
    await a.survived(max_growth_mb=40)


async def test_a_removed_member_leaves_the_room_at_the_next_message(arena: ArenaFactory) -> None:
    """A member removed in the database kept receiving the room's messages and could still
    send `typing`."""
    a = await arena(COUP_MEMBERSHIP_CHECK_INTERVAL="600")  # the message, not the sweep, must do it
    chloe = await Honest(a.target, 3).connect()
    try:
        a.target.set_membership(1, 3, "INACTIVE")
        await a.honest.exchange()  # Alice's message: Chloe must be out before it goes out
        assert not [m for m in chloe.messages if m["content"] == a.honest.sent[-1]]
        assert ("removed-from-study", {"studyId": 1, "code": "NOT_MEMBER", "message": "스터디 멤버가 아닙니다"}) \
            in chloe.events
        await a.honest.alice.wait_for(lambda: ("member-left", {"studyId": 1, "userId": 3}) in a.honest.alice.events)
        ack = await chloe.client.call("typing", {"studyId": 1}, timeout=10)
        assert ack["ok"] is False and ack["error"]["code"] == "NOT_IN_STUDY"
        ack = await chloe.client.call("join-study", {"studyId": 1}, timeout=10)
        assert ack["ok"] is False and ack["error"]["code"] == "NOT_MEMBER"
    finally:
        await chloe.close()
    await a.survived(max_growth_mb=40)


async def test_a_removed_member_leaves_the_room_within_the_check_interval(arena: ArenaFactory) -> None:
    a = await arena(COUP_MEMBERSHIP_CHECK_INTERVAL="1")
    chloe = await Honest(a.target, 3).connect()
    try:
        a.target.set_membership(1, 3, "INACTIVE")
        await chloe.wait_for(lambda: any(e == "removed-from-study" for e, _ in chloe.events), timeout=10)
        await a.honest.bob.wait_for(lambda: ("member-left", {"studyId": 1, "userId": 3}) in a.honest.bob.events)
        await a.honest.exchange()
        assert not [m for m in chloe.messages if m["content"] in a.honest.sent[1:]]
    finally:
        await chloe.close()
    await a.survived(max_growth_mb=40)


# ---------------------------------------------------------------------- secrets


def _serve(env: dict[str, str], tmp: Path, wait: float = 15) -> subprocess.CompletedProcess[str] | str:
    """Run `coup serve` with `env`; its output once it exits, or (a str) once it logged that it
    serves and what follows at once (the start summary), then stopped."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("COUP_", "JWT_", "DATABASE_", "REDIS_"))}
    full.update({"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **env})
    proc = subprocess.Popen([sys.executable, "-m", "coup", "serve", "--port", "0"], cwd=tmp, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + wait
    while proc.poll() is None and time.monotonic() < deadline and not any("coup serving on" in x for x in lines):
        time.sleep(0.05)
    if proc.poll() is not None:
        reader.join(5)
        return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(lines), "")
    time.sleep(0.5)  # the lines logged right after it (the start summary)
    proc.terminate()
    proc.wait(timeout=15)
    reader.join(5)
    return "".join(lines)


@pytest.mark.parametrize(("variable", "value"), [("JWT_SECRET", "a" * 32), ("COUP_SERVICE_TOKEN", "a" * 16)])
async def test_guessable_secrets_are_refused(tmp_path: Path, variable: str, value: str) -> None:
    env = {"JWT_SECRET": "tV3q-8kLmZ0pXw2rYc7nB4hJ6dF1gS9a", variable: value}
    result = _serve(env, tmp_path)
    assert isinstance(result, subprocess.CompletedProcess) and result.returncode == 2
    assert f"{variable} is too easy to guess" in result.stdout and "secrets.token_urlsafe" in result.stdout


async def test_database_password_is_not_logged(tmp_path: Path) -> None:
    base = os.environ.get("COUP_TEST_POSTGRES_URL")
    require(base is not None, "PostgreSQL (COUP_TEST_POSTGRES_URL)")
    assert base is not None
    import psycopg2

    schema = f"coup_adversarial_{os.getpid()}"  # a schema of its own: the demo seeds what it finds empty
    admin = psycopg2.connect(base)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE SCHEMA "{schema}"')
    try:
        url = base.replace("://postgres@", "://postgres:hunter2pw@")
        url += ("&" if "?" in url else "?") + f"options=-csearch_path%3D{schema}"
        assert "hunter2pw" in url
        output = _serve({"COUP_DEMO": "1", "COUP_DEMO_ANYWHERE": "1", "DATABASE_URL": url, "COUP_LOG_LEVEL": "DEBUG"},
                        tmp_path, wait=8)
        text = output if isinstance(output, str) else output.stdout
        assert "demo mode: database postgresql://127.0.0.1:5432/" in text, text
        assert "hunter2pw" not in text
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()
