"""App config of the identity app; registers its OpenAPI security schemes."""

from django.apps import AppConfig


class IdentityConfig(AppConfig):
    name = "meshweb.identity"
    label = "identity"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # drf-spectacular finds authentication extensions by subclass registration: import them once.
        from meshweb.audit.refusals import register_scheme
        from meshweb.identity import schema  # noqa: F401
        from meshweb.identity.models import NodeCredential, OidcIdentity

        register_scheme("oidc_bearer", OidcIdentity)
        register_scheme("node_credential", NodeCredential)
