"""Identity URLs: the OIDC flow under /oidc/ (authenticate, callback, logout) and /auth/ pages."""

from django.conf import settings
from django.urls import URLPattern, URLResolver, include, path

from meshweb.identity import api, views

urlpatterns: list[URLPattern | URLResolver] = [
    path("auth/me", views.me, name="identity-me"),
    path("auth/refused/", views.refused, name="identity-refused"),
    path("api/v1/join-tokens/", api.JoinTokenView.as_view(), name="join-token-create"),
    path("api/v1/enroll/", api.EnrollView.as_view(), name="node-enroll"),
    path("api/v1/enroll/renew/", api.RenewView.as_view(), name="node-renew"),
    path("mesh/crl.pem", api.crl_view, name="mesh-crl"),
]
if getattr(settings, "OIDC_ENABLED", False):
    urlpatterns.append(path("oidc/", include("mozilla_django_oidc.urls")))
