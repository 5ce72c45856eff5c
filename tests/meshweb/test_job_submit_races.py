"""Job submission under concurrency: racing submissions of one tenant, over real connections, cannot both fit under
its quota nor both create a job for one Idempotency-Key; and a submission runs a fixed number of queries."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from meshweb.tenancy.models import Quota, Tenant
from meshweb.tenancy.services import SYSTEM, tenant_create
from meshweb.training.models import IdempotencyKey, TrainingJob
from tests.meshweb.conftest import EXAMPLE_JOB, make_client

# token, BEGIN, quota row lock, usage + Idempotency-Key, job, key, event, audit entry, outbox counter, outbox, COMMIT
SUBMIT_QUERIES = 11


def _wait_until_blocked(n: int) -> None:
    """Until `n` other sessions wait on a row lock (PostgreSQL); other databases serialise writers as a whole."""
    if connection.vendor != "postgresql":
        time.sleep(0.5)
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            # Inside a transaction PostgreSQL keeps serving its first read of the statistics unless told to drop it.
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0] >= n:
                return
        time.sleep(0.02)
    raise AssertionError(f"{n} submissions never queued on the tenant's quota row")


def _race(tenant: Tenant, token: str, keys: list[str]) -> list[Any]:
    """Submit the example job once per key, all at once: the test holds the tenant's quota row until every
    submission waits on it, so they are truly concurrent and then go on one after the other."""
    results: list[Any] = [None] * len(keys)

    def submit(i: int) -> None:
        try:
            client = make_client(token)
            results[i] = client.post("/api/v1/jobs/", EXAMPLE_JOB, format="json", HTTP_IDEMPOTENCY_KEY=keys[i])
        finally:
            connection.close()

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(keys))]
    with transaction.atomic():
        Quota.objects.select_for_update().get(tenant=tenant)
        for thread in threads:
            thread.start()
        _wait_until_blocked(len(keys))
    for thread in threads:
        thread.join(30)
    assert all(r is not None for r in results), "a submission did not finish"
    return results


@pytest.fixture
def racing(transactional_db: Any, token_for: Any) -> tuple[Tenant, str]:
    tenant = tenant_create(principal=SYSTEM, slug="racing")
    token = token_for(tenant, "member")
    make_client(token).get("/api/v1/jobs/")  # the token's first use stamps last_used_at; not part of the race
    return tenant, token


def test_racing_submissions_cannot_both_fit_under_the_quota(racing: tuple[Tenant, str]) -> None:
    tenant, token = racing
    Quota.objects.filter(tenant=tenant).update(gpus_max=3)  # room for one 2-GPU job, not two
    responses = _race(tenant, token, ["race-a", "race-b"])
    assert sorted(r.status_code for r in responses) == [201, 422], [r.content for r in responses]
    refused = next(r for r in responses if r.status_code == 422)
    assert "gpus_max" in refused.json()["error"]["message"] and "holds 2 of 3" in refused.json()["error"]["message"]
    assert TrainingJob.objects.filter(tenant=tenant).count() == 1


def test_racing_retries_with_one_idempotency_key_create_one_job(racing: tuple[Tenant, str]) -> None:
    tenant, token = racing
    responses = _race(tenant, token, ["same-key", "same-key"])
    assert [r.status_code for r in responses] == [201, 201], [r.content for r in responses]
    assert responses[0].json()["id"] == responses[1].json()["id"]
    assert sorted(r.get("Idempotent-Replayed", "") for r in responses) == ["", "true"]
    assert TrainingJob.objects.filter(tenant=tenant).count() == 1
    assert IdempotencyKey.objects.filter(tenant=tenant).count() == 1


def test_a_submission_runs_a_fixed_number_of_queries(racing: tuple[Tenant, str]) -> None:
    _, token = racing
    client = make_client(token)
    for i in range(3):
        with CaptureQueriesContext(connection) as ctx:
            response = client.post("/api/v1/jobs/", EXAMPLE_JOB, format="json", HTTP_IDEMPOTENCY_KEY=f"count-{i}")
        assert response.status_code == 201, response.content
        assert len(ctx.captured_queries) == SUBMIT_QUERIES, [q["sql"][:80] for q in ctx.captured_queries]
