"""The overview's GPUs-per-node card: mean utilization and memory use, the hottest GPU's temperature (red while
throttled), from the agents' latest fresh readings; it refreshes with the overview fragment."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from meshweb.fleet.models import GpuTelemetry, Node
from tests.meshweb.conftest import World

pytestmark = pytest.mark.django_db


def _reading(node: Node, uuid: str, index: int, age_s: float = 1.0, **data: Any) -> None:
    GpuTelemetry.objects.create(node=node, uuid=uuid, index=index, at=timezone.now() - timedelta(seconds=age_s),
                                data={"uuid": uuid, "index": index, **data})  # fmt: skip


def test_overview_shows_gpu_figures_per_node_and_they_follow_new_readings(login: Any, world: World) -> None:
    client = login(superuser=True)
    assert "no GPU telemetry yet" in client.get("/dashboard/fragments/overview/").content.decode()
    other = Node.objects.create(name="node-2", address="10.0.0.2:7070", zone=world.zone, roles=["gpu"])
    _reading(world.node, "GPU-a", 0, utilization=90.0, memory_used_frac=0.8, temperature_c=92.0,
             throttle_reasons=["sw_thermal_slowdown"])  # fmt: skip
    _reading(world.node, "GPU-b", 1, utilization=10.0, memory_used_frac=0.2, temperature_c=40.0)
    _reading(other, "GPU-c", 0, utilization=0.0, memory_used_frac=0.02, temperature_c=33.0)
    _reading(other, "GPU-old", 1, age_s=3600, utilization=100.0, temperature_c=99.0)  # stale: not counted
    page = client.get("/dashboard/fragments/overview/").content.decode()
    row1 = page.split('data-node-gpus="node-1"')[1].split("</tr>")[0]
    assert "<td>50.0</td>" in row1 and "<td>50.0</td>" in row1 and 'class="error" title="throttled">92.0' in row1
    row2 = page.split('data-node-gpus="node-2"')[1].split("</tr>")[0]
    assert "<td>0.0</td><td>2.0</td>" in row2 and ">33.0<" in row2 and "throttled" not in row2
    # a new reading (the replay's load moved): the next refresh shows it
    GpuTelemetry.objects.filter(uuid="GPU-c").update(data={"utilization": 75.0, "memory_used_frac": 0.6,
                                                           "temperature_c": 61.0})  # fmt: skip
    page = client.get("/dashboard/fragments/overview/").content.decode()
    row2 = page.split('data-node-gpus="node-2"')[1].split("</tr>")[0]
    assert "<td>75.0</td><td>60.0</td>" in row2 and ">61.0<" in row2


def test_nodes_pages_show_mig_slices_free_and_the_fragmentation(login: Any, world: World) -> None:
    """A node carved into MIG slices: what is free per profile (a running job's placement holds its slice) and the
    fragmentation by the scheduler's rule (1 - largest free slice / free compute), on the nodes list and the node."""
    from meshweb.fleet.models import Gpu
    from meshweb.training.models import JobPlacement

    node = Node.objects.create(name="mig-node", address="10.0.0.3:7070", zone=world.zone, roles=["gpu"])
    for i, profile in enumerate(["3g.40gb", "3g.40gb", "1g.10gb"]):
        Gpu.objects.create(node=node, uuid=f"MIG-{i}", index=0, model="NVIDIA H100 80GB HBM3", gpu_type="H100",
                           vram_mb=10240, mig_profile=profile, parent_uuid="GPU-m")  # fmt: skip
    JobPlacement.objects.create(job=world.own.objects["job"], node=node, gpu_uuids=["MIG-0"], rank=1)
    client = login(superuser=True)
    page = client.get("/dashboard/fragments/nodes/").content.decode()
    row = page.split('data-node-mig="mig-node"')[1].split("</td>")[0]
    # free: one 3g (3/7) and one 1g (1/7) -> largest 3 of 4 sevenths free -> fragmentation 0.25
    assert "1g.10gb 1/1" in row and "3g.40gb 1/2" in row and "0.25" in row, row
    assert page.split('data-node-mig="node-1"')[1].split("</td>")[0].strip(">").strip() == "–"
    detail = client.get("/dashboard/nodes/mig-node/").content.decode()
    assert 'data-mig-profile="3g.40gb"><td>3g.40gb</td><td>1</td><td>2</td>' in detail
    assert "Largest free slice 3g.40gb · free compute 4/7 GPU · fragmentation 0.25" in detail
