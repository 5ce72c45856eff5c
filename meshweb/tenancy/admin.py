from django.contrib import admin

from meshweb.tenancy.models import ApiToken, Membership, Quota, Tenant


class QuotaInline(admin.StackedInline):  # type: ignore[type-arg]
    model = Quota
    can_delete = False


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["slug", "name", "is_active", "regions", "created_at"]
    search_fields = ["slug", "name"]
    inlines = [QuotaInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["user", "tenant", "role"]
    list_filter = ["role", "tenant"]
    list_select_related = ["user", "tenant"]


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["tenant", "gpus_max", "gpu_hours_per_period", "concurrent_jobs_max", "requests_per_s"]
    list_select_related = ["tenant"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["prefix", "tenant", "role", "name", "expires_at", "revoked_at", "last_used_at"]
    list_filter = ["role", "tenant"]
    readonly_fields = ["prefix", "secret_hash", "last_used_at"]
    list_select_related = ["tenant"]
