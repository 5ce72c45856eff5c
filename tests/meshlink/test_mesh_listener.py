"""The mesh listener's TLS context: a renewed server certificate written to its files is loaded into the live context,
so new handshakes present it without a restart; a half-written pair is skipped until it matches."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

from agents.security.ca import CertificateAuthority, cert_pem, key_pem, load_certificate, new_key
from meshweb.meshlink.listener import PortalServers, TlsFiles, mesh_config


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Never called: the test talks TLS to the listener's context only."""


def write_pair(ca: CertificateAuthority, files: TlsFiles) -> int:
    key = new_key()
    cert = ca.issue(public_key=key.public_key(), node="portal-test", roles=[])
    files.key.write_bytes(key_pem(key))
    files.cert.write_bytes(cert_pem(cert))
    return int(cert.serial_number)


async def served_serial(port: int, client: ssl.SSLContext) -> int:
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="127.0.0.1")
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return int(load_certificate(der).serial_number)


async def test_a_renewed_certificate_is_served_without_a_restart(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", "unit.test")
    files = TlsFiles(tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca" / "ca.crt")
    first = write_pair(ca, files)
    config = mesh_config("tests.meshlink.test_mesh_listener:app", "127.0.0.1", 0, files, 1)
    config.load()
    assert config.ssl is not None and config.ssl.verify_mode == ssl.CERT_REQUIRED
    server = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0, ssl=config.ssl)
    port = server.sockets[0].getsockname()[1]
    client_key = new_key()
    (tmp_path / "client.pem").write_bytes(
        cert_pem(ca.issue(public_key=client_key.public_key(), node="node-a", roles=["gpu"]))
    )
    (tmp_path / "client.key").write_bytes(key_pem(client_key))
    client = ssl.create_default_context(cafile=str(files.ca))
    client.load_cert_chain(tmp_path / "client.pem", tmp_path / "client.key")
    reload = asyncio.create_task(PortalServers([config], files, reload_s=0.05)._reload_certificate(config, files))
    try:
        assert await served_serial(port, client) == first
        # Caught mid-rotation: a new key beside the old certificate is not loaded (the old pair keeps serving).
        files.key.write_bytes(key_pem(new_key()))
        await asyncio.sleep(0.2)
        assert await served_serial(port, client) == first
        second = write_pair(ca, files)
        for _ in range(100):
            if await served_serial(port, client) == second:
                break
            await asyncio.sleep(0.05)
        assert await served_serial(port, client) == second
    finally:
        reload.cancel()
        server.close()
        await server.wait_closed()
