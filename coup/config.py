"""Settings from environment variables (12-factor), validated once at start.

`Settings.from_env(environ)` takes the mapping to read, so tests pass their own. A bad
value raises `ConfigError` naming the variable; secrets hide themselves in `repr`.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import secrets
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any
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


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _proxies(raw: str) -> tuple[str, ...]:
    import ipaddress

    items = _list(raw)
    for item in items:
        if item == "*":
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(f"COUP_TRUSTED_PROXIES must list IP addresses or networks (10.0.0.0/8) or be *, "
                              f"got {item!r}") from None
    return items


#: fields whose values may hold a password: shown with it hidden
_URL_FIELDS = ("database_url", "redis_url")


@dataclass(frozen=True, repr=False)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    #: demo mode: embedded defaults, a made-up JWT secret, demo data, /api/dev/token
    demo: bool = False
    #: let demo mode start on a hosting platform or with PostgreSQL (a public demo instance)
    demo_anywhere: bool = False
    database_url: str = "sqlite:///coup.db"
    redis_url: str | None = None
    jwt_secret: Secret | None = None
    jwt_algorithm: str = "HS256"
    service_token: Secret | None = None
    #: browser origins allowed besides the server's own (CORS and WebSocket Origin)
    allowed_origins: tuple[str, ...] = ()
    node_id: str | None = None
    #: address other nodes use to reach this one (cluster); defaults to host:port
    public_address: str | None = None
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    max_payload: int = 1_000_000
    #: accept permessage-deflate on WebSocket (off by default, as in Node's engine.io; docs/architecture.md)
    ws_compression: bool = False
    #: with compression on, messages shorter than this many bytes are sent uncompressed
    ws_compression_threshold: int = 1024
    #: seconds a connection may take to send a request head (and may stay idle between requests)
    head_timeout: float = 10.0
    #: seconds a request may take to send its body once its head is in; then the connection is closed
    body_timeout: float = 30.0
    #: peers whose forwarded headers (X-Forwarded-For, X-Real-Ip, X-Forwarded-Proto) are believed:
    #: IP addresses or networks, or "*" (the immediate peer, whoever it is: a PaaS router)
    trusted_proxies: tuple[str, ...] = ()
    #: Socket.IO connections one client address may hold on this node
    max_connections_per_address: int = 1000
    #: sockets one user may hold on this node (tabs, devices)
    max_sockets_per_user: int = 50
    #: connection state recovery window in seconds; 0 turns recovery off
    recovery_window: float = 120.0
    #: bytes of broadcasts kept for recovery per namespace
    recovery_max_bytes: int = 32 * 1024 * 1024
    log_level: str = "INFO"
    #: "text" (logfmt-like, on stderr) or "json" (one object per line, on stdout)
    log_format: str = "text"
    #: serve `GET /metrics` on this port of `host`, without authentication (a private network)
    metrics_port: int | None = None
    #: serve `GET /metrics` on the main port to `Authorization: Bearer <token>`
    metrics_token: Secret | None = None
    #: the Socket.IO Admin UI's `/admin` namespace: user name and bcrypt hash of the password
    admin_user: str | None = None
    admin_password_hash: Secret | None = None
    #: the admin namespace only shows (False: it may also emit, join, leave and disconnect)
    admin_readonly: bool = True
    static_dir: str | None = None
    #: cluster: every Redis key and channel starts with this (several apps may share a Redis)
    redis_prefix: str = "coup"
    #: modules whose ``setup(node)`` runs when a node is built (extra handlers, test apps)
    plugins: tuple[str, ...] = ()
    #: True when demo mode made the JWT secret up; the domain then keeps one secret stable
    #: in the demo database, so a separate `coup token` process signs tokens it accepts
    jwt_secret_generated: bool = False
    #: seconds of clock skew tolerated on a token's `exp`
    jwt_leeway: float = 10.0
    #: threads running database queries (queries never run on the IOLoop)
    db_workers: int = 4
    #: chat messages one user may send: sustained per second, and in a burst
    message_rate: float = 5.0
    message_burst: int = 20
    #: at most one `typing` broadcast per user and study in this many seconds
    typing_interval: float = 1.0
    #: join-study / leave-study per user: sustained per second, and in a burst
    join_rate: float = 2.0
    join_burst: int = 20
    #: seconds between checks that the sockets in each study room still belong to ACTIVE members
    membership_check_interval: float = 30.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}

        def get(name: str) -> str | None:
            raw = env.get(name)
            return raw if raw is not None and raw.strip() != "" else None

        if (raw := get("HOST")) is not None:
            values["host"] = raw.strip()
        if (raw := get("PORT")) is not None:
            values["port"] = _int("PORT", raw, minimum=0, maximum=65535)
        if (raw := get("COUP_DEMO")) is not None:
            values["demo"] = _bool("COUP_DEMO", raw)
        if (raw := get("COUP_DEMO_ANYWHERE")) is not None:
            values["demo_anywhere"] = _bool("COUP_DEMO_ANYWHERE", raw)
        if (raw := get("DATABASE_URL")) is not None:
            values["database_url"] = _database_url("DATABASE_URL", raw)
        if (raw := get("REDIS_URL")) is not None:
            if (options := get("COUP_REDIS_OPTIONS")) is not None:
                values["redis_url"] = _redis_url("REDIS_URL (with COUP_REDIS_OPTIONS)", with_options(raw, options))
            else:
                values["redis_url"] = _redis_url("REDIS_URL", raw)
        elif get("COUP_REDIS_OPTIONS") is not None:
            raise ConfigError("COUP_REDIS_OPTIONS is set but REDIS_URL is not: the options belong to a Redis URL")
        if (raw := get("JWT_SECRET")) is not None:
            values["jwt_secret"] = Secret(raw)
        if (raw := get("JWT_ALGORITHM")) is not None:
            if raw.strip() not in ("HS256", "HS384", "HS512"):
                raise ConfigError(f"JWT_ALGORITHM must be one of HS256, HS384, HS512, got {raw!r}")
            values["jwt_algorithm"] = raw.strip()
        if (raw := get("COUP_SERVICE_TOKEN")) is not None:
            values["service_token"] = Secret(raw)
        if (raw := get("COUP_ALLOWED_ORIGINS")) is not None:
            values["allowed_origins"] = _list(raw)
        if (raw := get("COUP_NODE_ID")) is not None:
            values["node_id"] = _name("COUP_NODE_ID", raw)
        if (raw := get("COUP_REDIS_PREFIX")) is not None:
            values["redis_prefix"] = _name("COUP_REDIS_PREFIX", raw)
        if (raw := get("COUP_PLUGINS")) is not None:
            values["plugins"] = _list(raw)
        if (raw := get("COUP_PUBLIC_ADDRESS")) is not None:
            values["public_address"] = _address("COUP_PUBLIC_ADDRESS", raw)
        if (raw := get("COUP_PING_INTERVAL")) is not None:
            values["ping_interval"] = _float("COUP_PING_INTERVAL", raw, minimum=0.05)
        if (raw := get("COUP_PING_TIMEOUT")) is not None:
            values["ping_timeout"] = _float("COUP_PING_TIMEOUT", raw, minimum=0.05)
        if (raw := get("COUP_MAX_PAYLOAD")) is not None:
            values["max_payload"] = _int("COUP_MAX_PAYLOAD", raw, minimum=1024)
        if (raw := get("COUP_WS_COMPRESSION")) is not None:
            values["ws_compression"] = _bool("COUP_WS_COMPRESSION", raw)
        if (raw := get("COUP_WS_COMPRESSION_THRESHOLD")) is not None:
            values["ws_compression_threshold"] = _int("COUP_WS_COMPRESSION_THRESHOLD", raw, minimum=0)
        if (raw := get("COUP_HEAD_TIMEOUT")) is not None:
            values["head_timeout"] = _float("COUP_HEAD_TIMEOUT", raw, minimum=0.05)
        if (raw := get("COUP_RECOVERY_WINDOW")) is not None:
            values["recovery_window"] = _float("COUP_RECOVERY_WINDOW", raw)
        if (raw := get("COUP_RECOVERY_MAX_BYTES")) is not None:
            values["recovery_max_bytes"] = _int("COUP_RECOVERY_MAX_BYTES", raw, minimum=64 * 1024)
        if (raw := get("COUP_BODY_TIMEOUT")) is not None:
            values["body_timeout"] = _float("COUP_BODY_TIMEOUT", raw, minimum=0.05)
        if (raw := get("COUP_TRUSTED_PROXIES")) is not None:
            values["trusted_proxies"] = _proxies(raw)
        elif env.get("DYNO"):  # Heroku: dynos are reached only through its router, which sets X-Forwarded-For
            values["trusted_proxies"] = ("*",)
        if (raw := get("COUP_MAX_CONNECTIONS_PER_ADDRESS")) is not None:
            values["max_connections_per_address"] = _int("COUP_MAX_CONNECTIONS_PER_ADDRESS", raw, minimum=1)
        if (raw := get("COUP_MAX_SOCKETS_PER_USER")) is not None:
            values["max_sockets_per_user"] = _int("COUP_MAX_SOCKETS_PER_USER", raw, minimum=1)
        if (raw := get("COUP_JOIN_RATE")) is not None:
            values["join_rate"] = _float("COUP_JOIN_RATE", raw, minimum=0.01)
        if (raw := get("COUP_JOIN_BURST")) is not None:
            values["join_burst"] = _int("COUP_JOIN_BURST", raw, minimum=1)
        if (raw := get("COUP_MEMBERSHIP_CHECK_INTERVAL")) is not None:
            values["membership_check_interval"] = _float("COUP_MEMBERSHIP_CHECK_INTERVAL", raw, minimum=0.05)
        if (raw := get("COUP_LOG_LEVEL")) is not None:
            level = raw.strip().upper()
            if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
                raise ConfigError(f"COUP_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {raw!r}")
            values["log_level"] = level
        if (raw := get("COUP_LOG_FORMAT")) is not None:
            if raw.strip().lower() not in ("text", "json"):
                raise ConfigError(f"COUP_LOG_FORMAT must be text or json, got {raw!r}")
            values["log_format"] = raw.strip().lower()
        if (raw := get("COUP_METRICS_PORT")) is not None:
            values["metrics_port"] = _int("COUP_METRICS_PORT", raw, minimum=0, maximum=65535)
        if (raw := get("COUP_METRICS_TOKEN")) is not None:
            if len(raw.encode()) < 16:
                raise ConfigError("COUP_METRICS_TOKEN must be at least 16 bytes")
            values["metrics_token"] = Secret(raw)
        if (raw := get("COUP_ADMIN_USER")) is not None:
            values["admin_user"] = raw.strip()
        if (raw := get("COUP_ADMIN_PASSWORD")) is not None:
            values["admin_password_hash"] = Secret(_bcrypt_hash("COUP_ADMIN_PASSWORD", raw.strip()))
        if (raw := get("COUP_ADMIN_READONLY")) is not None:
            values["admin_readonly"] = _bool("COUP_ADMIN_READONLY", raw)
        if (raw := get("COUP_STATIC_DIR")) is not None:
            values["static_dir"] = raw.strip()
        if (raw := get("COUP_DB_WORKERS")) is not None:
            values["db_workers"] = _int("COUP_DB_WORKERS", raw, minimum=1, maximum=64)
        if (raw := get("COUP_MESSAGE_RATE")) is not None:
            values["message_rate"] = _float("COUP_MESSAGE_RATE", raw, minimum=0.01)
        if (raw := get("COUP_MESSAGE_BURST")) is not None:
            values["message_burst"] = _int("COUP_MESSAGE_BURST", raw, minimum=1)
        if (raw := get("COUP_TYPING_INTERVAL")) is not None:
            values["typing_interval"] = _float("COUP_TYPING_INTERVAL", raw)
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
