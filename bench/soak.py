"""Soak: thousands of honest clients with churn and chat, hostile clients running the
adversarial corpus in a loop, against one real `coup serve` process on loopback.

    python bench/soak.py [--duration 600] [--clients 2000] [--warmup 180] [--hostile 3]

What it does: seeds a SQLite database with the demo data plus `--clients` users in
studies of 20 (all ACTIVE), starts `python -m coup serve --demo` with that database, and
connects the clients over WebSocket from ten loopback addresses (127.0.0.2-11, 200 per
address at the default size). Two clients per study are *steady* (connected the whole
run); the others *churn*: connect, join their study, stay 20-90 s, leave, come back 1-5 s
later. Every client posts a chat message every 20-40 s and answers Engine.IO pings.
`--hostile` attackers run every attack of `tests/adversarial/attacks.CORPUS` in turn, again
and again, next to them, in a process of their own (so the attacks' own work does not
delay the honest clients' loop and pollute their latencies).

The warm-up (default 180 s) outlasts the recovery window (120 s), so the recovery store is
full and every churning client has come and gone at least once before the first figure;
`--duration` (default 600 s) is the measured run after it.

What it prints (one command gives every figure, for bench/README.md):
- server RSS after the warm-up and at the end of the run (same load), and the change;
- the server's open file descriptors before any client and after every client left;
- honest messages lost: gaps in the per-study `seq` numbers each steady client saw (it was
  connected throughout, so it must see every message of its study), and honest sends that
  were not acknowledged `ok`;
- steady clients disconnected by the server (should be 0), attack rounds run, tracebacks
  in the server log, and the load average (the machine is shared).

Bounded: every client, attack and the server are stopped at the end (the server by its PID).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jwt  # noqa: E402

from tests.adversarial import attacks  # noqa: E402
from tests.wsclient import RawWebSocket, emit_with_ack, socketio_events  # noqa: E402

STUDY_SIZE = 20
FIRST_USER = 100  # above the demo users
ADDRESSES = [f"127.0.0.{i}" for i in range(2, 12)]


def seed(url: str, clients: int) -> dict[int, int]:
    """Demo data plus `clients` users, STUDY_SIZE to a study; returns user id -> study id."""
    from coup.domain.database import Database
    from coup.domain.demo import seed_demo
    from coup.domain.models import Group, GroupMember, Study, StudyMember, User

    database = Database(url, workers=1)
    try:
        database.create_schema()
        with database.db.connection_context(), database.db.atomic():
            seed_demo(reset=True)
            group = Group.create(name="soak")
            studies = [Study.create(group=group, name=f"soak {i}").id for i in range(clients // STUDY_SIZE + 1)]
            users = {}
            rows = [{"id": FIRST_USER + i, "name": f"user{i}"} for i in range(clients)]
            for start in range(0, len(rows), 500):
                User.insert_many(rows[start:start + 500]).execute()
            members = []
            for i in range(clients):
                uid, sid = FIRST_USER + i, studies[i // STUDY_SIZE]
                users[uid] = sid
                members.append({"study": sid, "user": uid, "role": "MEMBER", "status": "ACTIVE"})
            for start in range(0, len(members), 500):
                StudyMember.insert_many(members[start:start + 500]).execute()
                GroupMember.insert_many([{"group": group.id, "user": m["user"]}
                                         for m in members[start:start + 500]]).execute()
        return users
    finally:
        database.close()


class Server:
    def __init__(self, workdir: Path, secret: str, probe: str = "") -> None:
        self.workdir = workdir
        self.secret = secret
        #: a file `bench/soak_probe.py` writes to at every RSS sample (empty: no probe)
        self.probe = probe
        self.port = _free_port()
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COUP_", "REDIS_", "DATABASE_", "JWT_"))}
        env.update({"PYTHONPATH": str(ROOT), "DATABASE_URL": f"sqlite:///{self.workdir / 'coup.db'}",
                    "JWT_SECRET": self.secret, "COUP_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"})
        module = "coup"
        if self.probe:
            env["COUP_SOAK_PROBE"] = self.probe
            module = "bench.soak_probe"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", module, "serve", "--demo", "--host", "127.0.0.1",
                                          "--port", str(self.port)], cwd=self.workdir, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)
        wait_ready(self.port, self.log_path)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def probe_now(self) -> None:
        """Ask `bench/soak_probe.py` for its figures (a second or so of the server's time)."""
        if self.probe and self.proc is not None:
            self.proc.send_signal(signal.SIGUSR1)

    def rss_mb(self) -> float:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))

    def fds(self) -> int:
        assert self.proc is not None
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


def wait_ready(port: int, log_path: Path) -> None:
    """Until the node on `port` answers /readyz 200 (30 s at most)."""
    import urllib.request

    for _ in range(300):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the server did not start; see " + str(log_path))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Tally:
    sent: int = 0
    acked: int = 0
    refused: int = 0
    timed_out: int = 0
    connects: int = 0
    connect_failures: int = 0
    steady_drops: int = 0
    #: steady client -> seqs of its study it saw
    seen: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    #: contents steady clients saw, per study (to tell a late ack from a lost message)
    contents: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    #: (study, content) of sends whose ack did not come in time
    unacked: list[tuple[int, str]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class SoakClient:
    def __init__(self, soak: Soak, user_id: int, study_id: int, address: str, steady: bool) -> None:
        self.soak = soak
        self.user_id = user_id
        self.study_id = study_id
        self.address = address
        self.steady = steady
        self.ws: RawWebSocket | None = None
        self.acks: dict[int, asyncio.Future[Any]] = {}
        self.next_ack = 0

    async def run(self) -> None:
        tally = self.soak.tally
        while not self.soak.stopping.is_set():
            try:
                await self.session()
            except (OSError, asyncio.IncompleteReadError, AssertionError, TimeoutError) as exc:
                if self.soak.stopping.is_set():
                    return
                tally.failures[f"{type(exc).__name__}: {str(exc)[:60]}"] += 1
                if self.steady:
                    tally.steady_drops += 1
                    print(f"steady client {self.user_id} lost its connection: {exc!r}", flush=True)
                tally.connect_failures += 1
            if not self.steady and not self.soak.stopping.is_set():
                await asyncio.sleep(random.uniform(1, 5))

    async def session(self) -> None:
        tally = self.soak.tally
        ws = self.ws = await attacks.raw_ws(self.soak.attacker, self.address)
        reader: asyncio.Task[None] | None = None
        try:
            opened = await ws.recv_text(10)
            assert opened.startswith("0"), opened
            ws.send_text("40" + json.dumps({"userId": self.user_id, "token": self.soak.token(self.user_id)}))
            reply = await ws.recv_text(10)
            assert reply.startswith("40"), reply
            reader = asyncio.create_task(self.read(ws))
            joined = await self.call("join-study", {"studyId": self.study_id})
            assert joined.get("ok"), joined
            tally.connects += 1
            lifetime = None if self.steady else random.uniform(20, 90)
            started = time.monotonic()
            while not self.soak.stopping.is_set():
                if lifetime is not None and time.monotonic() - started > lifetime:
                    break
                try:
                    await asyncio.wait_for(self.soak.stopping.wait(), random.uniform(20, 40))
                except TimeoutError:
                    await self.chat()
                if reader.done():
                    reader.result()
        finally:
            if reader is not None:
                reader.cancel()
            await ws.close()

    async def chat(self) -> None:
        tally = self.soak.tally
        tally.sent += 1
        content = f"soak {secrets.token_hex(6)}"
        started = time.monotonic()
        try:
            ack = await self.call("message", {"studyId": self.study_id, "content": content})
        except TimeoutError:
            tally.timed_out += 1
            tally.unacked.append((self.study_id, content))
            print(f"t={time.monotonic() - self.soak.started:.0f}s: no ack in 15 s for user {self.user_id}",
                  flush=True)
            return
        tally.latencies.append(time.monotonic() - started)
        if ack.get("ok"):
            tally.acked += 1
        else:
            tally.refused += 1
            print(f"honest send refused: {ack}", flush=True)

    async def call(self, event: str, payload: dict[str, Any]) -> Any:
        assert self.ws is not None
        self.next_ack += 1
        return await emit_with_ack(self.ws, self.acks, self.next_ack, event, payload, 15)

    async def read(self, ws: RawWebSocket) -> None:
        seen = self.soak.tally.seen[self.user_id] if self.steady else None
        async for args in socketio_events(ws, self.acks):
            if seen is not None and args[0] == "message" and args[1].get("studyId") == self.study_id:
                seen.add(int(args[1]["seq"]))
                self.soak.tally.contents[self.study_id].add(args[1]["content"])


class Soak:
    def __init__(self, args: argparse.Namespace, server: Server, users: dict[int, int]) -> None:
        self.args = args
        self.server = server
        self.users = users
        self.attacker = attacks.Attacker(server.port, self.token)
        self.stopping = asyncio.Event()
        self.tally = Tally()
        self.attack_rounds: dict[str, int] = defaultdict(int)
        self.attack_errors: dict[str, int] = defaultdict(int)
        self._tokens: dict[int, str] = {}
        self.started = time.monotonic()

    def token(self, user_id: int) -> str:
        token = self._tokens.get(user_id)
        if token is None:
            now = int(time.time())
            token = self._tokens[user_id] = jwt.encode(
                {"sub": str(user_id), "iat": now, "exp": now + 24 * 3600}, self.server.secret, algorithm="HS256")
        return token

    def start_hostile(self) -> subprocess.Popen[str]:
        """The attackers, in a process of their own, until told to stop (SIGTERM)."""
        return subprocess.Popen([sys.executable, __file__, "--attack", str(self.server.port), "--secret",
                                 self.server.secret, "--hostile", str(self.args.hostile)],
                                stdout=subprocess.PIPE, text=True)

    def stop_hostile(self, proc: subprocess.Popen[str]) -> None:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if lines:
            report = json.loads(lines[-1])
            self.attack_rounds.update(report["rounds"])
            self.attack_errors.update(report["errors"])

    async def prime(self) -> None:
        """A short burst of use (connections, joins, messages on every database thread), then
        quiet: the descriptors the process keeps anyway (database files per worker thread)
        are open before the baseline is taken."""
        sample = sorted(self.users.items())[:50]

        async def once(uid: int, study: int) -> None:
            client = SoakClient(self, uid, study, ADDRESSES[0], steady=False)
            ws = client.ws = await attacks.raw_ws(self.attacker, ADDRESSES[0])
            reader = None
            try:
                await ws.recv_text(10)
                ws.send_text("40" + json.dumps({"userId": uid, "token": self.token(uid)}))
                await ws.recv_text(10)
                reader = asyncio.create_task(client.read(ws))
                await client.call("join-study", {"studyId": study})
                await client.call("message", {"studyId": study, "content": "prime"})
            finally:
                if reader is not None:
                    reader.cancel()
                await ws.close()

        await asyncio.gather(*(once(uid, study) for uid, study in sample))
        await asyncio.sleep(8)

    async def run(self) -> dict[str, Any]:
        args, server = self.args, self.server
        await self.prime()
        fds_start = server.fds()
        clients = []
        per_study: dict[int, int] = defaultdict(int)
        for i, (uid, study) in enumerate(sorted(self.users.items())):
            steady = per_study[study] < 2
            per_study[study] += 1
            clients.append(SoakClient(self, uid, study, ADDRESSES[i % len(ADDRESSES)], steady))
        started = self.started = time.monotonic()
        tasks = []
        for i, client in enumerate(clients):  # ramp up over a third of the warm-up
            tasks.append(asyncio.create_task(client.run()))
            if i % 50 == 49:
                await asyncio.sleep(args.warmup / 3 / (len(clients) / 50))
        hostile = self.start_hostile()
        await asyncio.sleep(max(0.0, args.warmup - (time.monotonic() - started)))
        rss_warm = server.rss_mb()
        print(f"warm-up done: {self.tally.connects} connects, RSS {rss_warm:.1f} MB, fds {server.fds()}", flush=True)
        end = time.monotonic() + args.duration
        while time.monotonic() < end:
            await asyncio.sleep(min(30.0, end - time.monotonic()))
            print(f"t={time.monotonic() - started:.0f}s RSS {server.rss_mb():.1f} MB fds {server.fds()} "
                  f"sent {self.tally.sent} acked {self.tally.acked}", flush=True)
            server.probe_now()
        rss_end = server.rss_mb()
        self.stopping.set()
        await asyncio.get_running_loop().run_in_executor(None, self.stop_hostile, hostile)
        await asyncio.wait(tasks, timeout=60)
        for task in tasks:
            task.cancel()
        await asyncio.sleep(8)  # lingering closes (5 s), timers
        fds_end = server.fds()
        lost = 0
        for seqs in self.tally.seen.values():
            if seqs:
                lost += (max(seqs) - min(seqs) + 1) - len(seqs)
        return {"rss_warm": rss_warm, "rss_end": rss_end, "fds_start": fds_start, "fds_end": fds_end, "lost": lost}


async def main_async(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="coup-soak-"))
    users = seed(f"sqlite:///{workdir / 'coup.db'}", args.clients)
    server = Server(workdir, secrets.token_urlsafe(48), args.probe)
    server.start()
    load_start = os.getloadavg()
    try:
        soak = Soak(args, server, users)
        result = await soak.run()
    finally:
        server.stop()
    t = soak.tally
    tracebacks = server.log_path.read_text(errors="replace").count("Traceback")
    change = (result["rss_end"] - result["rss_warm"]) / result["rss_warm"] * 100
    print()
    print(f"soak: {args.clients} clients ({len(set(users.values())) * 2} steady), {args.hostile} hostile, "
          f"{args.duration:.0f} s after a {args.warmup:.0f} s warm-up; server log {server.log_path}")
    print(f"RSS after warm-up {result['rss_warm']:.1f} MB, at the end {result['rss_end']:.1f} MB ({change:+.1f} %)")
    print(f"open fds before the run (after a priming burst) {result['fds_start']}, after every client left "
          f"{result['fds_end']}")
    print(f"honest messages: sent {t.sent}, acked ok {t.acked}, refused {t.refused}, ack timed out {t.timed_out}; "
          f"lost (seq gaps seen by steady clients) {result['lost']}")
    late = sum(1 for study, content in t.unacked if content in t.contents[study])
    latencies = sorted(t.latencies) or [0.0]
    print(f"of the {len(t.unacked)} sends not acknowledged in 15 s, {late} reached the steady clients of their study "
          f"(acknowledged late), {len(t.unacked) - late} did not; ack latency p50 "
          f"{latencies[len(latencies) // 2] * 1000:.0f} ms, p99 {latencies[int(len(latencies) * 0.99)] * 1000:.0f} ms, "
          f"max {latencies[-1] * 1000:.0f} ms")
    print(f"connects {t.connects}, failed sessions {t.connect_failures} {dict(t.failures)}, "
          f"steady clients dropped {t.steady_drops}")
    print(f"attack rounds {dict(soak.attack_rounds)}")
    if soak.attack_errors:
        print(f"attacks cut off by the server {dict(soak.attack_errors)}")
    print(f"tracebacks in the server log {tracebacks}; load average at start {load_start[0]:.2f}, "
          f"at end {os.getloadavg()[0]:.2f}")
    ok = abs(change) <= 10 and result["fds_end"] <= result["fds_start"] and result["lost"] == 0 \
        and t.refused == 0 and t.timed_out == 0 and t.steady_drops == 0 and tracebacks == 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


async def attack_loop(port: int, secret: str, count: int) -> None:
    """The hostile process: `count` attackers looping the corpus until SIGTERM; prints a JSON report."""
    def token(user_id: int) -> str:
        now = int(time.time())
        return jwt.encode({"sub": str(user_id), "iat": now, "exp": now + 24 * 3600}, secret, algorithm="HS256")

    attacker = attacks.Attacker(port, token)
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    rounds: dict[str, int] = defaultdict(int)
    errors: dict[str, int] = defaultdict(int)

    async def one(index: int) -> None:
        await asyncio.sleep(index * 3)
        while not stopping.is_set():
            for name, attack in attacks.CORPUS:
                if stopping.is_set():
                    return
                try:
                    await asyncio.wait_for(attack(attacker), 120)
                    rounds[name] += 1
                except Exception as exc:  # an attack may be cut off by the server: that is its answer
                    errors[f"{name}: {type(exc).__name__}"] += 1
                await asyncio.sleep(1)

    await asyncio.gather(*(one(i) for i in range(count)))
    print(json.dumps({"rounds": rounds, "errors": errors}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds measured after the warm-up")
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--warmup", type=float, default=180.0, help="seconds before the first figure")
    parser.add_argument("--hostile", type=int, default=3)
    parser.add_argument("--probe", default="", help="run the server under bench/soak_probe.py, writing to this "
                        "file at every RSS sample (object types and containers that grew)")
    parser.add_argument("--attack", type=int, default=0, help=argparse.SUPPRESS)  # the hostile process: port
    parser.add_argument("--secret", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack:
        asyncio.run(attack_loop(args.attack, args.secret, args.hostile))
        return 0
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(main_async(args))
    return uvloop.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
