"""A PostgreSQL schema of the test run's own, so parallel runs on one server never collide."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlencode, urlsplit, urlunsplit

#: the server the tests use (CI: postgresql://postgres@127.0.0.1:5432/test)
POSTGRES_ENV = "COUP_TEST_POSTGRES_URL"


def postgres_base_url() -> str | None:
    return os.environ.get(POSTGRES_ENV) or None


@contextmanager
def postgres_schema(base: str, label: str = "coup_test") -> Iterator[str]:
    """Create a fresh schema; yield `base` with its search_path set to it; drop it at the end.

    The search path travels in the URL (libpq's ``options``), so a `coup` subprocess given
    this URL as DATABASE_URL works in the schema too.
    """
    import psycopg2

    schema = f"{label}_{os.getpid()}_{secrets.token_hex(4)}"
    conn = psycopg2.connect(base)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE SCHEMA "{schema}"')
    parts = urlsplit(base)
    query = (parts.query + "&" if parts.query else "") + urlencode({"options": f"-csearch_path={schema}"})
    try:
        yield urlunsplit(parts._replace(query=query))
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP SCHEMA "{schema}" CASCADE')
        conn.close()
