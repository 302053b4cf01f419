"""Settings come from environment variables; a bad value stops the start with a message naming it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from coup.config import ConfigError, Settings

SECRET = "s" * 32

BAD = [
    ({"PORT": "eighty"}, "PORT must be an integer"),
    ({"PORT": "70000"}, "PORT must be at most 65535"),
    ({"COUP_DEMO": "maybe"}, "COUP_DEMO must be a boolean"),
    ({"REDIS_URL": "localhost:6379"}, "REDIS_URL must start with redis://"),
    ({"JWT_ALGORITHM": "none"}, "JWT_ALGORITHM must be one of"),
    ({"JWT_ALGORITHM": "RS256"}, "JWT_ALGORITHM must be one of"),
    ({"JWT_SECRET": "short"}, "JWT_SECRET must be at least 32 bytes"),
    ({"COUP_SERVICE_TOKEN": "tiny"}, "COUP_SERVICE_TOKEN must be at least 16 bytes"),
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
    assert "s" * 32 not in repr(settings)  # the secret hides itself


def test_coup_serve_exits_with_the_message() -> None:
    result = subprocess.run([sys.executable, "-m", "coup", "serve"], capture_output=True, text=True, timeout=30,
                            env={"PATH": "/usr/bin:/bin", "JWT_SECRET": SECRET, "COUP_PING_TIMEOUT": "soon"})
    assert result.returncode != 0
    assert "COUP_PING_TIMEOUT must be a number" in result.stderr
