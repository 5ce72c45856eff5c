"""The REST API, version 1."""

from django.urls import path
from rest_framework.routers import DefaultRouter

from meshweb.catalog.api.views import DeploymentViewSet, ModelRevisionViewSet, ModelViewSet
from meshweb.fleet.api.views import CellViewSet, GpuViewSet, RegionViewSet, ZoneViewSet
from meshweb.identity.api import NodeViewSet
from meshweb.policy.api.views import AdmissionPolicyViewSet, RoutingPolicyViewSet, SloViewSet, StrategyModuleViewSet
from meshweb.tenancy.api.audit import AuditEntryViewSet
from meshweb.tenancy.api.views import (
    ApiTokenViewSet,
    InferenceKeyViewSet,
    MembershipViewSet,
    QuotaViewSet,
    TenantViewSet,
)
from meshweb.training.api.views import JobViewSet
from meshweb.usage.api import UsageReportView, UsageView
from meshweb.usage.spillover import SpilloverView

router = DefaultRouter()
router.include_root_view = False
router.register("tenants", TenantViewSet, basename="tenant")
router.register("quotas", QuotaViewSet, basename="quota")
router.register("memberships", MembershipViewSet, basename="membership")
router.register("tokens", ApiTokenViewSet, basename="token")
router.register("inference-keys", InferenceKeyViewSet, basename="inferencekey")
router.register("models", ModelViewSet, basename="model")
router.register("revisions", ModelRevisionViewSet, basename="revision")
router.register("deployments", DeploymentViewSet, basename="deployment")
router.register("regions", RegionViewSet, basename="region")
router.register("zones", ZoneViewSet, basename="zone")
router.register("cells", CellViewSet, basename="cell")
router.register("nodes", NodeViewSet, basename="node")
router.register("gpus", GpuViewSet, basename="gpu")
router.register("jobs", JobViewSet, basename="job")
router.register("slos", SloViewSet, basename="slo")
router.register("routing-policies", RoutingPolicyViewSet, basename="routingpolicy")
router.register("admission-policies", AdmissionPolicyViewSet, basename="admissionpolicy")
router.register("strategy-modules", StrategyModuleViewSet, basename="strategymodule")
router.register("audit", AuditEntryViewSet, basename="audit")

urlpatterns = [
    *router.urls,
    path("usage/", UsageView.as_view(), name="usage"),
    path("usage/reports/", UsageReportView.as_view(), name="usage-reports"),
    path("usage/spillover/", SpilloverView.as_view(), name="usage-spillover"),
]
