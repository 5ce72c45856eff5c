"""The outbox: appended in the writer's transaction by every write agents must know, in commit order, with values
the agents' policy store accepts; snapshots and pruning."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import transaction

from agents.proto.portal_link import MANAGED_PREFIXES
from agents.store.schema import check_value
from meshweb.catalog.models import Model, ModelRevision
from meshweb.fleet.services import node_cordon
from meshweb.meshlink.models import OutboxEntry
from meshweb.meshlink.outbox import head, prune, snapshot
from meshweb.meshlink.services import changes_after, plan_for
from meshweb.policy.models import RoutingPolicy
from meshweb.tenancy.scoped.writes import object_create, object_delete, object_update
from meshweb.tenancy.services import SYSTEM, membership_set, tenant_create
from meshweb.training.services import job_cancel, job_submit
from tests.meshlink.conftest import Fleet
from tests.meshweb.conftest import EXAMPLE_JOB

pytestmark = pytest.mark.django_db


def entries(after: int) -> list[tuple[str, str, Any]]:
    return [(e.key, e.op, e.value) for e in OutboxEntry.objects.filter(version__gt=after).order_by("version")]


def test_writes_append_versioned_changes(fleet: Fleet) -> None:
    start = head().version
    tenant = tenant_create(principal=SYSTEM, slug="globex", quota={"gpus_max": 8})
    got = entries(start)
    assert [k for k, _, _ in got] == [
        f"kv/portal/tenants/{tenant.pk}",
        f"kv/portal/quotas/{tenant.pk}",
        f"tenants/tenant-{tenant.pk}",
    ]
    assert got[1][2]["gpus_max"] == 8
    assert got[2][2] == {"id": tenant.pk, "slug": "globex", "active": True, "priority": "standard",
                         "limits": {"requests_per_s": 100.0, "tokens_per_min": 200000, "concurrent": 256}}  # fmt: skip
    versions = list(OutboxEntry.objects.filter(version__gt=start).values_list("version", flat=True))
    assert versions == [start + 1, start + 2, start + 3] and head().version == start + 3

    mark = head().version
    node_cordon(principal=SYSTEM, node=fleet.nodes[0], reason="maintenance")
    ((key, op, value),) = entries(mark)
    assert (key, op) == ("nodes/node-1", "put")
    assert value["status"] == "cordon" and value["reason"] == "maintenance" and value["since"] > 0

    mark = head().version
    job = job_submit(principal=SYSTEM, tenant=fleet.tenant, name="train", spec=EXAMPLE_JOB["spec"]).job
    job_cancel(principal=SYSTEM, job=job)
    got = entries(mark)
    assert [(k, v["status"]) for k, _, v in got] == [(f"kv/portal/jobs/{job.pk}", "pending"),
                                                    (f"kv/portal/jobs/{job.pk}", "cancelled")]  # fmt: skip


def test_writes_agents_need_not_know_publish_nothing(fleet: Fleet, django_user_model: Any) -> None:
    mark = head().version
    user = django_user_model.objects.create_user("bob", password="pw-123456789")
    membership_set(principal=SYSTEM, tenant=fleet.tenant, user=user, role="member")
    assert entries(mark) == [] and head().version == mark


def test_a_rolled_back_write_leaves_no_change(fleet: Fleet) -> None:
    mark = head().version
    with pytest.raises(RuntimeError), transaction.atomic():
        tenant_create(principal=SYSTEM, slug="doomed")
        raise RuntimeError("abort")
    assert entries(mark) == [] and head().version == mark


def test_every_value_is_accepted_by_the_agents_store(fleet: Fleet) -> None:
    model = object_create(principal=SYSTEM, model=Model, data={"tenant": fleet.tenant, "name": "org/llm-7b"})
    rev = object_create(
        principal=SYSTEM, model=ModelRevision, data={"model": model, "revision": "v1", "artifact_uri": "hf://org/llm"}
    )
    object_create(
        principal=SYSTEM,
        model=RoutingPolicy,
        data={"tenant": fleet.tenant, "model": model, "strategy": "least_queue", "params": {"k": 2}},
    )
    job_submit(principal=SYSTEM, tenant=fleet.tenant, name="train", spec=EXAMPLE_JOB["spec"])
    rows = list(OutboxEntry.objects.filter(op="put"))
    assert {r.kind for r in rows} >= {"tenant", "quota", "model", "revision", "routing", "job", "node"}
    for row in rows:
        assert row.key.startswith(MANAGED_PREFIXES)
        check_value(row.key, json.dumps(row.value))  # raises StoreInputError on a value the store would refuse
    assert rev.pk


def test_deleting_a_model_deletes_what_hung_on_it(fleet: Fleet) -> None:
    model = object_create(principal=SYSTEM, model=Model, data={"tenant": fleet.tenant, "name": "llm"})
    rev = object_create(
        principal=SYSTEM, model=ModelRevision, data={"model": model, "revision": "v1", "artifact_uri": "s3://x"}
    )
    policy = object_create(principal=SYSTEM, model=RoutingPolicy, data={"tenant": fleet.tenant, "model": model})
    mark = head().version
    ids = (model.pk, rev.pk, policy.pk)
    object_delete(principal=SYSTEM, obj=model)
    assert sorted((k, op) for k, op, _ in entries(mark)) == [
        (f"kv/portal/models/{ids[0]}", "delete"),
        (f"kv/portal/revisions/{ids[1]}", "delete"),
        (f"routing/policy-{ids[2]}", "delete"),
    ]


def test_hello_plans_replay_snapshot_or_current(fleet: Fleet) -> None:
    h = head()
    assert plan_for(h.version).mode == "current"
    assert plan_for(h.version - 2).mode == "replay"
    assert plan_for(h.version + 5).mode == "snapshot"  # an agent ahead of the portal (restored database)
    assert [c["version"] for c in changes_after(h.version - 2)] == [h.version - 1, h.version]

    version, puts = snapshot()
    assert version == h.version
    keys = {p.key for p in puts}
    assert {"nodes/node-1", "nodes/node-2", "nodes/node-3", f"tenants/tenant-{fleet.tenant.pk}"} <= keys

    object_update(principal=SYSTEM, obj=fleet.nodes[1], data={"labels": {"rack": "r1"}})
    assert prune(keep=1) > 0
    assert plan_for(h.version - 2).mode == "snapshot"  # what it missed is gone: it gets the whole state
    assert plan_for(head().version - 1).mode == "replay"
    assert prune(keep=1) == 0  # idempotent
