"""The router's mirror of the portal's routing state (sans-IO): the store keys the portal writes become each tenant's
catalog (names, aliases, deployed revisions and zones) and each model's policy over the router's defaults."""

from __future__ import annotations

import json

from router.config import RoutingPolicy, StaticTarget
from router.portal_routing import PortalRouting
from router.ranking import Ranker
from router.view import Target, TargetView


def _state(**extra: dict[str, object]) -> PortalRouting:
    kv = {
        "kv/portal/tenants/1": {"id": 1, "slug": "acme", "name": "Acme", "active": True},
        "kv/portal/tenants/2": {"id": 2, "slug": "globex", "name": "Globex", "active": True},
        "kv/portal/models/10": {"id": 10, "tenant": 1, "name": "llm", "aliases": ["chat"]},
        "kv/portal/models/11": {"id": 11, "tenant": 1, "name": "draft", "aliases": []},
        "kv/portal/models/20": {"id": 20, "tenant": 2, "name": "llm", "aliases": []},
        "kv/portal/revisions/100": {"id": 100, "model": 10, "revision": "v2"},
        "kv/portal/revisions/200": {"id": 200, "model": 20, "revision": "v1"},
        "kv/portal/deployments/1": {"id": 1, "revision": 100, "zone": 1, "zone_name": "zone-a"},
        "kv/portal/deployments/2": {"id": 2, "revision": 200, "zone": None, "zone_name": ""},
        "kv/training/jobs/1": {"status": "running"},  # not routing's business
        **extra,
    }
    s = PortalRouting()
    s.replace((k, json.dumps(v)) for k, v in kv.items())
    return s


def _t(node: str, zone: str = "", revision: str = "") -> Target:
    return Target(id=f"llm@{revision}/{node}", model="llm", url=f"http://{node}:1", node=node, zone=zone,
                  revision=revision)  # fmt: skip


def test_catalog_names_aliases_and_deployed_revisions() -> None:
    s = _state()
    assert s.knows("acme") and s.knows("globex") and not s.knows("initech")
    llm = s.resolve("acme", "chat")
    assert llm is not None and llm.name == "llm" and s.resolve("acme", "llm") is llm
    assert s.resolve("acme", "draft") is None  # not deployed: not served, not listed
    assert [m.name for m in s.listed("acme")] == ["llm"]
    assert s.resolve("globex", "chat") is None  # aliases are per tenant
    assert llm.serves(_t("n1", "zone-a", "v2")) and llm.serves(_t("n1"))  # unknown revision / zone: allowed
    assert not llm.serves(_t("n1", "zone-a", "v1")) and not llm.serves(_t("n1", "zone-b", "v2"))
    globex = s.resolve("globex", "llm")
    assert globex is not None and globex.serves(_t("n9", "zone-z", "v1"))  # deployed anywhere


def test_each_deployment_places_its_revision_by_zone_gpu_type_mig_profile_and_node_selector() -> None:
    s = _state(**{
        # v2 on H100 MIG 3g.40gb slices anywhere, and v2 on whole A100s of the nodes that the selector admits
        "kv/portal/deployments/1": {"id": 1, "revision": 100, "zone_name": "", "gpu_type": "H100",
                                    "mig_profile": "3g.40gb"},
        "kv/portal/deployments/3": {"id": 3, "revision": 100, "zone_name": "zone-b", "gpu_type": "A100",
                                    "node_selector": {"pool": "batch"}, "selector_nodes": ["n5"]},
    })  # fmt: skip
    llm = s.resolve("acme", "llm")
    assert llm is not None and len(llm.placements) == 2

    def t(node: str, gpu: str, mig: str = "", zone: str = "") -> Target:
        return Target(id=f"{node}/{gpu}/{mig}", model="llm", url=f"http://{node}:1", node=node, zone=zone,
                      revision="v2", gpu_type=gpu, mig_profile=mig)  # fmt: skip

    assert llm.serves(t("n1", "H100", "3g.40gb")) and llm.serves(t("n1", "", "3g.40gb"))  # unknown family: allowed
    assert not llm.serves(t("n1", "H100")) and not llm.serves(t("n1", "H100", "1g.10gb"))  # a whole GPU is no slice
    assert not llm.serves(t("n1", "L4", "3g.40gb"))
    assert llm.serves(t("n5", "A100", zone="zone-b")) and not llm.serves(t("n6", "A100", zone="zone-b"))
    assert not llm.serves(t("n5", "A100", zone="zone-a"))
    assert [p.describe()["nodes"] for p in llm.placements] == [None, ["n5"]]


def test_policy_over_router_defaults_and_changes_apply() -> None:
    policy = {"strategy": "least_queue", "params": {"tenant": 1, "model": 10, "ab_split": {"least_queue": 60,
              "hybrid_mesh": 40}, "shadow_strategy": "baseline_rr", "hedging": True, "pin_nodes": ["n1"],
              "pin_zones": ["zone-a"], "zone_nodes": ["n7"]}}  # fmt: skip
    s = _state(**{"routing/policy-5": policy, "slos/tenant-1/model-10": {"ttft_ms_p99": 300.0}})
    llm = s.resolve("acme", "llm")
    assert llm is not None and llm.policy is not None
    base = RoutingPolicy(strategy="hybrid_mesh")
    p = s.policy_for(llm, base)
    assert p.strategy == "least_queue" and p.ab_split == {"least_queue": 60.0, "hybrid_mesh": 40.0}
    assert p.shadow_strategy == "baseline_rr" and p.hedging.enabled and p.hedging.max_delay_ms == 150.0
    assert s.policy_for(llm, base) is p  # cached until the next change
    # Pins: the node itself, a target in a pinned zone, or one of the zone's nodes when the target has no zone.
    assert llm.serves(_t("n1")) and llm.serves(_t("n3", "zone-a")) and llm.serves(_t("n7"))
    assert not llm.serves(_t("n2")) and not llm.serves(_t("n3", "zone-b"))
    assert s.strategies() == {"least_queue", "hybrid_mesh", "baseline_rr"}
    # A change: the pin goes; a delete of the policy leaves the router's defaults.
    version = s.version
    unpinned = {**policy, "params": {**policy["params"], "pin_nodes": [], "pin_zones": []}}  # type: ignore[dict-item]
    assert s.apply("routing/policy-5", json.dumps(unpinned))
    s.rebuild()
    llm = s.resolve("acme", "llm")
    assert s.version > version and llm is not None and llm.serves(_t("n2"))
    assert s.apply("routing/policy-5", None)
    s.rebuild()
    llm = s.resolve("acme", "llm")
    assert llm is not None and llm.policy is None
    assert s.policy_for(llm, base).strategy == "hybrid_mesh"
    assert not s.apply("kv/training/jobs/2", "{}")


def test_ranker_loads_named_strategies_at_runtime_and_keeps_to_the_allowed_targets() -> None:
    view = TargetView([StaticTarget(model="llm", url=f"http://127.0.0.1:{9100 + i}", node=f"n{i}") for i in range(4)])
    r = Ranker(view, [RoutingPolicy(strategy="baseline_rr")])
    assert "least_queue" not in r.host.strategies
    assert r.ensure({"least_queue", "no.such:Strategy"}) == ["no.such:Strategy"]
    policy = RoutingPolicy(strategy="least_queue")
    allowed = [t for t in view.all("llm") if t.node in {"n1", "n3"}]
    for i in range(12):  # every decision, whatever the strategy prefers, stays on the pinned targets
        ranked, used = r.rank("llm", allowed, policy, f"req-{i}")
        assert used == "least_queue" and {t.node for t in ranked} == {"n1", "n3"}
    explained = r.explain("llm", "least_queue", allowed)
    assert {t.node for t, _, _ in explained} == {"n1", "n3"} and all(terms for _, _, terms in explained)


def _adapter(node: str, running: int, resident: bool) -> Target:
    from agents.proto.infermesh.v1 import state_pb2

    st = state_pb2.TargetState(target_id=f"sql@{node}", model="sql", node=node, endpoint=f"http://{node}:1",
                               parent="llm", health=1, routable=True)  # fmt: skip
    st.requests_running, st.requests_waiting, st.max_concurrency = running, 0, 8
    st.lora_resident, st.max_loras, st.loras_active = resident, 2, 1
    return Target(id=f"sql@{node}", model="sql", url=f"http://{node}:1", node=node, source="agent", state=st)


def test_the_policy_s_adapter_load_time_reaches_the_strategy() -> None:
    """`params.lora_load_s` of the portal's policy becomes the router policy's `lora_load_s`, and the strategy charges
    it: a fast load sends the request to the idle runtime, a slow one to the busier one holding the adapter."""
    view = TargetView([])
    view.upsert_agent(_adapter("busy", running=7, resident=True))
    view.upsert_agent(_adapter("idle", running=0, resident=False))
    picks = {}
    for load_s in (None, 5.0):
        params: dict[str, object] = {"tenant": 1, "model": 10}
        if load_s is not None:
            params["lora_load_s"] = load_s
        s = _state(**{"routing/policy-5": {"strategy": "cache_aware", "params": params}})
        llm = s.resolve("acme", "llm")
        assert llm is not None
        p = s.policy_for(llm, RoutingPolicy())
        assert p.lora_load_s == load_s
        r = Ranker(view, [p], decision_budget_us=1e9)  # a loaded machine must not trip the budget into round-robin
        ranked, used = r.rank("sql", view.candidates("sql"), p, "req")
        picks[load_s] = ranked[0].id
        assert used == "cache_aware"
    assert picks == {None: "sql@idle", 5.0: "sql@busy"}
    # a value the portal should have refused is logged and the default kept, never applied
    bad = _state(**{"routing/policy-5": {"strategy": "cache_aware", "params": {"tenant": 1, "model": 10,
                                                                               "lora_load_s": "slow"}}})  # fmt: skip
    llm = bad.resolve("acme", "llm")
    assert llm is not None and bad.policy_for(llm, RoutingPolicy()).lora_load_s is None
