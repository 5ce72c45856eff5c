"""Start and stop real `infermesh agent` processes on loopback, for the tests and the benchmarks: `start_agent`
starts one from a config dict; `AgentProc` keeps a config and its ports to stop and start the agent again."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support import free_port

_SERVING = re.compile(r"serving grpc=(\S+) http=(\S+)")


@dataclass
class AgentProcess:
    proc: subprocess.Popen[str]
    grpc: str
    http: str
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=2000))

    def log_records(self) -> list[dict[str, Any]]:
        out = []
        for line in list(self.lines):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode


def _drain(proc: subprocess.Popen[str], lines: deque[str]) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line.rstrip("\n"))


def start_agent(config: dict[str, Any], tmp_path: Path, *, startup_timeout: float = 30.0) -> AgentProcess:
    """Write `config` (ports default to 0 = pick free ones) and start the agent; wait until it serves."""
    config = {**config}
    config.setdefault("listen", {"grpc": "127.0.0.1:0", "http": "127.0.0.1:0"})
    config.setdefault("log", {"level": "info", "json": True})
    path = tmp_path / f"agent-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshweb.cli", "agent", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: deque[str] = deque(maxlen=2000)
    threading.Thread(target=_drain, args=(proc, lines), daemon=True).start()
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        for line in list(lines):
            m = _SERVING.search(line)
            if m:
                return AgentProcess(proc, m.group(1), m.group(2), lines)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError("agent did not start:\n" + "\n".join(list(lines)[-50:]))


def run_agent_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshweb.cli", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


class AgentProc:
    """An agent configured before it starts, on ports fixed here, so that it can be killed and started again at the
    same address (a router's agent coming back); each start goes through `start_agent`."""

    def __init__(self, cfg: dict[str, Any], workdir: Path) -> None:
        self.cfg = cfg
        self.workdir = workdir
        listen = cfg.setdefault("listen", {})
        listen.setdefault("grpc", f"127.0.0.1:{free_port()}")
        listen.setdefault("http", f"127.0.0.1:{free_port()}")
        self.process: AgentProcess | None = None

    @property
    def address(self) -> str:
        return str(self.cfg["listen"]["grpc"])

    def start(self, timeout: float = 30.0) -> AgentProc:
        self.process = start_agent(self.cfg, self.workdir, startup_timeout=timeout)
        return self

    def kill(self) -> None:
        """SIGKILL: gone without a drain, as a crashed agent is."""
        if self.process is not None and self.process.proc.poll() is None:
            self.process.proc.kill()
            self.process.proc.wait(10)
