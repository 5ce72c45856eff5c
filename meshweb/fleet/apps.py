from django.apps import AppConfig


class FleetConfig(AppConfig):
    name = "meshweb.fleet"
    label = "fleet"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from meshweb.fleet.changes import register_changes

        register_changes()  # what agents learn of this app's models (meshweb/core/changes.py)
