"""The routing page of a model: linked from the overview and the models page, visible to the model's tenant only,
and its policy form writes through the same checked service as the REST API (a refused policy changes nothing)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from meshweb.dashboard.route_feed import RouteRates
from meshweb.meshlink.models import OutboxEntry
from meshweb.policy.models import RoutingPolicy, Slo
from tests.dashboard.conftest import World

pytestmark = pytest.mark.django_db


def test_route_page_links_and_policy_form(world: World, login: Callable[..., Client]) -> None:
    model = world.own.objects["model"]
    url = f"/dashboard/models/{model.pk}/route/"
    outsider = login(tenant=world.other.tenant, role="tenant_admin")
    assert outsider.get(url).status_code == 404  # another tenant's model reads as missing
    assert outsider.post(f"{url}policy/", {"strategy": "least_queue"}).status_code == 404
    admin = login(tenant=world.own.tenant, role="tenant_admin")
    page = admin.get(url)
    assert page.status_code == 200 and b'id="route"' in page.content and b'id="policy-form"' in page.content
    assert url.encode() in admin.get("/dashboard/").content  # the overview links to it
    assert url.encode() in admin.get("/dashboard/models/").content
    operator = admin
    before = OutboxEntry.objects.count()
    refused = operator.post(
        f"{url}policy/", {"strategy": "baseline_rr", "ab_split": "hybrid_mesh=70, least_queue=20"}, follow=True
    )
    assert b"add up to 100" in refused.content and b"ab_split" in refused.content
    policy = RoutingPolicy.objects.get(model=model)
    assert policy.strategy == "least_queue" and OutboxEntry.objects.count() == before
    saved = operator.post(
        f"{url}policy/",
        {"strategy": "hybrid_mesh", "ab_split": "hybrid_mesh=70, least_queue=30", "pin_nodes": ["node-1"],
         "hedging": "on"},
        follow=True,
    )  # fmt: skip
    assert b"saved" in saved.content
    # A bad SLO refuses the whole form: the policy's change above is kept, this one's is not.
    bad_slo = operator.post(f"{url}policy/", {"strategy": "least_queue", "slo_ttft_ms": "-5"}, follow=True)
    assert b"slo_ttft_ms" in bad_slo.content
    assert RoutingPolicy.objects.get(model=model).strategy == "hybrid_mesh"
    operator.post(
        f"{url}policy/",
        {"strategy": "hybrid_mesh", "ab_split": "hybrid_mesh=70, least_queue=30", "pin_nodes": ["node-1"],
         "hedging": "on", "slo_ttft_ms": "400"},
    )  # fmt: skip
    assert Slo.objects.get(tenant=world.own.tenant, model=model).ttft_p99_ms == 400
    policy.refresh_from_db()
    assert (policy.strategy, policy.ab_split, policy.pin_nodes, policy.hedging) == (
        "hybrid_mesh", {"hybrid_mesh": 70.0, "least_queue": 30.0}, ["node-1"], True,
    )  # fmt: skip
    assert OutboxEntry.objects.filter(key=f"routing/policy-{policy.pk}", version__gt=0).exists()


def test_policy_form_sets_the_adapter_load_time_as_the_rest_api_does(
    world: World, login: Callable[..., Client]
) -> None:
    """`lora_load_s` (the policy's `params.lora_load_s`): 0..600 seconds, anything else refused naming it with the
    REST API's message and nothing changed; blank removes it (the strategies' default); other params are kept."""
    model = world.own.objects["model"]
    url = f"/dashboard/models/{model.pk}/route/"
    operator = login(tenant=world.own.tenant, role="tenant_admin")
    form = {"strategy": "hybrid_mesh"}
    assert b"saved" in operator.post(f"{url}policy/", {**form, "lora_load_s": "4.5"}, follow=True).content
    policy = RoutingPolicy.objects.get(model=model)
    assert policy.params == {"lora_load_s": 4.5}
    published = OutboxEntry.objects.filter(key=f"routing/policy-{policy.pk}").last()
    assert published is not None and published.value["params"]["lora_load_s"] == 4.5  # what routers read
    page = operator.get(url).content.decode()
    assert 'name="lora_load_s"' in page and 'value="4.5"' in page and 'max="600"' in page
    RoutingPolicy.objects.filter(pk=policy.pk).update(params={"lora_load_s": 4.5, "other": 1})  # set over REST
    for bad in ("601", "-1", "slow", "nan"):
        refused = operator.post(f"{url}policy/", {**form, "strategy": "least_queue", "lora_load_s": bad}, follow=True)
        text = refused.content.decode()
        assert "Policy refused" in text and "lora_load_s" in text and "0..600" in text, bad
        policy.refresh_from_db()
        assert (policy.strategy, policy.params) == ("hybrid_mesh", {"lora_load_s": 4.5, "other": 1}), bad
    operator.post(f"{url}policy/", {**form, "lora_load_s": "600"})
    policy.refresh_from_db()
    assert policy.params == {"lora_load_s": 600.0, "other": 1}
    operator.post(f"{url}policy/", form)  # a post without the field leaves the params alone
    policy.refresh_from_db()
    assert policy.params == {"lora_load_s": 600.0, "other": 1}
    operator.post(f"{url}policy/", {**form, "lora_load_s": " "})  # blank: back to the strategies' default
    policy.refresh_from_db()
    assert policy.params == {"other": 1}


def test_rates_come_from_the_routers_counts() -> None:
    rates = RouteRates()
    first: dict[str, Any] = {"targets": [{"id": "a", "requests": 10, "errors": 1, "ttft_sum_s": 1.0, "ttft_n": 9}]}
    assert rates.enrich(first, now=100.0)["targets"][0]["rps"] is None
    later = {"targets": [{"id": "a", "requests": 30, "errors": 3, "ttft_sum_s": 3.0, "ttft_n": 29}]}
    t = rates.enrich(later, now=102.0)["targets"][0]
    assert (t["rps"], t["errors_per_s"], t["ttft_ms"]) == (10.0, 1.0, 100.0)
