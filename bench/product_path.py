"""The product path: signed-in users chat in study rooms; every message is stored in PostgreSQL
and broadcast. CoUp against a Node socket.io + `pg` reference on the same schema, and the bare
INSERT rate of the same database, all in one run.

    python bench/product_path.py                                   # 200 users in 50 studies
    python bench/product_path.py --before 0626e48                  # also CoUp at another commit
    python bench/product_path.py --users 400 --studies 100 --duration 10 --rate 800

Per server (`python -m coup serve` with the product's defaults but rate limits lifted;
`bench/product_ref/server.js`), `bench/product_ref/loadgen.js` connects the users (JWT in the
handshake, `join-study`) and runs two phases:

- closed: every user sends its next message when the previous one is acked: the most
  persisted messages/s the node sustains (acked in the window; the table's row count is
  checked against the acks);
- open: messages leave at `--rate` per second in total (default: half the slowest server's
  closed-loop rate), acked or not: send -> ack and send -> delivered to the last member of the
  room, p50 / p99, every server at the same load.

The bare INSERT rate: `--bare-threads` connections (psycopg2, autocommit, a prepared INSERT of
the same row) inserting as fast as they can for `--duration` seconds, before the servers run.
Needs PostgreSQL (`--database`, default the test server) and `npm ci` in bench/product_ref.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
REF = ROOT / "bench" / "product_ref"
sys.path.insert(0, str(ROOT))

from coup.domain.auth import TokenService  # noqa: E402
from coup.domain.database import Database  # noqa: E402
from coup.domain.models import Group, Study, StudyMember, User  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_schema(url: str, schema: str) -> str:
    return url + ("&" if "?" in url else "?") + urlencode({"options": f"-csearch_path={schema}"})


@contextmanager
def schemas(url: str, names: list[str]) -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL schema per name (CoUp's tables, migrated), dropped at the end."""
    import psycopg2

    tag = secrets.token_hex(3)
    made = {name: f"coup_pp_{tag}_{name}" for name in names}
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        for schema in made.values():
            conn.cursor().execute(f'CREATE SCHEMA "{schema}"')
        yield made
    finally:
        for schema in made.values():
            conn.cursor().execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.close()


def seed(url: str, users: int, studies: int) -> None:
    """Users 1..N, studies 1..M; user u is an ACTIVE member of study (u - 1) % M + 1."""
    database = Database(url, workers=1)
    try:
        database.create_schema()
        with database.db.connection_context(), database.db.atomic():
            User.insert_many([{"id": u, "name": f"user {u}"} for u in range(1, users + 1)]).execute()
            Group.insert(id=1, name="bench").execute()
            Study.insert_many([{"id": s, "group": 1, "name": f"study {s}"} for s in range(1, studies + 1)]).execute()
            StudyMember.insert_many([{"study": (u - 1) % studies + 1, "user": u, "status": "ACTIVE"}
                                     for u in range(1, users + 1)]).execute()
    finally:
        database.close()


def bare_insert_rate(url: str, schema: str, threads: int, seconds: float) -> float:
    """Rows/s of a prepared single-row INSERT into `messages`, autocommit, from `threads` connections."""
    import psycopg2

    counts = [0] * threads
    deadline = time.perf_counter() + seconds

    def insert(index: int) -> None:
        conn = psycopg2.connect(url, options=f"-csearch_path={schema}")
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("PREPARE ins (bigint, bigint, bigint, text, text) AS INSERT INTO messages "
                    "(study_id, user_id, seq, content, client_message_id, created_at) "
                    "VALUES ($1, $2, $3, $4, $5, now()) RETURNING id")
        study = index + 1
        n = 0
        while time.perf_counter() < deadline:
            n += 1
            cur.execute("EXECUTE ins (%s, %s, %s, %s, %s)", (study, study, n, "hello from the bare insert",
                                                            f"bare-{index}-{n}"))
            cur.fetchone()
        counts[index] = n
        conn.close()

    workers = [threading.Thread(target=insert, args=(i,)) for i in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - started)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its waited-for children, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    """CPU of every `postgres` process on this machine (the server runs here: loopback)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    total += cpu_seconds(int(entry.name))
            except (OSError, ValueError):  # gone meanwhile, or not ours to read
                continue
    return total


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


class Target:
    """A server under test: how to start it on a port with its own schema."""

    def __init__(self, name: str, schema: str, command: list[str], env: dict[str, str], cwd: Path) -> None:
        self.name = name
        self.schema = schema
        self.command = command
        self.env = env
        self.cwd = cwd

    @contextmanager
    def running(self, log: Path) -> Iterator[tuple[int, int]]:
        port = free_port()
        env = {**os.environ, **self.env, "PORT": str(port)}
        with log.open("ab") as out:
            proc = subprocess.Popen(self.command, cwd=self.cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, proc)
            yield port, proc.pid
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_phase(target: Target, users_file: Path, mode: str, duration: float, warmup: float, rate: float,
              logs: Path) -> dict[str, Any]:
    with target.running(logs / f"{target.name}.log") as (port, pid):
        before, pg_before = cpu_seconds(pid), postgres_cpu_seconds()
        started = time.perf_counter()
        command = ["node", str(REF / "loadgen.js"), "--port", str(port), "--users", str(users_file),
                   "--mode", mode, "--duration", str(duration), "--warmup", str(warmup), "--rate", str(rate),
                   "--label", f"{target.name}-{mode}-{secrets.token_hex(2)}"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=duration + warmup + 180)
        wall = time.perf_counter() - started
        server_cpu, pg_cpu = cpu_seconds(pid) - before, postgres_cpu_seconds() - pg_before
    if done.returncode != 0:
        raise RuntimeError(f"loadgen against {target.name} failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["server_cpu_pct"] = round(100 * server_cpu / wall)
    result["postgres_cpu_pct"] = round(100 * pg_cpu / wall)
    # per message stored over the whole run (connects, warm-up and drain included)
    messages = max(1, result["acked"] * (duration + warmup) / duration)
    result["cpu_us_per_msg"] = round(1e6 * (server_cpu + pg_cpu) / messages)
    return result


def stored_rows(url: str, schema: str) -> int:
    import psycopg2

    conn = psycopg2.connect(url, options=f"-csearch_path={schema}")
    try:
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM messages")
        return int(cur.fetchone()[0])
    finally:
        conn.close()


def export_commit(ref: str, into: Path) -> Path:
    """`coup/` of another commit of this repository, to run CoUp as it was there."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "coup"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def write_users(path: Path, secret: str, users: int, studies: int) -> Path:
    """The loadgen's users: a JWT each (signed with the servers' `secret`) and the study it chats in."""
    tokens = TokenService(secret, "HS256", 10.0)
    path.write_text(json.dumps([
        {"userId": u, "token": tokens.issue(u, ttl=3600), "studyId": (u - 1) % studies + 1}
        for u in range(1, users + 1)]))
    return path


def coup_environment(secret: str) -> dict[str, str]:
    """CoUp as the product runs, its rate limits lifted: the load is the point here."""
    return {"JWT_SECRET": secret, "HOST": "127.0.0.1", "COUP_LOG_LEVEL": "WARNING",
            "COUP_MESSAGE_RATE": "1000000", "COUP_MESSAGE_BURST": "1000000", "COUP_JOIN_RATE": "1000000",
            "COUP_JOIN_BURST": "1000000", "COUP_MAX_CONNECTIONS_PER_ADDRESS": "100000", "PYTHONPATH": str(ROOT)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--studies", type=int, default=50)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per phase")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="open-loop messages/s (default: half the slowest closed-loop rate)")
    parser.add_argument("--bare-threads", type=int, default=4)
    parser.add_argument("--before", help="also run CoUp at this commit (e.g. the one before a change)")
    parser.add_argument("--only", choices=("ours", "node"), help="run one server only (no ratios)")
    args = parser.parse_args()
    if not (REF / "node_modules" / "pg").is_dir():
        sys.exit("run `npm ci` in bench/product_ref first")
    secret = secrets.token_urlsafe(48)
    names = ["bare", "ours", "node"] + (["before"] if args.before else [])
    with schemas(args.database, names) as made, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        users_file = write_users(tmp / "users.json", secret, args.users, args.studies)
        for name, schema in made.items():
            seed(with_schema(args.database, schema), args.users if name != "bare" else args.bare_threads,
                 args.studies if name != "bare" else args.bare_threads)
        coup_env = coup_environment(secret)
        targets = []
        if args.only != "node":
            targets.append(Target("ours", made["ours"], [sys.executable, "-m", "coup", "serve"],
                                  {**coup_env, "DATABASE_URL": with_schema(args.database, made["ours"])}, ROOT))
        if args.before:
            old = export_commit(args.before, tmp / "before")
            targets.append(Target("before", made["before"], [sys.executable, "-m", "coup", "serve"],
                                  {**coup_env, "PYTHONPATH": str(old),
                                   "DATABASE_URL": with_schema(args.database, made["before"])}, old))
        if args.only != "ours":
            node_env = {"JWT_SECRET": secret, "DATABASE_URL": args.database, "PG_SCHEMA": made["node"]}
            targets.append(Target("node", made["node"], ["node", str(REF / "server.js")], node_env, REF))
        logs = Path(tempfile.mkdtemp(prefix="product_path_logs_"))
        print(f"{args.users} users in {args.studies} studies ({args.users // args.studies} per room), "
              f"{args.duration:g} s per phase after {args.warmup:g} s warm-up; server logs in {logs}", flush=True)
        bare = bare_insert_rate(args.database, made["bare"], args.bare_threads, args.duration)
        print(f"bare INSERT ({args.bare_threads} connections, autocommit, prepared): {bare:,.0f} rows/s", flush=True)
        closed = {}
        for target in targets:
            closed[target.name] = run_phase(target, users_file, "closed", args.duration, args.warmup, 0, logs)
            print(f"closed {target.name}: {json.dumps(closed[target.name])}", flush=True)
        rate = args.rate or round(min(r["acked_per_s"] for r in closed.values()) / 2)
        opened = {}
        for target in targets:
            opened[target.name] = run_phase(target, users_file, "open", args.duration, args.warmup, rate, logs)
            print(f"open {target.name} @ {rate}/s: {json.dumps(opened[target.name])}", flush=True)
        acked = {t.name: closed[t.name]["acked"] for t in targets}
        rows = {t.name: stored_rows(args.database, t.schema) for t in targets}
        report(targets, closed, opened, bare, rate, rows, acked)
        shutil.rmtree(logs, ignore_errors=True)


def report(targets: list[Target], closed: dict[str, Any], opened: dict[str, Any], bare: float, rate: float,
           rows: dict[str, int], acked: dict[str, int]) -> None:
    print()
    print("| server | persisted msg/s (closed loop) | x bare INSERT | x node | server CPU % | PostgreSQL CPU % | "
          "server + PostgreSQL CPU µs per msg | loadgen CPU % | "
          f"ack p50 / p99 ms @ {rate:g}/s | last member p50 / p99 ms @ {rate:g}/s | refused | rows stored |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    node = closed.get("node", {}).get("acked_per_s")
    for t in targets:
        c, o = closed[t.name], opened[t.name]
        versus = f"{c['acked_per_s'] / node:.2f}" if node else "-"
        print(f"| {t.name} | {c['acked_per_s']:,} | {c['acked_per_s'] / bare:.2f} | {versus} | "
              f"{c['server_cpu_pct']} | {c['postgres_cpu_pct']} | {c['cpu_us_per_msg']} | "
              f"{c['loadgen_cpu_pct']} | {o['ack_p50_ms']} / {o['ack_p99_ms']} | "
              f"{o['last_p50_ms']} / {o['last_p99_ms']} | {c['refused'] + o['refused']} | {rows[t.name]:,} |")
    print(f"\nbare INSERT: {bare:,.0f} rows/s. Closed-loop p99 (ack / last member), ms: " + ", ".join(
        f"{t.name} {closed[t.name]['ack_p99_ms']} / {closed[t.name]['last_p99_ms']}" for t in targets))
    print("closed-loop acks in the window (rows stored include the warm-up and the open phase): "
          + ", ".join(f"{name} {count:,}" for name, count in acked.items()))


if __name__ == "__main__":
    main()
