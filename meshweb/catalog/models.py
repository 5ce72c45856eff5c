"""Served models, revisions and deployments."""

from __future__ import annotations

from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

from meshweb.core.models import TimeStamped

model_name_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$", "Use letters, digits, '.', '_', '-' or '/' (max 128 characters)."
)


class Quant(models.TextChoices):
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"
    INT8 = "int8"
    INT4 = "int4"
    AWQ = "awq"
    GPTQ = "gptq"


class Runtime(models.TextChoices):
    VLLM = "vllm"
    TGI = "tgi"
    TRITON = "triton"
    SGLANG = "sglang"
    TORCHSERVE = "torchserve"
    TFSERVING = "tfserving"
    OVMS = "ovms"


class Model(TimeStamped):
    tenant = models.ForeignKey("tenancy.Tenant", on_delete=models.CASCADE, related_name="models")
    name = models.CharField(max_length=128, validators=[model_name_validator])
    description = models.TextField(blank=True)
    # other names a tenant may call the model by at the router (unique among the tenant's names)
    aliases = models.JSONField(default=list, blank=True)

    TENANT_PATH = "tenant_id"

    class Meta:
        ordering = ["tenant_id", "name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="uniq_model_tenant_name")]

    def __str__(self) -> str:
        return self.name


class ModelRevision(TimeStamped):
    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="revisions")
    revision = models.CharField(max_length=64, validators=[RegexValidator(r"^[A-Za-z0-9._-]{1,64}$")])
    quant = models.CharField(max_length=8, choices=Quant.choices, default=Quant.BF16)
    runtime = models.CharField(max_length=16, choices=Runtime.choices, default=Runtime.VLLM)
    artifact_uri = models.CharField(max_length=500)

    TENANT_PATH = "model__tenant_id"

    class Meta:
        ordering = ["model_id", "revision"]
        constraints = [models.UniqueConstraint(fields=["model", "revision"], name="uniq_revision_model")]

    def __str__(self) -> str:
        return f"{self.model.name}@{self.revision}"


class Deployment(TimeStamped):
    """Pins a revision to where it may run, with a replica range."""

    revision = models.ForeignKey(ModelRevision, on_delete=models.CASCADE, related_name="deployments")
    zone = models.ForeignKey("fleet.Zone", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    node_selector = models.JSONField(default=dict, blank=True)
    gpu_type = models.CharField(max_length=32, blank=True)
    mig_profile = models.CharField(max_length=16, blank=True, help_text="serve only on MIG slices of this profile")
    min_replicas = models.PositiveIntegerField(default=1)
    max_replicas = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1)])

    TENANT_PATH = "revision__model__tenant_id"

    class Meta:
        ordering = ["revision_id", "id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(min_replicas__lte=models.F("max_replicas")), name="deployment_min_le_max"
            )
        ]

    def __str__(self) -> str:
        return f"deployment of {self.revision}"
