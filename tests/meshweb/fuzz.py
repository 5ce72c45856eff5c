"""Schemathesis against the portal's served OpenAPI schema, in process (WSGI) inside the test's transaction, so that
whatever the generated requests write is rolled back: shared by the runs under each kind of credential."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance
from werkzeug.test import Client

# A handful of examples per operation keeps each run well under a minute (about a hundred operations).
FUZZ_SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def authenticated(response: Any, case: Any) -> None:
    """The credential is valid, so no operation may answer 401: every request ran past authentication."""
    assert response.status_code != 401, f"{case.method} {case.formatted_path}: 401 with a valid credential"


CHECKS = (not_a_server_error, response_schema_conformance, content_type_conformance, authenticated)


@dataclass(frozen=True)
class Credential:
    """An `Authorization` value and the objects the run must leave alone so that it stays valid (its tenant, the
    token itself), by collection path: a fuzzed DELETE or PATCH of those would end the run in 401s."""

    authorization: str
    protected: dict[str, frozenset[int]] = field(default_factory=dict)


_existing: dict[tuple[str, str], list[int]] = {}
_NOWHERE = 2**31 - 1  # an id that names no object


def _point_at_objects(case: Any, credential: Credential) -> None:
    """Generated ids name no object (404 before any handler logic runs): every other example of an operation on
    `{id}` is pointed at an object the credential can list, so the fuzzed bodies reach the updates and actions."""
    path: str = case.operation.path
    generated = (case.path_parameters or {}).get("id")
    if "{id}" not in path or not isinstance(generated, int):
        return
    collection = path[: path.index("{id}")]
    protected = credential.protected.get(collection, frozenset())
    if generated % 2:
        if generated in protected:
            case.path_parameters["id"] = _NOWHERE
        return
    key = (collection, credential.authorization)
    if key not in _existing:
        # Werkzeug's client, like schemathesis' own WSGI transport: Django's test client would reconnect the
        # connection-closing signals disconnected in served_schema.
        response = Client(get_wsgi_application()).get(
            collection, query_string={"limit": 20}, headers={"Authorization": credential.authorization}
        )
        results = response.json.get("results", []) if response.status_code == 200 and response.json else []
        _existing[key] = [row["id"] for row in results if isinstance(row, dict) and row.get("id") not in protected]
    ids = _existing[key]
    case.path_parameters["id"] = ids[(generated // 2) % len(ids)] if ids else _NOWHERE


def call_and_validate(case: Any, credential: Credential) -> None:
    _point_at_objects(case, credential)
    # Schemathesis fills the schema's security schemes with generated values (garbage bearer tokens): the real
    # credential is given at call time, where it takes precedence.
    case.call_and_validate(headers={"Authorization": credential.authorization}, checks=CHECKS)


@contextmanager
def served_schema() -> Iterator[Any]:
    """The schema at /api/schema/, its operations called in process."""
    # The WSGI handler would close the test's database connection at the end of every request (as Django's own
    # test client also prevents); the whole run stays inside the test transaction instead.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    _existing.clear()
    try:
        yield schemathesis.from_wsgi("/api/schema/", get_wsgi_application())
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
