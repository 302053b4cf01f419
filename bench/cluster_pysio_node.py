"""The reference peer for the cluster benchmark: python-socketio with AsyncRedisManager.

The same behaviour as `bench/cluster_node.py` (the shared harness's chat: join-study,
message broadcast to the room), on python-socketio 5.x / aiohttp, the nodes sharing rooms
through `AsyncRedisManager` (one Redis channel that every node reads). Private port for
stats, shared SO_REUSEPORT port once the --go file exists.
"""

from __future__ import annotations

import argparse
import datetime

import socketio
from aiohttp import web
from cluster_common import serve_until_stopped


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--private-port", type=int, required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--go", required=True)
    args = parser.parse_args()
    counts = {"messages": 0, "seq": 0}
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=socketio.AsyncRedisManager(args.redis_url))
    app = web.Application()
    sio.attach(app)

    @sio.on("join-study")
    async def join_study(sid: str, data: object) -> None:
        if isinstance(data, dict) and data.get("studyId") is not None:
            await sio.enter_room(sid, f"study:{data['studyId']}")

    @sio.on("message")
    async def message(sid: str, data: object) -> None:
        if not isinstance(data, dict) or data.get("studyId") is None:
            return
        counts["messages"] += 1
        counts["seq"] += 1
        await sio.emit("message", {"id": counts["seq"], "content": data.get("content"), "user": {"id": sid},
                                   "createdAt": datetime.datetime.now(datetime.UTC).isoformat()},
                       room=f"study:{data['studyId']}")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"messages": counts["messages"], "ready": True})

    app.router.add_get("/bench/stats", stats)
    app.router.add_get("/readyz", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.private_port).start()

    async def open_shared_port() -> None:
        await web.TCPSite(runner, "127.0.0.1", args.port, reuse_port=True).start()

    await serve_until_stopped(args.go, open_shared_port)
    await runner.cleanup()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
