"""Debian's prometheus server as a test process: its own config, storage and port, fast scrapes, the shipped rules
(with their evaluation interval shortened so recorded series exist within seconds)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.deploy.promql import RULES, tool
from tests.e2e.mesh import free_port, wait_for


class PromServer:
    def __init__(self, workdir: Path, jobs: dict[str, list[str]], interval_s: float = 1.0) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        every = f"{int(interval_s * 1000)}ms"
        rules_dir = workdir / "rules"
        rules_dir.mkdir(parents=True, exist_ok=True)
        for path in RULES.glob("*.yaml"):
            doc = yaml.safe_load(path.read_text())
            for group in doc["groups"]:
                group["interval"] = every
            (rules_dir / path.name).write_text(yaml.safe_dump(doc))
        cfg = {
            "global": {"scrape_interval": every, "evaluation_interval": every, "scrape_timeout": every},
            "rule_files": [str(rules_dir / "*.yaml")],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}
                               for job, targets in jobs.items()],
        }  # fmt: skip
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.log = workdir / "prometheus.log"
        self.http = httpx.Client(timeout=10)  # one kept-alive connection for the many queries

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.log.open("ab")
        self.proc = subprocess.Popen(
            [tool("prometheus"), f"--config.file={self.config}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h",
             "--log.level=warn"],
            stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        proc = self.proc

        def ready() -> bool:
            assert proc.poll() is None, f"prometheus exited: {self.log.read_text()[-2000:]}"
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200

        wait_for("prometheus", ready, timeout=30)

    def stop(self) -> None:
        self.http.close()
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def api(self, path: str, **params: Any) -> Any:
        resp = self.http.get(f"{self.url}/api/v1/{path}", params=params)
        body = resp.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets_up(self) -> dict[str, str]:
        return {t["scrapeUrl"]: t["health"] for t in self.api("targets")["activeTargets"]}
