"""Run Autobahn|Testsuite's fuzzingclient against our WebSocket layer and summarise the result.

    python tests/conformance/run_autobahn.py [--wstest /work/autobahn/venv/bin/wstest] [--cases 1.*,2.*]

Starts `autobahn_echo.py` on a free loopback port (maximum message 16 MiB + 1 KiB and
65,536 fragments, so that section 9's 16 MiB messages and its 4 MiB message in 64-byte
fragments fit) with permessage-deflate on and a threshold of 0 (every message compressed, so
sections 12 and 13 test our codec on every size), writes a spec for sections 1-7, 9, 10, 12
and 13, runs ``wstest -m fuzzingclient``, and prints the count of each
verdict per section and every case that is not OK or INFORMATIONAL. Exit status 1 when any
case in those sections is FAILED, NON-STRICT or UNIMPLEMENTED.

Autobahn is not part of this repository; docs/autobahn.md says how to install it (Python
2.7 virtualenv) and records the last result. Reports go to ``--out`` (default a temp dir).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_WSTEST = os.environ.get("AUTOBAHN_WSTEST", "/work/autobahn/venv/bin/wstest")
CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*", "12.*", "13.*"]
MAX_PAYLOAD = 16 * 1024 * 1024 + 1024
MAX_FRAGMENTS = 100_000
BAD = ("FAILED", "NON-STRICT", "UNIMPLEMENTED", "WRONG CODE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the echo server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wstest", default=DEFAULT_WSTEST)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case patterns")
    parser.add_argument("--out", default=None, help="report directory (default: a temporary one)")
    parser.add_argument("--threshold", type=int, default=0, help="compression threshold of the echo (bytes)")
    parser.add_argument("--no-compression", action="store_true", help="decline permessage-deflate")
    args = parser.parse_args()
    if not Path(args.wstest).exists():
        print(f"wstest not found at {args.wstest}; see docs/autobahn.md", file=sys.stderr)
        return 2
    out = Path(args.out or tempfile.mkdtemp(prefix="autobahn-"))
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    spec = {
        "outdir": str(out / "reports"),
        "servers": [{"agent": "coup", "url": f"ws://127.0.0.1:{port}/"}],
        "cases": args.cases.split(","),
        "exclude-cases": [],
        "exclude-agent-cases": {},
    }
    (out / "spec.json").write_text(json.dumps(spec, indent=2))
    echo = subprocess.Popen([sys.executable, str(HERE / "autobahn_echo.py"), "--port", str(port),
                             "--max-payload", str(MAX_PAYLOAD), "--max-fragments", str(MAX_FRAGMENTS),
                             "--threshold", str(args.threshold)]
                            + ([] if args.no_compression else ["--compression"]))
    try:
        wait_listening(port, time.monotonic() + 20)
        started = time.monotonic()
        subprocess.run([args.wstest, "-m", "fuzzingclient", "-s", "spec.json"], cwd=out, check=True,
                       stdout=subprocess.DEVNULL)
        elapsed = time.monotonic() - started
    finally:
        echo.send_signal(signal.SIGTERM)
        try:
            echo.wait(timeout=10)
        except subprocess.TimeoutExpired:
            echo.kill()
            echo.wait()
    index = json.loads((out / "reports" / "index.json").read_text())["coup"]
    per_section: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    bad: list[str] = []
    for case, result in sorted(index.items(), key=lambda kv: [int(p) for p in kv[0].split(".")]):
        verdict = result["behavior"]
        close = result["behaviorClose"]
        per_section[case.split(".")[0]][verdict] += 1
        if verdict in BAD or close in BAD:
            bad.append(f"{case}: {verdict} (close {close})")
    print(f"Autobahn|Testsuite fuzzingclient, {len(index)} cases in {elapsed:.0f} s; reports in {out / 'reports'}")
    for section in sorted(per_section, key=int):
        counts = ", ".join(f"{k} {v}" for k, v in sorted(per_section[section].items()))
        print(f"  section {section}: {counts}")
    for line in bad:
        print(f"  {line}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
