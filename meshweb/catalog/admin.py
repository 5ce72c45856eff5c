from django.contrib import admin

from meshweb.catalog.models import Deployment, Model, ModelRevision


@admin.register(Model)
class ModelAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["name", "tenant", "created_at"]
    list_filter = ["tenant"]
    search_fields = ["name"]
    list_select_related = ["tenant"]


@admin.register(ModelRevision)
class ModelRevisionAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["model", "revision", "quant", "runtime", "artifact_uri"]
    list_filter = ["runtime", "quant"]
    list_select_related = ["model"]


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["revision", "zone", "gpu_type", "mig_profile", "min_replicas", "max_replicas"]
    list_select_related = ["revision__model", "zone"]
