"""`REDIS_URL` parsed once (coup/redis_endpoint.py) means what redis-py makes of the same URL,
and the one description reaches redis-py's clients with its TLS settings intact; a Sentinel URL
(which redis-py cannot parse) becomes redis-py's Sentinel pools (coup/redis_clients.py)."""

from __future__ import annotations

import ssl

import pytest
import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.asyncio.connection import parse_url

from coup.redis_clients import async_client, sync_client
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


SENTINEL_URLS = [
    # url, sentinels, service, db, (user, password), (sentinel user, sentinel password), TLS
    ("redis+sentinel://10.0.0.1:26379,10.0.0.2:26380/mymaster", (("10.0.0.1", 26379), ("10.0.0.2", 26380)),
     "mymaster", 0, (None, None), (None, None), False),
    ("redis+sentinel://s1,s2,s3/cache/4", (("s1", 26379), ("s2", 26379), ("s3", 26379)), "cache", 4,
     (None, None), (None, None), False),
    ("redis+sentinel://app:p%40ss@s1:1,[::1]:2/m?db=2&sentinel_password=sp", (("s1", 1), ("::1", 2)), "m", 2,
     ("app", "p@ss"), (None, "sp"), False),
    ("redis+sentinel://:pw@s1/m?sentinel_username=ops&sentinel_password=x", (("s1", 26379),), "m", 0,
     (None, "pw"), ("ops", "x"), False),
    ("rediss+sentinel://s1:26379/m?ssl_cert_reqs=none", (("s1", 26379),), "m", 0, (None, None), (None, None), True),
    ("REDIS+SENTINEL://s1/m/", (("s1", 26379),), "m", 0, (None, None), (None, None), False),
]


@pytest.mark.parametrize(("url", "sentinels", "service", "db", "auth", "sentinel_auth", "tls"), SENTINEL_URLS)
def test_a_sentinel_url(url: str, sentinels: tuple[tuple[str, int], ...], service: str, db: int,
                        auth: tuple[str | None, str | None], sentinel_auth: tuple[str | None, str | None],
                        tls: bool) -> None:
    endpoint = redis_endpoint(url)
    assert (endpoint.sentinels, endpoint.service, endpoint.db) == (sentinels, service, db)
    assert (endpoint.username, endpoint.password) == auth
    assert (endpoint.sentinel_username, endpoint.sentinel_password) == sentinel_auth
    assert endpoint.sentinel and (endpoint.tls is not None) == tls
    kwargs = endpoint.redis_kwargs()
    assert "host" not in kwargs and "port" not in kwargs  # the sentinels say where the primary is
    assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (db, *auth)
    sentinel_kwargs = endpoint.sentinel_kwargs()
    assert (sentinel_kwargs["username"], sentinel_kwargs["password"]) == sentinel_auth
    assert sentinel_kwargs.get("ssl", False) == kwargs.get("ssl", False) == tls  # TLS to both or neither
    for secret in {auth[1], sentinel_auth[1]} - {None}:
        assert secret not in str(endpoint) and secret not in repr(endpoint)


@pytest.mark.parametrize(("url", "message"), [
    ("redis+sentinel://s1:26379", "names no service"),
    ("redis+sentinel://s1:26379/", "names no service"),
    ("redis+sentinel:///mymaster", "names no sentinel"),
    ("redis+sentinel://s1:port/m", "sentinel port that is not a number"),
    ("redis+sentinel://s1:70000/m", "sentinel port that is not a number"),
    ("redis+sentinel://:26379/m", "sentinel without a host"),
    ("redis+sentinel://[::1/m", "not host:port"),
    ("redis+sentinel://s1/m/zero", "database number that is not an integer"),
    ("redis+sentinel://s1/m/1/2", "more after the service name"),
    ("redis+sentinel://s1/m?ssl_cert_reqs=none", "only a rediss://"),
    ("redis+sentinel://s1/m?sentinel_pasword=x", "unknown option 'sentinel_pasword'"),
    ("redis://h:6379?sentinel_password=x", "unknown option 'sentinel_password'"),
    ("sentinel://s1/m", "must start with redis://"),
])
def test_a_wrong_sentinel_url_says_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(RedisURLError, match=message.replace("(", r"\(")):
        redis_endpoint(url)


def test_the_sentinel_url_shown_in_logs() -> None:
    endpoint = redis_endpoint("rediss+sentinel://u:hunter2@s1,[::1]:26380/mymaster/3?sentinel_password=hunter3")
    assert str(endpoint) == "rediss+sentinel://s1:26379,[::1]:26380/mymaster/3"
    assert "hunter" not in repr(endpoint)


@pytest.mark.parametrize(("url", "seeds", "auth", "tls"), [
    ("redis+cluster://r1", (("r1", 6379),), (None, None), False),
    ("redis+cluster://u:p%40ss@r1:7000,[::1]:7001/", (("r1", 7000), ("::1", 7001)), ("u", "p@ss"), False),
    ("rediss+cluster://:pw@r1:7000?ssl_cert_reqs=none", (("r1", 7000),), (None, "pw"), True),
])
def test_a_cluster_url(url: str, seeds: tuple[tuple[str, int], ...], auth: tuple[str | None, str | None],
                       tls: bool) -> None:
    endpoint = redis_endpoint(url)
    assert endpoint.cluster and not endpoint.sentinel
    assert endpoint.cluster_seeds == seeds and (endpoint.username, endpoint.password) == auth
    assert (endpoint.tls is not None) == tls
    kwargs = endpoint.redis_kwargs()
    assert "host" not in kwargs and "db" not in kwargs  # the seeds say where; a cluster has db 0 only
    if auth[1]:
        assert auth[1] not in str(endpoint) and auth[1] not in repr(endpoint)


@pytest.mark.parametrize(("url", "message"), [
    ("redis+cluster://", "names no cluster node"),
    ("redis+cluster://r1:7000/2", "database 0 only"),
    ("redis+cluster://r1:7000?db=2", "unknown option 'db'"),
    ("redis+cluster://r1:port", "cluster node port that is not a number"),
    ("redis+cluster://:7000", "cluster node without a host"),
])
def test_a_wrong_cluster_url_says_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(RedisURLError, match=message):
        redis_endpoint(url)


def test_the_cluster_url_shown_in_logs() -> None:
    endpoint = redis_endpoint("rediss+cluster://u:hunter2@r1,[::1]:7001")
    assert str(endpoint) == "rediss+cluster://r1:6379,[::1]:7001"


SENTINEL_POOLS = (redis.asyncio.sentinel.SentinelConnectionPool, redis.sentinel.SentinelConnectionPool)


@pytest.mark.asyncio
async def test_redis_py_clients_of_a_sentinel_url_follow_the_primary() -> None:
    """Both client kinds are redis-py's Sentinel pools for the service, with the URL's credentials
    and TLS on the data connections and the sentinel ones on the sentinels (nothing connects yet)."""
    url = "rediss+sentinel://app:pw@127.0.0.1:1,127.0.0.1:2/mymaster/2?sentinel_password=sp&ssl_cert_reqs=none"
    made = [async_client(url, socket_timeout=1), sync_client(url, socket_timeout=1)]
    try:
        for client in made:
            pool = client.connection_pool
            assert isinstance(pool, SENTINEL_POOLS)
            assert pool.service_name == "mymaster" and pool.is_master
            kwargs = pool.connection_kwargs
            assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (2, "app", "pw")
            assert kwargs["ssl_cert_reqs"] == ssl.CERT_NONE and kwargs["socket_timeout"] == 1
            sentinels = pool.sentinel_manager.sentinels
            assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [1, 2]
            for sentinel in sentinels:
                sentinel_kwargs = sentinel.connection_pool.connection_kwargs
                assert (sentinel_kwargs["password"], sentinel_kwargs["ssl_cert_reqs"]) == ("sp", ssl.CERT_NONE)
    finally:
        await made[0].aclose()
        made[1].close()
