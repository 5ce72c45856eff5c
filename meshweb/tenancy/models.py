"""Tenants, memberships, quotas and API tokens."""

from __future__ import annotations

import re

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from agents.proto import access
from meshweb.core.models import TimeStamped
from meshweb.tenancy.roles import Role

_REGION = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def validate_regions(value: object) -> None:
    """Data residency: null (any region) or a non-empty list of distinct region names."""
    from django.core.exceptions import ValidationError

    if value is None:
        return
    if not isinstance(value, list) or not value:
        raise ValidationError("regions must be null (any region) or a non-empty list of region names")
    for name in value:
        if not isinstance(name, str) or not _REGION.match(name):
            raise ValidationError(f"{name!r} is not a region name (lowercase letters, digits, '.', '_', '-')")
    if len(set(value)) != len(value) or len(value) > 64:
        raise ValidationError("regions lists a region twice, or more than 64")


class Tenant(TimeStamped):
    slug = models.SlugField(max_length=63, unique=True)
    name = models.CharField(max_length=200)
    is_active = models.BooleanField(default=True)
    regions = models.JSONField(
        null=True,
        blank=True,
        default=None,
        validators=[validate_regions],
        help_text="Data residency: the regions whose cells may serve this tenant's inference (null: any region). "
        "Routers never send its requests to a cell elsewhere.",
    )

    TENANT_PATH = "id"

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class Membership(TimeStamped):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.MEMBER)

    TENANT_PATH = "tenant_id"

    class Meta:
        ordering = ["tenant_id", "user_id"]
        constraints = [models.UniqueConstraint(fields=["user", "tenant"], name="uniq_membership_user_tenant")]

    def __str__(self) -> str:
        return f"{self.user} @ {self.tenant} ({self.role})"


class Quota(TimeStamped):
    """Limits of one tenant. Training limits are checked at job submission, inference limits by routers."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="quota")
    gpus_max = models.PositiveIntegerField(default=16, help_text="GPUs held at once by the tenant's jobs.")
    gpu_hours_per_period = models.FloatField(default=2000.0, validators=[MinValueValidator(0.0)])
    period_days = models.PositiveIntegerField(default=30, validators=[MinValueValidator(1)])
    concurrent_jobs_max = models.PositiveIntegerField(default=20)
    # Inference limits, enforced by every router (pushed as `tenants/tenant-<id>`); 0 means no limit of that kind.
    requests_per_s = models.FloatField(
        default=100.0, validators=[MinValueValidator(0.0), MaxValueValidator(access.MAX_REQUESTS_PER_S)]
    )
    tokens_per_min = models.PositiveIntegerField(
        default=200_000, validators=[MaxValueValidator(min(access.MAX_TOKENS_PER_MIN, 2_147_483_647))]
    )
    concurrent_requests_max = models.PositiveIntegerField(
        default=256, validators=[MaxValueValidator(access.MAX_CONCURRENT)]
    )
    tokens_per_day = models.PositiveBigIntegerField(
        default=0, validators=[MaxValueValidator(access.MAX_TOKENS_PER_DAY)], help_text="0 = no daily limit."
    )
    priority = models.CharField(
        max_length=10,
        choices=[(p, p) for p in access.PRIORITIES],
        default="standard",
        help_text="SLO class of the tenant's inference requests: critical is refused last under overload.",
    )
    tokens_exhausted_until = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="Set by the metering when today's tokens reach the limit."
    )

    TENANT_PATH = "tenant_id"

    class Meta:
        ordering = ["tenant_id"]

    def __str__(self) -> str:
        return f"quota of {self.tenant}"


class ApiToken(TimeStamped):
    """A machine credential: only a hash of the secret is kept."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="tokens")
    role = models.CharField(max_length=20, choices=Role.choices)
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    TENANT_PATH = "tenant_id"

    class Meta:
        ordering = ["tenant_id", "prefix"]

    def __str__(self) -> str:
        return f"token {self.prefix} ({self.tenant}, {self.role})"


class InferenceKey(TimeStamped):
    """A key for the inference API (routers), `imk_<prefix>_<secret>`: only the SHA-256 of the whole key is kept and
    pushed to agents, the plaintext is shown once. Scoped to models (empty = all), with an expiry and own limits."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="inference_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64, unique=True)
    model_names = models.JSONField(default=list, blank=True, help_text="Model names the key may use; empty = all.")
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Per-key limits on top of the tenant's; null = only the tenant's.
    requests_per_s = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.001), MaxValueValidator(access.MAX_REQUESTS_PER_S)],
    )
    tokens_per_min = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(2_147_483_647)]
    )
    concurrent_requests_max = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(access.MAX_CONCURRENT)]
    )
    tokens_per_day = models.PositiveBigIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(access.MAX_TOKENS_PER_DAY)]
    )

    TENANT_PATH = "tenant_id"

    class Meta:
        ordering = ["tenant_id", "id"]

    def __str__(self) -> str:
        return f"inference key {self.prefix} ({self.tenant})"
