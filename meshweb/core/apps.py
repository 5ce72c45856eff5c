from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "meshweb.core"
    label = "core"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the OpenAPI extensions of the authentication classes.
        from meshweb.core.api import schema  # noqa: F401
