"""The HTTP/1.1 client of the hop to runtimes: a keep-alive pool on asyncio transports, httptools parsing.

A general-purpose client costs more per request than the rest of the router's hot path together. This one does only
what the hop needs: a POST written with one `transport.write`, the answer's status and headers, and its body handed
over as it arrives (Content-Length, chunked, or until close), byte-exact. http:// and https:// runtimes (the router's
SVID from the live SSL context) share one pool with a global connection limit; idle connections are reused
last-in-first-out and closed after `keepalive_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

import httptools

_MAX_BUFFER = 1 << 20  # unread body bytes held before reading from the runtime pauses
_JOIN_MAX = 16 << 10  # request bodies up to this size are copied behind the head and sent in one write
_PATH_SAFE = "/:@!$&'()*+,;=-._~%?"


class UpstreamError(Exception):
    """The runtime could not be reached or broke its answer."""


class ConnectFailed(UpstreamError):
    def __init__(self, message: str, tls: bool = False) -> None:
        super().__init__(message)
        self.tls = tls


class Disconnected(UpstreamError):
    """The connection closed or reset before the answer was complete."""


class BadResponse(UpstreamError):
    """The runtime's bytes are not an HTTP/1.1 response."""


class Response:
    """One runtime answer; its body is read with `readany` (a chunk, b"" at the end) or `read` (the rest)."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_exc",
        "_size",
        "_timer",
        "_waiter",
        "complete",
        "content_length",
        "headers",
        "keep_alive",
        "status",
        "until_close",
    )

    def __init__(self, conn: _Conn) -> None:
        self._conn: _Conn | None = conn
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.content_length: int | None = None
        self.until_close = False  # neither Content-Length nor chunked: the body ends when the connection does
        self.complete = False
        self.keep_alive = False
        self._chunks: list[bytes] = []
        self._size = 0
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -- fed by the connection ------------------------------------------------------------------------------------
    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        conn = self._conn
        if self._size > _MAX_BUFFER and conn is not None and not conn.paused and conn.transport is not None:
            conn.paused = True
            conn.transport.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self.complete = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if not self.complete and self._exc is None:
            self._exc = exc
        self._wake()

    # -- read by the proxy ----------------------------------------------------------------------------------------
    async def readany(self) -> bytes:
        while True:
            if self._chunks:
                chunks = self._chunks
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                self._chunks = []
                self._size = 0
                conn = self._conn
                if conn is not None and conn.paused and conn.transport is not None:
                    conn.paused = False
                    conn.transport.resume_reading()
                return data
            if self.complete:
                return b""
            if self._exc is not None:
                raise self._exc
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    async def read(self) -> bytes:
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return b"".join(parts)

    def _expire(self) -> None:
        self._timer = None
        self._fail(TimeoutError())

    def disarm(self) -> None:
        """The first byte is in: the deadline given to `post` no longer applies (the caller bounds the stream)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def release(self) -> None:
        """Done with the answer: a complete keep-alive one returns its connection to the pool, others close it."""
        self.disarm()
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self.complete and self.keep_alive and self._exc is None:
            if conn.paused and conn.transport is not None:
                conn.paused = False
                conn.transport.resume_reading()
            conn.pool._put(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Abort unless the answer is complete: the runtime sees the connection drop and stops the request."""
        self.release()


class _Conn(asyncio.Protocol):
    __slots__ = ("closed", "counted", "idle_since", "key", "parser", "paused", "pool", "resp", "transport")

    def __init__(self, pool: UpstreamPool, key: tuple[str, int, bool]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.resp: Response | None = None
        self.closed = False
        self.counted = True  # holds one of the pool's connection slots
        self.paused = False
        self.idle_since = 0.0

    def close(self) -> None:
        if self.counted:
            self.counted = False
            self.pool._slot_freed()
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.Protocol -----------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.resp is None:  # bytes while idle (a 408, garbage): the connection is no longer usable
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            resp = self.resp
            if resp is not None:
                resp._fail(BadResponse(f"malformed response: {e}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        resp = self.resp
        if resp is not None and not resp.complete:
            if resp.status and resp.until_close and exc is None:
                resp._finish()
            else:
                why = f": {exc}" if exc is not None else ""
                resp._fail(Disconnected(f"runtime closed the connection before the answer was complete{why}"))
        if self.counted:
            self.counted = False
            self.pool._slot_freed()
        self.closed = True
        self.transport = None

    # -- httptools callbacks ----------------------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.resp is not None:
            self.resp.headers.append((name.decode("latin-1"), value.decode("utf-8", "replace")))

    def on_headers_complete(self) -> None:
        resp = self.resp
        if resp is None:
            return
        resp.status = self.parser.get_status_code()
        chunked = False
        for k, v in resp.headers:
            lk = k.lower()
            if lk == "content-length":
                with contextlib.suppress(ValueError):
                    resp.content_length = int(v)
            elif lk == "transfer-encoding":
                chunked = "chunked" in v.lower()
        if chunked:
            resp.content_length = None
        elif resp.content_length is None and resp.status not in (204, 304) and resp.status >= 200:
            resp.until_close = True
        resp._wake()

    def on_body(self, body: bytes) -> None:
        if self.resp is not None:
            self.resp._feed(body)

    def on_message_complete(self) -> None:
        resp = self.resp
        if resp is None:
            return
        resp.keep_alive = self.parser.should_keep_alive() and not resp.until_close
        self.resp = None
        resp._finish()


class UpstreamPool:
    """Keep-alive connections to runtimes, at most `limit` open in all."""

    def __init__(
        self,
        *,
        limit: int,
        connect_timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
        keepalive_s: float = 30.0,
    ) -> None:
        self.limit = limit
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self._ssl = ssl_context
        self._idle: dict[tuple[str, int, bool], list[_Conn]] = {}
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._routes: dict[tuple[str, str, str], tuple[tuple[str, int, bool], bytes]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    # -- requests -----------------------------------------------------------------------------------------------
    def _route(self, base: str, path: str, method: str = "POST") -> tuple[tuple[str, int, bool], bytes]:
        """(pool key, request line and Host header) of base+path, memoised: the set of targets and paths is small."""
        r = self._routes.get((base, path, method))
        if r is None:
            u = urlsplit(base + path)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise ConnectFailed(f"unsupported runtime URL {base!r}")
            tls = u.scheme == "https"
            port = u.port or (443 if tls else 80)
            host = u.hostname
            target = quote(u.path or "/", safe=_PATH_SAFE) + (f"?{u.query}" if u.query else "")
            host_hdr = f"[{host}]" if ":" in host else host
            if u.port is not None:
                host_hdr += f":{u.port}"
            line = f"{method} {target} HTTP/1.1\r\nHost: {host_hdr}\r\n".encode()
            if len(self._routes) > 4096:
                self._routes.clear()
            r = self._routes[(base, path, method)] = ((host, port, tls), line)
        return r

    async def post(
        self,
        base: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        deadline: float | None = None,
        method: str = "POST",
    ) -> Response:
        """Send one request (POST unless `method` says, e.g. GET for a follow-up) and return once the status line
        and headers are in; the body follows via the Response.

        `deadline` (event-loop time) bounds everything up to the first body byte: waiting for a pooled connection,
        connecting, the head, and reads until `Response.disarm`; past it, TimeoutError."""
        key, line = self._route(base, path, method)
        parts = [line, b"Content-Length: ", str(len(body)).encode(), b"\r\n"]
        for k, v in headers.items():
            if "\r" in v or "\n" in v:
                raise ValueError(f"header {k!r} has a line break")
            parts.append(f"{k}: {v}\r\n".encode())
        parts.append(b"\r\n")
        # A large body is written after the head as it is (no copy into one buffer); a small one joins the head so
        # that the request leaves in one write.
        request: tuple[bytes, ...]
        if len(body) > _JOIN_MAX:
            request = (b"".join(parts), body)
        else:
            parts.append(body)
            request = (b"".join(parts),)
        fresh = False
        while True:
            conn, reused = await self._acquire(key, deadline, fresh=fresh)
            resp = Response(conn)
            conn.resp = resp
            if deadline is not None:
                resp._timer = asyncio.get_running_loop().call_at(deadline, resp._expire)
            try:
                if conn.transport is None:
                    raise Disconnected("runtime closed the connection")
                if len(request) == 1:
                    conn.transport.write(request[0])
                else:
                    conn.transport.writelines(request)
                while not resp.status:
                    if resp._exc is not None:
                        raise resp._exc
                    resp._waiter = asyncio.get_running_loop().create_future()
                    await resp._waiter
            except BaseException as exc:
                resp.disarm()
                resp._conn = None
                conn.close()
                if isinstance(exc, Disconnected) and reused and not fresh:
                    # The runtime closed an idle connection just as it was reused (keep-alive timeouts race):
                    # nothing was answered, so send once more on a new connection.
                    fresh = True
                    continue
                raise
            return resp

    # -- the pool -------------------------------------------------------------------------------------------------
    async def _acquire(
        self, key: tuple[str, int, bool], deadline: float | None, fresh: bool = False
    ) -> tuple[_Conn, bool]:
        """A connection to `key` and whether it was reused from the idle ones (never, with `fresh`)."""
        if self._closed:
            raise ConnectFailed("the router is shutting down")
        if self._sweeper is None:
            self._schedule_sweep()
        while True:
            idle = self._idle.get(key)
            now = time.monotonic()
            while idle and not fresh:
                c = idle.pop()
                if not c.closed and now - c.idle_since < self.keepalive_s:
                    return c, True
                c.close()
            if self._open < self.limit:
                break
            if self._evict_one():
                continue
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            self._waiters.append(fut)
            timer = loop.call_at(deadline, _time_out, fut) if deadline is not None else None
            try:
                await fut
            finally:
                if timer is not None:
                    timer.cancel()
                if not fut.done():
                    fut.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
        self._open += 1
        return await self._connect(key, deadline), False

    async def _connect(self, key: tuple[str, int, bool], deadline: float | None) -> _Conn:
        host, port, tls = key
        loop = asyncio.get_running_loop()
        conn = _Conn(self, key)
        ctx: ssl.SSLContext | None = None
        if tls:
            ctx = self._ssl or _default_context()
        limit = self.connect_timeout_s
        if deadline is not None:
            limit = min(limit, deadline - loop.time())
        try:
            async with asyncio.timeout(limit):
                await loop.create_connection(lambda: conn, host, port, ssl=ctx, server_hostname=host if tls else None)
        except BaseException as e:
            conn.close()
            if isinstance(e, ssl.SSLError):
                raise ConnectFailed(f"TLS handshake failed: {e}", tls=True) from None
            if isinstance(e, OSError) and not isinstance(e, TimeoutError):
                raise ConnectFailed(f"connect failed: {e}") from None
            raise
        return conn

    def _put(self, conn: _Conn) -> None:
        if conn.closed or self._closed:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.key, []).append(conn)
        self._wake_one()

    def _slot_freed(self) -> None:
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _evict_one(self) -> bool:
        """At the limit: close an idle connection to another runtime so that this one can connect."""
        for conns in self._idle.values():
            while conns:
                conns.pop(0).close()
                return True
        return False

    def _schedule_sweep(self) -> None:
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(max(1.0, self.keepalive_s / 2), self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        for key, conns in list(self._idle.items()):
            keep = [c for c in conns if not c.closed and now - c.idle_since < self.keepalive_s]
            for c in conns:
                if c not in keep:
                    c.close()
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        if not self._closed:
            self._schedule_sweep()

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conns in self._idle.values():
            for c in conns:
                c.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports' close callbacks run


def _time_out(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


_default_ctx: ssl.SSLContext | None = None


def _default_context() -> ssl.SSLContext:
    """https:// runtime with no mesh identity configured: the system's trust store."""
    global _default_ctx
    if _default_ctx is None:
        _default_ctx = ssl.create_default_context()
    return _default_ctx
