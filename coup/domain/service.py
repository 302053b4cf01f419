"""CoUp on a Socket.IO server: the parts of the domain, wired together, with a start and a stop."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import peewee as pw

from coup.config import Settings
from coup.core import SocketServer
from coup.domain import queries
from coup.domain.api import OriginCheck, api_rules
from coup.domain.auth import ServiceToken, TokenService
from coup.domain.database import Database
from coup.domain.demo import DEMO_SECRET_KEY, NotEmpty, seed_demo
from coup.domain.events import SocketEvents
from coup.domain.notifications import Notifier
from coup.domain.presence_events import PresenceEvents
from coup.domain.ratelimit import Throttle, TokenBucket
from coup.domain.sequence import DatabaseSequence, SequenceSource
from coup.domain.study_rooms import StudyRooms
from coup.domain.tasks import TaskService

log = logging.getLogger(__name__)


def allow_any_origin(origin: str | None, host: str | None) -> bool:
    return True


class CoupDomain:
    """Registers CoUp's middleware, events and room commands on `server` and serves its HTTP API.

    `sequence` chooses where message sequence numbers come from (default: the database;
    a cluster passes a Redis counter).
    """

    def __init__(self, server: SocketServer, settings: Settings, *, origin_allowed: OriginCheck = allow_any_origin,
                 sequence: SequenceSource | None = None) -> None:
        self.settings = settings
        self.server = server
        self.origin_allowed = origin_allowed
        self.db = Database(settings.database_url, workers=settings.db_workers, metrics=server.metrics,
                           prepare=settings.db_prepare)
        self.sequence: SequenceSource = sequence or DatabaseSequence(self._max_seq)
        self.service_token = ServiceToken(settings.service_token.reveal() if settings.service_token else None)
        self.rooms = StudyRooms(server, self.db, self.sequence)
        self.notifier = Notifier(server.main, self.db)
        self.tasks = TaskService(server.main, self.db, self.notifier)
        self.presence = PresenceEvents(server, self.db)
        self.events = SocketEvents(
            server, self.db, self.rooms, self.notifier, self.presence,
            messages=TokenBucket(settings.message_rate, settings.message_burst),
            typing=Throttle(settings.typing_interval),
            joins=TokenBucket(settings.join_rate, settings.join_burst),
            max_sockets_per_user=settings.max_sockets_per_user, token_leeway=settings.jwt_leeway,
            membership_check_interval=settings.membership_check_interval)
        self._tokens: TokenService | None = None

    async def _max_seq(self, study_id: int) -> int:
        return await self.db.run(queries.max_seq, study_id)

    @property
    def tokens(self) -> TokenService:
        if self._tokens is None:
            raise RuntimeError("the domain has not started")
        return self._tokens

    def http_rules(self) -> list[Any]:
        return api_rules(self, self.origin_allowed)

    async def start(self) -> None:
        """Create missing tables (demo: and seed an empty database), then settle the JWT secret."""
        await self.db.run(ensure_schema, self.db)
        if self.settings.demo:
            await self.db.run(seed_if_empty)
        secret = await self.db.run(jwt_secret, self.settings)
        self._tokens = TokenService(secret, self.settings.jwt_algorithm, self.settings.jwt_leeway)
        self.events.tokens = self._tokens
        self.events.membership.start()

    async def stop(self) -> None:
        await self.events.membership.stop()
        self.events.expiry.close()
        await asyncio.to_thread(self.db.close)

    async def ready(self) -> bool:
        return await self.db.ping()


def jwt_secret(settings: Settings) -> str:
    """The secret tokens are signed with: `JWT_SECRET`, or in demo mode the one kept in the
    database (the first made-up secret stored there wins, so every demo process agrees)."""
    assert settings.jwt_secret is not None
    secret = settings.jwt_secret.reveal()
    if not settings.jwt_secret_generated:
        return secret
    return queries.setting_or_store(DEMO_SECRET_KEY, secret)


def ensure_schema(db: Database) -> None:
    """Bring the schema up to date at start, so a fresh deploy needs nothing but `DATABASE_URL`
    (`coup migrate` in the release phase normally did it already; nodes starting together
    take turns on the migration lock). A database newer than this release (the next release
    migrated it while this node restarts) is used as it is."""
    report = db.create_schema(allow_newer=True)
    if report.applied and report.before is not None:
        log.info("schema migrated from version %s to %s", report.before, report.after)


def seed_if_empty() -> bool:
    """Load the demo data into an empty database; True when it did."""
    if queries.has_users():
        return False
    try:
        seed_demo()
    except (NotEmpty, pw.IntegrityError):  # another demo process seeded it first
        return False
    log.info("demo data loaded")
    return True
