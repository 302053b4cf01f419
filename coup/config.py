"""Settings from environment variables (12-factor), validated once at start.

`Settings.from_env(environ)` takes the mapping to read, so tests pass their own. A bad
value raises `ConfigError` naming the variable; secrets hide themselves in `repr`.

The fields of `Settings` are the settings table: each ``setting(NAME, default, parser, help,
section)`` row gives `from_env`, `coup serve --help` and README.md's tables (regenerate those with
``python -m coup settings-table --update README.md``; tests/test_config.py fails while they
differ). To add a setting, add one row, then regenerate the README. A parser is
``(name, raw) -> value`` and raises `ConfigError` naming `name`; `_integer(min, max)`,
`_number(min)`, `_bool`, `_choice`, `_text`, `_list` cover most. Rules that tie several
variables together go in `Settings.validated`.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import secrets
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar
from urllib.parse import urlsplit

from coup.redis_endpoint import RedisURLError, redis_endpoint, with_options


class ConfigError(ValueError):
    """A configuration variable is missing or invalid; the message names it."""


class StartError(RuntimeError):
    """A service the settings point at cannot be used at start; the message names the setting."""


def url_for_logs(url: str) -> str:
    """`url` without its user name, password and query (which may hold credentials too)."""
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class Secret:
    """A string that does not show itself in logs or reprs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and secrets.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self._value)


MIN_SECRET_BYTES = 32
MIN_SERVICE_TOKEN_BYTES = 16
#: how to make a secret that passes `guessable`
MAKE_A_SECRET = "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"


def guessable(value: str) -> bool:
    """Obviously low entropy: under 6 distinct characters, under 32 bits by the characters'
    frequencies, or one short piece repeated (``aaaa...``, ``abab...``, ``0123456789abcdef`` twice).
    A check against mistakes, not a proof of randomness: a random 16-character hex token
    passes 9,999 times in 10,000."""
    n = len(value)
    if n == 0:
        return True
    counts = Counter(value)
    bits = -sum(c * math.log2(c / n) for c in counts.values())
    repeated = any(n % p == 0 and value == value[:p] * (n // p) for p in range(1, n // 2 + 1))
    return len(counts) < 6 or bits < 32 or repeated


#: node ids and key prefixes appear in session ids and Redis channel names
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def _int(name: str, raw: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {value}")
    return value


def _float(name: str, raw: str, *, minimum: float = 0.0) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _name(name: str, raw: str) -> str:
    value = raw.strip()
    if not _NAME.fullmatch(value):
        raise ConfigError(f"{name} may hold only letters, digits, '_' and '-' (1 to 64), got {raw!r}")
    return value


_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


def _bcrypt_hash(name: str, raw: str) -> str:
    """A bcrypt hash (``$2b$12$...``): the plain password never sits in the environment."""
    if not _BCRYPT.fullmatch(raw):
        raise ConfigError(f"{name} must be a bcrypt hash ($2b$12$..., see `coup hash-password`), "
                          "not the password itself")
    return raw


def _address(name: str, raw: str) -> str:
    """``host:port`` (``[v6]:port``), as other nodes dial it."""
    value = raw.strip()
    host, sep, port = value.rpartition(":")
    example = "e.g. 10.0.0.5:8000 or [fd00::5]:8000"
    if "/" in value or not sep or not host or host == "[]" or (":" in host and not host.startswith("[")):
        raise ConfigError(f"{name} must be host:port ({example}), got {raw!r}")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{name} must end in a port from 1 to 65535 ({example}), got {raw!r}")
    return value


#: variables only a hosting platform sets: Heroku, Fly.io, Render, Railway, Google Cloud Run
PLATFORM_MARKERS = ("DYNO", "FLY_APP_NAME", "RENDER", "RAILWAY_ENVIRONMENT", "K_SERVICE")

#: peewee URL schemes we open, and the database each one means
DATABASE_KINDS = {"sqlite": "sqlite", "postgres": "postgresql", "postgresql": "postgresql"}


def database_kind(url: str) -> str | None:
    """``sqlite`` or ``postgresql`` for a DATABASE_URL we can open, else None."""
    return DATABASE_KINDS.get(urlsplit(url.strip()).scheme.lower())


def _database_url(name: str, raw: str) -> str:
    value = raw.strip()
    kind = database_kind(value)
    if kind is None:
        head = value.split(":", 1)[0] + ":..."  # never the rest: it may hold a password
        raise ConfigError(f"{name} must be sqlite:///file.db or postgresql://user:pass@host:5432/db, not {head!r}")
    if kind == "postgresql" and importlib.util.find_spec("psycopg2") is None:
        raise ConfigError(f"{name} is a PostgreSQL URL but its driver is not installed: "
                          "pip install 'coup-realtime[postgres]' (requirements.txt does)")
    return value


def _redis_url(name: str, raw: str) -> str:
    value = raw.strip()
    try:
        redis_endpoint(value).ssl_context  # noqa: B018 - loads the CA and client certificate files now
    except RedisURLError as exc:
        raise ConfigError(f"{name} {exc}") from None
    return value


T = TypeVar("T")
#: reads one variable's text: ``parse(name, raw)`` returns the value or raises ConfigError naming `name`
Parser = Callable[[str, str], T]


def _list(name: str, raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _proxies(name: str, raw: str) -> tuple[str, ...]:
    import ipaddress

    items = _list(name, raw)
    for item in items:
        if item == "*":
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(f"{name} must list IP addresses or networks (10.0.0.0/8) or be *, "
                              f"got {item!r}") from None
    return items


def _text(name: str, raw: str) -> str:
    return raw.strip()


def _secret(name: str, raw: str) -> Secret:
    """Kept as given (checked in `Settings.validated`, which also sees overrides)."""
    return Secret(raw)


def _integer(minimum: int | None = None, maximum: int | None = None) -> Parser[int]:
    return lambda name, raw: _int(name, raw, minimum=minimum, maximum=maximum)


def _number(minimum: float = 0.0) -> Parser[float]:
    return lambda name, raw: _float(name, raw, minimum=minimum)


def _choice(options: tuple[str, ...], says: str, fold: Callable[[str], str] = str) -> Parser[str]:
    """One of `options` after `fold` (``str.upper``: case does not matter); `says` lists them in the error."""
    def parse(name: str, raw: str) -> str:
        value = fold(raw.strip())
        if value not in options:
            raise ConfigError(f"{name} must be {says}, got {raw!r}")
        return value
    return parse


def _long_secret(min_bytes: int) -> Parser[Secret]:
    def parse(name: str, raw: str) -> Secret:
        if len(raw.encode()) < min_bytes:
            raise ConfigError(f"{name} must be at least {min_bytes} bytes")
        return Secret(raw)
    return parse


def _admin_password(name: str, raw: str) -> Secret:
    return Secret(_bcrypt_hash(name, raw.strip()))


def _blank_is_unset(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    return raw if raw is not None and raw.strip() != "" else None


def _redis_url_with_options(env: Mapping[str, str]) -> tuple[str, str] | None:
    """REDIS_URL, with COUP_REDIS_OPTIONS merged into its query (a platform may own REDIS_URL)."""
    raw = _blank_is_unset(env, "REDIS_URL")
    options = _blank_is_unset(env, "COUP_REDIS_OPTIONS")
    if raw is None:
        return None
    if options is None:
        return "REDIS_URL", raw
    return "REDIS_URL (with COUP_REDIS_OPTIONS)", with_options(raw, options)


def _proxies_or_heroku_router(env: Mapping[str, str]) -> tuple[str, str] | None:
    """Heroku (DYNO set): dynos are reached only through its router, which sets X-Forwarded-For."""
    raw = _blank_is_unset(env, "COUP_TRUSTED_PROXIES")
    if raw is None and env.get("DYNO"):
        return "COUP_TRUSTED_PROXIES", "*"
    return None if raw is None else ("COUP_TRUSTED_PROXIES", raw)


#: README sections, in the order `settings_tables` writes them: (key, README heading it sits under)
SECTIONS = {"general": "Configuration", "cluster": "Cluster variables", "domain": "The CoUp domain's variables",
            "metrics": "Metrics", "admin": "Admin view"}


@dataclass(frozen=True)
class Variable:
    """One environment variable: a row of the settings table (see `setting`)."""

    name: str
    parse: Parser[Any]
    #: README "meaning" column (markdown); `coup serve --help` shows it without the backticks
    help: str
    #: a key of SECTIONS: which README table lists it
    section: str
    #: README "default" column when the value alone does not say it ("random", "none: off")
    shown_default: str | None = None
    #: reads the (name for errors, raw text) from the environment when more than the variable is involved
    read: Callable[[Mapping[str, str]], tuple[str, str] | None] | None = None
    #: the Settings field (filled in from the dataclass)
    field: str = ""

    def raw(self, env: Mapping[str, str]) -> tuple[str, str] | None:
        """(name for errors, raw text), or None when unset (blank counts as unset)."""
        if self.read is not None:
            return self.read(env)
        raw = _blank_is_unset(env, self.name)
        return None if raw is None else (self.name, raw)


def setting(name: str, default: T, parse: Parser[T], help: str, section: str, *, shown_default: str | None = None,
            read: Callable[[Mapping[str, str]], tuple[str, str] | None] | None = None) -> T:
    """A Settings field read from variable `name` by `parse`: one row of the settings table.

    `Settings.from_env`, `coup serve --help` and the README tables (`coup settings-table`) all come
    from these rows; adding a setting is adding one.
    """
    assert section in SECTIONS, section
    variable = Variable(name, parse, help, section, shown_default, read)
    return field(default=default, metadata={"variable": variable})


#: fields whose values may hold a password: shown with it hidden
_URL_FIELDS = ("database_url", "redis_url")


@dataclass(frozen=True, repr=False)
class Settings:
    # --- general ("Configuration" in README.md)
    host: str = setting("HOST", "127.0.0.1", _text, "interface to listen on (`0.0.0.0` for all)", "general")
    port: int = setting("PORT", 8000, _integer(0, 65535), "port to listen on", "general")
    listen_backlog: int = setting(
        "COUP_LISTEN_BACKLOG", 4096, _integer(1, 65535), "connections the kernel queues before they are accepted "
        "(capped by `net.core.somaxconn`, 4096 on Linux 5.4+); a full queue drops SYNs, and each drop costs a client "
        "a 1 s retransmit in a reconnect storm (docs/operations.md)", "general")
    jwt_secret: Secret | None = setting(
        "JWT_SECRET", None, _secret, "secret for signing tokens, at least 32 bytes and not guessable (`aaaa…`, a "
        "repeated piece: refused); required unless demo mode", "general")
    jwt_algorithm: str = setting("JWT_ALGORITHM", "HS256", _choice(("HS256", "HS384", "HS512"),
                                                                   "one of HS256, HS384, HS512"),
                                 "`HS256`, `HS384` or `HS512`", "general")
    jwt_leeway: float = setting(
        "JWT_LEEWAY", 10.0, _number(0.0), "seconds of clock skew tolerated on a token's `exp` (the issuer's clock "
        "may run ahead of ours); a live socket is closed at `exp` plus this", "general")
    #: demo mode: embedded defaults, a made-up JWT secret, demo data, /api/dev/token
    demo: bool = setting(
        "COUP_DEMO", False, _bool, "demo mode: embedded defaults, and a random `JWT_SECRET` when none is set; it "
        "also creates and seeds an empty database, keeps its made-up JWT secret in that database (so `coup token` "
        "can sign with it), and enables `POST /api/dev/token`; refused on a hosting platform or with PostgreSQL "
        "(\"Procfile deployment\")", "general")
    demo_anywhere: bool = setting(
        "COUP_DEMO_ANYWHERE", False, _bool, "`1` lets demo mode start on a hosting platform or with PostgreSQL: "
        "only for a public demo instance with no real users", "general")
    allowed_origins: tuple[str, ...] = setting(
        "COUP_ALLOWED_ORIGINS", (), _list, "comma-separated browser origins (`https://app.example.com`) allowed "
        "besides the server's own, for CORS and the WebSocket `Origin` check; `*` allows any", "general")
    ping_interval: float = setting("COUP_PING_INTERVAL", 25.0, _number(0.05), "seconds between Engine.IO pings",
                                   "general")
    ping_timeout: float = setting("COUP_PING_TIMEOUT", 20.0, _number(0.05),
                                  "seconds to wait for a pong before closing the connection", "general")
    max_payload: int = setting(
        "COUP_MAX_PAYLOAD", 1_000_000, _integer(1024), "largest message or polling body a client may send, in "
        "bytes (a compressed WebSocket message counts decompressed: a deflate bomb is refused with close code 1009)",
        "general")
    ws_compression: bool = setting(
        "COUP_WS_COMPRESSION", False, _bool, "`1`: accept a client's WebSocket `permessage-deflate` offer (RFC 7692; "
        "browsers and Node clients offer it). Off by default, as in Node's engine.io: it costs server CPU per "
        "message; docs/architecture.md, \"permessage-deflate\"", "general")
    ws_compression_threshold: int = setting(
        "COUP_WS_COMPRESSION_THRESHOLD", 1024, _integer(0), "with compression on, messages shorter than this many "
        "bytes are sent uncompressed (Node's `perMessageDeflate.threshold`)", "general")
    head_timeout: float = setting(
        "COUP_HEAD_TIMEOUT", 10.0, _number(0.05), "seconds a request head may take from its first byte (for a new "
        "connection, from its opening); past it the client gets `408` and the connection is closed", "general")
    keepalive_timeout: float = setting(
        "COUP_KEEPALIVE_TIMEOUT", 10.0, _number(0.05), "seconds an HTTP connection may stay idle between two "
        "requests before it is closed (Node's `keepAliveTimeout`). Behind a router that keeps its connections to "
        "the app open (AWS ALB, Heroku Router 2.0, nginx `keepalive`), set it above the router's idle timeout: "
        "otherwise the router may send a request on a connection this node is closing, and answer it `502`",
        "general")
    body_timeout: float = setting(
        "COUP_BODY_TIMEOUT", 30.0, _number(0.05), "seconds a request may take to send its body once its head is "
        "in; then the connection is closed", "general")
    trusted_proxies: tuple[str, ...] = setting(
        "COUP_TRUSTED_PROXIES", (), _proxies, "comma-separated proxy addresses or networks (`10.0.0.0/8`) whose "
        "`X-Forwarded-For` / `X-Real-Ip` / `X-Forwarded-Proto` are believed; `*` believes the immediate peer (a "
        "PaaS router every connection passes through). Anyone else's are ignored", "general",
        shown_default="none (on Heroku, where `DYNO` is set: `*`)", read=_proxies_or_heroku_router)
    max_connections_per_address: int = setting(
        "COUP_MAX_CONNECTIONS_PER_ADDRESS", 1000, _integer(1), "connections one client address may hold on this "
        "node (a NAT'd office shares one); beyond, `connect_error {code: \"TOO_MANY_CONNECTIONS\"}`", "general")
    recovery_window: float = setting(
        "COUP_RECOVERY_WINDOW", 120.0, _number(), "seconds a dropped client can come back with the events it "
        "missed (connection state recovery); `0` turns it off. With `REDIS_URL` the log and the sessions live in "
        "Redis: a client may come back on any node, also after its node crashed or restarted", "general")
    recovery_max_bytes: int = setting(
        "COUP_RECOVERY_MAX_BYTES", 32 * 1024 * 1024, _integer(64 * 1024), "bytes of broadcasts kept for recovery "
        "per namespace, in a cluster on one Redis per node and namespace (also at most 50,000 packets; one "
        "socket's broadcasts at most a quarter of either)",
        "general", shown_default="`33554432` (32 MiB)")
    presence_grace: float = setting(
        "COUP_PRESENCE_GRACE", 3.0, _number(), "seconds a user whose sockets all dropped stays online: one who is "
        "back within it (a restart, a network blip) is announced neither `user-offline`/`member-left` nor online "
        "again; `0` announces at once", "general")
    drain_timeout: float = setting(
        "COUP_DRAIN_TIMEOUT", 20.0, _number(), "seconds a node may take to drain on SIGTERM (hand its rooms over, "
        "let clients fetch their acks, close them, settle presence) before it exits anyway; platforms SIGKILL at "
        "30", "general")
    drain_spread: float = setting(
        "COUP_DRAIN_SPREAD", 1.0, _number(), "seconds over which a draining node closes its connections, so their "
        "clients do not all reconnect in the same millisecond", "general")
    log_level: str = setting(
        "COUP_LOG_LEVEL", "INFO", _choice(("DEBUG", "INFO", "WARNING", "ERROR"), "DEBUG, INFO, WARNING or ERROR",
                                          str.upper),
        "`DEBUG`, `INFO`, `WARNING` or `ERROR` (polling and SockJS transport requests and health checks are "
        "logged at `DEBUG` only)", "general")
    log_format: str = setting(
        "COUP_LOG_FORMAT", "text", _choice(("text", "json"), "text or json", str.lower),
        "`text`: logfmt-like lines on stderr (`time=... level=INFO logger=... node=... sid=... user=... "
        "msg=\"...\"`); `json`: one JSON object per line on stdout (`time`, `level`, `logger`, `node`, `sid` and "
        "`user` where known, `message`, `exception`; access lines add `method`, `path`, `status`, "
        "`duration_ms`, `remote_ip`)", "general")
    static_dir: str | None = setting(
        "COUP_STATIC_DIR", None, _text, "directory served at `/` (the repository's `static/`, which a wheel "
        "carries as `coup/static/`)", "general", shown_default="the demo page shipped with the package")
    #: modules whose ``setup(node)`` runs when a node is built (extra handlers, test apps)
    plugins: tuple[str, ...] = setting(
        "COUP_PLUGINS", (), _list, "comma-separated modules whose `setup(node)` runs when a node is built (extra "
        "handlers, test apps)", "general")
    # --- cluster
    redis_url: str | None = setting(
        "REDIS_URL", None, _redis_url, "`redis://[user:pass@]host:port/db`, `rediss://...` (TLS) or "
        "`unix:///path`; Redis Sentinel: `redis+sentinel://[user:pass@]host1:26379,host2:26379/mymaster[/db]` "
        "(`rediss+sentinel://`: TLS to the primary and the sentinels; `sentinel_username=`/`sentinel_password=` "
        "when the sentinels have their own password), every connection asks the sentinels for the primary "
        "([docs/cluster.md](docs/cluster.md#redis-sentinel)); Redis Cluster (Redis >= 7): "
        "`redis+cluster://[user:pass@]host1:6379,host2:6379` (any reachable nodes as seeds; "
        "`rediss+cluster://` for TLS), room channels on sharded pub/sub "
        "([docs/cluster.md](docs/cluster.md#redis-cluster)); TLS options in the query, as redis-py reads them: "
        "`ssl_cert_reqs=none\\|optional\\|required` (default `required`), `ssl_ca_certs=/path/ca.pem`, "
        "`ssl_certfile=`/`ssl_keyfile=` (a client certificate), `ssl_check_hostname=false`; they hold on every "
        "Redis connection of the node; an unknown option stops the start", "cluster",
        shown_default="none: one process", read=_redis_url_with_options)
    #: merged into redis_url by from_env; kept to say it was set
    redis_options: str | None = setting(
        "COUP_REDIS_OPTIONS", None, _text, "query options added to `REDIS_URL` (and winning over its own), e.g. "
        "`ssl_cert_reqs=none`: for a platform that owns `REDIS_URL` (Heroku's add-on sets it and rotates its "
        "password)", "cluster")
    node_id: str | None = setting(
        "COUP_NODE_ID", None, _name, "this node's name in the cluster (letters, digits, `_`, `-`); it also "
        "prefixes every Engine.IO session id", "cluster", shown_default="random")
    public_address: str | None = setting(
        "COUP_PUBLIC_ADDRESS", None, _address, "this node's address as shown in `GET /api/cluster`; nodes never "
        "connect to each other (requests for another node's session go through Redis)", "cluster",
        shown_default="the bound `host:port`")
    redis_prefix: str = setting(
        "COUP_REDIS_PREFIX", "coup", _name, "first part of every Redis key and channel, so several apps can share "
        "one Redis", "cluster")
    recovery_log_groups: int = setting(
        "COUP_RECOVERY_LOG_GROUPS", 1, _integer(1, 64), "Redis Cluster only: a namespace's rooms, recovery log "
        "and offsets are spread over this many slots (hence primaries) instead of one, best a multiple of the "
        "primaries (each gets as many); every node of a deployment "
        "must use the same value (changing it makes clients' offsets unknown, like a Redis restart); ignored on "
        "one Redis or Sentinel ([docs/cluster.md](docs/cluster.md#redis-cluster))", "cluster")
    room_leases: bool = setting(
        "COUP_ROOM_LEASES", True, _bool, "a room's commands run on the node that first needed the room (a lease "
        "in Redis, handed on when that node drains or dies) rather than on the consistent-hash ring's choice: "
        "fewer Redis round trips for rooms whose members share a node; `0`: the ring decides", "cluster")
    request_timeout: float = setting(
        "COUP_REQUEST_TIMEOUT", 5.0, _number(0.1), "seconds a question to every node (`fetch_sockets`, a remote "
        "join, leave or disconnect) waits for all of them, as the Node Redis adapter's `requestsTimeout`; past "
        "it what came is used (a stalled node's sockets left out)", "cluster")
    # --- domain
    service_token: Secret | None = setting(
        "COUP_SERVICE_TOKEN", None, _secret, "bearer token (at least 16 bytes, not guessable) trusted backends use "
        "for `POST /api/notifications`; it also guards `GET /api/cluster` (live nodes, ring epoch) and "
        "`GET /api/cluster/owner?room=study:1`", "domain", shown_default="none: service API off")
    database_url: str = setting(
        "DATABASE_URL", "sqlite:///coup.db", _database_url, "`sqlite:///relative.db`, "
        "`sqlite:////absolute/path.db`, or `postgresql://user:pass@host:5432/db`", "domain")
    db_workers: int = setting("COUP_DB_WORKERS", 4, _integer(1, 64),
                              "database threads (queries never run on the event loop)", "domain")
    db_prepare: bool = setting(
        "COUP_DB_PREPARE", True, _bool, "PostgreSQL: the chat message writer prepares its one-statement batch "
        "on the server once per connection; `0` behind PgBouncer in transaction or statement pooling mode (a "
        "prepared statement does not follow the client to its next server connection): the statement is then "
        "sent whole with each batch ([docs/domain.md](docs/domain.md#one-statement-per-batch-on-postgresql))",
        "domain")
    message_rate: float = setting(
        "COUP_MESSAGE_RATE", 5.0, _number(0.01), "chat messages per user, sustained per second; beyond that and "
        "the burst, `RATE_LIMITED` (HTTP 429)", "domain")
    message_burst: int = setting("COUP_MESSAGE_BURST", 20, _integer(1),
                                 "chat messages per user in a burst (see `COUP_MESSAGE_RATE`)", "domain")
    typing_interval: float = setting(
        "COUP_TYPING_INTERVAL", 1.0, _number(), "at most one `typing` broadcast per user and study in this many "
        "seconds", "domain")
    join_rate: float = setting(
        "COUP_JOIN_RATE", 2.0, _number(0.01), "`join-study` and `leave-study` per user (each announces to the "
        "whole room), sustained per second; beyond that and the burst, `RATE_LIMITED`", "domain")
    join_burst: int = setting("COUP_JOIN_BURST", 20, _integer(1),
                              "`join-study` and `leave-study` per user in a burst (see `COUP_JOIN_RATE`)", "domain")
    max_sockets_per_user: int = setting(
        "COUP_MAX_SOCKETS_PER_USER", 50, _integer(1), "sockets one user may hold on this node (tabs, devices); "
        "beyond, `connect_error {code: \"TOO_MANY_CONNECTIONS\"}`", "domain")
    membership_check_interval: float = setting(
        "COUP_MEMBERSHIP_CHECK_INTERVAL", 30.0, _number(0.05), "seconds between checks that the sockets in study "
        "rooms belong to ACTIVE members; a removed member gets `removed-from-study` and leaves the room (also at "
        "once on the room's next message or their `typing`)", "domain")
    # --- metrics
    metrics_token: Secret | None = setting(
        "COUP_METRICS_TOKEN", None, _long_secret(16), "serve `/metrics` on the main port to `Authorization: Bearer "
        "<token>` (at least 16 bytes); anything else gets 401", "metrics")
    metrics_port: int | None = setting(
        "COUP_METRICS_PORT", None, _integer(0, 65535), "serve `/metrics` on this port of `HOST` to anyone who "
        "reaches it: for a private network the scraper shares with the nodes (firewall it otherwise); `0` picks "
        "a free port", "metrics")
    # --- admin
    admin_user: str | None = setting("COUP_ADMIN_USER", None, _text, "the user name the UI signs in with", "admin",
                                     shown_default="none: off")
    admin_password_hash: Secret | None = setting(
        "COUP_ADMIN_PASSWORD", None, _admin_password, "the **bcrypt hash** of its password (`coup hash-password` "
        "prints one; the plain password is refused)", "admin", shown_default="none: off")
    admin_readonly: bool = setting(
        "COUP_ADMIN_READONLY", True, _bool, "`0` lets the UI also emit events, make sockets join or leave rooms, "
        "and disconnect them", "admin")
    # --- not read from the environment
    #: True when demo mode made the JWT secret up; the domain then keeps one secret stable
    #: in the demo database, so a separate `coup token` process signs tokens it accepts
    jwt_secret_generated: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for variable in VARIABLES:
            if (read := variable.raw(env)) is not None:
                values[variable.field] = variable.parse(*read)
        values.update(overrides)
        return cls(**values).validated()

    def refuse_unsafe_demo(self, environ: Mapping[str, str] | None = None) -> None:
        """Refuse to serve in demo mode where real users may be (`coup serve` calls this).

        Demo mode answers ``POST /api/dev/token`` with a token for ANY user id and seeds
        demo data into an empty database, so it must never run on a production deploy by
        accident (a ``COUP_DEMO=1`` copied into the platform's config, ``--demo`` left in a
        Procfile). It is refused when the database is PostgreSQL (SQLite files are what
        demos use) or when a variable only a hosting platform sets is present, unless
        ``COUP_DEMO_ANYWHERE=1`` says this deploy is a public demo on purpose.
        """
        if not self.demo or self.demo_anywhere:
            return
        env = os.environ if environ is None else environ
        fix = "unset COUP_DEMO and --demo, or set COUP_DEMO_ANYWHERE=1 if this deploy is a public demo on purpose"
        if database_kind(self.database_url) != "sqlite":
            raise ConfigError(f"COUP_DEMO / --demo refused: DATABASE_URL is a PostgreSQL database, where demo mode "
                              f"would hand out tokens for its users (POST /api/dev/token); {fix}")
        marker = next((name for name in PLATFORM_MARKERS if env.get(name)), None)
        if marker is not None:
            raise ConfigError(f"COUP_DEMO / --demo refused: {marker} is set, so this runs on a hosting platform, "
                              f"where demo mode would hand out tokens for any user (POST /api/dev/token); {fix}")

    def validated(self) -> Settings:
        """Check cross-field rules; in demo mode, make up what a demo may lack."""
        settings = self
        if settings.redis_options is not None and settings.redis_url is None:
            raise ConfigError("COUP_REDIS_OPTIONS is set but REDIS_URL is not: the options belong to a Redis URL")
        if settings.jwt_secret is None:
            if not settings.demo:
                raise ConfigError(
                    f"JWT_SECRET is required (at least {MIN_SECRET_BYTES} bytes) unless COUP_DEMO=1 / --demo")
            settings = replace(settings, jwt_secret=Secret(secrets.token_urlsafe(48)), jwt_secret_generated=True)
        assert settings.jwt_secret is not None
        secret = settings.jwt_secret.reveal()
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(f"JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes; {MAKE_A_SECRET}")
        if guessable(secret):
            raise ConfigError(f"JWT_SECRET is too easy to guess (few distinct characters or a repeated "
                              f"pattern); {MAKE_A_SECRET}")
        if settings.service_token is not None:
            token = settings.service_token.reveal()
            if len(token.encode()) < MIN_SERVICE_TOKEN_BYTES:
                raise ConfigError(f"COUP_SERVICE_TOKEN must be at least {MIN_SERVICE_TOKEN_BYTES} bytes; "
                                  f"{MAKE_A_SECRET}")
            if guessable(token):
                raise ConfigError(f"COUP_SERVICE_TOKEN is too easy to guess (few distinct characters or a "
                                  f"repeated pattern); {MAKE_A_SECRET}")
        if (settings.admin_user is None) != (settings.admin_password_hash is None):
            raise ConfigError("COUP_ADMIN_USER and COUP_ADMIN_PASSWORD must be set together (or neither)")
        return settings

    @property
    def admin_enabled(self) -> bool:
        return self.admin_user is not None and self.admin_password_hash is not None

    @property
    def counts_metrics(self) -> bool:
        """Anything reads the counters: `/metrics` on some port, or the admin view."""
        return self.metrics_port is not None or self.metrics_token is not None or self.admin_enabled

    def __repr__(self) -> str:
        """Every field, with secrets hidden and URLs without their credentials (`url_for_logs`)."""
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _URL_FIELDS and isinstance(value, str):
                value = url_for_logs(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"


#: the settings table: every environment variable, in README order (rows are the `setting(...)` fields)
VARIABLES = tuple(replace(f.metadata["variable"], field=f.name) for f in fields(Settings) if "variable" in f.metadata)


def _shown_default(variable: Variable) -> str:
    if variable.shown_default is not None:
        return variable.shown_default
    default = next(f.default for f in fields(Settings) if f.name == variable.field)
    if default is None or default == ():
        return "none"
    if isinstance(default, bool):
        return f"`{int(default)}`"
    if isinstance(default, float) and default.is_integer():
        default = int(default)
    return f"`{default}`"


def settings_table(section: str) -> str:
    """The README's markdown table of one section's variables."""
    rows = [f"| `{v.name}` | {_shown_default(v)} | {v.help} |" for v in VARIABLES if v.section == section]
    return "\n".join(["| variable | default | meaning |", "|---|---|---|", *rows])


def _markers(section: str) -> tuple[str, str]:
    return f"<!-- settings-table {section} -->", f"<!-- /settings-table {section} -->"


def readme_with_tables(readme: str) -> str:
    """`readme` with the table between each section's markers made from VARIABLES."""
    for section in SECTIONS:
        start, end = _markers(section)
        head, found, rest = readme.partition(start + "\n")
        _, found_end, tail = rest.partition(end)
        if not found or not found_end:
            raise ValueError(f"README has no {start} ... {end} markers")
        readme = f"{head}{start}\n{settings_table(section)}\n{end}{tail}"
    return readme


def settings_help() -> str:
    """The variables for `coup serve --help`: name, default and meaning, by section, without markdown."""
    import textwrap

    def plain(text: str) -> str:
        return text.replace("`", "").replace("**", "").replace("\\|", "|")

    lines = []
    for section, heading in SECTIONS.items():
        lines.append(f"{heading} (environment variables):" if section == "general" else f"{heading}:")
        for v in (v for v in VARIABLES if v.section == section):
            lines.append(f"  {v.name} (default {plain(_shown_default(v))})")
            lines.extend(textwrap.wrap(plain(v.help), 100, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines)
