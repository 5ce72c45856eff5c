"""Listening addresses: every process of the mesh reports a taken address in one line naming it and the flag or
field to change, exit 2; a router shares its port with its own workers only, never with a second router."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.router.procs import ROOT, free_port, router_config, start_router

INFERMESH = [sys.executable, "-m", "meshweb.cli"]


@pytest.fixture
def taken() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESHD__", "INFERMESH_ROUTER__"))}
    for key in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"):
        env.pop(key, None)
    env["INFERMESH_DATA_DIR"] = str(tmp / "data")
    env.update(extra)
    return env


def _refused(args: list[str], env: dict[str, str], address: str, change: str) -> None:
    r = subprocess.run([*INFERMESH, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1, r.stderr
    assert f"cannot listen on {address}" in lines[0] and change in lines[0], lines[0]
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.parametrize(
    ("args", "env_of", "change"),
    [
        (["agent"], lambda p: {"MESHD__LISTEN__GRPC": f"127.0.0.1:{p}", "MESHD__LISTEN__HTTP": "127.0.0.1:0"},
         "listen.grpc (MESHD__LISTEN__GRPC)"),
        (["agent"], lambda p: {"MESHD__LISTEN__GRPC": "127.0.0.1:0", "MESHD__LISTEN__HTTP": f"127.0.0.1:{p}"},
         "listen.http (MESHD__LISTEN__HTTP)"),
        (["router", "--port", "{p}"], lambda p: {}, "--port or listen.port"),
        (["router", "--port", "0", "--grpc-port", "{p}"], lambda p: {}, "--grpc-port or listen.grpc_port"),
        (["emulate-runtime", "--port", "{p}"], lambda p: {}, "--host/--port"),
        (["portal", "--bind", "127.0.0.1:{p}"], lambda p: {}, "--bind"),
    ],
    ids=["agent-grpc", "agent-http", "router-http", "router-grpc", "emulator", "portal"],
)  # fmt: skip
def test_a_taken_address_is_one_line_and_exit_2(taken: int, tmp_path: Path, args: list[str], env_of, change) -> None:  # type: ignore[no-untyped-def]
    argv = [a.replace("{p}", str(taken)) for a in args]
    _refused(argv, _env(tmp_path, **env_of(taken)), f"127.0.0.1:{taken}", change)


def test_a_second_beat_is_one_line_and_exit_2(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "beat.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = subprocess.run(
            [*INFERMESH, "beat"], env=_env(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=120
        )
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("infermesh beat: another beat holds"), r.stderr


def _router_exit(cfg: dict[str, Any], tmp: Path, name: str) -> subprocess.CompletedProcess[str]:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    argv = [sys.executable, "-m", "router", "--config", str(path)]
    return subprocess.run(argv, env=_env(tmp), cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_second_router_on_the_same_port_is_refused(tmp_path: Path) -> None:
    """The first router's workers share the port (SO_REUSEPORT); a second router, of one worker or several, is
    refused before it starts any."""
    port = free_port()
    cfg = router_config(["http://127.0.0.1:9"], listen={"port": port, "workers": 2})
    first = start_router(cfg, tmp_path, "first", timeout=90.0)  # two spawned workers: slow on a loaded machine
    try:
        for workers in (2, 1):
            other = router_config(["http://127.0.0.1:9"], listen={"port": port, "workers": workers}, tenants=[])
            r = _router_exit(other, tmp_path, f"second-{workers}")
            assert r.returncode == 2, r.stderr
            assert r.stderr.strip().splitlines() == [
                f"infermesh router: cannot listen on 127.0.0.1:{port}: another router serves this port "
                f"(pid {first.proc.pid}); its workers alone may share it; change --port or listen.port "
                "(INFERMESH_ROUTER__LISTEN__PORT)"
            ]
        # The first router alone answers: every request sees its tenants (the second had none).
        codes = {httpx.get(first.url + "/v1/models", headers={"Authorization": "Bearer demo-key"}).status_code
                 for _ in range(10)}  # fmt: skip
        assert codes == {200}
    finally:
        first.stop()


def test_a_router_with_workers_and_a_taken_grpc_port_starts_none(tmp_path: Path, taken: int) -> None:
    cfg = router_config(["http://127.0.0.1:9"], listen={"port": free_port(), "grpc_port": taken, "workers": 2})
    r = _router_exit(cfg, tmp_path, "router")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"infermesh router: cannot listen on 127.0.0.1:{taken}: address already in use; change --grpc-port or "
        "listen.grpc_port (INFERMESH_ROUTER__LISTEN__GRPC_PORT)"
    ]
