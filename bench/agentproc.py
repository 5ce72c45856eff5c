"""A real `infermesh agent` process for the benchmarks: started from a config dict, its gRPC address read from its
log line, stopped with SIGTERM."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import yaml


class AgentProc:
    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        config_path.write_text(yaml.safe_dump(cfg))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meshweb.cli", "agent", "--config", str(config_path)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "MESHD__LOG__LEVEL": "info", "PYTHONUNBUFFERED": "1"},  # info: the address line
        )
        self.lines: deque[str] = deque(maxlen=200)
        threading.Thread(target=self._drain, daemon=True).start()
        self.address = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self.address:
            for line in list(self.lines):
                if m := re.search(r"serving grpc=(\S+)", line):
                    self.address = m.group(1)
            time.sleep(0.05)
        if not self.address:
            self.stop()
            raise RuntimeError("agent did not start: " + "".join(self.lines))

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
