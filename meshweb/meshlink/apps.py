from django.apps import AppConfig


class MeshlinkConfig(AppConfig):
    name = "meshweb.meshlink"
    label = "meshlink"
    default_auto_field = "django.db.models.BigAutoField"
