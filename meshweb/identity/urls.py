"""Identity URLs: the OIDC flow under /oidc/ (authenticate, callback, logout) and /auth/ pages."""

from django.conf import settings
from django.urls import URLPattern, URLResolver, include, path

from meshweb.identity import views

urlpatterns: list[URLPattern | URLResolver] = [
    path("auth/me", views.me, name="identity-me"),
    path("auth/refused/", views.refused, name="identity-refused"),
]
if getattr(settings, "OIDC_ENABLED", False):
    urlpatterns.append(path("oidc/", include("mozilla_django_oidc.urls")))
