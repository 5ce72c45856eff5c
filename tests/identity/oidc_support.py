"""Starting panva's oidc-provider (tests/identity/oidc_provider/server.mjs) on loopback, and minting test JWTs."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

PROVIDER_DIR = Path(__file__).resolve().parent / "oidc_provider"
API_RESOURCE = "urn:infermesh:api"


def ensure_node_modules() -> None:
    """`npm ci` from the committed lock file when node_modules is missing (first run, fresh clone, CI)."""
    if (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is required for the identity tests (apt-get install -y npm)")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=PROVIDER_DIR, check=True, timeout=300)


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(key))
    # PyJWT marks a private JWK key_ops=["sign"]; the provider also verifies with it (id_token_hint at logout).
    jwk.pop("key_ops", None)
    jwk.update(kid=kid, use="sig", alg="RS256")
    return jwk


@dataclass
class OidcProvider:
    issuer: str
    key: rsa.RSAPrivateKey
    kid: str
    accounts_file: Path
    clients: dict[str, dict[str, Any]]
    proc: subprocess.Popen[bytes]
    log: Path
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def endpoints(self) -> dict[str, str]:
        return {
            "OIDC_OP_ISSUER": self.issuer,
            "OIDC_OP_AUTHORIZATION_ENDPOINT": f"{self.issuer}/auth",
            "OIDC_OP_TOKEN_ENDPOINT": f"{self.issuer}/token",
            "OIDC_OP_USER_ENDPOINT": f"{self.issuer}/me",
            "OIDC_OP_JWKS_ENDPOINT": f"{self.issuer}/jwks",
            "OIDC_OP_END_SESSION_ENDPOINT": f"{self.issuer}/session/end",
        }

    def set_account(self, login: str, *, password: str, groups: list[str], email: str = "") -> None:
        self.accounts[login] = {"password": password, "groups": groups, "email": email or f"{login}@example.test"}
        tmp = self.accounts_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.accounts))
        tmp.replace(self.accounts_file)

    def client_credentials_token(self, client_id: str, resource: str = API_RESOURCE) -> str:
        """A real access token (JWT) issued by the provider to a machine client."""
        secret = self.clients[client_id]["client_secret"]
        body = urllib.parse.urlencode(
            {"grant_type": "client_credentials", "resource": resource, "scope": "api"}
        ).encode()
        req = urllib.request.Request(f"{self.issuer}/token", data=body, method="POST")
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
        basic = f"{urllib.parse.quote(client_id)}:{urllib.parse.quote(secret)}"
        import base64

        req.add_header("Authorization", "Basic " + base64.b64encode(basic.encode()).decode())
        with urllib.request.urlopen(req, timeout=10) as resp:
            return str(json.loads(resp.read())["access_token"])

    def mint(self, claims: dict[str, Any], *, key: rsa.RSAPrivateKey | None = None, kid: str | None = None) -> str:
        """A JWT signed with the provider's own key (or another one, for refusal tests)."""
        now = int(time.time())
        payload = {"iss": self.issuer, "aud": API_RESOURCE, "iat": now, "exp": now + 300, "sub": "test", **claims}
        return jwt.encode(payload, key or self.key, algorithm="RS256", headers={"kid": kid or self.kid})

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_provider(workdir: Path, clients: list[dict[str, Any]]) -> OidcProvider:
    ensure_node_modules()
    workdir.mkdir(parents=True, exist_ok=True)
    key = rsa_key()
    kid = "test-key-1"
    accounts_file = workdir / "accounts.json"
    accounts_file.write_text("{}")
    config = {
        "port": 0,
        "jwks": {"keys": [private_jwk(key, kid)]},
        "clients": clients,
        "accounts_file": str(accounts_file),
        "api_resource": API_RESOURCE,
        "cookie_keys": [secrets.token_hex(16)],
    }
    config_file = workdir / "provider.json"
    config_file.write_text(json.dumps(config))
    log = workdir / "provider.log"
    out = log.open("wb")
    node = shutil.which("node") or "node"
    proc = subprocess.Popen(
        [node, str(PROVIDER_DIR / "server.mjs"), str(config_file)],
        cwd=PROVIDER_DIR,
        stdout=subprocess.PIPE,
        stderr=out,
        env={**os.environ, "NODE_ENV": "test"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if "listening on" not in line:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"oidc-provider did not start: {line!r} {log.read_text()}")
    issuer = line.strip().rsplit(" ", 1)[1]
    return OidcProvider(
        issuer=issuer,
        key=key,
        kid=kid,
        accounts_file=accounts_file,
        clients={c["client_id"]: c for c in clients},
        proc=proc,
        log=log,
    )
