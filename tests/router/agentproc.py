"""The agent the router tests run beside their routers."""

from __future__ import annotations

from pathlib import Path

from tests.agents.harness import AgentProc


def router_agent(runtimes: list[str], tmp: Path) -> AgentProc:
    """node-a (router and gpu roles) over `runtimes`, scraping every 0.5 s, stopping without a drain; not started."""
    cfg = {
        "node": {"id": "node-a", "roles": ["router", "gpu"]},
        "runtimes": [{"url": u, "flavor": "vllm"} for u in runtimes],
        "scrape": {"interval_s": 0.5, "timeout_s": 0.4},
        "shutdown": {"drain_s": 0, "grace_s": 0.5},
    }
    return AgentProc(cfg, tmp)
