from django.contrib import admin

from meshweb.fleet.models import Cell, Gpu, Node, Region, Zone


@admin.register(Region)
class RegionAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["name", "created_at"]


@admin.register(Zone)
class ZoneAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["name", "region"]
    list_select_related = ["region"]


@admin.register(Cell)
class CellAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["name", "zone"]
    list_select_related = ["zone"]


class GpuInline(admin.TabularInline):  # type: ignore[type-arg]
    model = Gpu
    extra = 0


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["name", "zone", "status", "status_reason", "last_heartbeat_at"]
    list_filter = ["status", "zone"]
    search_fields = ["name", "address"]
    list_select_related = ["zone"]
    # Status moves only along the lifecycle, through the API or the dashboard.
    readonly_fields = ["status", "status_reason", "status_changed_at", "last_heartbeat_at"]
    inlines = [GpuInline]


@admin.register(Gpu)
class GpuAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["uuid", "node", "index", "gpu_type", "vram_mb", "mig_profile"]
    list_filter = ["gpu_type"]
    list_select_related = ["node"]
