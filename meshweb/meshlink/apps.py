from django.apps import AppConfig


class MeshlinkConfig(AppConfig):
    name = "meshweb.meshlink"
    label = "meshlink"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from agents.tracing import setup_from_env

        setup_from_env("infermesh-portal")  # OTEL_EXPORTER_OTLP_* (nothing is loaded when unset)

        from meshweb.audit.signals import write_recorded
        from meshweb.meshlink.outbox import publish_recorded

        # Every audited write appends what agents must know of it to the outbox, in the writer's transaction.
        write_recorded.connect(publish_recorded, dispatch_uid="meshweb.meshlink.outbox")
