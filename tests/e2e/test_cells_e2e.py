"""Cells and regions as real processes on loopback: two regions (eu, us) of two cells each, one agent per cell (its
own Raft group, linked to the portal, a WAN gateway), one emulated runtime (2 batch slots) and one router per cell.
The WAN tier's datagrams between cells pass through a relay in this test that injects the RTTs (10 ms inside a
region, 50 to 60 ms across). A cell saturated → its requests go to the nearest cell with headroom; a cell failed → to
the next; a tenant restricted to eu is never served in us under either, and is refused with 503 when no eu cell can
serve it; the portal shows the regions, cells and the spill-over. The routers share the tenants' quotas through Redis
and a mesh secret: a spilled request is charged once across the two routers (the serving one verifies the spilling
one's signature), so a tenant with a concurrency quota of 2 gets 2 requests served across two cells, not 1."""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import httpx
import pytest

from agents.binding import free_port
from agents.proto.infermesh.v1 import wan_pb2, wan_pb2_grpc
from tests.e2e.mesh import ROOT, Agent, Mesh, _stop, wait_for
from tests.router.procs import RouterProc, start_router

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

MODEL = "demo-llm"
CELLS = {"node-1": ("eu-1", "eu"), "node-2": ("eu-2", "eu"), "node-3": ("us-1", "us"), "node-4": ("us-2", "us")}
NODE = {cell: node for node, (cell, _) in CELLS.items()}


def rtt_ms(a: str, b: str) -> float:
    ca, cb = CELLS[a][0], CELLS[b][0]
    if ca[:2] == cb[:2]:
        return 10.0
    return 50.0 if {ca, cb} == {"eu-1", "us-1"} else 60.0


class UdpDelay:
    """One relay per ordered pair of gateways: what A sends to its port reaches B after rtt/2, B's answers reach A
    after rtt/2 (an injected WAN RTT on loopback)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.transports: list[asyncio.DatagramTransport] = []

    def link(self, target: tuple[str, int], rtt_s: float) -> int:
        return asyncio.run_coroutine_threadsafe(self._link(target, rtt_s / 2), self.loop).result(5)

    async def _link(self, target: tuple[str, int], half: float) -> int:
        loop = asyncio.get_running_loop()
        src: list[tuple[str, int]] = []
        inbound: list[asyncio.DatagramTransport] = []

        class Out(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                if src and inbound:
                    loop.call_later(half, inbound[0].sendto, data, src[0])

        out, _ = await loop.create_datagram_endpoint(Out, local_addr=("127.0.0.1", 0))

        class In(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                src[:] = [addr]
                loop.call_later(half, out.sendto, data, target)

        tin, _ = await loop.create_datagram_endpoint(In, local_addr=("127.0.0.1", 0))
        inbound.append(tin)
        self.transports += [out, tin]
        return int(tin.get_extra_info("sockname")[1])

    def close(self) -> None:
        for t in self.transports:
            self.loop.call_soon_threadsafe(t.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class Cells:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.wan = {n: free_port(udp_too=True) for n in CELLS}
        self.router_port = {n: free_port() for n in CELLS}
        self.emu_port = {n: free_port() for n in CELLS}
        self.relay = UdpDelay()
        self.peers = {
            a: [
                f"127.0.0.1:{self.relay.link(('127.0.0.1', self.wan[b]), rtt_ms(a, b) / 1000)}" for b in CELLS if b != a
            ]
            for a in CELLS
        }
        self.emulators: dict[str, subprocess.Popen[bytes]] = {}
        self.routers: dict[str, RouterProc] = {}

    def sections(self, agent: Agent) -> dict[str, Any]:
        n = agent.name
        cell, region = CELLS[n]
        return {
            "node": {"cell": cell, "region": region},
            # each cell its own Raft group (of one agent here) and gossip pool (none needed with one agent)
            "raft": {"node_id": 1, "cluster_id": f"cell-{cell}", "peers": {1: agent.address}},
            "wan": {"bind": f"127.0.0.1:{self.wan[n]}", "peers": self.peers[n], "interval_s": 0.3, "expire_s": 1.5,
                    "ingress": f"http://127.0.0.1:{self.router_port[n]}"},
            "runtimes": [{"url": f"http://127.0.0.1:{self.emu_port[n]}", "flavor": "vllm", "gpus": [0]}],
            "scrape": {"interval_s": 0.3},
        }  # fmt: skip

    def start_emulator(self, n: str) -> None:
        self.emulators[n] = subprocess.Popen(
            [sys.executable, "-m", "agents.emulator", "--port", str(self.emu_port[n]), "--max-num-seqs", "2",
             "--model", MODEL, "--seed", str(self.emu_port[n])],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

    def close(self) -> None:
        for r in self.routers.values():
            r.stop()
        for p in self.emulators.values():
            _stop(p)
        self.relay.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, Cells]]:
    tmp = tmp_path_factory.mktemp("cells")
    cells = Cells(tmp)
    mesh = Mesh(tmp, agents=4, agent_sections=cells.sections, runtime=False, celery=False)
    try:
        for n in CELLS:
            cells.start_emulator(n)
        mesh.start()
        secret = tmp / "mesh.secret"
        secret.write_text(secrets.token_hex(32) + "\n")
        for n in CELLS:
            cfg = {
                "listen": {"host": "127.0.0.1", "port": cells.router_port[n], "grpc_port": None},
                "agent": {"address": mesh.agents[n].address, "reconnect_max_s": 1.0, "node": n},
                "default_policy": {"strategy": "least_queue"},
                "cells": {"refresh_s": 0.3, "mesh_secret_file": str(secret)},
                "redis": {"url": mesh.redis.url, "timeout_s": 2.0},  # the tenants' quotas, shared by the routers
                "usage": {"portal_url": mesh.base, "credential": mesh.credentials[n], "flush_s": 0.5},
            }
            cells.routers[n] = start_router(cfg, tmp, f"router-{n}")
        yield mesh, cells
    finally:
        cells.close()
        mesh.close()


def wan_view(mesh: Mesh, n: str) -> wan_pb2.ListCellsResponse:
    with grpc.insecure_channel(mesh.agents[n].address) as ch:
        return wan_pb2_grpc.WanStub(ch).ListCells(wan_pb2.ListCellsRequest(), timeout=5)


def chat(router: RouterProc, key: str, max_tokens: int = 4, timeout: float = 20) -> httpx.Response:
    return httpx.post(
        f"{router.url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens},
        headers={"Authorization": f"Bearer {key}"},
        timeout=timeout,
    )


_SPILL = re.compile(r"^infermesh_router_spillover_total\{(.*)\} ([0-9.e+]+)$", re.M)


def spills(router: RouterProc) -> dict[tuple[str, str], float]:
    """(to_cell, reason) -> requests this router sent to another cell."""
    out: dict[tuple[str, str], float] = {}
    for labels, value in _SPILL.findall(httpx.get(f"{router.url}/metrics", timeout=5).text):
        lab = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        out[(lab["to_cell"], lab["reason"])] = float(value)
    return out


def answers(call: Callable[[RouterProc, str], httpx.Response], router: RouterProc, key: str) -> bool:
    return call(router, key).status_code == 200


_SPILLED_IN = re.compile(r'^infermesh_router_spilled_in_total\{verdict="(\w+)"\} ([0-9.e+]+)$', re.M)


def spilled_in(router: RouterProc) -> dict[str, float]:
    """verdict on the spill's signature -> requests other cells' routers sent to this one."""
    text = httpx.get(f"{router.url}/metrics", timeout=5).text
    return {verdict: float(value) for verdict, value in _SPILLED_IN.findall(text)}


def spilled_once(router: RouterProc, key: str, to: tuple[str, str]) -> httpx.Response:
    """One request that the router answers 200 after sending it to the cell and reason `to` (polled: the cells'
    state follows the runtimes within a scrape and a WAN round)."""

    def attempt() -> httpx.Response | None:
        before = spills(router).get(to, 0.0)
        resp = chat(router, key)
        return resp if resp.status_code == 200 and spills(router).get(to, 0.0) == before + 1 else None

    return wait_for(f"a request sent to {to}", attempt, timeout=10, every=0.1)


def queueing(mesh: Mesh, n: str) -> bool:
    return any(t.requests_waiting >= 2 for t in mesh.targets(n))


def hold(pool: ThreadPoolExecutor, cells: Cells, n: str, count: int = 4, tokens: int = 900) -> list[Future[Any]]:
    """Fill a cell's runtime directly (2 slots, two more wait, for about 6 s): its router sees it saturated."""
    url = f"http://127.0.0.1:{cells.emu_port[n]}/v1/chat/completions"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": tokens}
    return [pool.submit(httpx.post, url, json=body, timeout=30) for _ in range(count)]


def test_saturated_and_failed_cells_spill_within_residency(world: tuple[Mesh, Cells]) -> None:
    mesh, cells = world
    r = cells.routers

    # -- the WAN tier: every gateway knows the other three cells, alive, nearest first by measured RTT ----------------
    def complete(n: str) -> wan_pb2.ListCellsResponse | None:
        v = wan_view(mesh, n)
        full = len(v.cells) == 3 and all(c.alive and c.rtt_s > 0 and c.summary.models for c in v.cells)
        return v if full else None

    for n in CELLS:
        view = wait_for(f"the WAN view of {n}", partial(complete, n), timeout=20)
        assert (view.cell, view.region) == CELLS[n]
        measured = {c.summary.cell: c.rtt_s * 1000 for c in view.cells}
        for c, ms in measured.items():
            assert rtt_ms(n, NODE[c]) <= ms < rtt_ms(n, NODE[c]) + 40, (n, measured)
    # -- tenants through REST: acme anywhere, euco only in eu ---------------------------------------------------------
    mesh.api("POST", "tenants/", {"slug": "acme", "name": "Acme"})
    mesh.api("POST", "tenants/", {"slug": "euco", "name": "EU Co", "regions": ["eu"]})
    acme = mesh.api("POST", "inference-keys/", {"tenant": "acme", "name": "app"})["key"]
    euco = mesh.api("POST", "inference-keys/", {"tenant": "euco", "name": "app"})["key"]

    def keys_known(router: RouterProc) -> bool:
        return chat(router, acme).status_code == 200 == chat(router, euco).status_code

    for n, router in r.items():
        wait_for(f"both keys at {n}", partial(keys_known, router), timeout=10)

    # -- residency at rest: euco entering in us is served in the nearest eu cell, acme stays home -------------------
    before = spills(r["node-3"])
    assert chat(r["node-3"], acme).status_code == 200 and spills(r["node-3"]) == before
    spilled_once(r["node-3"], euco, ("eu-1", "residency"))  # eu-1 is 50 ms from us-1, eu-2 60 ms

    with ThreadPoolExecutor(16) as pool:
        # -- us-1, eu-1 and eu-2 saturated: us-1 spills to the nearest cell with headroom, us-2 (10 ms), not eu ----
        held = [f for n in ("node-3", "node-1", "node-2") for f in hold(pool, cells, n)]
        for n in ("node-3", "node-1", "node-2"):
            wait_for(f"{n} queueing", partial(queueing, mesh, n), timeout=5)
        time.sleep(0.6)  # the routers' watch of their agent and of the WAN view
        spilled_once(r["node-3"], acme, ("us-2", "saturated"))
        # eu-1 full and eu-2 full: acme may cross regions (us-2 has headroom), euco may not and waits at home
        spilled_once(r["node-1"], acme, ("us-2", "saturated"))
        before = spills(r["node-1"])
        assert chat(r["node-1"], euco, timeout=30).status_code == 200
        assert spills(r["node-1"]) == before, "euco left its region"
        for f in held:
            assert f.result(30).status_code == 200

    # -- eu-1 failed: its traffic goes to the next cell, eu-2, for both tenants ------------------------------------
    _stop(cells.emulators["node-1"])
    spilled_once(r["node-1"], acme, ("eu-2", "failed"))
    spilled_once(r["node-1"], euco, ("eu-2", "failed"))
    # -- eu-2 failed too: acme goes to us-1 (50 ms), euco is refused with the reason -----------------------------------
    _stop(cells.emulators["node-2"])
    spilled_once(r["node-1"], acme, ("us-1", "failed"))

    def refusal() -> httpx.Response | None:
        a = chat(r["node-1"], euco)
        return a if a.status_code == 503 else None

    refused = wait_for("euco refused", refusal, timeout=10)
    err = refused.json()["error"]
    assert err["code"] == "residency_unavailable" and "(eu)" in err["message"], err

    # -- the portal shows the regions, cells and the spill-over -------------------------------------------------------
    for region in ("eu", "us"):
        mesh.api("POST", "regions/", {"name": region})
        mesh.api("POST", "zones/", {"name": f"{region}-z", "region": region})
    for n, (cell, region) in CELLS.items():
        made = mesh.api("POST", "cells/", {"name": cell, "zone": f"{region}-z"})
        node = mesh.api("GET", f"nodes/?name={n}")["results"][0]
        mesh.api("PATCH", f"nodes/{node['id']}/", {"cell": made["id"]})

    def shown() -> dict[str, Any] | None:
        body = mesh.api("GET", "usage/spillover/")
        got = {(s["from_cell"], s["to_cell"], s["reason"]) for s in body["spillover"]}
        want = {("us-1", "eu-1", "residency"), ("us-1", "us-2", "saturated"), ("eu-1", "us-2", "saturated"),
                ("eu-1", "eu-2", "failed"), ("eu-1", "us-1", "failed")}  # fmt: skip
        return body if want <= got else None

    body = wait_for("the spill-over in the portal", shown, timeout=10)
    cells_by_region = {reg["name"]: [c["name"] for c in reg["cells"]] for reg in body["regions"]}
    assert cells_by_region["eu"] == ["eu-1", "eu-2"] and cells_by_region["us"] == ["us-1", "us-2"]
    # no request of the eu-only tenant was served in us: the us routers' access logs hold acme's requests alone
    served_in_us = [
        line.get("tenant") for n in ("node-3", "node-4") for line in r[n].logs() if line.get("msg") == "access"
        and line.get("status") == 200 and not str(line.get("target", "")).startswith("cell:")
    ]  # fmt: skip
    assert "acme" in served_in_us and "euco" not in served_in_us


def test_a_spilled_request_is_charged_once_across_the_two_routers(world: tuple[Mesh, Cells]) -> None:
    """A tenant with a concurrency quota of 2 (shared by the routers through Redis) entering a saturated us-1 gets
    both its requests served in us-2: us-2's router verifies us-1's signature and does not charge them again (charged
    at both, the second would be refused at us-1). A third, entering at us-2 itself meanwhile, finds the quota in use:
    2 across the two cells, not 2 per router either. (Runs after the test above: eu-1 and eu-2 have failed.)"""
    mesh, cells = world
    r = cells.routers
    mesh.api("POST", "tenants/", {"slug": "capped", "name": "Capped"})
    quota = mesh.api("GET", "quotas/?tenant__slug=capped")["results"][0]
    mesh.api("PATCH", f"quotas/{quota['id']}/", {"concurrent_requests_max": 2})
    key = mesh.api("POST", "inference-keys/", {"tenant": "capped", "name": "app"})["key"]  # after the quota: in force
    for n in ("node-3", "node-4"):
        wait_for(f"capped's key at {n}", partial(answers, chat, r[n], key), timeout=10)

    before = spilled_in(r["node-4"])
    with ThreadPoolExecutor(8) as pool:
        held = hold(pool, cells, "node-3")
        wait_for("node-3 queueing", partial(queueing, mesh, "node-3"), timeout=5)
        time.sleep(0.6)  # the routers' watch of their agent and of the WAN view
        sent = [pool.submit(chat, r["node-3"], key, 900, 30) for _ in range(2)]  # about 3 s each at the emulator

        def both_in() -> dict[str, float] | None:
            now = spilled_in(r["node-4"])
            return now if now.get("verified", 0.0) >= before.get("verified", 0.0) + 2 else None

        wait_for("both spilled requests verified at us-2", both_in, timeout=10, every=0.05)
        third = chat(r["node-4"], key)
        assert third.status_code == 429 and third.json()["error"]["code"] == "quota_exceeded", third.text
        assert all(not f.done() for f in sent), "the spilled requests finished before the third was sent"
        for f in sent:
            assert f.result(30).status_code == 200
        for f in held:
            assert f.result(30).status_code == 200
    after = spilled_in(r["node-4"])
    assert {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)} == {"verified": 2}
    assert chat(r["node-4"], key).status_code == 200  # the leases went back where they were taken


def v2_infer(router: RouterProc, key: str) -> httpx.Response:
    body = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["hi"]},
                       {"name": "max_tokens", "datatype": "INT32", "shape": [1], "data": [4]}]}  # fmt: skip
    return httpx.post(
        f"{router.url}/v2/models/{MODEL}/infer", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=20
    )


def ws_chat(router: RouterProc, key: str) -> list[dict[str, Any]]:
    """One chat over the WebSocket, the key in the query string: the messages until done or error."""

    async def run() -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as s, s.ws_connect(f"{router.url}/v1/ws?api_key={key}") as ws:
            await ws.send_json({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
            got: list[dict[str, Any]] = []
            while not got or got[-1]["type"] == "token":
                got.append(await asyncio.wait_for(ws.receive_json(), 20))
            return got

    return asyncio.run(run())


def test_kserve_and_websocket_requests_spill_too(world: tuple[Mesh, Cells]) -> None:
    """KServe v2 and WebSocket requests entering a saturated us-1 are served in us-2 like OpenAI ones: the v2 request
    goes to us-2's router as v2 (its answer's tensors come back), the WebSocket's as a chat completion, each with the
    client's key (the WebSocket's from its query string) and the signed spill, verified there."""
    mesh, cells = world
    r = cells.routers
    mesh.api("POST", "tenants/", {"slug": "v2co", "name": "V2 Co"})
    key = mesh.api("POST", "inference-keys/", {"tenant": "v2co", "name": "app"})["key"]
    for n in ("node-3", "node-4"):
        wait_for(f"v2co's key at {n}", partial(answers, v2_infer, r[n], key), timeout=10)

    to = ("us-2", "saturated")
    with ThreadPoolExecutor(8) as pool:
        held = hold(pool, cells, "node-3")
        wait_for("node-3 queueing", partial(queueing, mesh, "node-3"), timeout=5)
        time.sleep(0.6)  # the routers' watch of their agent and of the WAN view

        def v2_spilled() -> httpx.Response | None:
            before, verified = spills(r["node-3"]).get(to, 0.0), spilled_in(r["node-4"]).get("verified", 0.0)
            resp = v2_infer(r["node-3"], key)
            moved = spills(r["node-3"]).get(to, 0.0) == before + 1
            return resp if moved and spilled_in(r["node-4"]).get("verified", 0.0) == verified + 1 else None

        resp = wait_for("a v2 request served in us-2", v2_spilled, timeout=10, every=0.1)
        assert resp.status_code == 200, resp.text
        outs = {o["name"]: o["data"] for o in resp.json()["outputs"]}
        assert outs["text_output"][0] and outs["num_output_tokens"] == [4], outs

        def ws_spilled() -> list[dict[str, Any]] | None:
            before = spills(r["node-3"]).get(to, 0.0)
            got = ws_chat(r["node-3"], key)
            return got if spills(r["node-3"]).get(to, 0.0) == before + 1 else None

        got = wait_for("a WebSocket chat served in us-2", ws_spilled, timeout=10, every=0.1)
        assert got[-1]["type"] == "done" and got[-1]["tokens"] >= 1, got
        for f in held:
            assert f.result(30).status_code == 200
    # the WebSocket's chat was served by us-2's router (v2co sent it no chat of its own)
    served = [line.get("api") for line in r["node-4"].logs() if line.get("msg") == "access"
              and line.get("tenant") == "v2co" and line.get("status") == 200]  # fmt: skip
    assert "chat" in served, served
