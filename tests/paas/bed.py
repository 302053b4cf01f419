"""The PaaS test bed: a Procfile app as the strictest platform runs it, on loopback.

- `RedisProcess`: a real redis-server, plain or TLS with a self-signed CA made by the test
  (`make_tls_files`, the `openssl` CLI), optionally with a user and password.
- `CoupServe`: one `coup serve` process (a dyno), on a fixed port, so it can be stopped
  (SIGTERM), killed (SIGKILL) and started again where it served, by its PID.
- `PeerTrap` / `ClosedPort`: what each node advertises as COUP_PUBLIC_ADDRESS. A trap
  accepts and never answers ("hang") or resets at once ("reset") and counts connections; a
  closed port refuses. Any node that tries to reach another gets nowhere, and the count
  shows whether one tried.
- `Haproxy`: a real HAProxy, ``balance roundrobin``, no stickiness (every HTTP request
  picks the next node), ``timeout tunnel`` for WebSockets; its log says which node served
  every request.
- `Bed`: all of it together, with the schema brought up by the Procfile's `release:` line
  and the demo data seeded once (`coup seed-demo`).

Everything is synchronous (subprocesses and threads), so both asyncio tests and
Playwright's sync API can use one bed. Logs go to test-artifacts/paas/.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tornado.testing import bind_unused_port

from coup.domain.auth import TokenService
from tests.demo.proxy import haproxy_path
from tests.waiting import eventually_sync as wait_for

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "paas"
JWT_SECRET = "paas-bed-jwt-secret-0123456789-abcdefghijklmnop"
SERVICE_TOKEN = "paas-bed-service-token-0123456789"
#: variables of the developer's shell that would change what a node is
_NODE_ENV_DROP = ("REDIS_URL", "DATABASE_URL", "JWT_SECRET", "PORT", "HOST", "PYTHONPATH",
                  "DYNO", "FLY_APP_NAME", "RENDER", "RAILWAY_ENVIRONMENT", "K_SERVICE")


def free_port() -> int:
    sock, port = bind_unused_port()
    sock.close()
    return port


def http_get(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """(status, body); status 0 when nothing answered."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


# ---------------------------------------------------------------------------- TLS material


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path
    #: a client certificate signed by the same CA (for servers that ask for one)
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_tls_files(directory: Path) -> TlsFiles:
    """A throw-away CA and a server certificate for 127.0.0.1/localhost, as a PaaS add-on has
    (self-signed: no public CA vouches for it)."""
    directory.mkdir(parents=True, exist_ok=True)
    curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=CoUp test CA", cwd=directory)
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                          "extendedKeyUsage=serverAuth\n")
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        _openssl("req", *curve, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=coup {name}",
                 cwd=directory)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=directory)
    return TlsFiles(ca=directory / "ca.crt", cert=directory / "server.crt", key=directory / "server.key",
                    client_cert=directory / "client.crt", client_key=directory / "client.key")


# ---------------------------------------------------------------------------- Redis


class RedisProcess:
    """redis-server on a free loopback port: plain, or TLS only (``--port 0 --tls-port P``)."""

    def __init__(self, workdir: Path, *, tls: TlsFiles | None = None, client_certs: bool = False,
                 user: str | None = None, password: str | None = None) -> None:
        self.port = free_port()
        self.tls = tls
        self.client_certs = client_certs
        self.user = user
        self.password = password
        self.log_path = workdir / f"redis-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, query: str = "", *, credentials: bool = True) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = ""
        if credentials and self.password:
            auth = f"{self.user or ''}:{self.password}@"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0" + (f"?{query}" if query else "")

    def start(self) -> RedisProcess:
        args = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--loglevel", "warning",
                "--logfile", str(self.log_path)]
        if self.tls is None:
            args += ["--port", str(self.port)]
        else:
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.cert),
                     "--tls-key-file", str(self.tls.key), "--tls-ca-cert-file", str(self.tls.ca),
                     "--tls-auth-clients", "yes" if self.client_certs else "no"]
        if self.password:
            args += ["--requirepass", self.password]
            if self.user:
                args += ["--user", self.user, "on", f">{self.password}", "~*", "&*", "+@all"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.cli("PING") == "PONG", timeout=10, what=f"redis-server on port {self.port}")
        return self

    def cli(self, *command: str) -> str:
        args = ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port)]
        if self.tls is not None:
            args += ["--tls", "--cacert", str(self.tls.ca)]
            if self.client_certs:
                args += ["--cert", str(self.tls.client_cert), "--key", str(self.tls.client_key)]
        if self.password:
            args += ["--no-auth-warning", "-a", self.password] + (["--user", self.user] if self.user else [])
        result = subprocess.run([*args, *command], capture_output=True, text=True, timeout=5)
        return result.stdout.strip()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


# ---------------------------------------------------------------------------- unusable peer addresses


class PeerTrap:
    """A loopback listener standing where another node would dial this one.

    ``hang``: accepts and never answers (a firewall that drops, a half-dead peer); ``reset``:
    accepts and resets at once (a refusal the test can count). `connections` counts them all.
    """

    def __init__(self, mode: str) -> None:
        assert mode in ("hang", "reset")
        self.mode = mode
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.connections = 0
        self._held: list[socket.socket] = []
        self._running = True
        self._thread = threading.Thread(target=self._serve, name=f"trap-{self.port}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while self._running:
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            if self.mode == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
            else:
                self._held.append(conn)  # never read, never answered

    def probe(self) -> str:
        """What a node dialling this address gets: "no answer" or "reset" (not counted)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.settimeout(1.0)
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                data = sock.recv(1)
        except TimeoutError:
            result = "no answer"
        except ConnectionResetError:
            result = "reset"
        else:
            result = "reset" if data == b"" else f"answered {data!r}"
        wait_for(lambda: self.connections > 0, timeout=5, what="the trap to see the probe")
        self.connections -= 1
        return result

    def close(self) -> None:
        self._running = False
        self._listener.close()
        self._thread.join(timeout=5)
        for conn in self._held:
            conn.close()


class ClosedPort:
    """A loopback port held bound but never listening: every connection to it is refused."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.connections = None  # nothing to count: the kernel refuses for us

    def probe(self) -> str:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
        except ConnectionRefusedError:
            return "refused"
        return "accepted"

    def close(self) -> None:
        self._sock.close()


# ---------------------------------------------------------------------------- nodes


class CoupServe:
    """One `coup serve` process (a web dyno) on a fixed loopback port.

    `stop()` is the platform's SIGTERM, `kill()` its SIGKILL; `start()` again serves on the
    same port with the same environment (a dyno restart). Every signal goes to `pid`.
    """

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, *,
                 program: tuple[str, ...] = (sys.executable, "-m", "coup"), args: tuple[str, ...] = (),
                 cwd: Path = ROOT) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        #: `program serve *args --host 127.0.0.1 --port PORT`, run in `cwd`
        self.command = [*program, "serve", *args, "--host", "127.0.0.1", "--port", str(self.port)]
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} is not running"
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> CoupServe:
        assert not self.alive, f"{self.name} already runs"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT)
        return self

    def ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.process.returncode}: {self.log_tail()}")
        return http_get(f"{self.url}/readyz")[0] == 200

    def wait_ready(self, timeout: float = 30.0) -> None:
        try:
            wait_for(self.ready, timeout=timeout, what=f"{self.name} /readyz 200", poll=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.log_tail()}") from None

    def _signal(self, sig: int, wait: float) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            os.kill(self.pid, sig)
            try:
                self.process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)  # the platform's SIGKILL after its grace period
                self.process.wait(timeout=10)
        return self.process.returncode

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds (Heroku: 30); the exit code."""
        return self._signal(signal.SIGTERM, grace)

    def kill(self) -> int | None:
        return self._signal(signal.SIGKILL, 10)

    def restart(self, timeout: float = 30.0) -> None:
        self.stop()
        self.start()
        self.wait_ready(timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


# ---------------------------------------------------------------------------- the router


#: one request in HAProxy's `option httplog` line: backend/server ... "METHOD URI HTTP/x"
_HTTPLOG = re.compile(r' (?P<backend>[\w-]+)/(?P<server>[\w<>-]+) (?P<timers>\S+) (?P<status>-?\d+) '
                      r'.*?"(?P<method>[A-Z]+) (?P<uri>\S+) HTTP/')


class Haproxy:
    """HAProxy in front of the nodes: round-robin per request, no affinity, as a PaaS router."""

    def __init__(self, servers: list[tuple[str, int]], workdir: Path, *, health_checks: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "haproxy.cfg"
        self.log_path = workdir / "haproxy.log"
        check = " check inter 500ms fall 1 rise 1" if health_checks else ""
        backends = "\n".join(f"    server {name} 127.0.0.1:{port}{check}" for name, port in servers)
        self.config_path.write_text(f"""\
global
    log stdout format raw local0 info
    maxconn 4096

defaults
    mode http
    log global
    option httplog
    option forwardfor
    timeout connect 2s
    # long-polls are held up to the ping interval (25 s); WebSockets live in the tunnel
    timeout client 90s
    timeout server 90s
    timeout tunnel 1h

frontend web
    bind 127.0.0.1:{self.port}
    default_backend nodes

backend nodes
    # the next node for every request, whatever connection it came on: no cookie, no stick table
    balance roundrobin
{"    option httpchk GET /readyz" if health_checks else ""}
{backends}
""")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Haproxy:
        executable = haproxy_path()
        assert executable is not None, "haproxy is not installed"
        subprocess.run([executable, "-c", "-q", "-f", str(self.config_path)], check=True, timeout=30)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([executable, "-db", "-f", str(self.config_path)], stdout=log,
                                            stderr=subprocess.STDOUT)
        wait_for(lambda: http_get(f"{self.url}/healthz")[0] == 200, timeout=15, what="haproxy to route")
        return self

    def requests(self) -> list[dict[str, str]]:
        """Every request HAProxy logged so far (once answered): backend, server, status, method, uri."""
        if not self.log_path.exists():
            return []
        found = (_HTTPLOG.search(line) for line in self.log_path.read_text(errors="replace").splitlines())
        return [m.groupdict() for m in found if m]

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None


# ---------------------------------------------------------------------------- the bed


def node_env(redis_url: str, database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a deploy's processes: this shell's, minus anything that would change
    what a node is, plus the add-ons' URLs and the app's settings (`coup` first on PATH)."""
    base = {k: v for k, v in os.environ.items() if k not in _NODE_ENV_DROP and not k.startswith("COUP_")}
    return {
        **base, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '/usr/bin:/bin')}",
        "DATABASE_URL": database_url, "REDIS_URL": redis_url, "JWT_SECRET": JWT_SECRET,
        "COUP_REDIS_PREFIX": "paas" + secrets.token_hex(3), "COUP_SERVICE_TOKEN": SERVICE_TOKEN,
        "COUP_MESSAGE_RATE": "1000", "COUP_MESSAGE_BURST": "1000", "COUP_LOG_LEVEL": "INFO",
        **extra,
    }


def procfile_command(kind: str) -> str:
    """The command of one process type in the repository's Procfile (``release``, ``web``)."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() == kind:
            return command.strip()
    raise AssertionError(f"the Procfile has no {kind}: line")


class Bed:
    """Three `coup serve` nodes on one Redis and one PostgreSQL, behind HAProxy, each node
    advertising an address nobody can use. `url` is the router, as clients see the app.

    A platform's restarts, by PID: ``bed.nodes[1].stop()`` (SIGTERM, SIGKILL after 30 s),
    ``.kill()`` (SIGKILL), ``.start()`` / ``.restart()`` (same port, same environment),
    ``.wait_ready()``. With ``health_checks=True`` HAProxy stops sending requests to a node
    whose ``/readyz`` fails (within 0.5 s), as a router stops routing to a stopped dyno;
    without, requests for a stopped node get 503 from HAProxy.
    """

    def __init__(self, workdir: Path, redis_url: str, database_url: str, *, nodes: int = 3,
                 health_checks: bool = False, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.redis_url = redis_url
        self.database_url = database_url
        self.tokens = TokenService(JWT_SECRET)
        kinds: list[Callable[[], PeerTrap | ClosedPort]] = [
            lambda: PeerTrap("hang"), lambda: PeerTrap("reset"), ClosedPort]
        #: where each node says it can be reached: every one unusable
        self.traps = [kinds[i % len(kinds)]() for i in range(nodes)]
        self.base_env = node_env(redis_url, database_url, **(env or {}))
        self.nodes = [CoupServe(f"n{i}", {**self.base_env, "COUP_NODE_ID": f"n{i}",
                                          "COUP_PUBLIC_ADDRESS": self.traps[i].address}, workdir)
                      for i in range(nodes)]
        self.router = Haproxy([(n.name, n.port) for n in self.nodes], workdir, health_checks=health_checks)

    @property
    def url(self) -> str:
        return self.router.url

    def start(self) -> Bed:
        release = subprocess.run(["bash", "-c", procfile_command("release")], cwd=ROOT, env=self.base_env,
                                 capture_output=True, text=True, timeout=120)
        assert release.returncode == 0, f"release phase failed: {release.stderr}"
        seed = subprocess.run([sys.executable, "-m", "coup", "seed-demo"], cwd=ROOT, env=self.base_env,
                              capture_output=True, text=True, timeout=120)
        assert seed.returncode == 0, f"coup seed-demo failed: {seed.stderr}"
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_ready()
        wait_for(lambda: all(len(self.cluster_view(n)["nodes"]) == len(self.nodes) for n in self.nodes),
                 timeout=15, what="every node to see the whole cluster")
        self.router.start()
        return self

    def close(self) -> None:
        self.router.stop()
        # all at once: each drains in a few seconds, one after the other they added up
        with concurrent.futures.ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda node: node.stop(grace=15), self.nodes))
        for trap in self.traps:
            trap.close()

    # ---- what the test asserts on

    def cluster_view(self, node: CoupServe) -> dict[str, Any]:
        status, body = http_get(f"{node.url}/api/cluster", headers={"Authorization": f"Bearer {SERVICE_TOKEN}"})
        assert status == 200, (status, body)
        return dict(json.loads(body))

    def room_owner(self, node: CoupServe, room: str) -> str:
        """The node that runs `room`'s commands, as `node` sees it (its lease's holder, or the ring's)."""
        status, body = http_get(f"{node.url}/api/cluster/owner?room={room}",
                                headers={"Authorization": f"Bearer {SERVICE_TOKEN}"})
        assert status == 200, (status, body)
        return str(json.loads(body)["node"])

    def diagnosis(self, since: int = 0) -> str:
        """For a failing test: the router's answers since request `since`, and the nodes' warnings."""
        requests = self.router.requests()[since:]
        statuses = Counter(f"{r['status']} {r['method']} {r['uri'].split('?')[0]}" for r in requests)
        lines = [f"router answers: {dict(statuses)}"]
        for node in self.nodes:
            warnings = [line for line in node.log_text().splitlines()
                        if " WARNING " in line or (" ERROR " in line and "tornado.access" not in line)]
            lines += [f"{node.name}: {line}" for line in warnings[-8:]]
        return "\n".join(lines)

    def token(self, user_id: int) -> str:
        return self.tokens.issue(user_id, ttl=3600)

    def peer_dials(self) -> dict[str, int | None]:
        """Connections the nodes opened to each other's advertised address (None: a closed port)."""
        return {node.name: trap.connections for node, trap in zip(self.nodes, self.traps, strict=True)}

    def messages(self, study_id: int, after_seq: int = 0) -> list[dict[str, Any]]:
        """Stored messages of a study after `after_seq`, in seq order, straight from PostgreSQL."""
        import psycopg2

        with contextlib.closing(psycopg2.connect(self.database_url)) as conn, conn.cursor() as cur:
            cur.execute("SELECT id, seq, user_id, content, client_message_id FROM messages "
                        "WHERE study_id = %s AND seq > %s ORDER BY seq", (study_id, after_seq))
            return [{"id": r[0], "seq": r[1], "userId": r[2], "content": r[3], "clientMessageId": r[4]}
                    for r in cur.fetchall()]

    def last_seq(self, study_id: int) -> int:
        rows = self.messages(study_id)
        return rows[-1]["seq"] if rows else 0

    def spread(self, path: str, since: int = 0) -> dict[str, Counter[str]]:
        """For each Engine.IO / SockJS session seen at `path` in the router's requests from
        number `since` on: how many of its requests each node served."""
        sessions: dict[str, Counter[str]] = defaultdict(Counter)
        for request in self.router.requests()[since:]:
            uri = request["uri"]
            if not uri.startswith(path):
                continue
            sid = re.search(r"[?&]sid=([^&]+)", uri)
            sockjs = re.match(re.escape(path) + r"/[^/]+/([^/]+)/", uri)
            key = sid.group(1) if sid else sockjs.group(1) if sockjs else None
            if key:
                sessions[key][request["server"]] += 1
        return dict(sessions)


def tools_missing() -> list[str]:
    missing = [tool for tool in ("redis-server", "redis-cli", "openssl") if shutil.which(tool) is None]
    return missing if haproxy_path() is not None else [*missing, "haproxy"]
