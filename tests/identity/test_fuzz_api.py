"""Schemathesis over the whole REST API authenticated with an OIDC bearer JWT issued by a real OpenID Provider
(panva's oidc-provider, client credentials), mapped to a tenant admin by the claim mapping: every operation runs
past authentication, answers no 5xx and conforms to the schema. The API-token runs are in tests/meshweb."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from django.test import override_settings

from tests.identity.oidc_support import API_RESOURCE, OidcProvider, start_provider
from tests.meshweb.conftest import World, world
from tests.meshweb.fuzz import FUZZ_SETTINGS, Credential, call_and_validate, served_schema

__all__ = ["world"]  # the portal's small world, as a fixture here too

ROBOT = {
    "client_id": "robot-fuzz",
    "client_secret": "robot-fuzz-secret-0123456789",
    "grant_types": ["client_credentials"],
    "response_types": [],
    "redirect_uris": [],
    "groups": ["acme-admins"],
}


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    op = start_provider(Path(tmp_path_factory.mktemp("fuzz-op")), [ROBOT])
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def credential(provider: OidcProvider, world: World) -> Iterator[Credential]:
    rules = [{"claim": "groups", "value": "acme-admins", "tenant": "acme", "role": "tenant_admin"}]
    oidc = {
        "OIDC_ENABLED": True,
        "OIDC_OP_ISSUER": provider.issuer,
        "OIDC_OP_JWKS_ENDPOINT": provider.endpoints["OIDC_OP_JWKS_ENDPOINT"],
        "OIDC_RP_SIGN_ALGO": "RS256",
        "OIDC_JWKS_CACHE_S": 300,
        "OIDC_LEEWAY_S": 30,
        "OIDC_TIMEOUT": 10,
        "OIDC_API_AUDIENCE": API_RESOURCE,
        "OIDC_CLAIM_MAPPING": json.dumps({"rules": rules}),
        "OIDC_CLAIM_MAPPING_FILE": "",
    }
    token = provider.client_credentials_token(ROBOT["client_id"])
    with override_settings(**oidc):
        # Its own tenant stays: deleting or disabling it would leave the token mapping to no tenant.
        yield Credential(f"Bearer {token}", {"/api/v1/tenants/": frozenset({world.own.tenant.pk})})


@pytest.fixture
def api_schema(credential: Credential) -> Iterator[Any]:
    with served_schema() as schema:
        yield schema


schema = schemathesis.from_pytest_fixture("api_schema")


@schema.parametrize()
@FUZZ_SETTINGS
def test_api_under_an_oidc_bearer_conforms_to_its_schema(case: Any, credential: Credential) -> None:
    call_and_validate(case, credential)
