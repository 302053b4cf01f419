"""Settings come from environment variables; a bad value stops the start with a message naming it."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from coup.config import VARIABLES, ConfigError, Settings, readme_with_tables
from coup.redis_endpoint import RedisTLS, redis_endpoint

SECRET = "tV3q-8kLmZ0pXw2rYc7nB4hJ6dF1gS9a"  # 32 bytes that do not look guessable
ROOT = Path(__file__).resolve().parent.parent

BAD = [
    ({"PORT": "eighty"}, "PORT must be an integer"),
    ({"PORT": "70000"}, "PORT must be at most 65535"),
    ({"COUP_DEMO": "maybe"}, "COUP_DEMO must be a boolean"),
    ({"REDIS_URL": "localhost:6379"}, "REDIS_URL must start with redis://"),
    ({"REDIS_URL": "http://h:6379"},
     "REDIS_URL must start with redis://, rediss:// .TLS., unix://, redis\\+sentinel://, rediss\\+sentinel://, "
     "redis\\+cluster:// or rediss\\+cluster://, not 'http:...'"),
    ({"REDIS_URL": "redis://h:port"}, "REDIS_URL has a port that is not a number"),
    ({"REDIS_URL": "redis://h:6379/zero"}, "REDIS_URL has a database number that is not an integer"),
    ({"REDIS_URL": "redis://h:6379?ssl_cert_reqs=none"}, "REDIS_URL sets ssl_cert_reqs, which only a rediss://"),
    ({"REDIS_URL": "rediss://h:6379?ssl_cert_reqs=never"}, "REDIS_URL has ssl_cert_reqs='never'; use none, optional"),
    ({"REDIS_URL": "rediss://h:6379?ssl_cert_req=none"}, "REDIS_URL has an unknown option 'ssl_cert_req'"),
    ({"REDIS_URL": "rediss://h:6379?ssl_check_hostname=maybe"}, "REDIS_URL has ssl_check_hostname='maybe'"),
    ({"REDIS_URL": "rediss://h:6379?ssl_ca_certs=/no/such/ca.pem"}, "REDIS_URL cannot load ssl_ca_certs '/no/such/"),
    ({"REDIS_URL": "rediss://h:6379?ssl_keyfile=/k.pem"}, "REDIS_URL sets ssl_keyfile without ssl_certfile"),
    ({"REDIS_URL": "unix://"}, "REDIS_URL has no socket path"),
    ({"DATABASE_URL": "mysql://u:p@h/db"}, "DATABASE_URL must be sqlite:///.*, not 'mysql:...'"),
    ({"DATABASE_URL": "coup.db"}, "DATABASE_URL must be sqlite:///file.db"),
    ({"COUP_PUBLIC_ADDRESS": "10.0.0.5"}, "COUP_PUBLIC_ADDRESS must be host:port"),
    ({"COUP_PUBLIC_ADDRESS": "https://app.example.com"}, "COUP_PUBLIC_ADDRESS must be host:port"),
    ({"COUP_PUBLIC_ADDRESS": "10.0.0.5:http"}, "COUP_PUBLIC_ADDRESS must end in a port from 1 to 65535"),
    ({"COUP_PUBLIC_ADDRESS": "10.0.0.5:0"}, "COUP_PUBLIC_ADDRESS must end in a port from 1 to 65535"),
    ({"COUP_PUBLIC_ADDRESS": "fd00::5:8000"}, "COUP_PUBLIC_ADDRESS must be host:port"),
    ({"COUP_DEMO_ANYWHERE": "sure"}, "COUP_DEMO_ANYWHERE must be a boolean"),
    ({"COUP_REDIS_OPTIONS": "ssl_cert_reqs=none"}, "COUP_REDIS_OPTIONS is set but REDIS_URL is not"),
    ({"REDIS_URL": "rediss://h", "COUP_REDIS_OPTIONS": "ssl_cert_reqs=nope"},
     r"REDIS_URL \(with COUP_REDIS_OPTIONS\) has ssl_cert_reqs='nope'"),
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
    ({"COUP_LOG_FORMAT": "xml"}, "COUP_LOG_FORMAT must be text or json, got 'xml'"),
    ({"COUP_METRICS_TOKEN": "short"}, "COUP_METRICS_TOKEN must be at least 16 bytes"),
    ({"COUP_METRICS_PORT": "65536"}, "COUP_METRICS_PORT must be at most 65535"),
    ({"COUP_ADMIN_USER": "ops", "COUP_ADMIN_PASSWORD": "hunter22"}, "COUP_ADMIN_PASSWORD must be a bcrypt hash"),
    ({"COUP_ADMIN_USER": "ops"}, "COUP_ADMIN_USER and COUP_ADMIN_PASSWORD must be set together"),
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
    assert "postgresql://db:5432/coup" in shown and "rediss://cache:6380/0" in shown
    assert settings.database_url.endswith("hunter2pw@db:5432/coup")  # the value itself is intact


def test_good_urls_and_addresses_are_read() -> None:
    settings = Settings.from_env({
        "JWT_SECRET": SECRET, "REDIS_URL": "rediss://default:p%40ss@redis.example:6380/2?ssl_cert_reqs=none",
        "DATABASE_URL": "postgres://u:p@db.example:5432/app", "COUP_PUBLIC_ADDRESS": "[fd00::5]:8000",
    })
    assert settings.redis_url == "rediss://default:p%40ss@redis.example:6380/2?ssl_cert_reqs=none"
    assert settings.public_address == "[fd00::5]:8000"
    assert Settings.from_env({"JWT_SECRET": SECRET, "COUP_PUBLIC_ADDRESS": "10.0.0.5:8000"}).public_address \
        == "10.0.0.5:8000"


def test_redis_options_come_from_their_own_variable_where_the_platform_owns_redis_url() -> None:
    """Heroku's add-on sets REDIS_URL (and rotates its password); the TLS option comes from elsewhere."""
    settings = Settings.from_env({"JWT_SECRET": SECRET, "REDIS_URL": "rediss://:p4ss@ec2-1-2-3-4.example:25580",
                                  "COUP_REDIS_OPTIONS": "ssl_cert_reqs=none"})
    assert settings.redis_url == "rediss://:p4ss@ec2-1-2-3-4.example:25580?ssl_cert_reqs=none"
    both = Settings.from_env({"JWT_SECRET": SECRET, "REDIS_URL": "rediss://h:6380/1?ssl_cert_reqs=required",
                              "COUP_REDIS_OPTIONS": "?ssl_cert_reqs=none"})
    assert redis_endpoint(both.redis_url or "").tls == RedisTLS(cert_reqs=ssl.CERT_NONE)  # the variable wins


def run_serve(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`coup serve` as a user starts it; it must stop by itself (a bad setting) well within the timeout."""
    return subprocess.run([sys.executable, "-m", "coup", "serve", *args], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "JWT_SECRET": SECRET, **env})


def test_coup_serve_exits_with_the_message() -> None:
    result = run_serve(COUP_PING_TIMEOUT="soon")
    assert result.returncode != 0
    assert "COUP_PING_TIMEOUT must be a number" in result.stderr


@pytest.mark.parametrize(("env", "message"), [
    ({"COUP_PUBLIC_ADDRESS": "10.0.0.5"}, "COUP_PUBLIC_ADDRESS must be host:port (e.g. 10.0.0.5:8000"),
    ({"DATABASE_URL": "mysql://u:secret@h/db"}, "DATABASE_URL must be sqlite:///file.db or postgresql://"),
    ({"REDIS_URL": "rediss://u:secret@h:6380?ssl_cert_reqs=off"}, "REDIS_URL has ssl_cert_reqs='off'"),
    ({"REDIS_URL": "rediss://u:secret@h:6380?ssl_ca_certs=/no/ca.pem"}, "REDIS_URL cannot load ssl_ca_certs"),
    ({"REDIS_URL": "memcached://u:secret@h:11211"}, "REDIS_URL must start with redis://"),
], ids=["public-address-without-port", "database-scheme", "redis-tls-option", "redis-ca-file", "redis-scheme"])
def test_misconfiguration_stops_coup_serve_with_one_line_naming_the_variable(env: dict[str, str],
                                                                              message: str) -> None:
    result = run_serve(**env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("coup: configuration error: ") and len(result.stderr.splitlines()) == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr and "secret" not in result.stderr  # no password echoed back


@pytest.mark.parametrize("env", [
    {"DYNO": "web.1"}, {"FLY_APP_NAME": "coup"}, {"RENDER": "true"},
    {"DATABASE_URL": "postgresql://u:p@127.0.0.1:1/db"},
], ids=["heroku", "fly", "render", "postgresql"])
def test_demo_mode_is_refused_where_a_production_deploy_runs(env: dict[str, str], tmp_path: Path) -> None:
    """Demo mode hands out a token for any user: a platform or a PostgreSQL database refuses it."""
    result = subprocess.run([sys.executable, "-m", "coup", "serve", "--demo", "--port", "0"], capture_output=True,
                            text=True, timeout=30, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", **env})
    assert result.returncode == 2, result.stderr
    assert "coup: configuration error: COUP_DEMO / --demo refused" in result.stderr
    assert "COUP_DEMO_ANYWHERE=1" in result.stderr
    assert not list(tmp_path.iterdir()), "nothing (no demo database) may be created before refusing"


def test_demo_mode_on_a_platform_only_when_asked_for_by_name() -> None:
    platform = {"DYNO": "web.1"}
    demo = Settings.from_env({"COUP_DEMO": "1"})
    with pytest.raises(ConfigError, match="DYNO is set"):
        demo.refuse_unsafe_demo(platform)
    demo.refuse_unsafe_demo({})  # a laptop
    Settings.from_env({"COUP_DEMO": "1", "COUP_DEMO_ANYWHERE": "1"}).refuse_unsafe_demo(platform)
    Settings.from_env({"JWT_SECRET": SECRET}).refuse_unsafe_demo(platform)  # not a demo: nothing to refuse


def test_the_procfile_never_starts_demo_mode() -> None:
    procfile = (ROOT / "Procfile").read_text()
    assert "--demo" not in procfile and "COUP_DEMO" not in procfile


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["initdb"], ["migrate"]])
def test_an_unreachable_database_stops_the_start_with_its_variable_not_a_traceback(command: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "coup", *command], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "JWT_SECRET": SECRET,
                                 "DATABASE_URL": "postgresql://coup:secret@127.0.0.1:1/coup"})
    assert result.returncode == 1, result.stderr
    assert "coup: DATABASE_URL postgresql://127.0.0.1:1/coup cannot be used: " in result.stderr
    assert "Traceback" not in result.stderr and "secret" not in result.stderr


def test_readme_variable_tables_are_made_from_the_settings_table() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme == readme_with_tables(readme), (
        "README.md's variable tables differ from the settings table in coup/config.py; "
        "regenerate them with: python -m coup settings-table --update README.md")


def test_every_variable_is_one_row_read_by_from_env_and_listed_by_serve_help() -> None:
    names = [v.name for v in VARIABLES]
    assert len(names) == len(set(names)), "a variable has two rows"
    result = subprocess.run([sys.executable, "-m", "coup", "serve", "--help"], capture_output=True, text=True,
                            timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert all(f"  {name} (default " in result.stdout for name in names)
    settings = Settings.from_env({"JWT_SECRET": SECRET, "COUP_REDIS_PREFIX": "other", "COUP_ADMIN_READONLY": "0",
                                  "COUP_LOG_LEVEL": "debug", "COUP_TYPING_INTERVAL": "0.25", "COUP_PLUGINS": "a, b"})
    assert (settings.redis_prefix, settings.admin_readonly, settings.log_level) == ("other", False, "DEBUG")
    assert (settings.typing_interval, settings.plugins) == (0.25, ("a", "b"))
    assert Settings.from_env({"JWT_SECRET": SECRET, "PORT": "  "}).port == 8000  # blank is unset
