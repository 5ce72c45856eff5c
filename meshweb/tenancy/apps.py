from django.apps import AppConfig


class TenancyConfig(AppConfig):
    name = "meshweb.tenancy"
    label = "tenancy"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from meshweb.audit.refusals import register_scheme
        from meshweb.tenancy import admin_site  # noqa: F401  (the Django admin, for platform admins only)
        from meshweb.tenancy.changes import register_changes
        from meshweb.tenancy.models import ApiToken

        register_changes()  # what agents learn of this app's models (meshweb/core/changes.py)
        register_scheme("api_token", ApiToken)  # refused API tokens are audited under this credential
