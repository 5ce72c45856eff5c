"""A zone cut off from the portal while tenants change keys, quotas and jobs: the portal and four agents in two zones
(each agent in its own network namespace, one Raft group per zone), zone zb cut off from the portal's host for a
while, one of its agents killed with -9 and restarted during the cut. The outbox lag metric shows the gap while it
lasts; after the heal every change is in every agent's store once: its value the outbox's last one, its put count
(the key's version) the number of puts the outbox holds for it, no more (applied twice) and no less (lost)."""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.mesh import wait_for
from tests.faults.netbed import OBSERVER
from tests.faults.portal_zones import PortalZones

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

ROOT = Path(__file__).resolve().parents[2]
JOB = json.loads((ROOT / "docs/examples/job.json").read_text())
ROUNDS = 5
CUT_S = 15.0
LAG = "infermesh_outbox_lag_versions"


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[PortalZones]:
    m = PortalZones(tmp_path, {"za": 2, "zb": 2})
    try:
        m.start()
        yield m
    finally:
        m.close()


def expected_after(before: dict[str, tuple[str, int]], changes: list[tuple[int, str, str, Any]]) -> dict[str, Any]:
    """Each touched key's state once every change is applied exactly once: (value, put count), or None (deleted)."""
    out: dict[str, Any] = {}
    for _, key, op, value in changes:
        prior = out[key] if key in out else before.get(key)
        if op == "put":
            out[key] = (value, (prior[1] if prior else 0) + 1)
        else:
            out[key] = None
    return out


def test_zone_cut_off_from_the_portal_loses_nothing_and_applies_nothing_twice(mesh: PortalZones) -> None:
    inside, outside = mesh.in_zone("zb"), mesh.in_zone("za")
    attempted = acked = 0
    http = httpx.Client(base_url=f"{mesh.base}/api/v1/", headers={"Authorization": f"Bearer {mesh.token}"}, timeout=30)

    def write(method: str, path: str, body: dict[str, Any] | None = None, **headers: str) -> Any:
        nonlocal attempted, acked
        attempted += 1
        resp = http.request(method, path, json=body, headers=headers)
        assert resp.status_code < 300, f"{method} {path}: {resp.status_code} {resp.text[:300]}"
        acked += 1
        return resp.json() if resp.content else None

    tenants = {"ops": mesh.api("GET", "tenants/?slug=ops")["results"][0]["id"]}
    tenants["cutco"] = mesh.api("POST", "tenants/", {"slug": "cutco", "name": "Cut Co"})["id"]
    quotas = {t: mesh.api("GET", f"quotas/?tenant__slug={t}")["results"][0]["id"] for t in tenants}
    for q in quotas.values():  # room for every job the scenario submits
        mesh.api("PATCH", f"quotas/{q}/", {"gpus_max": 100000, "concurrent_jobs_max": 100000})

    def lags() -> dict[str, float]:
        return {n: v for n, v in mesh.metric(LAG).items() if n in mesh.zone_of}

    def applied(names: list[str]) -> bool:  # what the agents' stores hold: the truth the metric reports on
        head = mesh.head()
        return all(mesh.applied_version(n) == head for n in names)

    wait_for("every agent current before the cut", lambda: applied(list(mesh.zone_of)), timeout=90)
    before = {n: mesh.dump(n) for n in mesh.zone_of}
    v0 = mesh.head()

    # The lag metric, sampled all through the scenario.
    seen: list[tuple[float, dict[str, float]]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                seen.append((time.monotonic(), lags()))
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        mesh.bed.partition(inside, [OBSERVER])
        t_cut = time.monotonic()
        keys: dict[str, list[int]] = {t: [] for t in tenants}
        for r in range(ROUNDS):
            for t in tenants:
                write("PATCH", f"quotas/{quotas[t]}/", {"requests_per_s": 10.0 + r})
                keys[t].append(write("POST", "inference-keys/", {"tenant": t, "name": f"cut-{r}"})["id"])
                if r % 2:
                    write("DELETE", f"inference-keys/{keys[t][-2]}/")
                body = copy.deepcopy(JOB) | {"name": f"cut-{t}-{r}", "tenant": t}
                job = write("POST", "jobs/", body, **{"Idempotency-Key": f"cut-{t}-{r}"})
                if r % 2:
                    write("POST", f"jobs/{job['id']}/cancel/")
            if r == ROUNDS // 2:  # an agent of the cut zone crashes and comes back while the cut lasts
                mesh.kill_agent(inside[-1])
                mesh.start_agent(inside[-1], wait=False)
        # The side that still reaches the portal is current; the cut zone's gap shows in the metric.
        wait_for("the connected zone current during the cut", lambda: applied(outside), 90)
        time.sleep(max(0.0, t_cut + CUT_S - time.monotonic()))
        head = mesh.head()
        during = lags()
        assert all(during[n] >= head - v0 > 0 for n in inside), (during, head, v0)
        cut_s = time.monotonic() - t_cut
        mesh.bed.heal()
        t_heal = time.monotonic()
        mesh.wait_agent(inside[-1])
        wait_for("every agent current after the heal", lambda: applied(list(mesh.zone_of)), timeout=90)
        recover_s = time.monotonic() - t_heal
        # An agent whose Raft group applied the changes through its peer says hello already current: that counts as
        # delivered, so the gap closes once the links are back.
        after_heal = lags()
        wait_for("the lag metric back to 0", lambda: all(lags()[n] == 0 for n in inside), 30)
        lag_end = lags()
    finally:
        stop.set()
        sampler.join(10)
        http.close()

    head = mesh.head()
    changes = [
        (v, k, op, value)
        for v, k, op, value in mesh.db.query(
            "SELECT version, key, op, value FROM meshlink_outboxentry WHERE version > %s ORDER BY version", v0
        )
    ]
    assert changes and changes[-1][0] == head, "the outbox holds every version since the cut"
    lost: dict[str, list[str]] = {}
    duplicated: dict[str, list[str]] = {}
    for n in mesh.zone_of:
        want = expected_after(before[n], changes)
        now = mesh.dump(n)
        for key, state in want.items():
            got = now.get(key)
            if state is None:
                if got is not None:
                    lost.setdefault(n, []).append(f"{key}: deleted in the outbox, still {got}")
                continue
            value, puts = state
            if got is None or json.loads(got[0]) != value or got[1] < puts:
                lost.setdefault(n, []).append(f"{key}: want {puts} puts of {value}, got {got}")
            elif got[1] > puts:
                duplicated.setdefault(n, []).append(f"{key}: {got[1]} puts, the outbox holds {puts}")
    assert not lost, lost
    assert not duplicated, duplicated

    gap = max((max(s.get(n, 0.0) for n in inside) for _, s in seen), default=0.0)
    closed_at = [t for t, s in seen if t > t_heal and all(s.get(n) == 0.0 for n in mesh.zone_of)]
    assert gap >= max(during[n] for n in inside) > 0, seen[-3:]
    row = {
        "scenario": "zone cut off from the portal", "agents": len(mesh.zone_of), "cut_zone": inside,
        "writes_attempted": attempted, "writes_acked": acked, "outbox_changes": len(changes),
        "keys_touched": len({k for _, k, _, _ in changes}), "lost": 0, "duplicated": 0,
        "cut_s": round(cut_s, 1), "lag_max_versions": gap, "recover_s": round(recover_s, 1),
        "lag_zero_after_heal_s": round(closed_at[0] - t_heal, 1) if closed_at else None,
        "lag_when_stores_current": {n: after_heal[n] for n in inside}, "lag_20s_later": {n: lag_end[n] for n in inside},
    }  # fmt: skip
    print("scenario:", json.dumps(row))
