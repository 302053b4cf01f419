"""The ``coup`` command (also ``python -m coup``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from coup.config import (
    ConfigError,
    Settings,
    StartError,
    readme_with_tables,
    settings_help,
    settings_table,
    url_for_logs,
)
from coup.logs import configure_logging, set_node

log = logging.getLogger("coup")


def _run(coro: object) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is installed on Linux and macOS
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


async def _serve(settings: Settings) -> None:
    from coup.app import coup_node
    from coup.heap import freeze_startup_heap

    node = coup_node(settings)
    set_node(node.sio.node_id)  # a random one when COUP_NODE_ID is not set
    await node.start()
    log.debug("%d start-up objects frozen out of the collector", freeze_startup_heap())
    log.info("coup serving on http://%s:%d/", settings.host, settings.port)
    if settings.demo:
        log.info("demo mode: database %s; sign in with `coup token 1` (Alice) or POST /api/dev/token",
                 url_for_logs(settings.database_url))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("coup shutting down (a second signal skips the drain)")
    stop.clear()
    drain = asyncio.ensure_future(node.drain())
    second = asyncio.ensure_future(stop.wait())
    await asyncio.wait([drain, second], return_when=asyncio.FIRST_COMPLETED)
    second.cancel()
    if not drain.done():
        log.warning("second signal: stopping without finishing the drain")
        drain.cancel()
    elif drain.exception() is not None:
        log.error("draining failed; stopping", exc_info=drain.exception())
    await node.stop()


def cmd_serve(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.demo:
        overrides["demo"] = True
    settings = Settings.from_env(None, **overrides)
    settings.refuse_unsafe_demo()
    configure_logging(settings.log_level, settings.log_format, settings.node_id)
    _run(_serve(settings))
    return 0


def _database_settings() -> Settings:
    """Settings for commands that only need the database (no JWT secret required)."""
    return Settings.from_env(None, demo=True)


def cmd_migrate(args: argparse.Namespace) -> int:
    """`coup migrate` (and `coup initdb`, the same from an empty database)."""
    import peewee as pw

    from coup.domain.database import open_database
    from coup.domain.migrations import MigrationError, current_version, head, migrate

    url = _database_settings().database_url
    shown = url_for_logs(url)
    db = open_database(url)
    try:
        if args.check:
            with db.connection_context():
                version = current_version(db)
            print(f"coup: schema version {version if version is not None else 'none (empty)'}, "
                  f"this release's is {head()}")
            return 0 if version == head() else 1
        report = migrate(db, on_wait=lambda message: print(f"coup: {message}", file=sys.stderr, flush=True))
    except MigrationError as exc:
        print(f"coup: {exc}", file=sys.stderr)
        return 1
    except pw.OperationalError as exc:  # unreachable, refused, bad credentials: one line, no traceback
        raise StartError(f"DATABASE_URL {shown} cannot be used: {' '.join(str(exc).split())}") from exc
    finally:
        db.close()
    if report.before is None:
        print(f"coup: empty database {shown}: schema created at version {report.after}")
    elif report.applied:
        print(f"coup: {shown} migrated from version {report.before} to {report.after} "
              f"(applied {', '.join(map(str, report.applied))})")
    else:
        print(f"coup: {shown} is at version {report.after}; nothing to do")
    return 0


def cmd_seed_demo(args: argparse.Namespace) -> int:
    from coup.domain.database import Database
    from coup.domain.demo import NotEmpty, seed_demo

    url = _database_settings().database_url
    database = Database(url, workers=1)
    try:
        database.create_schema()
        with database.db.connection_context():
            seed_demo(reset=args.reset)
    except NotEmpty as exc:
        print(f"coup: {exc}", file=sys.stderr)
        return 1
    finally:
        database.close()
    print(f"coup: demo data loaded into {url_for_logs(url)} (users 1 Alice, 2 Bob, 3 Chloe, 4 Dan, 5 Eve)")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """Print a JWT for a user: signed with JWT_SECRET, or with the demo database's secret."""
    from coup.domain.auth import TokenService
    from coup.domain.database import Database
    from coup.domain.demo import DEMO_SECRET_KEY
    from coup.domain.queries import setting

    if args.user_id <= 0:
        print("coup: USER_ID must be a positive integer", file=sys.stderr)
        return 2
    settings = Settings.from_env(None, demo=True)
    assert settings.jwt_secret is not None
    secret: str | None = settings.jwt_secret.reveal()
    if settings.jwt_secret_generated:  # no JWT_SECRET: use the one a demo server stored
        database = Database(settings.database_url, workers=1)
        try:
            with database.db.connection_context():
                secret = setting(DEMO_SECRET_KEY) if database.db.table_exists("server_settings") else None
        finally:
            database.close()
        if secret is None:
            print(f"coup: JWT_SECRET is not set and {url_for_logs(settings.database_url)} holds no demo secret; "
                  "set JWT_SECRET, or start `coup serve --demo` once with this DATABASE_URL", file=sys.stderr)
            return 2
    assert secret is not None
    tokens = TokenService(secret, settings.jwt_algorithm, settings.jwt_leeway)
    print(tokens.issue(args.user_id, ttl=args.ttl))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """The cluster's nodes, ring epoch, room owners and connection counts, read from Redis."""
    import json

    from redis.exceptions import RedisError

    from coup.cluster.options import ClusterOptions
    from coup.cluster.status import format_status, read_status

    settings = Settings.from_env(None, demo=True)
    if settings.redis_url is None:
        print("coup: REDIS_URL is not set: without it there is no cluster (one process serves everything)",
              file=sys.stderr)
        return 2
    options = ClusterOptions(prefix=settings.redis_prefix, room_leases=settings.room_leases,
                             log_groups=settings.recovery_log_groups)
    try:
        status = asyncio.run(read_status(settings.redis_url, options, room_limit=None if args.json else args.rooms))
    except (RedisError, OSError) as exc:
        print(f"coup: cannot read the cluster from Redis: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2) if args.json else format_status(status, prefix=settings.redis_prefix))
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    """Print the bcrypt hash of a password read from stdin (for COUP_ADMIN_PASSWORD)."""
    import getpass

    import bcrypt

    password = getpass.getpass("admin password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        print("coup: the password must be at least 8 characters", file=sys.stderr)
        return 2
    print(bcrypt.hashpw(password.encode(), bcrypt.gensalt(args.rounds)).decode())
    return 0


def cmd_settings_table(args: argparse.Namespace) -> int:
    """Print the README's variable tables, or bring README.md's (between its markers) up to date."""
    from pathlib import Path

    from coup.config import SECTIONS

    if args.update is None:
        print("\n\n".join(f"{heading}\n\n{settings_table(section)}" for section, heading in SECTIONS.items()))
        return 0
    path = Path(args.update)
    text = path.read_text()
    updated = readme_with_tables(text)
    if updated != text:
        path.write_text(updated)
    print(f"coup: {path} {'updated' if updated != text else 'was up to date'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coup", description="CoUp Realtime: Socket.IO server for CoUp")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a node", epilog=settings_help(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--host", help="interface to listen on (default $HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default $PORT or 8000)")
    serve.add_argument("--demo", action="store_true", help="demo mode: embedded defaults and demo data")
    serve.set_defaults(func=cmd_serve)
    migrate = sub.add_parser("migrate", help="bring the schema of $DATABASE_URL to this release's (creates an "
                                             "empty one); safe to run again, and from several nodes at once")
    migrate.add_argument("--check", action="store_true", help="only say the version; exit 1 when not current")
    migrate.set_defaults(func=cmd_migrate)
    initdb = sub.add_parser("initdb", help="the same as `migrate` (kept for older release scripts)")
    initdb.set_defaults(func=cmd_migrate, check=False)
    seed = sub.add_parser("seed-demo", help="load the demo data (users 1-5, group 1, studies 1-2, tasks 1-2)")
    seed.add_argument("--reset", action="store_true", help="empty the tables first (else refuses a non-empty db)")
    seed.set_defaults(func=cmd_seed_demo)
    token = sub.add_parser("token", help="print a JWT for USER_ID (JWT_SECRET, or the demo database's secret)")
    token.add_argument("user_id", type=int, metavar="USER_ID")
    token.add_argument("--ttl", type=float, default=24 * 3600.0, help="lifetime in seconds (default one day)")
    token.set_defaults(func=cmd_token)
    status = sub.add_parser("status", help="the cluster ($REDIS_URL): nodes, ring epoch, room owners, connections")
    status.add_argument("--json", action="store_true", help="everything as JSON (every room), for scripts")
    status.add_argument("--rooms", type=int, default=50, help="rooms listed in the table (default 50)")
    status.set_defaults(func=cmd_status)
    hashpw = sub.add_parser("hash-password", help="print the bcrypt hash of a password read from stdin "
                                                  "(for COUP_ADMIN_PASSWORD)")
    hashpw.add_argument("--rounds", type=int, default=12, choices=range(4, 17), metavar="4..16",
                        help="bcrypt cost (default 12)")
    hashpw.set_defaults(func=cmd_hash_password)
    table = sub.add_parser("settings-table", help="print the environment variables as README.md's markdown tables")
    table.add_argument("--update", metavar="README", help="rewrite the tables between the file's "
                                                           "<!-- settings-table SECTION --> markers instead")
    table.set_defaults(func=cmd_settings_table)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"coup: configuration error: {exc}", file=sys.stderr)
        return 2
    except StartError as exc:
        print(f"coup: {exc}", file=sys.stderr)
        return 1
