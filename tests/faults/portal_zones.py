"""The portal and its agents on the network test bed: tests/e2e/mesh.py's Mesh (portal under uvicorn on PostgreSQL,
a Redis of its own, agents linked over the WebSocket) with every agent in a network namespace of its own and one Raft
group per zone. The portal stays in the root namespace (the bed's observer host), so cutting a zone off from the
observer cuts it off from the portal while its agents still reach each other."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.mesh import INFERMESH, ROOT, Agent, Mesh
from tests.faults.netbed import OBSERVER, NetBed


@dataclass
class BedAgent(Agent):
    ip: str = "127.0.0.1"

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.grpc_port}"


class PortalZones(Mesh):
    """`zones`: zone name -> number of agents (named node-1, node-2, ... in zone order)."""

    def __init__(self, workdir: Path, zones: dict[str, int], *, seed: int = 1) -> None:
        placed = [z for z, n in zones.items() for _ in range(n)]
        self.zone_of = {f"node-{i}": z for i, z in enumerate(placed, start=1)}
        self.bed = NetBed(self.zone_of, workdir / "bed", seed=seed)
        self._http = httpx.Client(timeout=10)  # one client: a new one per scrape loads the CA bundle each time
        try:
            self.portal_ip = self.bed.ip(OBSERVER)
            super().__init__(
                workdir, agents=len(placed), runtime=False, celery=False,
                env={"ALLOWED_HOSTS": f"localhost,127.0.0.1,{self.portal_ip}"},
            )  # fmt: skip
            self.agents = {
                name: BedAgent(**vars(a), ip=self.bed.ip(name))  # type: ignore[arg-type]
                for name, a in self.agents.items()
            }
        except BaseException:
            self.bed.close()
            raise

    def close(self) -> None:
        self._http.close()
        try:
            super().close()
        finally:
            self.bed.close()

    @property
    def base(self) -> str:
        return f"http://{self.portal_ip}:{self.port}"

    def in_zone(self, zone: str) -> list[str]:
        return [n for n, z in self.zone_of.items() if z == zone]

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        if name == "portal":  # listen on the observer's address, the one the agents' namespaces reach
            args = tuple(f"{self.portal_ip}:{self.port}" if a == f"127.0.0.1:{self.port}" else a for a in args)
        return super().spawn(name, *args)

    def write_agent_config(self, agent: Agent) -> None:
        super().write_agent_config(agent)
        cfg: dict[str, Any] = yaml.safe_load(agent.config.read_text())
        zone = self.zone_of[agent.name]
        ip = self.bed.ip(agent.name)
        cfg["node"]["zone"] = zone
        cfg["listen"] = {"grpc": f"{ip}:{agent.grpc_port}", "http": f"{ip}:{agent.http_port}"}
        cfg["raft"]["cluster_id"] = f"portal-{zone}"
        cfg["raft"]["peers"] = {a.raft_id: a.address for a in self.agents.values() if self.zone_of[a.name] == zone}
        cfg["portal"]["url"] = f"ws://{self.portal_ip}:{self.port}/ws/agent/"
        agent.config.write_text(yaml.safe_dump(cfg))

    def start_agent(self, name: str, *, faults: list[str] | None = None, wait: bool = True) -> None:
        agent = self.agents[name]
        agent.faults = faults or []
        self.write_agent_config(agent)
        log = agent.log.open("ab")
        agent.proc = subprocess.Popen(
            [*self.bed.prefix(name), *INFERMESH, "agent", "--config", str(agent.config)],
            cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        self.bed.track(agent.proc)
        if wait:
            self.wait_agent(name)

    # -- what the portal says ------------------------------------------------------------------------------------
    def metric(self, name: str) -> dict[str, float]:
        """One series family of the portal's /metrics, by its `node` label."""
        text = self._http.get(f"{self.base}/metrics").text
        return {
            s.labels.get("node", ""): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if s.name == name
        }

    def dump(self, name: str) -> dict[str, tuple[str, int]]:
        """Every key of an agent's store: value and put count (its version)."""
        return {kv.key: (kv.value, kv.version) for kv in self.store_get(name, "", prefix=True)}
