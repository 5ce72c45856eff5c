"""Start and stop emulated runtimes as real processes on loopback (for tests, the demo and benchmarks)."""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

_READY = re.compile(r"listening on (https?://[^\s]+)")


@dataclass
class EmulatorProcess:
    """A running `infermesh emulate-runtime` child process."""

    proc: subprocess.Popen[str]
    url: str
    banner: str
    args: list[str] = field(default_factory=list)
    output: deque[str] = field(default_factory=lambda: deque(maxlen=200))

    def _drain(self) -> None:
        # Keep reading so that a chatty child never blocks on a full pipe.
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self, timeout: float = 5.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode


def start_emulator(*args: str, startup_timeout: float = 30.0) -> EmulatorProcess:
    """Spawn `python -m agents.emulator --port 0 ARGS...` and wait until it prints its address."""
    argv = [sys.executable, "-m", "agents.emulator", "--port", "0", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + startup_timeout
    seen: list[str] = []
    try:
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            m = _READY.search(line)
            if m:
                em = EmulatorProcess(proc=proc, url=m.group(1), banner=line.strip(), args=list(args))
                threading.Thread(target=em._drain, name="emulator-output", daemon=True).start()
                return em
    finally:
        sel.close()
    proc.kill()
    proc.wait()
    raise RuntimeError(f"emulator did not start ({' '.join(args)}): {''.join(seen)[-2000:]}")


@contextmanager
def running_emulator(*args: str) -> Iterator[EmulatorProcess]:
    em = start_emulator(*args)
    try:
        yield em
    finally:
        em.stop()
