"""The node's side of enrollment: join with a one-time token, renew before expiry (proving possession of the
current key), and the rotation loop the agent runs. Files are replaced atomically, key first."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agents.security.ca import SvidInfo, cert_pem, key_pem, load_certificate, make_csr, new_key, parse_svid, svid_info

log = logging.getLogger("meshd.enroll")


class EnrollError(RuntimeError):
    """The portal refused or could not be reached; the message is the portal's own when it gave one."""


def _post(url: str, body: dict[str, Any], timeout_s: float = 15) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data
    except urllib.error.HTTPError as err:
        try:
            message = json.loads(err.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = err.reason
        raise EnrollError(f"portal refused ({err.code}): {message}") from None
    except OSError as err:
        raise EnrollError(f"portal {url} unreachable: {err}") from None


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)


def save_svid(
    answer: dict[str, Any], key: ec.EllipticCurvePrivateKey, *, cert: Path, key_path: Path, ca: Path
) -> SvidInfo:
    info = parse_svid(answer["certificate"])
    issued = load_certificate(answer["certificate"]).public_key()
    if (
        not isinstance(issued, ec.EllipticCurvePublicKey)
        or issued.public_numbers() != key.public_key().public_numbers()
    ):
        raise EnrollError("the portal returned a certificate for another key")
    _write(ca, answer["ca"].encode(), 0o644)
    _write(key_path, key_pem(key), 0o600)
    _write(cert, answer["certificate"].encode(), 0o644)
    return info


def join(portal: str, token: str, node: str, out_dir: str | Path, hosts: list[str] | None = None) -> SvidInfo:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = new_key()
    answer = _post(
        portal.rstrip("/") + "/api/v1/enroll/",
        {"token": token, "csr": make_csr(key, node).decode(), "hosts": hosts or []},
    )
    return save_svid(answer, key, cert=out / "cert.pem", key_path=out / "key.pem", ca=out / "ca.pem")


def renew(portal: str, *, cert: Path, key: Path, ca: Path) -> SvidInfo:
    current = load_certificate(cert.read_bytes())
    current_key = serialization.load_pem_private_key(key.read_bytes(), password=None)
    if not isinstance(current_key, ec.EllipticCurvePrivateKey):
        raise EnrollError(f"{key}: not an ECDSA key")
    info = svid_info(current)
    fresh = new_key()
    csr = make_csr(fresh, info.node).decode()
    signature = base64.b64encode(current_key.sign(csr.encode(), ec.ECDSA(hashes.SHA256()))).decode()
    answer = _post(
        portal.rstrip("/") + "/api/v1/enroll/renew/",
        {"certificate": cert_pem(current).decode(), "csr": csr, "signature": signature},
    )
    return save_svid(answer, fresh, cert=cert, key_path=key, ca=ca)


def renewal_due(info: SvidInfo, fraction: float, now: dt.datetime | None = None) -> bool:
    at = now or dt.datetime.now(dt.UTC)
    lifetime = (info.not_after - info.not_before).total_seconds()
    return (info.not_after - at).total_seconds() <= lifetime * fraction


async def rotation_loop(portal: str, *, cert: Path, key: Path, ca: Path, fraction: float, check_s: float) -> None:
    """Renew the SVID whenever less than `fraction` of its lifetime is left; retry on failure at each check."""
    while True:
        try:
            info = parse_svid(cert.read_bytes())
            if renewal_due(info, fraction):
                new = await asyncio.to_thread(renew, portal, cert=cert, key=key, ca=ca)
                log.info("rotated SVID %s: serial %x valid until %s", new.spiffe_id, new.serial, new.not_after)
        except (EnrollError, OSError, ValueError) as err:
            log.warning("SVID rotation failed, retrying in %.1fs: %s", check_s, err)
        await asyncio.sleep(check_s)
