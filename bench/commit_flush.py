"""What one COMMIT costs on this PostgreSQL: the WAL flush that bounds the product path's p99.

A stored chat message is acked after its batch's commit, and a commit waits for its WAL
flush (`fdatasync` here). This times a one-row INSERT in autocommit (one round trip, one
commit, the smallest write that flushes) from `--connections` connections, either back to
back or paced at `--rate` commits/s in total (as the writer's batches arrive at a moderate
load), and prints the latency distribution with the flushes PostgreSQL made (`pg_stat_wal`):
fewer flushes than commits means commits shared a flush.

    python bench/commit_flush.py                                  # 1 connection, back to back
    python bench/commit_flush.py --rate 500 --connections 2       # paced, two in flight at most
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wal_syncs(url: str) -> int:
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT wal_sync FROM pg_stat_wal")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def run(url: str, connections: int, rate: float, seconds: float) -> tuple[list[float], int]:
    """Commit latencies (ms) from every connection, and the WAL flushes made meanwhile."""
    import psycopg2

    table = f"commit_flush_{uuid.uuid4().hex[:8]}"
    setup = psycopg2.connect(url)
    setup.autocommit = True
    setup.cursor().execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, body text)")
    latencies: list[list[float]] = [[] for _ in range(connections)]
    interval = connections / rate if rate > 0 else 0.0
    start = time.perf_counter() + 0.2
    deadline = start + seconds

    def commit(index: int) -> None:
        conn = psycopg2.connect(url)
        conn.autocommit = True
        cur = conn.cursor()
        due = start + index * interval / connections
        while True:
            if interval:
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                due += interval
            began = time.perf_counter()
            if began >= deadline:
                break
            cur.execute(f"INSERT INTO {table} (body) VALUES ('a row the size of a chat message')")
            latencies[index].append((time.perf_counter() - began) * 1000)
        conn.close()

    before = wal_syncs(url)
    workers = [threading.Thread(target=commit, args=(i,)) for i in range(connections)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    flushes = wal_syncs(url) - before
    setup.cursor().execute(f"DROP TABLE {table}")
    setup.close()
    return [ms for per in latencies for ms in per], flushes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default=DEFAULT_URL)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--rate", type=float, default=0, help="commits/s in total (0: back to back)")
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    ms, flushes = run(args.database, args.connections, args.rate, args.seconds)
    slow = sum(1 for v in ms if v >= 2.0) / len(ms)
    print(f"connections {args.connections}, rate {args.rate or 'back to back'}: {len(ms)} commits "
          f"({len(ms) / args.seconds:.0f}/s), {flushes} WAL flushes; commit ms p50 {statistics.median(ms):.2f} "
          f"p90 {percentile(ms, 0.9):.2f} p99 {percentile(ms, 0.99):.2f} max {max(ms):.2f}; "
          f">= 2 ms: {100 * slow:.1f} %")


if __name__ == "__main__":
    main()
