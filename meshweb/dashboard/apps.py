"""Django app config of the admin dashboard."""

from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "meshweb.dashboard"
    label = "dashboard"
    default_auto_field = "django.db.models.BigAutoField"
