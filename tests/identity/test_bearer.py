"""OIDC bearer tokens on the REST API of a real portal process: real provider-issued JWTs accepted and mapped to
tenant roles; expired, wrongly signed, wrong-audience, wrong-issuer, not-yet-valid and malformed ones refused."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import jwt
import pytest
from django.core.management import call_command

from meshweb.audit.refusals import RefusalThrottle
from tests.identity.conftest import Portal
from tests.identity.oidc_support import rsa_key

pytestmark = pytest.mark.e2e

RULES = [
    {"claim": "groups", "value": "acme-ops", "tenant": "acme", "role": "operator"},
    {"claim": "groups", "value": "globex-readers", "tenant": "globex", "role": "viewer"},
]


@pytest.fixture
def portal(oidc_portal: Portal) -> Portal:
    oidc_portal.set_mapping(RULES)
    return oidc_portal


def refusal(portal: Portal, token: str) -> str:
    status, body = portal.api("/api/v1/tenants/", token)
    assert status == 401, body
    message: str = body["error"]["message"]
    return message


def test_provider_issued_token_maps_to_tenant_roles(portal: Portal) -> None:
    token = portal.provider.client_credentials_token("robot-acme")
    status, body = portal.api("/api/v1/tenants/", token)
    assert status == 200, body
    assert [t["slug"] for t in body["results"]] == ["acme"]
    globex = portal.api("/api/v1/tenants/?slug=globex", portal.admin_token)[1]["results"][0]
    assert portal.api(f"/api/v1/tenants/{globex['id']}/", token)[0] == 404
    # operator in acme: may not manage tokens (tenant_admin) there.
    acme = body["results"][0]
    status, body = portal.api("/api/v1/tokens/", token, "POST", {"tenant": acme["id"], "role": "viewer"})
    assert status == 403, body


def test_token_whose_claims_map_to_no_tenant_is_refused(portal: Portal) -> None:
    token = portal.provider.client_credentials_token("robot-nobody")
    assert "map to no tenant" in refusal(portal, token)


def test_minted_with_provider_key_is_accepted(portal: Portal) -> None:
    token = portal.provider.mint({"sub": "svc-1", "groups": ["globex-readers"]})
    status, body = portal.api("/api/v1/tenants/", token)
    assert status == 200 and [t["slug"] for t in body["results"]] == ["globex"]


def test_expired_token_is_refused(portal: Portal) -> None:
    now = int(time.time())
    token = portal.provider.mint({"groups": ["acme-ops"], "iat": now - 600, "exp": now - 60})
    assert refusal(portal, token) == "Bearer token refused: token expired."


def test_not_yet_valid_token_is_refused(portal: Portal) -> None:
    token = portal.provider.mint({"groups": ["acme-ops"], "nbf": int(time.time()) + 600})
    assert "not yet valid" in refusal(portal, token)


def test_wrongly_signed_token_is_refused(portal: Portal) -> None:
    other = rsa_key()
    # Same key id as the provider's key, another key: the signature check must catch it.
    forged = portal.provider.mint({"groups": ["acme-ops"]}, key=other)
    assert refusal(portal, forged) == "Bearer token refused: token signature does not verify."
    unknown_kid = portal.provider.mint({"groups": ["acme-ops"]}, key=other, kid="attacker-key")
    assert "unknown key" in refusal(portal, unknown_kid)
    # Tampered payload of a genuine token.
    genuine = portal.provider.mint({"groups": ["globex-readers"]})
    header, _, signature = genuine.split(".")
    tampered_payload = portal.provider.mint({"groups": ["acme-ops"]}).split(".")[1]
    assert "signature" in refusal(portal, f"{header}.{tampered_payload}.{signature}")


def test_wrong_audience_and_issuer_are_refused(portal: Portal) -> None:
    assert "audience" in refusal(portal, portal.provider.mint({"groups": ["acme-ops"], "aud": "portal"}))
    assert "issuer" in refusal(portal, portal.provider.mint({"groups": ["acme-ops"], "iss": "http://evil.test"}))
    # A real provider token for another resource is refused too.
    with pytest.raises(Exception, match="400"):
        portal.provider.client_credentials_token("robot-acme", resource="urn:other:api")


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        "a.b.c",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
        jwt.encode({"sub": "x", "groups": ["acme-ops"]}, "k" * 32, algorithm="HS256"),
        "x" * 20000,
    ],
)
def test_malformed_tokens_are_refused(portal: Portal, token: str) -> None:
    message = refusal(portal, token)
    assert message.startswith("Bearer token refused: ")


def test_api_tokens_and_sessions_still_work(portal: Portal) -> None:
    status, body = portal.api("/api/v1/tenants/", portal.admin_token)
    assert status == 200 and {t["slug"] for t in body["results"]} >= {"acme", "globex"}


def test_schema_documents_every_scheme(tmp_path: Any) -> None:
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    text = out.read_text()
    for scheme in ("apiToken:", "cookieAuth:", "oidcBearer:", "bearerFormat: JWT"):
        assert scheme in text


def refusal_entries(portal: Portal) -> list[dict[str, Any]]:
    status, body = portal.api("/api/v1/audit/?action=identity.bearer_refused&limit=500", portal.admin_token)
    assert status == 200, body
    return list(body["results"])


def test_refused_bearers_are_audited_without_the_token(portal: Portal) -> None:
    now = int(time.time())
    expired = portal.provider.mint({"groups": ["acme-ops"], "iat": now - 600, "exp": now - 60})
    assert refusal(portal, expired) == "Bearer token refused: token expired."
    assert refusal(portal, "a.b.c").startswith("Bearer token refused: malformed token")
    prefix = portal.admin_token.split("_")[1]
    wrong_secret = f"im_{prefix}_{'x' * 32}"
    assert refusal(portal, wrong_secret) == "Invalid API token."
    assert refusal(portal, "im_short") == "Malformed API token."
    entries = refusal_entries(portal)
    by_reason = {(e["after"]["scheme"], e["after"]["reason"]): e for e in entries}
    assert ("oidc_bearer", "Bearer token refused: token expired.") in by_reason
    assert any(s == "oidc_bearer" and r.startswith("Bearer token refused: malformed token") for s, r in by_reason)
    assert ("api_token", "Malformed API token.") in by_reason
    guessed = [e for e in entries if e["after"].get("token_prefix") == prefix]
    # An attempt on a known token's prefix shows in its tenant's audit log; the peer is recorded.
    assert guessed and guessed[0]["tenant"] == "acme" and guessed[0]["after"]["peer"] == "127.0.0.1"
    text = json.dumps(entries)
    assert expired not in text and "x" * 32 not in text


def test_a_flood_of_refusals_writes_one_entry_a_minute(portal: Portal) -> None:
    kid = f"flood-{secrets.token_hex(4)}"
    token = portal.provider.mint({"groups": ["acme-ops"]}, key=rsa_key(), kid=kid)
    for _ in range(25):
        assert "unknown key" in refusal(portal, token)
    flood = [e for e in refusal_entries(portal) if kid in e["after"]["reason"]]
    assert len(flood) == 1 and flood[0]["after"]["suppressed"] == 0


def test_refusal_throttle() -> None:
    throttle = RefusalThrottle(per_key_s=60, window_s=60, per_window=3, max_keys=2)
    assert throttle.decide("a", 0) == 0
    assert throttle.decide("a", 1) is None and throttle.decide("a", 59) is None
    # The next entry for the key, a minute on, stands for the refusals held back meanwhile.
    assert throttle.decide("a", 60) == 2
    assert throttle.decide("b", 61) == 0 and throttle.decide("c", 62) == 0
    # Three entries in this window already: every other key waits for the next one, counted.
    assert throttle.decide("d", 63) is None and throttle.decide("d", 64) is None
    assert throttle.decide("d", 121) == 2
    # At most max_keys are remembered: the oldest go, with their counts.
    assert len(throttle._last) <= 2
