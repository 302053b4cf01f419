"""`REDIS_URL`, parsed once into what every connection to Redis needs.

A node opens Redis connections three ways: redis-py's asyncio clients (control plane),
our own RESP link (`coup.cluster.resp`, pub/sub) and, in other processes, redis-py's
blocking client (`coup.emitter`). All of them take their address, credentials and TLS
settings from one `RedisEndpoint`, so an option in the URL (a PaaS add-on's
``rediss://...?ssl_cert_reqs=none``) holds on every connection or on none; before this
module the pub/sub link verified every certificate whatever the URL said.

The query options are the TLS ones redis-py reads from a URL (same names, same meaning).
Anything else in the query is refused rather than ignored: a misspelt ``ssl_cert_req=none``
must stop the start with a message, not verify the certificate anyway. Standard library
only, so `coup.config` can check the URL at start without importing redis.

Redis Sentinel: ``redis+sentinel://[user:pass@]host1[:26379],host2[:26379]/mymaster[/db][?options]``
(``rediss+sentinel://``: TLS to the data nodes and to the sentinels). redis-py has no URL form
for Sentinel; this is the one Prefect/docket and the Redis-Sentinel-Url package use: the
user and password are the data nodes', ``sentinel_username`` / ``sentinel_password`` the
sentinels' (when they have one), sentinels default to port 26379. Such an endpoint has no
fixed host: every connection asks the sentinels for the current primary when it opens
(`coup.redis_clients` for redis-py, `coup.cluster.resp` for our own link), so a connection
that breaks at a failover reconnects to the new primary.

Redis Cluster: ``redis+cluster://[user:pass@]host1[:6379],host2[:6379][?options]``
(``rediss+cluster://``: TLS to every cluster node). The hosts are seeds: any one that answers
gives the slot map (``CLUSTER SHARDS``), so listing every primary is not needed, only one
that is up. A cluster has database 0 only, so the URL takes no database number. See
docs/cluster.md#redis-cluster for the key and channel layout this mode uses.
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
#: query options taken from the URL (all TLS ones need ``rediss://``)
TLS_OPTIONS = ("ssl_cert_reqs", "ssl_check_hostname", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
#: query options of a Sentinel URL only: credentials of the sentinels themselves
SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")
SENTINEL_PORT = 26379
#: scheme -> (TLS, kind of endpoint)
_SCHEMES = {"redis": (False, ""), "rediss": (True, ""), "redis+sentinel": (False, "sentinel"),
            "rediss+sentinel": (True, "sentinel"), "redis+cluster": (False, "cluster"),
            "rediss+cluster": (True, "cluster"), "unix": (False, "")}


class RedisURLError(ValueError):
    """The URL cannot be used; the message says which part and what would work."""


@dataclass(frozen=True)
class RedisTLS:
    """TLS settings of a ``rediss://`` URL; defaults verify the certificate and host name."""

    cert_reqs: ssl.VerifyMode = ssl.CERT_REQUIRED
    #: None: check the host name whenever the certificate is verified (redis-py's rule)
    check_hostname: bool | None = None
    #: a PEM file of CAs to trust instead of the system's
    ca_certs: str | None = None
    #: a client certificate (and its key) for servers that ask for one
    certfile: str | None = None
    keyfile: str | None = None

    @property
    def verifies(self) -> bool:
        return self.cert_reqs != ssl.CERT_NONE

    @property
    def hostname_checked(self) -> bool:
        return self.verifies and self.check_hostname is not False

    def context(self) -> ssl.SSLContext:
        """A client context with these settings; raises `RedisURLError` when a file is unusable."""
        context = ssl.create_default_context()
        context.check_hostname = self.hostname_checked
        context.verify_mode = self.cert_reqs
        if self.ca_certs:
            try:
                context.load_verify_locations(cafile=self.ca_certs)
            except (OSError, ssl.SSLError) as exc:
                raise RedisURLError(f"cannot load ssl_ca_certs {self.ca_certs!r}: {_reason(exc)}") from None
        if self.certfile:
            try:
                context.load_cert_chain(self.certfile, self.keyfile)
            except (OSError, ssl.SSLError) as exc:
                raise RedisURLError(f"cannot load ssl_certfile {self.certfile!r}: {_reason(exc)}") from None
        return context

    def redis_kwargs(self) -> dict[str, Any]:
        """The same settings as redis-py constructor arguments."""
        return {"ssl": True, "ssl_cert_reqs": self.cert_reqs, "ssl_check_hostname": self.hostname_checked,
                "ssl_ca_certs": self.ca_certs, "ssl_certfile": self.certfile, "ssl_keyfile": self.keyfile}


def _reason(exc: Exception) -> str:
    return str(exc.strerror) if isinstance(exc, OSError) and exc.strerror else str(exc)


@dataclass(frozen=True)
class RedisEndpoint:
    """Where Redis is and how to speak to it. Build it with `redis_endpoint(url)`."""

    host: str = "localhost"
    port: int = 6379
    #: a unix socket path (``unix://``); host and port are then unused
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: None: plain TCP (``redis://``)
    tls: RedisTLS | None = None
    #: Sentinel: the sentinels' (host, port); host and port are then unused (asked for)
    sentinels: tuple[tuple[str, int], ...] = ()
    #: Sentinel: the name the sentinels monitor the primary under (``mymaster``)
    service: str = ""
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    #: Redis Cluster: the seed nodes' (host, port); host and port are then unused
    cluster_seeds: tuple[tuple[str, int], ...] = ()

    @property
    def sentinel(self) -> bool:
        return bool(self.sentinels)

    @property
    def cluster(self) -> bool:
        return bool(self.cluster_seeds)

    @functools.cached_property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The one TLS context our own connections use (built once; None without TLS)."""
        return self.tls.context() if self.tls is not None else None

    def redis_kwargs(self) -> dict[str, Any]:
        """Constructor arguments for ``redis.Redis`` / ``redis.asyncio.Redis`` (sync and asyncio);
        for Sentinel, those of the data-node connections (no host: the sentinels give it)."""
        kwargs: dict[str, Any] = {"db": self.db, "username": self.username, "password": self.password}
        if self.path is not None:
            kwargs["unix_socket_path"] = self.path
        elif not self.sentinels and not self.cluster_seeds:
            kwargs.update(host=self.host, port=self.port)
        if self.cluster_seeds:
            del kwargs["db"]  # a cluster has database 0 only; redis-py's RedisCluster refuses the argument
        if self.tls is not None:
            kwargs.update(self.tls.redis_kwargs())
        return kwargs

    def sentinel_kwargs(self) -> dict[str, Any]:
        """Connection arguments for the sentinels: their own credentials, the same TLS."""
        kwargs: dict[str, Any] = {"username": self.sentinel_username, "password": self.sentinel_password}
        if self.tls is not None:
            kwargs.update(self.tls.redis_kwargs())
        return kwargs

    def __str__(self) -> str:
        """The URL without credentials, for logs."""
        if self.path is not None:
            return f"unix://{self.path}"
        if self.sentinels:
            hosts = ",".join(_host_port(host, port) for host, port in self.sentinels)
            return f"{'rediss' if self.tls else 'redis'}+sentinel://{hosts}/{self.service}/{self.db}"
        if self.cluster_seeds:
            hosts = ",".join(_host_port(host, port) for host, port in self.cluster_seeds)
            return f"{'rediss' if self.tls else 'redis'}+cluster://{hosts}"
        return f"{'rediss' if self.tls else 'redis'}://{_host_port(self.host, self.port)}/{self.db}"


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _flag(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise RedisURLError(f"has {name}={raw!r}; use true or false")


def _tls(options: dict[str, str]) -> RedisTLS:
    reqs = options.get("ssl_cert_reqs", "required").strip().lower()
    if reqs not in _CERT_REQS:
        raise RedisURLError(f"has ssl_cert_reqs={options['ssl_cert_reqs']!r}; use none, optional or required")
    check = options.get("ssl_check_hostname")
    if options.get("ssl_keyfile") and not options.get("ssl_certfile"):
        raise RedisURLError("sets ssl_keyfile without ssl_certfile")
    return RedisTLS(cert_reqs=_CERT_REQS[reqs],
                    check_hostname=None if check is None else _flag("ssl_check_hostname", check),
                    ca_certs=options.get("ssl_ca_certs") or None, certfile=options.get("ssl_certfile") or None,
                    keyfile=options.get("ssl_keyfile") or None)


@functools.lru_cache(maxsize=16)
def redis_endpoint(url: str) -> RedisEndpoint:
    """Parse ``redis://[user:password@]host[:port][/db]``, ``rediss://...[?tls options]``,
    ``unix:///path[?db=N]``, ``redis[s]+sentinel://[user:password@]host[:port],.../service[/db]``
    or ``redis[s]+cluster://[user:password@]host[:port],...``;
    raise `RedisURLError` naming what is wrong.

    Cached: every connection of a process built from the same URL shares one endpoint (and
    one TLS context).
    """
    text = url.strip()
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme not in _SCHEMES:
        head = text.split(":", 1)[0] + ":..."  # never the rest: it may hold a password
        raise RedisURLError("must start with redis://, rediss:// (TLS), unix://, redis+sentinel://, "
                            f"rediss+sentinel://, redis+cluster:// or rediss+cluster://, not {head!r}")
    tls_scheme, kind = _SCHEMES[scheme]
    sentinel = kind == "sentinel"
    # a list of sentinels is no valid netloc for urlsplit (an IPv6 one among them even raises)
    rest = text.split("://", 1)[1]
    rest, _, query = rest.partition("?")
    known = (*TLS_OPTIONS, *(() if kind == "cluster" else ("db",)), *(SENTINEL_OPTIONS if sentinel else ()))
    options: dict[str, str] = {}
    for name, values in parse_qs(query, keep_blank_values=True).items():
        if name not in known:
            raise RedisURLError(f"has an unknown option {name!r} (known: {', '.join(known)})")
        options[name] = values[-1]
    tls_given = [name for name in options if name in TLS_OPTIONS]
    if tls_given and not tls_scheme:
        raise RedisURLError(f"sets {', '.join(tls_given)}, which only a rediss:// (TLS) URL may")
    if sentinel:
        return _sentinel_endpoint(rest, options, tls_scheme)
    if kind == "cluster":
        return _cluster_endpoint(rest, options, tls_scheme)
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        raise RedisURLError(f"has a port that is not a number from 1 to 65535: {parts.netloc.rpartition('@')[2]!r}") \
            from None
    db_text = options.get("db")
    if db_text is None and scheme != "unix":
        db_text = unquote(parts.path).strip("/") or None
    db = _db(db_text)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    if scheme == "unix":
        if not parts.path:
            raise RedisURLError("has no socket path (unix:///run/redis.sock)")
        return RedisEndpoint(path=unquote(parts.path), db=db, username=username, password=password)
    if not parts.hostname:
        raise RedisURLError("has no host (redis://host:6379)")
    return RedisEndpoint(host=unquote(parts.hostname), port=port or 6379, db=db,
                         username=username, password=password, tls=_tls(options) if scheme == "rediss" else None)


def _db(text: str | None) -> int:
    try:
        db = int(text) if text is not None else 0
    except ValueError:
        raise RedisURLError(f"has a database number that is not an integer: {text!r}") from None
    if db < 0:
        raise RedisURLError(f"has a negative database number: {db}")
    return db


def _sentinel_endpoint(rest: str, options: dict[str, str], tls: bool) -> RedisEndpoint:
    """``[user:password@]host[:port],host[:port]/service[/db]`` (what follows the scheme)."""
    netloc, _, path = rest.partition("/")
    username, password, hosts = _userinfo(netloc)
    sentinels = tuple(_address(item) for item in hosts.split(",") if item.strip())
    if not sentinels:
        raise RedisURLError("names no sentinel (redis+sentinel://host1:26379,host2:26379/mymaster)")
    service, _, db_text = unquote(path).strip("/").partition("/")
    if not service:
        raise RedisURLError("names no service: the primary's name the sentinels monitor "
                            "(redis+sentinel://host1:26379,host2:26379/mymaster)")
    if "/" in db_text:
        raise RedisURLError(f"has more after the service name than a database number: {db_text!r}")
    db = _db(options.get("db", db_text or None))
    return RedisEndpoint(host="", port=0, db=db, username=username, password=password,
                         tls=_tls(options) if tls else None, sentinels=sentinels, service=service,
                         sentinel_username=options.get("sentinel_username") or None,
                         sentinel_password=options.get("sentinel_password") or None)


def _userinfo(netloc: str) -> tuple[str | None, str | None, str]:
    """(username, password, hosts) of ``[user:password@]hosts``."""
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return None, None, hosts
    user, colon, secret = userinfo.partition(":")
    return unquote(user) or None, unquote(secret) if colon and secret else None, hosts


def _cluster_endpoint(rest: str, options: dict[str, str], tls: bool) -> RedisEndpoint:
    """``[user:password@]host[:port],host[:port]`` (what follows the scheme)."""
    netloc, _, path = rest.partition("/")
    if path.strip("/"):
        raise RedisURLError(f"has a path after the hosts ({path!r}): a Redis Cluster has database 0 only")
    username, password, hosts = _userinfo(netloc)
    seeds = tuple(_address(item, "cluster node", 6379) for item in hosts.split(",") if item.strip())
    if not seeds:
        raise RedisURLError("names no cluster node (redis+cluster://host1:6379,host2:6379)")
    return RedisEndpoint(host="", port=0, username=username, password=password,
                         tls=_tls(options) if tls else None, cluster_seeds=seeds)


def _address(item: str, what: str = "sentinel", default_port: int = SENTINEL_PORT) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` of one sentinel (or cluster node)."""
    item = item.strip()
    if item.startswith("["):
        host, bracket, after = item[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise RedisURLError(f"has a {what} address that is not host:port: {item!r}")
        port_text = after[1:]
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise RedisURLError(f"has a {what} without a host: {item!r}")
    if not port_text:
        return unquote(host), default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise RedisURLError(f"has a {what} port that is not a number from 1 to 65535: {item!r}")
    return unquote(host), int(port_text)


def with_options(url: str, options: str) -> str:
    """`url` with the query options `options` (``ssl_cert_reqs=none&...``) added after its own,
    so they win: for a platform that manages REDIS_URL itself (Heroku's add-on rotates its
    credentials and refuses edits), where the options must come from another variable."""
    parts = urlsplit(url.strip())
    extra = options.strip().lstrip("?&")
    query = "&".join(q for q in (parts.query, extra) if q)
    return urlunsplit(parts._replace(query=query))

