from django.contrib import admin

from meshweb.training.models import JobEvent, JobPlacement, TrainingJob


class JobEventInline(admin.TabularInline):  # type: ignore[type-arg]
    model = JobEvent
    extra = 0
    readonly_fields = ["at", "kind", "message", "data"]
    can_delete = False


class JobPlacementInline(admin.TabularInline):  # type: ignore[type-arg]
    model = JobPlacement
    extra = 0


@admin.register(TrainingJob)
class TrainingJobAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["id", "name", "tenant", "status", "workers", "gpus_per_worker", "priority", "created_at"]
    list_filter = ["status", "tenant"]
    search_fields = ["name"]
    list_select_related = ["tenant"]
    # Status changes go through the job services (cancel/scale actions), never a raw edit.
    readonly_fields = ["status", "status_reason", "started_at", "finished_at", "submitted_by"]
    inlines = [JobPlacementInline, JobEventInline]


@admin.register(JobEvent)
class JobEventAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["at", "job", "kind", "message"]
    list_filter = ["kind"]
    list_select_related = ["job"]
