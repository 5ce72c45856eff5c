"""App config of the identity app; registers its OpenAPI security schemes."""

from django.apps import AppConfig


class IdentityConfig(AppConfig):
    name = "meshweb.identity"
    label = "identity"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # drf-spectacular finds authentication extensions by subclass registration: import them once.
        from meshweb.identity import schema  # noqa: F401
