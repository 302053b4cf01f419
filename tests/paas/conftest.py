"""Fixtures of the PaaS test bed (tests/paas/bed.py): tools, PostgreSQL, Redis, the bed.

`paas_bed` (one per session, plain Redis) and `make_bed` (a bed of a test's own, e.g. with
a TLS Redis or to restart its nodes) both require redis-server, haproxy, openssl and
PostgreSQL (COUP_TEST_POSTGRES_URL); a missing one skips locally and fails in CI.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import require
from tests.paas.bed import ARTIFACTS, Bed, RedisProcess, TlsFiles, make_tls_files, tools_missing
from tests.postgres import POSTGRES_ENV, postgres_base_url, postgres_schema
from tests.sockjs.conftest import node_client, node_js  # noqa: F401 - fixtures for the SockJS clients


def require_tools() -> None:
    missing = tools_missing()
    require(not missing, ", ".join(missing) + " (apt-get install redis-server haproxy openssl)")


def require_postgres() -> str:
    base = postgres_base_url()
    require(base is not None, f"PostgreSQL ({POSTGRES_ENV})")
    assert base is not None
    return base


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A self-signed CA with a server and a client certificate (openssl)."""
    require(shutil.which("openssl") is not None, "openssl")
    return make_tls_files(tmp_path_factory.mktemp("tls"))


#: ``make_redis(tls=None, client_certs=False, user=None, password=None)`` -> a started RedisProcess
RedisFactory = Callable[..., RedisProcess]
#: ``make_bed(redis_url, name, **kwargs)`` -> a started Bed
BedFactory = Callable[..., Bed]


@pytest.fixture(scope="module")
def make_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisFactory]:
    require(shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None, "redis-server")
    started: list[RedisProcess] = []
    workdir = tmp_path_factory.mktemp("redis")

    def make(**kwargs: object) -> RedisProcess:
        server = RedisProcess(workdir, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def make_bed() -> Iterator[BedFactory]:
    """Beds for this module, each on a PostgreSQL schema of its own; closed at the module's end."""
    require_tools()
    base = require_postgres()
    with contextlib.ExitStack() as stack:
        def make(redis_url: str, name: str, **kwargs: object) -> Bed:
            database_url = stack.enter_context(postgres_schema(base, label="coup_paas"))
            workdir = ARTIFACTS / name
            shutil.rmtree(workdir, ignore_errors=True)
            bed = Bed(workdir, redis_url, database_url, **kwargs)  # type: ignore[arg-type]
            stack.callback(bed.close)  # before its schema is dropped
            return bed.start()

        yield make


@pytest.fixture(scope="module")
def paas_bed(make_redis: RedisFactory, make_bed: BedFactory) -> Bed:
    """Three nodes behind HAProxy on a plain redis-server: the bed most tests share."""
    return make_bed(make_redis().url(), "plain")
