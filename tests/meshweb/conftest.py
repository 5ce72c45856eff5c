"""Fixtures of the portal tests: tenants, tokens per role, an API client, a builder of a small world."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from meshweb.audit.models import AuditEntry
from meshweb.catalog.models import Deployment, Model, ModelRevision
from meshweb.fleet.models import Cell, Gpu, Node, Region, Zone
from meshweb.policy.models import AdmissionPolicy, RoutingPolicy, Slo
from meshweb.tenancy.models import Tenant
from meshweb.tenancy.services import SYSTEM, membership_set, tenant_create, token_create
from meshweb.training.models import JobPlacement
from meshweb.training.services import job_submit

EXAMPLE_JOB = json.loads(Path("docs/examples/job.json").read_text())


def make_client(token: str | None = None) -> APIClient:
    client = APIClient()
    if token:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@dataclass
class TenantWorld:
    tenant: Tenant
    objects: dict[str, Any] = field(default_factory=dict)


def build_tenant(slug: str, zone: Zone) -> TenantWorld:
    node = Node.objects.create(name=f"node-{slug}", address="10.0.0.9:7070", zone=zone, roles=["gpu"])
    tenant = tenant_create(principal=SYSTEM, slug=slug)
    model = Model.objects.create(tenant=tenant, name=f"{slug}-llm")
    revision = ModelRevision.objects.create(model=model, revision="v1", artifact_uri=f"hf://{slug}/llm")
    deployment = Deployment.objects.create(revision=revision, zone=zone, min_replicas=1, max_replicas=2)
    user = get_user_model().objects.create_user(f"{slug}-user", password="pw-123456789")
    membership = membership_set(principal=SYSTEM, tenant=tenant, user=user, role="member")
    token, _ = token_create(principal=SYSTEM, tenant=tenant, role="viewer", name="existing")
    job = job_submit(principal=SYSTEM, tenant=tenant, name=f"{slug}-job", spec=EXAMPLE_JOB["spec"]).job
    JobPlacement.objects.create(job=job, node=node, gpu_uuids=["GPU-x"], rank=0)
    world = TenantWorld(tenant=tenant)
    world.objects.update(
        tenant=tenant,
        quota=tenant.quota,
        model=model,
        revision=revision,
        deployment=deployment,
        membership=membership,
        token=token,
        job=job,
        slo=Slo.objects.create(tenant=tenant, model=model, ttft_p99_ms=500, latency_p99_ms=5000),
        routing_policy=RoutingPolicy.objects.create(tenant=tenant, model=model, strategy="least_queue"),
        admission_policy=AdmissionPolicy.objects.create(tenant=tenant, model=model),
        audit=AuditEntry.objects.filter(tenant=tenant).first(),
    )
    return world


@dataclass
class World:
    own: TenantWorld
    other: TenantWorld
    region: Region
    zone: Zone
    cell: Cell
    node: Node
    gpu: Gpu


@pytest.fixture
def world(db: Any) -> World:
    region = Region.objects.create(name="region-1")
    zone = Zone.objects.create(region=region, name="zone-a")
    Zone.objects.create(region=region, name="zone-b")
    cell = Cell.objects.create(zone=zone, name="cell-1")
    node = Node.objects.create(name="node-1", address="10.0.0.1:7070", zone=zone, roles=["gpu"])
    gpu = Gpu.objects.create(node=node, uuid="GPU-1", index=0, model="NVIDIA H100", gpu_type="H100", vram_mb=81559)
    return World(
        own=build_tenant("acme", zone),
        other=build_tenant("globex", zone),
        region=region,
        zone=zone,
        cell=cell,
        node=node,
        gpu=gpu,
    )


@pytest.fixture
def token_for(db: Any) -> Callable[[Tenant, str], str]:
    def make(tenant: Tenant, role: str) -> str:
        return token_create(principal=SYSTEM, tenant=tenant, role=role, name=f"test-{role}")[1]

    return make
