"""SLOs, routing and admission policies."""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from meshweb.core.models import TimeStamped


class Strategy(models.TextChoices):
    BASELINE_RR = "baseline_rr"
    LEAST_QUEUE = "least_queue"
    HYBRID_MESH = "hybrid_mesh"
    CACHE_AWARE = "cache_aware"  # prefix locality against token-level load (agents/strategies/cache.py)
    SESSION_AFFINITY = "session_affinity"  # a session key's home on a bounded-load ring; else cache_aware


MODULE_PREFIX = "module:"  # a routing policy names an uploaded WebAssembly strategy as module:<sha256>
MAX_MODULE_BYTES = 180 << 10  # in base64 it fits the API's 256 KiB request body (and the store's 1 MiB value)


class StrategyModule(TimeStamped):
    """A WebAssembly routing strategy uploaded to the portal: pushed to agents' policy stores by checksum, named in
    routing policies as `module:<sha256>`; routers verify the checksum before they run it."""

    tenant = models.ForeignKey("tenancy.Tenant", on_delete=models.CASCADE, related_name="strategy_modules")
    name = models.CharField(max_length=64)
    sha256 = models.CharField(max_length=64, db_index=True)
    size = models.PositiveIntegerField()
    wasm = models.BinaryField()

    TENANT_PATH = "tenant_id"

    class Meta:
        ordering = ["tenant_id", "id"]
        constraints = [models.UniqueConstraint(fields=["tenant", "sha256"], name="uniq_strategy_module_tenant_sha")]

    @property
    def strategy(self) -> str:
        return MODULE_PREFIX + self.sha256


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
    # a built-in (Strategy) or an uploaded module (module:<sha256>); meshweb.policy.rules checks the name
    strategy = models.CharField(max_length=80, default=Strategy.HYBRID_MESH)
    params = models.JSONField(default=dict, blank=True)
    # strategy -> percent of requests (summing to 100); empty: every request uses `strategy`
    ab_split = models.JSONField(default=dict, blank=True)
    shadow_strategy = models.CharField(max_length=80, blank=True)
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
