"""Redis as PaaS add-ons give it: ``rediss://`` with a self-signed certificate, a user and a
password in the URL, and the TLS options of the URL honoured on every connection a node
opens (redis-py's clients, our RESP pub/sub link) and by the emitter.

A real redis-server listens with TLS only (``--port 0 --tls-port P``); its CA and
certificates are made by the test (`make_tls_files`, openssl).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import socketio

from coup.domain.auth import TokenService
from coup.emitter import Emitter
from tests.cluster.conftest import wait_until
from tests.paas.bed import ARTIFACTS, JWT_SECRET, Bed, CoupServe, RedisProcess, TlsFiles, http_get, node_env, wait_for
from tests.paas.chat import socket_io_chat
from tests.paas.conftest import BedFactory, RedisFactory

pytestmark = pytest.mark.timeout(180)

USER, PASSWORD = "coup", "add-on-password-0123456789"


@pytest.fixture(scope="module")
def tls_redis(make_redis: RedisFactory, tls_files: TlsFiles) -> RedisProcess:
    """A TLS-only redis-server with a self-signed certificate, a user and a password (a PaaS add-on)."""
    return make_redis(tls=tls_files, user=USER, password=PASSWORD)


@pytest.fixture
def workdir(request: pytest.FixtureRequest) -> Path:
    path = ARTIFACTS / "tls" / request.node.name.replace("[", "-").replace("]", "")
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.log"):
        old.unlink()
    return path


@pytest.fixture
def sqlite_url(workdir: Path) -> str:
    """A SQLite file with the schema and the demo data, shared by the test's nodes."""
    url = f"sqlite:///{workdir / 'coup.db'}"
    (workdir / "coup.db").unlink(missing_ok=True)
    subprocess.run([sys.executable, "-m", "coup", "seed-demo"], env=node_env("redis://unused", url),
                   check=True, capture_output=True, timeout=60)
    return url


@pytest.fixture
def serve(workdir: Path) -> Iterator[Any]:
    """``serve(name, redis_url, database_url, **env)``: a started `coup serve`; all stopped at teardown."""
    started: list[CoupServe] = []

    prefix = "tls" + secrets.token_hex(3)

    def start(name: str, redis_url: str, database_url: str, **env: str) -> CoupServe:
        node = CoupServe(name, {**node_env(redis_url, database_url), "COUP_NODE_ID": name,
                                "COUP_REDIS_PREFIX": prefix, **env}, workdir)
        started.append(node)
        return node.start()

    yield start
    for node in started:
        node.stop(grace=15)


# ---------------------------------------------------------------------------- the add-on's form


@pytest.fixture(scope="module")
def tls_bed(make_bed: BedFactory, tls_redis: RedisProcess) -> Bed:
    """The bed of test_chat_through_router.py, with REDIS_URL=rediss://user:pass@...?ssl_cert_reqs=none."""
    url = tls_redis.url("ssl_cert_reqs=none")
    assert url.startswith(f"rediss://{USER}:{PASSWORD}@127.0.0.1:") and url.endswith("?ssl_cert_reqs=none")
    return make_bed(url, "tls")


@pytest.mark.asyncio
@pytest.mark.parametrize("transports", [["websocket"], ["polling"]], ids=["websocket", "polling"])
async def test_chat_through_the_router_on_a_self_signed_tls_redis(
        tls_bed: Bed, tls_redis: RedisProcess, js_client: Any, transports: list[str]) -> None:
    await socket_io_chat(tls_bed, await js_client(), transports)
    assert tls_redis.cli("CONFIG", "GET", "port").split() == ["port", "0"]  # no plain-text port at all
    names = set(re.findall(r" name=(\S+) ", tls_redis.cli("CLIENT", "LIST")))
    prefix = tls_bed.base_env["COUP_REDIS_PREFIX"]
    links = {f"{prefix}:{node.name}:{kind}" for node in tls_bed.nodes for kind in ("pub", "sub")}
    print(f"TLS connections to redis by name: {sorted(names)}")
    assert links <= names, "a node's pub/sub link is not connected (over TLS)"
    assert f"{prefix}:ctl" in names  # redis-py's command clients


# ---------------------------------------------------------------------------- verification


@pytest.mark.parametrize("query", ["", "ssl_cert_reqs=required"], ids=["default", "required"])
def test_an_untrusted_certificate_is_refused_loudly_not_ready(
        tls_redis: RedisProcess, serve: Any, sqlite_url: str, query: str) -> None:
    """Verification on (the default) and no CA for a self-signed certificate: the node says why
    at WARNING, stays up (health 200) and not ready (503); it neither hangs nor crashes."""
    node = serve("untrusting", tls_redis.url(query), sqlite_url)
    wait_for(lambda: "has a TLS certificate we do not trust" in node.log_text(), timeout=20,
             what="the warning about the certificate")
    warning = next(line for line in node.log_text().splitlines() if "we do not trust" in line)
    print(f"\nthe log says: {warning}")
    assert " level=WARNING logger=coup.cluster.bus " in warning
    assert "self-signed certificate" in warning and "?ssl_cert_reqs=none" in warning
    assert PASSWORD not in node.log_text()
    wait_for(lambda: http_get(f"{node.url}/healthz")[0] == 200, timeout=20, what="the node to serve")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # the subject: it stays so for 3 s, retrying, never ready, never gone
        assert node.alive
        status, body = http_get(f"{node.url}/readyz")
        assert status == 503 and b'"redis": false' in body, (status, body)
        time.sleep(0.3)
    warnings = [line for line in node.log_text().splitlines() if "we do not trust" in line and "WARNING" in line]
    assert len(warnings) <= 2  # once when it happens (and once in the start summary), not every retry


def test_the_option_from_its_own_variable_where_the_platform_owns_redis_url(
        tls_redis: RedisProcess, serve: Any, sqlite_url: str) -> None:
    """Heroku's add-on sets REDIS_URL itself, without options: COUP_REDIS_OPTIONS adds them."""
    node = serve("heroku-form", tls_redis.url(), sqlite_url, COUP_REDIS_OPTIONS="ssl_cert_reqs=none")
    node.wait_ready()
    assert "we do not trust" not in node.log_text()


# ---------------------------------------------------------------------------- CA, client certificate, pub/sub


@pytest.mark.asyncio
async def test_ca_and_client_certificate_from_the_url_on_every_connection(
        make_redis: RedisFactory, tls_files: TlsFiles, serve: Any, sqlite_url: str) -> None:
    """A server that verifies clients too (mutual TLS): only a connection made with the URL's
    ``ssl_certfile``/``ssl_keyfile`` gets in, and ours verifies it with ``ssl_ca_certs``.
    Two nodes become ready, a chat message crosses from one to the other (pub/sub), and
    the emitter reaches a user on the other node over the same URL."""
    redis = await asyncio.to_thread(make_redis, tls=tls_files, client_certs=True)
    url = redis.url(f"ssl_ca_certs={tls_files.ca}&ssl_certfile={tls_files.client_cert}"
                    f"&ssl_keyfile={tls_files.client_key}")
    nodes = [serve(f"mtls{i}", url, sqlite_url) for i in range(2)]
    for node in nodes:
        await asyncio.to_thread(node.wait_ready)
    tokens = TokenService(JWT_SECRET)
    clients = []
    events: dict[int, list[tuple[str, Any]]] = {1: [], 2: []}
    try:
        for user, node in zip((1, 2), nodes, strict=True):
            client = socketio.AsyncClient(reconnection=False)

            def record(event: str, data: Any = None, *_: Any, user: int = user) -> None:
                events[user].append((event, data))

            client.on("*", record)
            await client.connect(node.url, transports=["websocket"], wait_timeout=10,
                                 auth={"userId": user, "token": tokens.issue(user)})
            assert (await client.call("join-study", {"studyId": 1}, timeout=10))["ok"] is True
            clients.append(client)
        ack = await clients[0].call("message", {"studyId": 1, "content": "across the TLS link"}, timeout=10)
        assert ack["ok"] is True
        emitter = Emitter(url, prefix=nodes[0].env["COUP_REDIS_PREFIX"])
        await asyncio.to_thread(emitter.to("user:2").emit,
                                "notification", {"id": 0, "type": "TEST", "message": "from the emitter"})
        with contextlib.suppress(AssertionError):  # the asserts below say what is missing
            await wait_until(lambda: len(events[2]) >= 2, timeout=10, what="user 2's events")
        print(f"\nuser 2 (on the other node) got: {[e for e, _ in events[2]]}")
        assert any(e == "message" and d.get("content") == "across the TLS link" for e, d in events[2])
        assert ("notification", {"id": 0, "type": "TEST", "message": "from the emitter"}) in events[2]
    finally:
        for client in clients:
            await client.disconnect()
