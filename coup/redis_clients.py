"""redis-py clients for a `REDIS_URL`: a plain client, or one that follows a Sentinel primary.

Every redis-py client of a node (`coup.cluster.node`), of `coup status` and of the emitter
is built here, so a ``redis+sentinel://`` URL holds on all of them. For Sentinel, redis-py's
`master_for` pool asks the sentinels for the primary each time it opens a connection (and
drops a connection that answers READONLY: a demoted primary), so after a failover the next
command that reconnects reaches the new primary. Lua scripts need nothing more: redis-py's
`Script` loads a script again when the new primary answers NOSCRIPT.

The sentinels' own connections belong to the client: closing the client closes them.

For a Redis Cluster (``redis+cluster://``) the client is redis-py's `RedisCluster`, which
routes each command to the primary of its key's slot, follows ``MOVED`` and re-reads the
slot map after a failover. It answers the same commands as `Redis` for what a node uses
(scripts, single-key commands, non-transactional pipelines), so callers keep one type.
"""

from __future__ import annotations

from typing import Any, cast

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.cluster
import redis.retry
import redis.sentinel
from redis.backoff import NoBackoff

from coup.redis_endpoint import RedisEndpoint, redis_endpoint


class _AsyncPrimary(redis.asyncio.Redis):
    """The primary of a Sentinel service; `aclose` also closes the sentinel connections."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        if manager is not None:
            await manager.aclose()


class _Primary(redis.Redis):
    """The blocking twin of `_AsyncPrimary`."""

    def close(self) -> None:
        super().close()
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        if manager is not None:
            manager.close()


def _sentinel_kwargs(endpoint: RedisEndpoint, kwargs: dict[str, Any], retry: Any) -> dict[str, Any]:
    """The sentinels get their own credentials, the URL's TLS and the caller's socket timeouts,
    and no retries: asking the next sentinel is the retry (redis-py's default, ten with
    backoff, spent seconds on a dead sentinel before asking a live one)."""
    return {**endpoint.sentinel_kwargs(), **{k: v for k, v in kwargs.items() if k.startswith("socket_")},
            "retry": retry}


def async_client(url: str, **kwargs: Any) -> redis.asyncio.Redis:
    """A redis.asyncio client for `url`; `kwargs` are redis-py's (timeouts, retry, client_name)."""
    endpoint = redis_endpoint(url)
    if endpoint.cluster:
        nodes = [redis.asyncio.cluster.ClusterNode(host, port) for host, port in endpoint.cluster_seeds]
        cluster = redis.asyncio.RedisCluster(startup_nodes=nodes, **endpoint.redis_kwargs(), **kwargs)
        return cast(redis.asyncio.Redis, cluster)
    if not endpoint.sentinel:
        return redis.asyncio.Redis(**endpoint.redis_kwargs(), **kwargs)
    once = redis.asyncio.retry.Retry(NoBackoff(), 0)
    sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
        endpoint.sentinels, sentinel_kwargs=_sentinel_kwargs(endpoint, kwargs, once))
    client: redis.asyncio.Redis = sentinel.master_for(endpoint.service, redis_class=_AsyncPrimary,
                                                      **endpoint.redis_kwargs(), **kwargs)
    return client


def sync_client(url: str, **kwargs: Any) -> redis.Redis:
    """A blocking redis-py client for `url` (the emitter's)."""
    endpoint = redis_endpoint(url)
    if endpoint.cluster:
        nodes = [redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call, unused-ignore]
                 for host, port in endpoint.cluster_seeds]
        return cast(redis.Redis, redis.RedisCluster(startup_nodes=nodes, **endpoint.redis_kwargs(), **kwargs))
    if not endpoint.sentinel:
        return redis.Redis(**endpoint.redis_kwargs(), **kwargs)
    sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
        endpoint.sentinels, sentinel_kwargs=_sentinel_kwargs(endpoint, kwargs, redis.retry.Retry(NoBackoff(), 0)))
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call, unused-ignore]
        endpoint.service, redis_class=_Primary, **endpoint.redis_kwargs(), **kwargs)
    return client
