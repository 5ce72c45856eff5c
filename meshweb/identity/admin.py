"""Admin pages of the identity app (read-mostly: identities are created by logins, tokens by the API)."""

from django.contrib import admin

from meshweb.identity.models import IssuedCertificate, JoinToken, OidcIdentity


@admin.register(OidcIdentity)
class OidcIdentityAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["subject", "issuer", "user", "email", "last_login_at"]
    search_fields = ["subject", "email", "user__username"]
    readonly_fields = ["issuer", "subject", "user", "last_roles", "last_login_at"]


@admin.register(JoinToken)
class JoinTokenAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["prefix", "node", "expires_at", "used_at", "used_by"]
    readonly_fields = ["prefix", "secret_hash", "used_at", "used_by", "certificate_serial"]


@admin.register(IssuedCertificate)
class IssuedCertificateAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["spiffe_id", "serial", "not_after", "revoked_at"]
    search_fields = ["node_name", "serial"]
