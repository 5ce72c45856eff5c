"""Start a real meshd agent process for the router tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import yaml

from tests.router.procs import ROOT, free_port


class AgentProc:
    def __init__(self, runtimes: list[str], tmp: Path, grpc_port: int | None = None) -> None:
        self.grpc_port = grpc_port or free_port()
        self.http_port = free_port()
        self.cfg = {
            "node": {"id": "node-a", "roles": ["router", "gpu"]},
            "listen": {"grpc": f"127.0.0.1:{self.grpc_port}", "http": f"127.0.0.1:{self.http_port}"},
            "runtimes": [{"url": u, "flavor": "vllm"} for u in runtimes],
            "scrape": {"interval_s": 0.5, "timeout_s": 0.4},
            "shutdown": {"drain_s": 0, "grace_s": 0.5},
        }
        self.path = tmp / f"agent-{self.grpc_port}.yaml"
        self.path.write_text(yaml.safe_dump(self.cfg))
        self.log_path = tmp / f"agent-{self.grpc_port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 30.0) -> AgentProc:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; from meshweb.cli import main; sys.exit(main())", "agent",
                 "--config", str(self.path)],
                stdout=log, stderr=log, cwd=ROOT, env=env,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited: {self.log_path.read_text()[-3000:]}")
            try:
                with grpc.insecure_channel(self.address) as ch:
                    grpc.channel_ready_future(ch).result(timeout=0.5)
                return self
            except grpc.FutureTimeoutError:
                time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"agent did not start: {self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
