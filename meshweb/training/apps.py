from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "meshweb.training"
    label = "training"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from meshweb.training.changes import register_changes

        register_changes()  # what agents learn of this app's models (meshweb/core/changes.py)
