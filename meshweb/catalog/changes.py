"""What agents learn of models, revisions and deployments (registered with the outbox at app ready)."""

from __future__ import annotations

from collections.abc import Iterator

from meshweb.catalog.models import Deployment, Model, ModelRevision
from meshweb.core.changes import Put, register, register_dependents
from meshweb.fleet.models import Node
from meshweb.tenancy.models import Tenant


def _model(m: Model) -> Iterator[Put]:
    yield Put(
        "model",
        f"kv/portal/models/{m.pk}",
        {"id": m.pk, "tenant": m.tenant_id, "name": m.name, "aliases": list(m.aliases or [])},
    )


def _revision(r: ModelRevision) -> Iterator[Put]:
    yield Put(
        "revision",
        f"kv/portal/revisions/{r.pk}",
        {
            "id": r.pk,
            "model": r.model_id,
            "revision": r.revision,
            "quant": r.quant,
            "runtime": r.runtime,
            "artifact_uri": r.artifact_uri,
        },
    )


def _deployment(d: Deployment) -> Iterator[Put]:
    zone = d.zone.name if d.zone is not None else ""
    # The nodes the deployment's zone and node selector (labels, all must match) admit, as of this save.
    nodes: list[str] = []
    if d.zone is not None or d.node_selector:
        candidates = Node.objects.filter(zone=d.zone) if d.zone is not None else Node.objects.all()
        nodes = sorted(
            n.name
            for n in candidates.only("name", "labels")
            if all(str((n.labels or {}).get(k)) == str(v) for k, v in d.node_selector.items())
        )
    yield Put(
        "deployment",
        f"kv/portal/deployments/{d.pk}",
        {
            "id": d.pk,
            "revision": d.revision_id,
            "zone": d.zone_id,
            "zone_name": zone,
            "node_selector": d.node_selector,
            # routers keep a selector's revision to these nodes; without a selector the zone says it
            "selector_nodes": nodes if d.node_selector else None,
            "gpu_type": d.gpu_type,
            "mig_profile": d.mig_profile,
            "min_replicas": d.min_replicas,
            "max_replicas": d.max_replicas,
        },
    )
    # The typed placement the scheduler honours: the admitted nodes are kept for the model.
    yield Put(
        "placement",
        f"placements/deployment-{d.pk}",
        {"model": d.revision.model.name, "nodes": nodes, "replicas": d.min_replicas},
    )


def register_changes() -> None:
    register(Model, _model)
    register(ModelRevision, _revision)
    register(Deployment, _deployment)
    register_dependents(Tenant, "catalog.model", lambda t: Model.objects.filter(tenant=t))
    register_dependents(Model, "catalog.modelrevision", lambda m: ModelRevision.objects.filter(model=m))
    register_dependents(ModelRevision, "catalog.deployment", lambda r: Deployment.objects.filter(revision=r))
