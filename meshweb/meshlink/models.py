"""Outbox of changes pushed to agents and the state of each agent's link (node credentials live with identity,
the telemetry agents report with the fleet)."""

from __future__ import annotations

from django.db import models


class OutboxCounter(models.Model):
    """One row: the last version handed out. Appends lock it, so versions are assigned in commit order and a reader
    that has seen version N has seen every version below N."""

    version = models.BigIntegerField(default=0)
    # Versions at or below this were pruned (or predate the outbox): an agent that applied less gets a snapshot.
    pruned_through = models.BigIntegerField(default=0)


class OutboxEntry(models.Model):
    version = models.BigIntegerField(unique=True)
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    kind = models.CharField(max_length=64)
    key = models.CharField(max_length=512)
    op = models.CharField(max_length=8)
    value = models.JSONField(null=True, blank=True)
    action = models.CharField(max_length=100, blank=True)
    correlation_id = models.CharField(max_length=64, blank=True)
    # W3C trace context of the write: agents apply the change as part of its trace.
    traceparent = models.CharField(max_length=55, blank=True, default="")

    class Meta:
        ordering = ["version"]
        verbose_name_plural = "outbox entries"

    def __str__(self) -> str:
        return f"v{self.version} {self.op} {self.key}"


class NodeLink(models.Model):
    """What the portal knows of one agent's connection."""

    node = models.OneToOneField("fleet.Node", on_delete=models.CASCADE, related_name="link")
    connected = models.BooleanField(default=False)
    connections = models.PositiveIntegerField(default=0)
    connected_at = models.DateTimeField(null=True, blank=True)
    disconnected_at = models.DateTimeField(null=True, blank=True)
    store = models.CharField(max_length=8, blank=True)
    agent_version = models.CharField(max_length=64, blank=True)
    hello_version = models.BigIntegerField(default=0)
    acked_version = models.BigIntegerField(default=0)
    last_message_at = models.DateTimeField(null=True, blank=True)
    refused = models.PositiveIntegerField(default=0, help_text="frames refused (malformed, replayed, illegal)")

    def __str__(self) -> str:
        return f"link of {self.node_id}"
