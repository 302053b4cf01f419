"""How many chat messages per second the domain's write path stores and broadcasts.

Runs the `study.message` room command (validate membership, assign seq, insert, notify
ACTIVE members not in the room, broadcast) in one process, with `--concurrency` senders
spread over `--studies` study rooms, and compares it with a reference measured in the same
run: a bare `INSERT` of the same row through the same database threads. The gap between the
two is what the domain adds on top of the database.

    python bench/domain_messages.py                              # SQLite file in a temp dir
    python bench/domain_messages.py --database postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

from coup.config import Secret, Settings
from coup.core import SocketServer
from coup.domain.auth import Actor
from coup.domain.database import Database
from coup.domain.demo import seed_demo
from coup.domain.models import Message, Study, StudyMember, utcnow
from coup.domain.service import CoupDomain
from coup.engine.options import EngineOptions
from coup.engine.server import EngineServer


def prepare(url: str, studies: int) -> None:
    database = Database(url, workers=1)
    try:
        database.create_schema()
        with database.db.connection_context():
            seed_demo(reset=True)
            for study_id in range(3, studies + 3):
                Study.create(id=study_id, group=1, name=f"bench {study_id}")
                for user_id in (1, 2, 3):
                    StudyMember.create(study=study_id, user=user_id, status="ACTIVE")
    finally:
        database.close()


async def measure(label: str, count: int, concurrency: int, send: object) -> float:
    queue = iter(range(count))

    async def worker() -> None:
        for i in queue:
            await send(i)  # type: ignore[operator]

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    rate = count / elapsed
    print(f"{label:<44} {count:>6} msgs in {elapsed:6.2f} s = {rate:8.0f} msg/s")
    return rate


async def run(url: str, count: int, concurrency: int, studies: int, workers: int) -> None:
    settings = Settings(database_url=url, jwt_secret=Secret(secrets.token_urlsafe(48)), db_workers=workers,
                        message_rate=1e9, message_burst=10**9).validated()
    server = SocketServer(EngineServer(EngineOptions()))
    domain = CoupDomain(server, settings)
    await domain.start()
    alice = Actor(1, "Alice")
    study_ids = list(range(3, studies + 3))
    try:
        def bare_insert(i: int) -> None:
            Message.create(study=2, user=1, seq=i + 1, content=f"reference {i}", created_at=utcnow())

        reference = await measure(f"reference: bare INSERT ({workers} db threads)", count, concurrency,
                                  lambda i: domain.db.run(bare_insert, i))
        domain_rate = await measure(f"domain: study.message over {studies} rooms", count, concurrency,
                                    lambda i: domain.rooms.post_message(alice, study_ids[i % studies], f"m{i}",
                                                                        None, f"bench-{i}"))
        print(f"domain / reference = {domain_rate / reference:.2f}")
    finally:
        await domain.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", help="database URL (default: a SQLite file in a temp dir)")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4, help="database threads")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database or f"sqlite:///{Path(tmp) / 'bench.db'}"
        if url.startswith("postgres"):
            import psycopg2

            schema = f"coup_bench_{secrets.token_hex(4)}"
            conn = psycopg2.connect(url)
            conn.autocommit = True
            conn.cursor().execute(f'CREATE SCHEMA "{schema}"')
            url += ("&" if "?" in url else "?") + urlencode({"options": f"-csearch_path={schema}"})
        try:
            prepare(url, args.studies)
            asyncio.run(run(url, args.count, args.concurrency, args.studies, args.workers))
        finally:
            if args.database and args.database.startswith("postgres"):
                conn.cursor().execute(f'DROP SCHEMA "{schema}" CASCADE')
                conn.close()


if __name__ == "__main__":
    main()
