"""Start routers (and small purpose-built upstream servers) as real processes on loopback for the router tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RouterProc:
    proc: subprocess.Popen[bytes]
    port: int
    grpc_port: int | None
    log_path: Path
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def router_config(targets: list[str], **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0, "grpc_port": None},
        "agent": {"address": None},
        "targets": [{"model": "demo-llm", "url": u, "runtime": "vllm", "node": f"n{i}"} for i, u in enumerate(targets)],
        "tenants": [
            {"name": "demo", "api_keys": ["demo-key"]},
            {"name": "other", "api_keys": ["other-key"]},
        ],
        "default_policy": {"strategy": "least_queue"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def start_router(
    cfg: dict[str, Any], tmp: Path, name: str = "router", timeout: float = 30.0, prefix: Sequence[str] = ()
) -> RouterProc:
    """`prefix`: argv that starts the router elsewhere (e.g. `ip netns exec NS`); it serves on `listen.host`."""
    cfg = json.loads(json.dumps(cfg))
    listen = cfg.setdefault("listen", {})
    if not listen.get("port"):
        listen["port"] = free_port()
    if listen.get("grpc_port") == 0:
        listen["grpc_port"] = free_port()
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log_path = tmp / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERMESH_ROUTER__")}
    env["PYTHONUNBUFFERED"] = "1"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "router", "--config", str(path)], stdout=log, stderr=log, cwd=ROOT, env=env
        )
    rp = RouterProc(proc, listen["port"], listen.get("grpc_port"), log_path, listen.get("host", "127.0.0.1"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"router exited with {proc.returncode}: {log_path.read_text()[-3000:]}")
        try:
            if httpx.get(rp.url + "/healthz", timeout=1.0).status_code == 200:
                return rp
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    rp.stop()
    raise RuntimeError(f"router did not become ready: {log_path.read_text()[-3000:]}")


@contextlib.contextmanager
def running_router(cfg: dict[str, Any], tmp: Path, name: str = "router") -> Iterator[RouterProc]:
    rp = start_router(cfg, tmp, name)
    try:
        yield rp
    finally:
        rp.stop()


# A tiny upstream with scripted misbehaviour, run as its own process: `python tests/router/procs.py upstream PORT`.
# Paths: /v1/chat/completions answers by the "mode" field of the request body.
_UPSTREAM = r"""
import asyncio, json, sys
from aiohttp import web

FIXED = [b"data: {\"id\":\"x\",\"choices\":[{\"delta\":{\"content\":\"he", b"llo\"}}]}\r\n\r\n",
         b"data: {\"id\":\"x\",\"choices\":[{\"delta\":{\"content\":\" w\\u00f6rld\"}}]}\n\n: comment\n\n",
         b"event: x\ndata: {\"id\":\"x\",\"choices\":[]}\n\n", b"data: [DONE]\n\n"]

async def raw(reader, writer):
    req = b""
    while b"\r\n\r\n" not in req:
        chunk = await reader.read(65536)
        if not chunk:
            return
        req += chunk
    head, _, rest = req.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(rest) < length:
        rest += await reader.read(65536)
    mode = json.loads(rest).get("mode", "fixed")
    if mode == "fixed":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in FIXED:
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(b"0\r\n\r\n")
    elif mode == "garbage":
        writer.write(b"this is not HTTP at all\r\n\r\n")
    elif mode == "bad_length":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"partial\":")
        await writer.drain()
    elif mode == "cut_stream":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        part = FIXED[0]
        writer.write(b"%x\r\n%s\r\n" % (len(part), part))
        await writer.drain()
        await asyncio.sleep(0.05)
    elif mode == "close":
        pass
    elif mode == "json":
        body = json.dumps({"object": "list", "data": [{"embedding": [0.5, 0.25], "index": 0}],
                           "usage": {"prompt_tokens": 2, "completion_tokens": 0}}).encode()
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        writer.write(head + body)
    elif mode == "status503":
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
    await writer.drain()
    writer.close()

async def main():
    srv = await asyncio.start_server(raw, "127.0.0.1", int(sys.argv[2]))
    print("listening", flush=True)
    async with srv:
        await srv.serve_forever()

asyncio.run(main())
"""


@contextlib.contextmanager
def scripted_upstream() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _UPSTREAM, "upstream", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert b"listening" in line, line
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


FIXED_STREAM = (
    b'data: {"id":"x","choices":[{"delta":{"content":"hello"}}]}\r\n\r\n'
    b'data: {"id":"x","choices":[{"delta":{"content":" w\\u00f6rld"}}]}\n\n: comment\n\n'
    b'event: x\ndata: {"id":"x","choices":[]}\n\n'
    b"data: [DONE]\n\n"
)

if __name__ == "__main__":
    raise SystemExit("import this module from the tests")
