"""The OpenAPI schema: generated without warnings, and the served API fuzzed against it (no 5xx, conforming)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core.management import call_command
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance

from meshweb.tenancy.roles import Role
from tests.meshweb.conftest import World


def test_schema_generates_without_warnings(tmp_path: Any) -> None:
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    text = out.read_text()
    assert "/api/v1/jobs/{id}/cancel/" in text and "apiToken" in text and "Idempotency-Key" in text


def test_swagger_ui_is_served_offline(client: Any) -> None:
    page = client.get("/api/docs/").content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in page
    assert "cdn" not in page.lower()


@pytest.fixture
def api_schema(world: World, token_for: Any) -> Iterator[Any]:
    token = token_for(world.own.tenant, Role.PLATFORM_ADMIN)
    # The WSGI handler would close the test's database connection at the end of every request (as Django's own
    # test client also prevents); the whole run stays inside the test transaction instead.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield schemathesis.from_wsgi(
            "/api/schema/", get_wsgi_application(), headers={"Authorization": f"Bearer {token}"}
        )
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


schema = schemathesis.from_pytest_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_schema(case: Any) -> None:
    case.call_and_validate(checks=(not_a_server_error, response_schema_conformance, content_type_conformance))
