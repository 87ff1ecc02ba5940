"""The example service: replace it with your own program.

The contract with slurm-persist is small: listen where the agent says and
answer GET /health with 200 once ready. The agent sets SLURM_PERSIST_SOCKET,
a Unix socket in a directory only you can enter (the default), or HOST and
PORT, a loopback port (with `listen = "tcp"`, for servers that cannot use a
socket). The agent's gate is what the cluster sees. Everything else is yours.
"""

import asyncio
import os
import shutil
import socket
import time

from aiohttp import web

STARTED = time.time()


async def nvidia_smi() -> str:
    if not shutil.which("nvidia-smi"):
        return "no nvidia-smi on this node"
    proc = await asyncio.create_subprocess_exec(
        "nvidia-smi", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return out.decode(errors="replace")


def job_info() -> dict:
    return {
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "node": os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
        "uptime_seconds": round(time.time() - STARTED, 1),
        "time_left_seconds": time_left(),
    }


def time_left():
    end = os.environ.get("SLURM_PERSIST_JOB_END")
    return round(float(end) - time.time()) if end else None


async def index(request: web.Request) -> web.Response:
    return web.json_response({**job_info(), "nvidia_smi": await nvidia_smi()})


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(body=body, content_type=request.content_type,
                        headers={"X-Job-Id": job_info()["job_id"] or ""})


async def data(request: web.Request) -> web.StreamResponse:
    """GET /bytes?n=N streams N bytes: a download to measure."""
    remaining = int(request.query.get("n", "0"))
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream",
                                            "Content-Length": str(remaining)})
    await response.prepare(request)
    block = b"x" * (1 << 20)
    while remaining > 0:
        await response.write(block[:remaining])
        remaining -= len(block)
    return response


async def upload(request: web.Request) -> web.Response:
    """POST /upload reads the body and answers its size: an upload to measure."""
    got = 0
    async for chunk in request.content.iter_any():
        got += len(chunk)
    return web.json_response({"bytes": got})


async def work(request: web.Request) -> web.Response:
    """GET /work?ms=N computes for N ms, holding the event loop as a model's
    forward pass holds its GPU or the GIL: a CPU-bound endpoint."""
    until = time.perf_counter() + int(request.query.get("ms", "20")) / 1000
    spins = 0
    while time.perf_counter() < until:
        spins += 1
    return web.json_response({"spins": spins, **job_info()})


async def websocket(request: web.Request) -> web.WebSocketResponse:
    """GET /ws echoes each message, prefixed with the job that answered."""
    ws = web.WebSocketResponse(heartbeat=None)
    await ws.prepare(request)
    async for message in ws:
        if message.type == web.WSMsgType.TEXT:
            await ws.send_str(f"{job_info()['job_id']}:{message.data}")
    return ws


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, **job_info()})


def app() -> web.Application:
    application = web.Application(client_max_size=1024 ** 3)
    application.add_routes([web.get("/", index), web.post("/", echo),
                            web.post("/echo", echo), web.get("/health", health),
                            web.get("/bytes", data), web.get("/ws", websocket),
                            web.get("/work", work),
                            web.post("/upload", upload)])
    return application


if __name__ == "__main__":
    # Idle keep-alive clients (a dashboard's, a frontend's pool) are kept 5
    # minutes rather than aiohttp's 75 s.
    where = ({"path": os.environ["SLURM_PERSIST_SOCKET"]} if "SLURM_PERSIST_SOCKET" in os.environ
             else {"host": os.environ["HOST"], "port": int(os.environ["PORT"])})
    web.run_app(app(), print=None, backlog=1024, keepalive_timeout=300, **where)
