from django.apps import AppConfig


class PolicyConfig(AppConfig):
    name = "meshweb.policy"
    label = "policy"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from meshweb.policy.changes import register_changes

        register_changes()  # what agents learn of this app's models (meshweb/core/changes.py)
