from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from meshweb.audit.models import AuditEntry


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["at", "actor", "tenant", "action", "object_type", "object_id", "correlation_id"]
    list_filter = ["action", "object_type"]
    search_fields = ["actor", "object_id", "correlation_id"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
