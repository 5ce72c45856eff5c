"""The portal's listeners under uvicorn: the plain one and, with a mesh bind, the mesh listener — the same ASGI
application over TLS that requires a client certificate of the mesh CA. uvicorn leaves the peer certificate out of
the scope; `MeshWebSocketProtocol` puts it in as the ASGI TLS extension, where the agents' consumer reads it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.supervisors.multiprocess import Multiprocess

log = logging.getLogger("meshweb.meshlink")

_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def tls_extension(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> dict[str, Any] | None:
    """The ASGI TLS extension of a connection (https://asgi.readthedocs.io/en/latest/specs/tls.html); None when the
    connection is not TLS. Python hands over the peer's leaf certificate only, so the chain holds that one."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    chain: list[str] = []
    name = None
    if der:
        cert = x509.load_der_x509_certificate(der)
        chain.append(cert.public_bytes(serialization.Encoding.PEM).decode())
        name = cert.subject.rfc4514_string()
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": None,  # a certificate that does not verify ends the handshake before any request
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None,
    }


class MeshWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol (the sans-I/O one on the websockets library) plus the TLS extension in the
    scope."""

    async def run_asgi(self) -> None:
        # The handshake handler built the scope just before scheduling this task: the application has not seen it.
        tls = tls_extension(self.transport.get_extra_info("ssl_object"))
        if tls is not None:
            cast(dict[str, Any], self.scope)["extensions"]["tls"] = tls
        await super().run_asgi()


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path

    def stamp(self) -> tuple[int, ...]:
        out: list[int] = []
        for path in (self.cert, self.key):
            st = path.stat()
            out += [st.st_mtime_ns, st.st_size]
        return tuple(out)


def mesh_config(app: str, host: str, port: int, files: TlsFiles, workers: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        lifespan="off",
        access_log=False,
        ssl_certfile=str(files.cert),
        ssl_keyfile=str(files.key),
        ssl_ca_certs=str(files.ca),
        ssl_cert_reqs=ssl.CERT_REQUIRED,
        ws=MeshWebSocketProtocol,
    )


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # PortalServers stops every listener of the process on one signal


class PortalServers:
    """Every listener of one portal process in one event loop; picklable, so uvicorn's worker processes run it."""

    def __init__(self, configs: Sequence[uvicorn.Config], mesh_files: TlsFiles | None, reload_s: float = 10.0) -> None:
        self.configs = list(configs)
        self.mesh_files = mesh_files
        self.reload_s = reload_s

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        with asyncio.Runner(loop_factory=self.configs[0].get_loop_factory()) as runner:
            runner.run(self.serve(sockets))

    def serve_forever(self) -> None:
        """Serve in this process, or in `workers` processes sharing sockets bound here."""
        if self.configs[0].workers <= 1:
            self.run()
            return
        sockets = [config.bind_socket() for config in self.configs]
        Multiprocess(self.configs[0], target=self.run, sockets=sockets).run()

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        servers = [_Server(config) for config in self.configs]
        loop = asyncio.get_running_loop()

        def stop() -> None:
            for server in servers:
                server.force_exit = server.should_exit  # a second signal stops without waiting for connections
                server.should_exit = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        reload = None
        if self.mesh_files is not None:
            reload = asyncio.create_task(self._reload_certificate(self.configs[-1], self.mesh_files))
        try:
            await asyncio.gather(
                *(server.serve(sockets=[sockets[i]] if sockets else None) for i, server in enumerate(servers))
            )
        finally:
            if reload is not None:
                reload.cancel()

    async def _reload_certificate(self, config: uvicorn.Config, files: TlsFiles) -> None:
        """A renewed server certificate goes into the live SSL context: new handshakes present it."""
        stamp = files.stamp()
        while True:
            await asyncio.sleep(self.reload_s)
            try:
                now = files.stamp()
            except OSError:
                continue
            if now == stamp or config.ssl is None:
                continue
            try:
                config.ssl.load_cert_chain(str(files.cert), str(files.key))
            except (OSError, ssl.SSLError):
                continue  # caught between the key and the certificate being replaced: next round
            stamp = now
            log.info("mesh listener serves the renewed certificate %s", files.cert)


def renew_in_background(renew: Callable[[], object], every_s: float) -> threading.Event:
    """Run `renew` every `every_s` seconds in a daemon thread until the returned event is set."""
    stop = threading.Event()

    def loop() -> None:
        from django.db import close_old_connections

        while not stop.wait(every_s):
            try:
                renew()
            except Exception:
                log.exception("renewing the mesh listener's certificate failed")
            finally:
                close_old_connections()

    threading.Thread(target=loop, name="mesh-cert-renewal", daemon=True).start()
    return stop
