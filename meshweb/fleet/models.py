"""The fleet: where things run."""

from __future__ import annotations

from django.core.validators import RegexValidator
from django.db import models

from agents.proto.vocab import GPU_TYPES, check_choices
from meshweb.core.models import TimeStamped

name_validator = RegexValidator(
    r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$", "Use lower-case letters, digits, '.' and '-'."
)


class GpuType(models.TextChoices):
    """GPU families the scheduler and deployments can ask for."""

    H200 = "H200"
    H100 = "H100"
    A100 = "A100"
    L40S = "L40S"
    L40 = "L40"
    L4 = "L4"
    A10G = "A10G"
    T4 = "T4"


check_choices("GpuType", GpuType.values, GPU_TYPES)


class NodeRole(models.TextChoices):
    ROUTER = "router"
    TRAINER = "trainer"
    COORDINATOR = "coordinator"
    GPU = "gpu"
    EDGE = "edge"


class NodeStatus(models.TextChoices):
    ACTIVE = "active"
    CORDONED = "cordoned"
    DRAINING = "draining"
    QUARANTINED = "quarantined"
    OFFLINE = "offline"


# The only legal status changes; anything else is refused.
NODE_TRANSITIONS: dict[str, frozenset[str]] = {
    NodeStatus.ACTIVE: frozenset(
        {NodeStatus.CORDONED, NodeStatus.DRAINING, NodeStatus.QUARANTINED, NodeStatus.OFFLINE}
    ),
    NodeStatus.CORDONED: frozenset(
        {NodeStatus.ACTIVE, NodeStatus.DRAINING, NodeStatus.QUARANTINED, NodeStatus.OFFLINE}
    ),
    NodeStatus.DRAINING: frozenset({NodeStatus.CORDONED, NodeStatus.QUARANTINED, NodeStatus.OFFLINE}),
    NodeStatus.QUARANTINED: frozenset({NodeStatus.ACTIVE, NodeStatus.CORDONED, NodeStatus.OFFLINE}),
    # an agent that comes back while its quarantine is still open returns to quarantine
    NodeStatus.OFFLINE: frozenset({NodeStatus.ACTIVE, NodeStatus.CORDONED, NodeStatus.QUARANTINED}),
}


class Region(TimeStamped):
    name = models.CharField(max_length=63, unique=True, validators=[name_validator])

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Zone(TimeStamped):
    region = models.ForeignKey(Region, on_delete=models.PROTECT, related_name="zones")
    name = models.CharField(max_length=63, unique=True, validators=[name_validator])

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Cell(TimeStamped):
    zone = models.ForeignKey(Zone, on_delete=models.PROTECT, related_name="cells")
    name = models.CharField(max_length=63, validators=[name_validator])

    class Meta:
        ordering = ["zone_id", "name"]
        constraints = [models.UniqueConstraint(fields=["zone", "name"], name="uniq_cell_zone_name")]

    def __str__(self) -> str:
        return f"{self.zone.name}/{self.name}"


class Node(TimeStamped):
    name = models.CharField(max_length=63, unique=True, validators=[name_validator])
    address = models.CharField(max_length=255, help_text="host:port of the node's agent")
    zone = models.ForeignKey(Zone, on_delete=models.PROTECT, related_name="nodes")
    cell = models.ForeignKey(Cell, null=True, blank=True, on_delete=models.SET_NULL, related_name="nodes")
    roles = models.JSONField(default=list)
    labels = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=NodeStatus.choices, default=NodeStatus.ACTIVE, db_index=True)
    status_reason = models.CharField(max_length=500, blank=True)
    status_changed_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Gpu(TimeStamped):
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="gpus")
    uuid = models.CharField(max_length=96, unique=True)
    index = models.PositiveSmallIntegerField()
    model = models.CharField(max_length=100, help_text="product name, e.g. NVIDIA H100 80GB HBM3")
    gpu_type = models.CharField(max_length=8, choices=GpuType.choices)
    vram_mb = models.PositiveIntegerField()
    mig_profile = models.CharField(max_length=32, blank=True)
    parent_uuid = models.CharField(max_length=96, blank=True)

    class Meta:
        ordering = ["node_id", "index", "uuid"]

    def __str__(self) -> str:
        return self.uuid


class NodeQuarantine(TimeStamped):
    """One quarantine of a node: why, the evidence, and how it ended. A pinned one is never released automatically."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="quarantines")
    reason = models.CharField(max_length=500)
    evidence = models.JSONField(default=list, blank=True)
    automatic = models.BooleanField(default=True, help_text="opened by the quarantine checks (not by an admin)")
    pinned = models.BooleanField(default=False, help_text="held in quarantine until an admin releases it")
    last_unhealthy_at = models.DateTimeField(null=True, blank=True)
    released_at = models.DateTimeField(null=True, blank=True)
    released_by = models.CharField(max_length=200, blank=True)
    release_reason = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"quarantine of {self.node_id}: {self.reason}"


class NodeEvent(models.Model):
    """Things that happened to a node (quarantined, released, offline, back online), newest last."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    kind = models.CharField(max_length=50)
    message = models.CharField(max_length=1000)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


class NodeTelemetry(models.Model):
    """Latest roll-up of one node (targets, queues) as its agent reported it."""

    node = models.OneToOneField(Node, on_delete=models.CASCADE, related_name="telemetry")
    at = models.DateTimeField()
    data = models.JSONField(default=dict)


class GpuTelemetry(models.Model):
    """Latest reading of one GPU."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="gpu_telemetry")
    uuid = models.CharField(max_length=96, unique=True)
    index = models.PositiveSmallIntegerField(default=0)
    at = models.DateTimeField()
    data = models.JSONField(default=dict)

    class Meta:
        ordering = ["node_id", "index", "uuid"]


class TelemetrySample(models.Model):
    """A short history per node for charts and the quarantine rules (pruned by age)."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="telemetry_samples")
    at = models.DateTimeField()
    data = models.JSONField(default=dict)

    class Meta:
        ordering = ["node_id", "at"]
        indexes = [models.Index(fields=["node", "at"], name="telemetry_node_at")]
