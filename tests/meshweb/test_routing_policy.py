"""Routing policies and catalog aliases over REST: what a router must know reaches the outbox as values the agents'
store accepts, and a policy that cannot be applied is refused whole with 422 naming each field."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from agents.proto.portal_link import MANAGED_PREFIXES
from agents.store.schema import check_value
from meshweb.meshlink.models import OutboxEntry
from meshweb.policy.models import RoutingPolicy
from meshweb.tenancy.models import Tenant
from tests.meshweb.conftest import World, make_client

pytestmark = pytest.mark.django_db


def _policy_url(world: World) -> str:
    return f"/api/v1/routing-policies/{world.own.objects['routing_policy'].pk}/"


@pytest.fixture
def operator(world: World, token_for: Callable[[Tenant, str], str]) -> Any:
    return make_client(token_for(world.own.tenant, "operator"))


def test_a_full_policy_reaches_the_outbox_as_store_values(world: World, operator: Any) -> None:
    mark = OutboxEntry.objects.order_by("-version").values_list("version", flat=True).first() or 0
    body = {
        "strategy": "hybrid_mesh",
        "ab_split": {"hybrid_mesh": 70, "least_queue": 30},
        "shadow_strategy": "baseline_rr",
        "hedging": True,
        "pin_nodes": ["node-1"],
        "pin_zones": ["zone-a"],
        "params": {"lora_load_s": 4.5},  # adapters loaded from disk: the strategies charge it (router/ranking.py)
    }
    resp = operator.patch(_policy_url(world), body, format="json")
    assert resp.status_code == 200, resp.content
    assert resp.json()["ab_split"] == {"hybrid_mesh": 70, "least_queue": 30}
    rows = {r.key: r for r in OutboxEntry.objects.filter(version__gt=mark)}
    pid = world.own.objects["routing_policy"].pk
    routing = rows[f"routing/policy-{pid}"].value
    assert routing["strategy"] == "hybrid_mesh"
    assert routing["params"]["ab_split"] == {"hybrid_mesh": 70, "least_queue": 30}
    assert routing["params"]["pin_nodes"] == ["node-1"] and routing["params"]["hedging"] is True
    assert routing["params"]["lora_load_s"] == 4.5
    assert rows[f"pinning/policy-{pid}"].value == {"model": "acme-llm", "nodes": ["node-1"]}
    for row in rows.values():
        assert row.key.startswith(MANAGED_PREFIXES)
        check_value(row.key, json.dumps(row.value))
    # Unpinning removes the scheduler's key.
    mark = max(r.version for r in rows.values())
    assert operator.patch(_policy_url(world), {"pin_nodes": []}, format="json").status_code == 200
    ops = {r.key: r.op for r in OutboxEntry.objects.filter(version__gt=mark)}
    assert ops[f"pinning/policy-{pid}"] == "delete"


BAD = [
    ({"ab_split": {"hybrid_mesh": 60, "least_queue": 30}}, "ab_split", "add up to 100"),
    ({"ab_split": {"hybrid_mesh": 120, "least_queue": -20}}, "ab_split", "negative"),
    ({"ab_split": {"hybrid_mesh": 50, "fastest": 50}}, "ab_split", "Unknown strategy 'fastest'"),
    ({"strategy": "fastest"}, "strategy", "Unknown strategy 'fastest'"),
    ({"shadow_strategy": "fastest"}, "shadow_strategy", "Unknown strategy"),
    ({"pin_nodes": ["node-1", "node-404"]}, "pin_nodes", "Unknown node: node-404"),
    ({"pin_zones": ["zone-z"]}, "pin_zones", "Unknown zone: zone-z"),
    ({"model": 999999}, "model", "does not exist"),
    ({"params": {"lora_load_s": -1}}, "params", "lora_load_s"),
    ({"params": {"lora_load_s": "slow"}}, "params", "lora_load_s"),
]


def test_a_policy_that_cannot_be_applied_is_refused_whole(world: World, operator: Any) -> None:
    before = RoutingPolicy.objects.get(pk=world.own.objects["routing_policy"].pk)
    outbox = OutboxEntry.objects.count()
    for body, field, words in BAD:
        # A valid strategy change rides along: it must not be applied either.
        resp = operator.patch(_policy_url(world), {"strategy": "baseline_rr", **body}, format="json")
        assert resp.status_code == 422, (body, resp.content)
        error = resp.json()["error"]
        assert error["status"] == 422 and field in error["fields"], error
        assert words in " ".join(error["fields"][field]), error
    after = RoutingPolicy.objects.get(pk=before.pk)
    assert (after.strategy, after.ab_split, after.pin_nodes) == (before.strategy, before.ab_split, before.pin_nodes)
    assert OutboxEntry.objects.count() == outbox


def test_a_new_policy_for_an_unknown_model_is_refused(world: World, operator: Any) -> None:
    resp = operator.post(
        "/api/v1/routing-policies/", {"tenant": "acme", "model": 424242, "strategy": "least_queue"}, format="json"
    )
    assert resp.status_code == 422 and "model" in resp.json()["error"]["fields"]
    # Another tenant's model reads as unknown too.
    other = world.other.objects["model"].pk
    resp = operator.post("/api/v1/routing-policies/", {"tenant": "acme", "model": other}, format="json")
    assert resp.status_code == 422 and "model" in resp.json()["error"]["fields"]


def test_aliases_are_published_and_may_not_clash(world: World, operator: Any) -> None:
    model = world.own.objects["model"]
    resp = operator.patch(f"/api/v1/models/{model.pk}/", {"aliases": ["chat", "chat-latest"]}, format="json")
    assert resp.status_code == 200, resp.content
    row = OutboxEntry.objects.filter(key=f"kv/portal/models/{model.pk}").order_by("-version").first()
    assert row is not None and row.value["aliases"] == ["chat", "chat-latest"]
    second = operator.post("/api/v1/models/", {"tenant": "acme", "name": "other", "aliases": ["chat"]}, format="json")
    assert second.status_code == 400 and "chat" in " ".join(second.json()["error"]["fields"]["aliases"])
    same = operator.post("/api/v1/models/", {"tenant": "acme", "name": "chat"}, format="json")
    assert same.status_code == 400


def test_deployments_and_slos_reach_the_store_typed(world: World, operator: Any) -> None:
    mark = OutboxEntry.objects.order_by("-version").values_list("version", flat=True).first() or 0
    deployment, slo = world.own.objects["deployment"], world.own.objects["slo"]
    assert (
        operator.patch(f"/api/v1/deployments/{deployment.pk}/", {"min_replicas": 2}, format="json").status_code == 200
    )
    assert operator.patch(f"/api/v1/slos/{slo.pk}/", {"ttft_p99_ms": 250}, format="json").status_code == 200
    rows = {r.key: r.value for r in OutboxEntry.objects.filter(version__gt=mark)}
    placement = rows[f"placements/deployment-{deployment.pk}"]
    assert placement == {"model": "acme-llm", "nodes": ["node-1", "node-acme", "node-globex"], "replicas": 2}
    assert rows[f"slos/tenant-{world.own.tenant.pk}/model-{slo.model_id}"] == {"ttft_ms_p99": 250.0}
    for key, value in rows.items():
        check_value(key, json.dumps(value))


def test_the_cache_strategies_can_be_chosen_and_every_choice_is_one_the_router_loads(
    world: World, operator: Any
) -> None:
    from agents.strategies import load_strategy
    from meshweb.policy.models import Strategy

    for name in Strategy.values:  # the router's built-ins, by the same names
        assert load_strategy(name).name == name
    body = {"strategy": "cache_aware", "shadow_strategy": "session_affinity", "ab_split": {}}
    resp = operator.patch(_policy_url(world), body, format="json")
    assert resp.status_code == 200, resp.content
    pid = world.own.objects["routing_policy"].pk
    routing = OutboxEntry.objects.filter(key=f"routing/policy-{pid}").order_by("-version").first()
    assert routing is not None and routing.value["strategy"] == "cache_aware"
    assert routing.value["params"]["shadow_strategy"] == "session_affinity"
