"""Inference usage reported by routers: each batch applied once, counts rolled up per UTC minute, tenant, key and
model (coarser granularities are sums of these)."""

from __future__ import annotations

from django.db import models


class UsageBatch(models.Model):
    """A batch id already applied: a resent batch (lost answer, router restart) changes nothing."""

    batch = models.CharField(max_length=64, primary_key=True)
    node = models.ForeignKey("fleet.Node", null=True, on_delete=models.SET_NULL, related_name="+")
    router = models.CharField(max_length=128, blank=True)
    rows = models.PositiveIntegerField(default=0)
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)


class UsageRollup(models.Model):
    tenant = models.ForeignKey("tenancy.Tenant", on_delete=models.CASCADE, related_name="usage")
    key_prefix = models.CharField(max_length=16, blank=True)
    model = models.CharField(max_length=128, blank=True)
    minute = models.DateTimeField(help_text="Start of the UTC minute the requests finished in.")
    requests = models.PositiveBigIntegerField(default=0)
    errors = models.PositiveBigIntegerField(default=0)
    throttled = models.PositiveBigIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    ttft = models.JSONField(default=list, help_text="Counts per bucket of agents.proto.usage.BOUNDS_S (+ overflow).")
    latency = models.JSONField(default=list)

    TENANT_PATH = "tenant_id"

    class Meta:
        ordering = ["minute", "tenant_id", "model", "key_prefix"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "key_prefix", "model", "minute"], name="uniq_usage_cell")
        ]
        indexes = [models.Index(fields=["tenant", "minute"])]


class Spillover(models.Model):
    """Requests routers sent from one cell to another, per UTC minute and reason (saturated, slow, failed,
    residency)."""

    minute = models.DateTimeField(help_text="Start of the UTC minute.")
    from_cell = models.CharField(max_length=63)
    to_cell = models.CharField(max_length=63)
    reason = models.CharField(max_length=16)
    requests = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["minute", "from_cell", "to_cell", "reason"]
        constraints = [
            models.UniqueConstraint(fields=["minute", "from_cell", "to_cell", "reason"], name="uniq_spillover_cell")
        ]
