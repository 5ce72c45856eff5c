"""Portal URL map."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import TemplateView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from meshweb.core.views import healthz
from meshweb.metrics import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("meshweb.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("healthz", healthz, name="healthz"),
    path("dashboard/", include("meshweb.dashboard.urls")),
    path("", include("meshweb.identity.urls")),
    path("", TemplateView.as_view(template_name="portal/home.html"), name="home"),
    path("metrics", metrics_view, name="prometheus-django-metrics"),
]
