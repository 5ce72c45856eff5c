"""The router's upstream HTTP/1.1 client (router/upstream.py) against a real asyncio server on loopback: bodies by
Content-Length, chunked SSE and until-close, repeated headers, connection reuse, read pausing on a large body, broken
and malformed answers, the connection limit, deadlines, and a reused connection the runtime closed meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from router.upstream import BadResponse, ConnectFailed, Disconnected, UpstreamPool

BIG = bytes(range(256)) * 8192  # 2 MiB: more than the client reads ahead before pausing


@dataclass
class Runtime:
    base: str
    connections: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


async def _answer(path: bytes, body: bytes, writer: asyncio.StreamWriter, nth: int) -> bool:
    """Write the answer for `path`; False when the connection is to be closed afterwards."""
    if path == b"/cl":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-A: 1\r\nX-A: 2\r\n\r\n%s" % (len(body), body))
    elif path == b"/chunked":
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n")
        for i in range(3):
            event = b'data: {"i": %d}\n\n' % i
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
    elif path == b"/big":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BIG), BIG))
    elif path == b"/until-close":
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-close-body")
        return False
    elif path == b"/cut":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        return False
    elif path == b"/garbage":
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    elif path == b"/hang":
        await asyncio.sleep(30)
    elif path == b"/second-dropped" and nth >= 2:
        return False  # a keep-alive timeout racing the reuse: read, then closed without a word
    elif path == b"/second-dropped":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    elif path == b"/never":
        return False
    return True


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    state = Runtime("")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        nth = 0
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                nth += 1
                length = next(int(v) for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n"))
                              if k.lower() == b"content-length")  # fmt: skip
                body = await reader.readexactly(length)
                if not await _answer(head.split(b" ")[1], body, writer, nth):
                    break
                await writer.drain()
        writer.close()

    def track(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(handle(reader, writer))
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)

    server = await asyncio.start_server(track, "127.0.0.1", 0)
    state.base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield state
    finally:
        server.close()
        for task in list(state.tasks):
            task.cancel()
        await asyncio.gather(*state.tasks, return_exceptions=True)


async def test_bodies_headers_and_reuse(runtime: Runtime) -> None:
    pool = UpstreamPool(limit=2, connect_timeout_s=1.0)
    try:
        r = await pool.post(runtime.base, "/cl", b"hello", {"Content-Type": "application/json"})
        assert r.status == 200 and r.content_length == 5
        assert [v for k, v in r.headers if k == "X-A"] == ["1", "2"]
        assert await r.read() == b"hello"
        r.release()
        r = await pool.post(runtime.base, "/chunked", b"x", {})
        chunks = []
        while chunk := await r.readany():
            chunks.append(chunk)
        assert chunks == [b'data: {"i": %d}\n\n' % i for i in range(3)]  # each event as it arrived
        r.release()
        r = await pool.post(runtime.base, "/big", b"x", {})
        await asyncio.sleep(0.2)  # the client pauses reading rather than buffering all of it
        assert await r.read() == BIG
        r.release()
        assert runtime.connections == 1 and pool._open == 1  # one connection served all three
        r = await pool.post(runtime.base, "/until-close", b"x", {})
        assert await r.read() == b"until-close-body"
        r.release()
    finally:
        await pool.close()
    assert pool._open == 0


async def test_broken_and_malformed_answers(runtime: Runtime) -> None:
    pool = UpstreamPool(limit=2, connect_timeout_s=1.0)
    try:
        r = await pool.post(runtime.base, "/cut", b"x", {})
        with pytest.raises(Disconnected, match="before the answer was complete"):
            await r.read()
        r.close()
        with pytest.raises(BadResponse, match="malformed response"):
            await pool.post(runtime.base, "/garbage", b"x", {})
        with pytest.raises(ConnectFailed, match="connect failed"):
            await pool.post("http://127.0.0.1:1", "/x", b"", {})
        with pytest.raises(ValueError, match="line break"):
            await pool.post(runtime.base, "/cl", b"", {"X-Bad": "a\r\nInjected: 1"})
    finally:
        await pool.close()


async def test_limit_waiters_and_deadlines(runtime: Runtime) -> None:
    pool = UpstreamPool(limit=2, connect_timeout_s=1.0)
    loop = asyncio.get_running_loop()
    try:
        hung = [asyncio.ensure_future(pool.post(runtime.base, "/hang", b"x", {})) for _ in range(2)]
        await asyncio.sleep(0.1)
        t0 = loop.time()
        with pytest.raises(TimeoutError):  # waiting for a pooled connection counts against the deadline
            await pool.post(runtime.base, "/cl", b"x", {}, loop.time() + 0.2)
        assert 0.15 < loop.time() - t0 < 1.0 and not pool._waiters
        third = asyncio.ensure_future(pool.post(runtime.base, "/cl", b"y", {}))
        await asyncio.sleep(0.1)
        assert not third.done()  # at the limit: waits
        hung[0].cancel()  # an aborted request frees its connection
        r = await asyncio.wait_for(third, 2)
        assert await r.read() == b"y"
        r.release()
        hung[1].cancel()
        await asyncio.sleep(0.05)
        t0 = loop.time()
        with pytest.raises(TimeoutError):  # and so does waiting for the head
            await pool.post(runtime.base, "/hang", b"x", {}, loop.time() + 0.2)
        assert 0.15 < loop.time() - t0 < 1.0
    finally:
        await pool.close()
    assert pool._open == 0


async def test_a_reused_connection_closed_by_the_runtime_is_retried_once_on_a_new_one(runtime: Runtime) -> None:
    pool = UpstreamPool(limit=4, connect_timeout_s=1.0)
    try:
        r = await pool.post(runtime.base, "/second-dropped", b"x", {})
        assert await r.read() == b"ok"
        r.release()
        r = await pool.post(runtime.base, "/second-dropped", b"x", {})  # reused, dropped, sent again on a new one
        assert await r.read() == b"ok"
        r.release()
        assert runtime.connections == 2
        with pytest.raises(Disconnected):  # sent again at most once: a new connection dropped too is an error
            await pool.post(runtime.base, "/never", b"x", {})
        assert runtime.connections == 3
    finally:
        await pool.close()
