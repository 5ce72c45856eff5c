"""The OpenAPI schema: generated without warnings, and the served API fuzzed against it (no 5xx, conforming)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
import yaml
from django.core.management import call_command

from meshweb.fleet.models import Gpu
from meshweb.tenancy.roles import Role
from meshweb.tenancy.services import SYSTEM, token_create
from meshweb.training.models import TrainingJob
from tests.meshweb.conftest import EXAMPLE_JOB, World, make_client
from tests.meshweb.fuzz import FUZZ_SETTINGS, Credential, call_and_validate, served_schema


def test_schema_generates_without_warnings(tmp_path: Any) -> None:
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    text = out.read_text()
    assert "/api/v1/jobs/{id}/cancel/" in text and "apiToken" in text and "Idempotency-Key" in text


def test_swagger_ui_is_served_offline(client: Any) -> None:
    page = client.get("/api/docs/").content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in page
    assert "cdn" not in page.lower()


@pytest.fixture(params=[Role.PLATFORM_ADMIN, Role.MEMBER])
def credential(request: pytest.FixtureRequest, world: World) -> Credential:
    """A platform admin's API token, then a tenant member's (most writes forbidden, reads of its own tenant)."""
    tenant = world.own.tenant
    token, plaintext = token_create(principal=SYSTEM, tenant=tenant, role=request.param, name="fuzz")
    protected = {"/api/v1/tenants/": frozenset({tenant.pk}), "/api/v1/tokens/": frozenset({token.pk})}
    return Credential(f"Bearer {plaintext}", protected)


@pytest.fixture
def api_schema(credential: Credential) -> Iterator[Any]:
    with served_schema() as schema:
        yield schema


schema = schemathesis.from_pytest_fixture("api_schema")


@schema.parametrize()
@FUZZ_SETTINGS
def test_api_conforms_to_its_schema(case: Any, credential: Credential) -> None:
    call_and_validate(case, credential)


def test_schema_documents_every_scheme_on_every_authenticated_operation(tmp_path: Any) -> None:
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--file", str(out))
    spec = yaml.safe_load(out.read_text())
    assert set(spec["components"]["securitySchemes"]) == {"apiToken", "cookieAuth", "oidcBearer"}
    assert spec["components"]["securitySchemes"]["oidcBearer"]["bearerFormat"] == "JWT"
    public = {("post", "/api/v1/enroll/"), ("post", "/api/v1/enroll/renew/")}  # a join token or a certificate
    public.add(("post", "/api/v1/usage/reports/"))  # a router's node credential
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            schemes = {name for requirement in operation.get("security", []) for name in requirement}
            expected = set() if (method, path) in public else {"apiToken", "cookieAuth", "oidcBearer"}
            assert schemes == expected, (method, path, schemes)


def test_nul_characters_in_a_body_are_refused_naming_the_field(world: World, token_for: Any) -> None:
    """Found by the fuzz run: a NUL in a related field's slug reached PostgreSQL (DataError, a 500)."""
    client = make_client(token_for(world.own.tenant, Role.PLATFORM_ADMIN))
    gpu = {"node": "\x00", "uuid": "0", "index": 0, "model": "0", "gpu_type": "L4", "vram_mb": 0}
    job = {**EXAMPLE_JOB, "tenant": "acme", "spec": {**EXAMPLE_JOB["spec"], "env": [{"name": "A", "value": "x\x00"}]}}
    cases = [
        ("put", f"/api/v1/gpus/{world.gpu.pk}/", gpu, "'node'"),
        ("post", "/api/v1/jobs/", job, "'spec.env[0].value'"),
        ("post", "/api/v1/regions/", {"name": "r", "labels\x00": {}}, repr("labels\x00")),
    ]
    jobs_before = list(TrainingJob.objects.values_list("pk", flat=True))
    for method, path, body, where in cases:
        response = getattr(client, method)(path, body, format="json")
        assert response.status_code == 400, (path, response.content)
        assert response.json()["error"]["message"] == (
            f"Malformed JSON: {where} holds a NUL character (\\u0000), which is not accepted."
        )
    assert Gpu.objects.get(pk=world.gpu.pk).node_id == world.node.pk
    assert list(TrainingJob.objects.values_list("pk", flat=True)) == jobs_before
