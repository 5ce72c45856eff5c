"""Dashboard URLs, mounted under /dashboard/."""

from django.contrib.auth import views as auth_views
from django.urls import path

from meshweb.dashboard import cells_page, keys, route_views, usage_page, views

app_name = "dashboard"

urlpatterns = [
    path(
        "login/",
        auth_views.LoginView.as_view(template_name="dashboard/login.html", redirect_authenticated_user=True),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(next_page="dashboard:login"), name="logout"),
    path("", views.overview, name="overview"),
    path("nodes/", views.nodes, name="nodes"),
    path("nodes/<str:name>/", views.node_detail, name="node"),
    path("nodes/<str:name>/telemetry.json", views.node_telemetry, name="node-telemetry"),
    path("nodes/<str:name>/status/", views.node_status, name="node-status"),
    path("tenants/", views.tenants, name="tenants"),
    path("models/", views.catalog, name="models"),
    path("models/<int:model_id>/route/", route_views.model_route, name="model-route"),
    path("models/<int:model_id>/route/policy/", route_views.model_policy_set, name="model-policy"),
    path("keys/", keys.keys, name="keys"),
    path("usage/", usage_page.usage, name="usage"),
    path("cells/", cells_page.cells, name="cells"),
    path("keys/<int:key_id>/revoke/", keys.key_revoke, name="key-revoke"),
    path("jobs/", views.jobs, name="jobs"),
    path("jobs/<int:job_id>/", views.job_detail, name="job"),
    path("jobs/<int:job_id>/cancel/", views.job_cancel_view, name="job-cancel"),
    path("jobs/<int:job_id>/scale/", views.job_scale_view, name="job-scale"),
    path("quarantine/", views.quarantine, name="quarantine"),
    path("events/", views.events, name="events"),
    path("fragments/overview/", views.overview_fragment, name="fragment-overview"),
    path("fragments/nodes/", views.nodes_fragment, name="fragment-nodes"),
    path("fragments/tenants/", views.tenants_fragment, name="fragment-tenants"),
    path("fragments/jobs/", views.jobs_fragment, name="fragment-jobs"),
    path("fragments/jobs/<int:job_id>/", views.job_fragment, name="fragment-job"),
    path("fragments/quarantine/", views.quarantine_fragment, name="fragment-quarantine"),
]
