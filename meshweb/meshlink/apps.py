from django.apps import AppConfig


class MeshlinkConfig(AppConfig):
    name = "meshweb.meshlink"
    label = "meshlink"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from agents.tracing import setup_from_env

        setup_from_env("infermesh-portal")  # OTEL_EXPORTER_OTLP_* (nothing is loaded when unset)
