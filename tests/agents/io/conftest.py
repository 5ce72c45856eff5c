"""A real S3-compatible server for the IO adapter's tests: moto's server mode (`moto_server`, from PyPI's
`moto[server]`) started as a subprocess on a free loopback port."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agents.raft.testing.cluster import free_port


@dataclass
class MotoServer:
    proc: subprocess.Popen[bytes]
    endpoint: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_moto() -> MotoServer:
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if exe is None:
        raise RuntimeError("moto_server is not installed: pip install 'infermesh[io,dev]' (moto[server])")
    port = free_port()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=0.5).close()
            return MotoServer(proc, endpoint)
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not answer within 20s")


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials moto accepts, and no user's AWS files in the way (the agent's subprocesses inherit them)."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(tmp_path / "none"),
                       "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    assert os.environ["AWS_ACCESS_KEY_ID"] == "testing"


@pytest.fixture
def moto(aws_env: None) -> Iterator[MotoServer]:
    server = start_moto()
    try:
        yield server
    finally:
        server.stop()
