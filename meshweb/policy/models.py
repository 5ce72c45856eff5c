"""SLOs, routing and admission policies."""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from meshweb.core.models import TimeStamped


class Strategy(models.TextChoices):
    BASELINE_RR = "baseline_rr"
    LEAST_QUEUE = "least_queue"
    HYBRID_MESH = "hybrid_mesh"


class Slo(TimeStamped):
    tenant = models.ForeignKey("tenancy.Tenant", on_delete=models.CASCADE, related_name="slos")
    model = models.ForeignKey("catalog.Model", null=True, blank=True, on_delete=models.CASCADE, related_name="slos")
    ttft_p99_ms = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    latency_p99_ms = models.PositiveIntegerField(validators=[MinValueValidator(1)])

    TENANT_PATH = "tenant_id"

    class Meta:
        ordering = ["tenant_id", "id"]
        verbose_name = "SLO"
        constraints = [models.UniqueConstraint(fields=["tenant", "model"], name="uniq_slo_tenant_model")]


class RoutingPolicy(TimeStamped):
    tenant = models.ForeignKey("tenancy.Tenant", on_delete=models.CASCADE, related_name="routing_policies")
    model = models.ForeignKey("catalog.Model", on_delete=models.CASCADE, related_name="routing_policies")
    strategy = models.CharField(max_length=32, choices=Strategy.choices, default=Strategy.HYBRID_MESH)
    params = models.JSONField(default=dict, blank=True)
    # strategy -> percent of requests (summing to 100); empty: every request uses `strategy`
    ab_split = models.JSONField(default=dict, blank=True)
    shadow_strategy = models.CharField(max_length=32, choices=Strategy.choices, blank=True)
    hedging = models.BooleanField(default=False)
    # names of fleet nodes / zones the model's requests are confined to; empty: anywhere
    pin_nodes = models.JSONField(default=list, blank=True)
    pin_zones = models.JSONField(default=list, blank=True)

    TENANT_PATH = "tenant_id"

    class Meta:
        ordering = ["tenant_id", "id"]
        verbose_name_plural = "routing policies"
        constraints = [models.UniqueConstraint(fields=["tenant", "model"], name="uniq_routing_tenant_model")]


class AdmissionPolicy(TimeStamped):
    tenant = models.ForeignKey("tenancy.Tenant", on_delete=models.CASCADE, related_name="admission_policies")
    model = models.ForeignKey(
        "catalog.Model", null=True, blank=True, on_delete=models.CASCADE, related_name="admission_policies"
    )
    max_queue_depth = models.PositiveIntegerField(default=64)
    max_kv_usage = models.FloatField(default=0.95, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)])
    retry_after_s = models.PositiveIntegerField(default=1)

    TENANT_PATH = "tenant_id"

    class Meta:
        ordering = ["tenant_id", "id"]
        verbose_name_plural = "admission policies"
        constraints = [models.UniqueConstraint(fields=["tenant", "model"], name="uniq_admission_tenant_model")]
