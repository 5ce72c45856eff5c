"""The network term and degraded mode on the data plane, with real processes: three agents with gossip through a
fault-injecting proxy (node-far's packets delayed 40 ms each way), an emulated runtime on node-near and an equal one
on node-far, and a router on node-r. Vivaldi learns that node-far is far, the router passes its node in every
ranking and prefers the near runtime; partitioning node-r's gossip makes the router go local-only and say so."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml

from agents.emulator.testing import EmulatorProcess, start_emulator
from agents.gossip.testing.faultproxy import FaultProxy
from agents.proto.infermesh.v1 import state_pb2, state_pb2_grpc
from tests.agents.gossip.test_gossip_processes import (
    DEAD_BOUND_S,
    INFERMESH,
    Agent,
    free_port,
    members,
    wait_until,
)
from tests.router.procs import RouterProc, router_config, start_router

pytestmark = pytest.mark.e2e

NAMES = ("node-r", "node-near", "node-far")
ONE_WAY_DELAY_S = 0.04


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[tuple[dict[str, Agent], FaultProxy, list[EmulatorProcess]]]:
    ips = {name: f"127.0.0.{41 + i}" for i, name in enumerate(NAMES)}
    real = {name: (ip, free_port(ip)) for name, ip in ips.items()}
    proxy = FaultProxy({})
    await proxy.start()
    proxied = {name: await proxy.add_route(("127.0.0.1", 0), target) for name, target in real.items()}
    proxy.delay_s[ips["node-far"]] = ONE_WAY_DELAY_S
    ems = await asyncio.gather(
        *(asyncio.to_thread(start_emulator, "--model", "demo-llm", "--flavor", "vllm", "--instant") for _ in range(2))
    )
    runtimes = {"node-near": ems[0], "node-far": ems[1]}
    agents: dict[str, Agent] = {}
    try:
        for name in NAMES:
            cfg: dict[str, Any] = {
                "node": {"id": name, "roles": ["router"] if name == "node-r" else ["gpu"], "zone": "zone-a"},
                "listen": {"grpc": f"127.0.0.1:{free_port()}", "http": f"127.0.0.1:{free_port()}"},
                "gossip": {
                    "bind": "{}:{}".format(*real[name]),
                    "advertise": f"127.0.0.1:{proxied[name][1]}",
                    "seeds": [f"127.0.0.1:{proxied[n][1]}" for n in NAMES if n != name],
                    "probe_interval_s": 0.3,
                    "probe_timeout_s": 0.2,
                },
                "scrape": {"interval_s": 0.3},
                "shutdown": {"drain_s": 0.0, "grace_s": 1.0},
                "runtimes": [{"url": runtimes[name].url, "flavor": "vllm", "gpus": [0]}] if name in runtimes else [],
                "log": {"level": "info", "json": True},
            }
            if name in runtimes:  # an emulated GPU under each runtime: its figures reach node-r by gossip alone
                cfg["gpu"] = {"source": "emulated", "options": {"profiles": ["h100"], "node": name},
                              "poll_interval_s": 0.3}  # fmt: skip
            path = tmp_path / f"{name}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            log = tmp_path / f"{name}.log"
            with log.open("wb") as fh:
                proc = subprocess.Popen(
                    [INFERMESH, "agent", "--config", str(path)], stdout=fh, stderr=subprocess.STDOUT
                )
            port = int(cfg["listen"]["grpc"].split(":")[1])
            agents[name] = Agent(name, ips[name], port, proxied[name][1], proc, log)
        yield agents, proxy, ems
    finally:
        for a in agents.values():
            if a.proc.poll() is None:
                a.proc.send_signal(signal.SIGTERM)
        for a in agents.values():
            try:
                a.proc.wait(10)
            except subprocess.TimeoutExpired:
                a.proc.kill()
        await proxy.stop()
        for em in ems:
            em.stop()


async def _served(client: httpx.AsyncClient, em: EmulatorProcess) -> int:
    return int((await client.get(f"{em.url}/emulator/stats")).json()["requests"])


async def test_router_prefers_the_near_target_and_goes_local_only_when_gossip_degrades(
    mesh: tuple[dict[str, Agent], FaultProxy, list[EmulatorProcess]], tmp_path: Path
) -> None:
    agents, proxy, (near, far) = mesh

    async def vivaldi_sees_far() -> bool:
        rtt = {m.name: m.rtt_estimate_s for m in (await members(agents["node-r"])).members}
        return rtt.get("node-far", 0) > 0.05 and rtt.get("node-near", 1) < 0.02

    await wait_until(vivaldi_sees_far, 60, "node-r's coordinates place node-far ~80 ms away and node-near close")

    async def both_targets_at_node_r() -> bool:
        async with grpc.aio.insecure_channel(agents["node-r"].grpc) as ch:
            resp = await state_pb2_grpc.StatePlaneStub(ch).ListTargets(state_pb2.ListTargetsRequest(), timeout=3)
        return {t.node for t in resp.targets if t.routable} == {"node-near", "node-far"}

    await wait_until(both_targets_at_node_r, 30, "both runtimes' targets routable in node-r's view (gossip summaries)")
    cfg = router_config(
        [],
        agent={"address": agents["node-r"].grpc, "node": "node-r", "mesh_refresh_s": 0.5},
        default_policy={"strategy": "hybrid_mesh"},
    )
    router: RouterProc = await asyncio.to_thread(start_router, cfg, tmp_path)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            headers = {"Authorization": "Bearer demo-key"}
            body = {"model": "demo-llm", "prompt": "hello", "max_tokens": 4}

            async def served_by_router() -> bool:
                r = await client.post(f"{router.url}/v1/completions", json=body, headers=headers)
                return r.status_code == 200

            await wait_until(served_by_router, 30, "the router serves demo-llm from its agent's view")

            async def remote_gpus_reported() -> bool:
                report = (await client.get(f"{router.url}/infermesh/routing", params={"model": "demo-llm"})).json()
                rows = report["models"][0]["targets"]
                return {t["node"] for t in rows} == {"node-near", "node-far"} and all(
                    t["zone"] == "zone-a" and t["gpu_utilization"] is not None and t["vram_used_frac"] is not None
                    and t["thermal_margin_c"] is not None for t in rows
                )  # fmt: skip

            # the routing page's figures for targets on other nodes: their agents' fused GPU state, via gossip
            await wait_until(remote_gpus_reported, 15, "the router reports each remote target's zone and GPU state")
            await asyncio.sleep(1.5)  # a few mesh refreshes: the RTT table is in the ranking
            before_near, before_far = await _served(client, near), await _served(client, far)
            for _ in range(10):
                r = await client.post(f"{router.url}/v1/completions", json=body, headers=headers)
                assert r.status_code == 200, r.text
            # otherwise equal targets: the ~80 ms to node-far decides, every time
            assert await _served(client, near) - before_near == 10, router.log_path.read_text()[-3000:]
            assert await _served(client, far) == before_far

            # cut node-r off from the rest: its gossip degrades and the router says it ranks local-only
            proxy.partition([[agents["node-r"].ip], [agents["node-near"].ip, agents["node-far"].ip]])

            async def router_degraded() -> bool:
                return bool((await client.get(f"{router.url}/healthz")).json().get("mesh_degraded"))

            await wait_until(router_degraded, DEAD_BOUND_S + 10, "the router reports gossip's degraded mode")
        assert any("local-only mode" in str(r.get("msg", "")) for r in router.logs()), router.log_path.read_text()
    finally:
        with contextlib.suppress(Exception):
            router.stop()
