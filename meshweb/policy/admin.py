from django.contrib import admin

from meshweb.policy.models import AdmissionPolicy, RoutingPolicy, Slo


@admin.register(Slo)
class SloAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["tenant", "model", "ttft_p99_ms", "latency_p99_ms"]
    list_select_related = ["tenant", "model"]


@admin.register(RoutingPolicy)
class RoutingPolicyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["tenant", "model", "strategy", "ab_split", "shadow_strategy", "hedging"]
    list_select_related = ["tenant", "model"]


@admin.register(AdmissionPolicy)
class AdmissionPolicyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["tenant", "model", "max_queue_depth", "max_kv_usage", "retry_after_s"]
    list_select_related = ["tenant", "model"]
