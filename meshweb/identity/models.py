"""External identities (matched on issuer + subject, never on email), one-time node join tokens and the credentials
agents present on their portal link."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from meshweb.core.models import TimeStamped


class OidcIdentity(TimeStamped):
    """One account at one OpenID provider, bound to one portal user."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="oidc_identity")
    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)
    email = models.CharField(max_length=254, blank=True)
    last_login_at = models.DateTimeField(null=True, blank=True)
    last_roles = models.JSONField(default=dict, blank=True, help_text="tenant slug -> role at the last login")

    class Meta:
        ordering = ["issuer", "subject"]
        constraints = [models.UniqueConstraint(fields=["issuer", "subject"], name="uniq_oidc_issuer_subject")]
        verbose_name = "OIDC identity"
        verbose_name_plural = "OIDC identities"

    def __str__(self) -> str:
        return f"{self.subject} @ {self.issuer}"


class JoinToken(TimeStamped):
    """A one-time secret a node exchanges for its first certificate; only a hash of the secret is kept."""

    node = models.ForeignKey("fleet.Node", on_delete=models.CASCADE, related_name="join_tokens")
    prefix = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    used_by = models.CharField(max_length=255, blank=True, help_text="peer address that redeemed it")
    certificate_serial = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"join token {self.prefix} for {self.node_id}"


class IssuedCertificate(TimeStamped):
    """Every SVID the portal's CA issued; revoked ones are published to agents as a list of serials."""

    node_name = models.CharField(max_length=63, db_index=True)
    serial = models.CharField(max_length=64, unique=True)
    spiffe_id = models.CharField(max_length=255)
    roles = models.JSONField(default=list)
    not_after = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoke_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.spiffe_id} #{self.serial}"


class NodeCredential(models.Model):
    """The secret an agent presents on its WebSocket; only a hash is kept."""

    node = models.ForeignKey("fleet.Node", on_delete=models.CASCADE, related_name="credentials")
    prefix = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["node_id", "prefix"]

    def __str__(self) -> str:
        return f"credential {self.prefix} of {self.node_id}"
