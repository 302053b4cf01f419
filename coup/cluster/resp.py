"""A lean Redis connection for the hot path: pipelined PUBLISH and a SUBSCRIBE reader.

Why not redis-py's `PubSub` here: it retries and re-subscribes behind our back (we must
know when a subscription was lost, to re-sync and to report not-ready), and it builds a
dict per received message. This connection never retries and never reconnects by itself:
when it breaks, every pending reply fails and `on_lost` runs once; `coup.cluster.bus`
decides what to do. Replies are parsed by hiredis (a dependency of ``redis[hiredis]``).
Control-plane commands (scripts, heartbeats) still go through redis-py.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import hiredis

from coup.redis_endpoint import RedisEndpoint, redis_endpoint

Push = Callable[[list[Any]], None]


class RedisUnavailable(ConnectionError):
    """The connection to Redis is gone (or never came up); the command may or may not have run."""


class RedisTLSRejected(RedisUnavailable):
    """The server's certificate did not pass the checks the URL asks for (a setting to fix, not an outage)."""


def _tls_failure(endpoint: RedisEndpoint, exc: ssl.SSLCertVerificationError) -> RedisTLSRejected:
    hint = ("for an add-on with a self-signed certificate add ?ssl_cert_reqs=none to REDIS_URL (or set "
            "COUP_REDIS_OPTIONS=ssl_cert_reqs=none where the platform owns REDIS_URL), or trust its CA with "
            "ssl_ca_certs=/path/ca.pem")
    if exc.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
        hint = "add ssl_check_hostname=false to REDIS_URL (or COUP_REDIS_OPTIONS) if the certificate names another host"
    return RedisTLSRejected(f"redis at {endpoint} has a TLS certificate we do not trust "
                            f"({exc.verify_message}); {hint}")


class Waiter(Protocol):
    """What waits for a command's reply: an asyncio future, or an object that takes it at once
    (the recovery log's script call, `coup.cluster.recovery`: one per loop turn, where a
    future's scheduled callback was a measurable part of what the log adds per message)."""

    def done(self) -> bool: ...

    def set_result(self, result: Any, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...

    def exception(self) -> BaseException | None: ...


class RespConnection(asyncio.Protocol):
    """One RESP2 connection. In push mode every reply goes to `on_push` (a subscriber);
    otherwise replies resolve the waiters of the commands (`Waiter`), in order (a pipeline)."""

    def __init__(self, on_push: Push | None, on_lost: Callable[[], None] | None) -> None:
        self._reader = hiredis.Reader()
        #: one entry per command in flight; None for a reply nobody waits for
        self._waiters: deque[Waiter | None] = deque()
        self._transport: asyncio.Transport | None = None
        self._on_push = on_push
        self._on_lost = on_lost
        #: called with a redirection or cluster-state error reply (``MOVED``, ``ASK``, ``CLUSTERDOWN``)
        self.on_redirect: Callable[[hiredis.ReplyError], None] | None = None
        self._closed = False
        self.name = ""
        #: the server: a unix path or (host, port) as dialled
        self.address: str | tuple[str, int] | None = None

    # ------------------------------------------------------------------ opening

    @classmethod
    async def open(cls, url: str, *, name: str, timeout: float, on_push: Push | None = None,
                   on_lost: Callable[[], None] | None = None,
                   address: tuple[str, int] | None = None) -> RespConnection:
        """Connect, authenticate and name the connection (``CLIENT SETNAME`` helps operators).

        With a Sentinel URL the sentinels are asked for the primary first, and the server
        must say it is the primary (``ROLE``): during a failover the old address may answer
        as a replica, where our PUBLISHes would reach nobody on the new primary.

        With a Redis Cluster URL, `address` says which node (a primary from `slot_map`).
        """
        endpoint = redis_endpoint(url)
        setup: list[tuple[Any, ...]] = [("CLIENT", "SETNAME", name)]
        try:
            async with asyncio.timeout(timeout):
                if address is not None:
                    conn, _ = await cls._handshake(endpoint, address, endpoint.username, endpoint.password, setup,
                                                   f"{address[0]}:{address[1]} (of {endpoint})")
                else:
                    conn = await cls._open_at(endpoint, setup, timeout)
        except TimeoutError:
            raise RedisUnavailable(f"no answer from redis at {endpoint} within {timeout} s") from None
        conn.name = name
        conn._on_push = on_push
        conn._on_lost = on_lost
        return conn

    @classmethod
    async def _open_at(cls, endpoint: RedisEndpoint, setup: list[tuple[Any, ...]], timeout: float) -> RespConnection:
        if endpoint.cluster:
            raise ValueError("a Redis Cluster connection needs the node's address (see slot_map)")
        if not endpoint.sentinel:
            conn, _ = await cls._handshake(endpoint, endpoint.path or (endpoint.host, endpoint.port),
                                           endpoint.username, endpoint.password, setup, str(endpoint))
            return conn
        address = await primary_address(endpoint, timeout)
        where = f"{address[0]}:{address[1]} (the primary of {endpoint})"
        conn, replies = await cls._handshake(endpoint, address, endpoint.username, endpoint.password,
                                             [*setup, ("ROLE",)], where)
        role = replies[-1]
        if not isinstance(role, list) or role[:1] != [b"master"]:
            conn.close()
            raise RedisUnavailable(f"redis at {where} is not a primary (yet): failover in progress")
        return conn

    @classmethod
    async def _handshake(cls, endpoint: RedisEndpoint, address: str | tuple[str, int], username: str | None,
                         password: str | None, setup: list[tuple[Any, ...]],
                         where: str) -> tuple[RespConnection, list[Any]]:
        """Connect to `address` (a unix path or host and port), AUTH, run `setup`; its replies.
        `where` names the server in errors (never with credentials)."""
        loop = asyncio.get_running_loop()
        conn = cls(None, None)  # no push handling until the handshake replies are read
        commands = [("AUTH", username, password) if username else ("AUTH", password)] if password else []
        commands.extend(setup)
        try:
            if isinstance(address, str):
                await loop.create_unix_connection(lambda: conn, address)
            else:
                await loop.create_connection(lambda: conn, address[0], address[1], ssl=endpoint.ssl_context)
            conn.address = address
            replies = list(await asyncio.gather(*conn.send(*commands)))
            for reply in replies:
                if isinstance(reply, hiredis.ReplyError):
                    raise RedisUnavailable(f"redis at {where} refused the connection setup: {reply}")
        except RedisUnavailable:
            conn.close()
            raise
        except ssl.SSLCertVerificationError as exc:
            conn.close()
            raise _tls_failure(endpoint, exc) from None
        except OSError as exc:
            conn.close()
            raise RedisUnavailable(f"cannot connect to redis at {where}: {exc!r}") from None
        except TimeoutError:
            conn.close()
            raise RedisUnavailable(f"no answer from redis at {where}") from None
        except BaseException:
            conn.close()
            raise
        return conn, replies[len(commands) - len(setup):]

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        try:
            push = self._on_push
            if push is not None:
                while (reply := reader.gets()) is not False:
                    if type(reply) is _REPLY_ERROR:
                        self._redirected(reply)
                    push(reply)
                return
            # one pass per reply, most of them for nobody (a transaction's QUEUED, a publish's count)
            waiters = self._waiters
            while (reply := reader.gets()) is not False:
                waiter = waiters.popleft() if waiters else None
                if type(reply) is _REPLY_ERROR:
                    self._redirected(reply)
                if waiter is not None and not waiter.done():
                    waiter.set_result(reply)
        except hiredis.ProtocolError:
            self._lost()

    def _redirected(self, reply: hiredis.ReplyError) -> None:
        """An error reply that says the Redis Cluster's slot map changed goes to `on_redirect` too."""
        if self.on_redirect is not None and str(reply).startswith(_REDIRECTS):
            self.on_redirect(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()

    def _lost(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._transport is not None:
            self._transport.abort()
        error = RedisUnavailable(f"redis connection {self.name or '(opening)'} lost")
        while self._waiters:
            waiter = self._waiters.popleft()
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)
                waiter.exception()  # a pipeline may drop futures nobody awaits: mark them retrieved
        callback, self._on_lost = self._on_lost, None
        if callback is not None:
            callback()

    # ------------------------------------------------------------------ commands

    @property
    def closed(self) -> bool:
        return self._closed

    def write(self, commands: Sequence[tuple[Any, ...] | bytes], waiters: list[Waiter | None]) -> None:
        """Pipeline `commands`; each reply resolves the waiter at the same index (None: ignored).
        A command may come packed already (bytes): a transaction's constant MULTI and EXEC,
        which hiredis would pack anew every loop turn (a `sprintf` per argument)."""
        if self._closed or self._transport is None:
            raise RedisUnavailable("redis connection is closed")
        if self._on_push is None:
            self._waiters.extend(waiters)
        self._transport.write(pack_commands(commands))

    def send(self, *commands: tuple[Any, ...]) -> list[asyncio.Future[Any]]:
        """Write commands in one go; one future per reply (none in push mode)."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = [] if self._on_push is not None else \
            [loop.create_future() for _ in commands]
        self.write(list(commands), list(futures))
        return futures

    async def call(self, *args: Any) -> Any:
        """One command, its reply (a Redis error reply is returned, not raised)."""
        (future,) = self.send(args)
        return await future

    def close(self) -> None:
        """Drop the connection; pending replies fail and `on_lost` is not called."""
        self._on_lost = None
        self._lost()


def pack_commands(commands: Sequence[tuple[Any, ...] | bytes]) -> bytes:
    """`commands` in RESP, one after the other; a command given as bytes is packed already."""
    pack = hiredis.pack_command
    return b"".join([c if c.__class__ is bytes else pack(c) for c in commands])  # type: ignore[arg-type]


#: error replies that say a cluster's slot map changed (or is changing) under us
_REDIRECTS = ("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN")
_REPLY_ERROR = hiredis.ReplyError
#: slots of a Redis Cluster
SLOTS = 16384


async def slot_map(url: str, timeout: float) -> list[tuple[str, int] | None]:
    """Per slot, the address of the primary that serves it (None: nobody), as the first
    cluster node that answers says (``CLUSTER SLOTS``); the URL's seeds and the primaries
    learnt last time are asked in turn, the last one that answered first."""
    endpoint = redis_endpoint(url)
    known = _cluster_order.get(endpoint, [])
    candidates = [*known, *(seed for seed in endpoint.cluster_seeds if seed not in known)]
    each = max(timeout / len(candidates), 0.5)
    errors = []
    for address in candidates:
        where = f"{address[0]}:{address[1]} (of {endpoint})"
        try:
            async with asyncio.timeout(each):
                conn, (reply,) = await RespConnection._handshake(
                    endpoint, address, endpoint.username, endpoint.password, [("CLUSTER", "SLOTS")], where)
        except (RedisUnavailable, TimeoutError) as exc:
            errors.append(str(exc) or f"{where}: no answer")
            continue
        conn.close()
        owners: list[tuple[str, int] | None] = [None] * SLOTS
        for start, end, primary, *_ in reply:
            host = primary[0].decode() or address[0]  # an empty host: the one we asked
            owners[start:end + 1] = [(host, int(primary[1]))] * (end - start + 1)
        primaries = list(dict.fromkeys(owner for owner in owners if owner is not None))
        _cluster_order[endpoint] = [address, *(p for p in primaries if p != address)]
        return owners
    raise RedisUnavailable(f"no node of the Redis Cluster {endpoint} answered: {'; '.join(errors)}")


#: per Redis Cluster endpoint, the node that answered last, then the primaries it named
_cluster_order: dict[RedisEndpoint, list[tuple[str, int]]] = {}


async def primary_address(endpoint: RedisEndpoint, timeout: float) -> tuple[str, int]:
    """Ask the sentinels of `endpoint` where its primary is (``SENTINEL get-master-addr-by-name``)."""
    conn, (reply,) = await _sentinel(endpoint, timeout, [("SENTINEL", "get-master-addr-by-name", endpoint.service)],
                                     accept=lambda replies: isinstance(replies[0], list) and len(replies[0]) == 2,
                                     refused=f"knows no primary named {endpoint.service!r}")
    conn.close()
    return reply[0].decode(), int(reply[1])


async def open_sentinel(url: str, *, timeout: float, on_push: Push, on_lost: Callable[[], None]) -> RespConnection:
    """A connection to one of the sentinels of `url`, in push mode (for ``SUBSCRIBE +switch-master``)."""
    endpoint = redis_endpoint(url)
    conn, _ = await _sentinel(endpoint, timeout, [("PING",)], accept=lambda replies: True, refused="")
    conn._on_push = on_push
    conn._on_lost = on_lost
    return conn


async def _sentinel(endpoint: RedisEndpoint, timeout: float, setup: list[tuple[Any, ...]],
                    accept: Callable[[list[Any]], bool], refused: str) -> tuple[RespConnection, list[Any]]:
    """The first sentinel, tried in turn, that connects and whose replies to `setup` are
    accepted; the one that was is tried first next time."""
    sentinels = _sentinel_order.get(endpoint, list(endpoint.sentinels))
    each = max(timeout / len(sentinels), 0.5)
    errors = []
    for i, (host, port) in enumerate(sentinels):
        try:
            async with asyncio.timeout(each):
                conn, replies = await RespConnection._handshake(
                    endpoint, (host, port), endpoint.sentinel_username, endpoint.sentinel_password, setup,
                    f"sentinel {host}:{port}")
        except (RedisUnavailable, TimeoutError) as exc:
            errors.append(str(exc) or f"sentinel {host}:{port}: no answer")
            continue
        if accept(replies):
            _sentinel_order[endpoint] = [sentinels[i], *sentinels[:i], *sentinels[i + 1:]]
            return conn, replies
        conn.close()
        errors.append(f"sentinel {host}:{port} {refused}")
    raise RedisUnavailable(f"no sentinel of {endpoint} answered: {'; '.join(errors)}")


#: per Sentinel endpoint, its sentinels with the last one that answered first
_sentinel_order: dict[RedisEndpoint, list[tuple[str, int]]] = {}
