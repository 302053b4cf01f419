"""Settings come from environment variables; a bad value stops the start with a message naming it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from coup.config import ConfigError, Settings

SECRET = "tV3q-8kLmZ0pXw2rYc7nB4hJ6dF1gS9a"  # 32 bytes that do not look guessable

BAD = [
    ({"PORT": "eighty"}, "PORT must be an integer"),
    ({"PORT": "70000"}, "PORT must be at most 65535"),
    ({"COUP_DEMO": "maybe"}, "COUP_DEMO must be a boolean"),
    ({"REDIS_URL": "localhost:6379"}, "REDIS_URL must start with redis://"),
    ({"JWT_ALGORITHM": "none"}, "JWT_ALGORITHM must be one of"),
    ({"JWT_ALGORITHM": "RS256"}, "JWT_ALGORITHM must be one of"),
    ({"JWT_SECRET": "short"}, "JWT_SECRET must be at least 32 bytes"),
    ({"COUP_SERVICE_TOKEN": "tiny"}, "COUP_SERVICE_TOKEN must be at least 16 bytes"),
    ({"COUP_SERVICE_TOKEN": "a" * 16}, "COUP_SERVICE_TOKEN is too easy to guess.*secrets.token_urlsafe"),
    ({"JWT_SECRET": "a" * 32}, "JWT_SECRET is too easy to guess.*secrets.token_urlsafe"),
    ({"JWT_SECRET": "0123456789abcdef" * 2}, "JWT_SECRET is too easy to guess"),
    ({"COUP_TRUSTED_PROXIES": "10.0.0.0/8,proxy.local"}, "COUP_TRUSTED_PROXIES must list IP addresses"),
    ({"COUP_BODY_TIMEOUT": "0"}, "COUP_BODY_TIMEOUT must be at least"),
    ({"COUP_MAX_SOCKETS_PER_USER": "0"}, "COUP_MAX_SOCKETS_PER_USER must be at least 1"),
    ({"COUP_MAX_CONNECTIONS_PER_ADDRESS": "many"}, "COUP_MAX_CONNECTIONS_PER_ADDRESS must be an integer"),
    ({"COUP_JOIN_BURST": "0"}, "COUP_JOIN_BURST must be at least 1"),
    ({"COUP_MEMBERSHIP_CHECK_INTERVAL": "-1"}, "COUP_MEMBERSHIP_CHECK_INTERVAL must be at least"),
    ({"COUP_RECOVERY_MAX_BYTES": "10"}, "COUP_RECOVERY_MAX_BYTES must be at least"),
    ({"COUP_NODE_ID": "node one"}, "COUP_NODE_ID may hold only"),
    ({"COUP_PING_INTERVAL": "0"}, "COUP_PING_INTERVAL must be at least"),
    ({"COUP_PING_TIMEOUT": "soon"}, "COUP_PING_TIMEOUT must be a number"),
    ({"COUP_MAX_PAYLOAD": "10"}, "COUP_MAX_PAYLOAD must be at least 1024"),
    ({"COUP_HEAD_TIMEOUT": "-1"}, "COUP_HEAD_TIMEOUT must be at least"),
    ({"COUP_LOG_LEVEL": "loud"}, "COUP_LOG_LEVEL must be"),
    ({"COUP_DB_WORKERS": "0"}, "COUP_DB_WORKERS must be at least 1"),
]


@pytest.mark.parametrize(("env", "message"), BAD, ids=[next(iter(env)) + "=" + env[next(iter(env))] for env, _ in BAD])
def test_bad_value_names_its_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({"JWT_SECRET": SECRET, **env})


def test_no_secret_outside_demo_mode_is_refused() -> None:
    with pytest.raises(ConfigError, match="JWT_SECRET is required"):
        Settings.from_env({})


def test_good_values_are_read() -> None:
    settings = Settings.from_env({
        "JWT_SECRET": SECRET, "PORT": "9001", "COUP_PING_INTERVAL": "5", "COUP_HEAD_TIMEOUT": "2.5",
        "COUP_ALLOWED_ORIGINS": "https://a.example, https://b.example", "COUP_MAX_PAYLOAD": "2048",
    })
    assert (settings.port, settings.ping_interval, settings.head_timeout) == (9001, 5.0, 2.5)
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.max_payload == 2048
    assert SECRET not in repr(settings)  # the secret hides itself


def test_new_limits_are_read_and_heroku_trusts_its_router() -> None:
    settings = Settings.from_env({
        "JWT_SECRET": SECRET, "COUP_BODY_TIMEOUT": "12", "COUP_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1",
        "COUP_MAX_SOCKETS_PER_USER": "5", "COUP_MAX_CONNECTIONS_PER_ADDRESS": "7", "COUP_JOIN_RATE": "0.5",
        "COUP_JOIN_BURST": "3", "COUP_MEMBERSHIP_CHECK_INTERVAL": "2", "COUP_RECOVERY_MAX_BYTES": "100000",
    })
    assert (settings.body_timeout, settings.trusted_proxies) == (12.0, ("10.0.0.0/8", "127.0.0.1"))
    assert (settings.max_sockets_per_user, settings.max_connections_per_address) == (5, 7)
    assert (settings.join_rate, settings.join_burst, settings.membership_check_interval) == (0.5, 3, 2.0)
    assert settings.recovery_max_bytes == 100_000
    assert Settings.from_env({"JWT_SECRET": SECRET}).trusted_proxies == ()
    assert Settings.from_env({"JWT_SECRET": SECRET, "DYNO": "web.1"}).trusted_proxies == ("*",)


def test_passwords_in_urls_never_show() -> None:
    settings = Settings.from_env({"JWT_SECRET": SECRET, "DATABASE_URL": "postgresql://coup:hunter2pw@db:5432/coup",
                                  "REDIS_URL": "rediss://:redispass99@cache:6380/0"})
    shown = repr(settings)
    assert "hunter2pw" not in shown and "redispass99" not in shown
    assert "postgresql://coup:***@db:5432/coup" in shown and "rediss://:***@cache:6380/0" in shown
    assert settings.database_url.endswith("hunter2pw@db:5432/coup")  # the value itself is intact


def test_coup_serve_exits_with_the_message() -> None:
    result = subprocess.run([sys.executable, "-m", "coup", "serve"], capture_output=True, text=True, timeout=30,
                            env={"PATH": "/usr/bin:/bin", "JWT_SECRET": SECRET, "COUP_PING_TIMEOUT": "soon"})
    assert result.returncode != 0
    assert "COUP_PING_TIMEOUT must be a number" in result.stderr
