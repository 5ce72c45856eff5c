"""Demo data for the embedded default: a tenant, an admin, a small fleet and the `demo-llm` model. Idempotent."""

from __future__ import annotations

import os
import secrets

from django.contrib.auth import get_user_model
from django.db import transaction

from meshweb.catalog.models import Deployment, Model, ModelRevision
from meshweb.fleet.models import Gpu, GpuType, Node, Region, Zone
from meshweb.policy.models import RoutingPolicy, Slo
from meshweb.tenancy.models import Tenant
from meshweb.tenancy.roles import Role
from meshweb.tenancy.services import SYSTEM, membership_set, tenant_create

_FLEET = [
    # node, zone, roles, GPU type, product name, VRAM MiB, count
    ("gpu-a1", "zone-a", ["gpu", "trainer"], GpuType.H100, "NVIDIA H100 80GB HBM3", 81559, 4),
    ("gpu-a2", "zone-a", ["gpu", "trainer"], GpuType.H100, "NVIDIA H100 80GB HBM3", 81559, 4),
    ("gpu-b1", "zone-b", ["gpu", "trainer"], GpuType.A100, "NVIDIA A100-SXM4-80GB", 81920, 8),
    ("gpu-b2", "zone-b", ["gpu"], GpuType.L40S, "NVIDIA L40S", 46068, 2),
    ("edge-1", "zone-a", ["router", "coordinator", "edge"], GpuType.L4, "NVIDIA L4", 23034, 1),
]


@transaction.atomic
def seed_demo() -> list[str]:
    """Creates what is missing and returns lines telling how to log in."""
    lines: list[str] = []
    tenant = Tenant.objects.filter(slug="demo").first() or tenant_create(principal=SYSTEM, slug="demo", name="Demo")
    user_model = get_user_model()
    admin = user_model.objects.filter(username="admin").first()
    if admin is None:
        password = os.environ.get("INFERMESH_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        admin = user_model.objects.create_superuser("admin", "admin@example.invalid", password)
        lines.append(f"demo: admin login: admin / {password}")
    else:
        lines.append("demo: admin login: admin (password unchanged)")
    membership_set(principal=SYSTEM, tenant=tenant, user=admin, role=Role.TENANT_ADMIN)

    region, _ = Region.objects.get_or_create(name="region-1")
    for node_name, zone_name, roles, gpu_type, product, vram, count in _FLEET:
        zone, _ = Zone.objects.get_or_create(name=zone_name, defaults={"region": region})
        node, created = Node.objects.get_or_create(
            name=node_name,
            defaults={"address": "127.0.0.1:7070", "zone": zone, "roles": roles, "labels": {"gpu": gpu_type}},
        )
        if created:
            Gpu.objects.bulk_create(
                Gpu(node=node, uuid=f"GPU-{node_name}-{i}", index=i, model=product, gpu_type=gpu_type, vram_mb=vram)
                for i in range(count)
            )
    model, _ = Model.objects.get_or_create(tenant=tenant, name="demo-llm", defaults={"description": "demo model"})
    revision, _ = ModelRevision.objects.get_or_create(
        model=model, revision="v1", defaults={"quant": "bf16", "runtime": "vllm", "artifact_uri": "hf://demo/demo-llm"}
    )
    if not revision.deployments.exists():
        Deployment.objects.create(revision=revision, gpu_type=GpuType.H100, min_replicas=1, max_replicas=4)
    RoutingPolicy.objects.get_or_create(tenant=tenant, model=model, defaults={"strategy": "hybrid_mesh"})
    Slo.objects.get_or_create(tenant=tenant, model=model, defaults={"ttft_p99_ms": 2000, "latency_p99_ms": 20000})
    return lines
