"""`REDIS_URL` parsed once (coup/redis_endpoint.py) means what redis-py makes of the same URL,
and the one description reaches redis-py's clients with its TLS settings intact."""

from __future__ import annotations

import ssl

import pytest
import redis
import redis.asyncio
from redis.asyncio.connection import parse_url

from coup.redis_endpoint import RedisTLS, RedisURLError, redis_endpoint, with_options

URLS = [
    "redis://localhost",
    "redis://10.0.0.9:6380/3",
    "redis://:p%40ss%2Fword@h.example:6379/0",
    "rediss://default:secret@ec2-1-2-3-4.compute-1.amazonaws.com:25580",
    "rediss://u:p@h:6380/2?ssl_cert_reqs=none",
    "rediss://h:6380?ssl_cert_reqs=required&ssl_check_hostname=false",
    "unix:///run/redis.sock?db=4",
]


@pytest.mark.parametrize("url", URLS)
def test_the_endpoint_agrees_with_redis_py(url: str) -> None:
    theirs = parse_url(url)
    ours = redis_endpoint(url).redis_kwargs()
    for key in ("host", "port", "db", "username", "password"):
        if key in theirs:
            assert ours[key] == theirs[key], key
    assert ours.get("unix_socket_path") == theirs.get("path")
    assert ours.get("ssl", False) == url.startswith("rediss://")
    if "ssl_cert_reqs" in theirs:
        assert ours["ssl_cert_reqs"] == {"none": ssl.CERT_NONE, "required": ssl.CERT_REQUIRED}[theirs["ssl_cert_reqs"]]


def test_the_clients_get_the_tls_settings() -> None:
    endpoint = redis_endpoint("rediss://u:p@127.0.0.1:6380/1?ssl_cert_reqs=none")
    assert endpoint.tls == RedisTLS(cert_reqs=ssl.CERT_NONE)
    context = endpoint.ssl_context
    assert context is not None and context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    assert endpoint.ssl_context is context  # built once, shared by every connection
    for client in (redis.Redis(**endpoint.redis_kwargs()), redis.asyncio.Redis(**endpoint.redis_kwargs())):
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["ssl_cert_reqs"] == ssl.CERT_NONE and kwargs["ssl_check_hostname"] is False
        assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == ("127.0.0.1", 6380, 1, "p")
    verified = redis_endpoint("rediss://h:6380").tls
    assert verified is not None and verified.verifies and verified.hostname_checked


def test_the_password_never_shows() -> None:
    endpoint = redis_endpoint("rediss://user:hunter2@h:6380/0?ssl_cert_reqs=none")
    assert "hunter2" not in repr(endpoint) and "hunter2" not in str(endpoint)
    assert str(endpoint) == "rediss://h:6380/0"
    with pytest.raises(RedisURLError) as caught:
        redis_endpoint("http://user:hunter2@h")
    assert "hunter2" not in str(caught.value)


def test_options_from_another_variable_come_last_and_win() -> None:
    assert with_options("rediss://:p@h:1", "ssl_cert_reqs=none") == "rediss://:p@h:1?ssl_cert_reqs=none"
    merged = with_options("rediss://h:1/2?ssl_cert_reqs=required", "?ssl_cert_reqs=none")
    assert redis_endpoint(merged).tls == RedisTLS(cert_reqs=ssl.CERT_NONE)
