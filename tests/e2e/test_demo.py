"""`infermesh demo` as a user runs it: every service answers, a short trace replay goes through the router, and
SIGINT leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, whatever process group or session it moved to."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_demo_starts_everything_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    portal_port, router_port = free_port(), free_port()
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}}
    env["INFERMESH_ADMIN_PASSWORD"] = "demo-test-pw-1"
    # the fault drill within the test's time: checks every 2 s, released 5 s after the fault clears
    env.update(INFERMESH_QUARANTINE_PERIOD_S="2", INFERMESH_QUARANTINE_COOLDOWN_S="5")
    out = (tmp_path / "demo.out").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshweb.cli", "demo", "--portal-port", str(portal_port), "--router-port",
         str(router_port), "--base-port", "0", "--runtimes", "3", "--data-dir", str(data),
         "--replay-requests", "8", "--replay-rate", "4", "--replay-max-tokens", "16",
         "--fault-at", "5", "--fault-clear-after", "10"],
        cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    manifest_path = data / "demo" / "services.json"
    try:
        deadline = time.monotonic() + 150
        while not manifest_path.exists():
            assert proc.poll() is None, (tmp_path / "demo.out").read_text()
            assert time.monotonic() < deadline, f"demo did not come up: {(tmp_path / 'demo.out').read_text()}"
            time.sleep(0.5)
        manifest = json.loads(manifest_path.read_text())
        assert manifest["admin"] == "admin / demo-test-pw-1"

        with httpx.Client(timeout=10) as client:
            assert client.get(f"{manifest['portal']}/healthz").json() == {"status": "ok"}
            login = client.get(manifest["dashboard"], follow_redirects=True)
            assert login.status_code == 200 and "Sign in to the dashboard" in login.text
            assert "django_http_requests_total" in client.get(manifest["portal_metrics"]).text
            assert client.get(f"{manifest['router']}/healthz").status_code == 200
            answer = client.post(
                f"{manifest['router']}/v1/chat/completions",
                headers={"Authorization": f"Bearer {manifest['api_key']}"},  # made in the portal on start
                json={"model": "demo-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"]
            refused = client.post(
                f"{manifest['router']}/v1/chat/completions",
                headers={"Authorization": "Bearer wrong-key"},
                json={"model": "demo-llm", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert refused.status_code == 401
            for agent in manifest["agents"]:
                assert client.get(f"{agent['http']}/healthz").status_code == 200, agent
            for runtime in manifest["runtimes"]:
                assert client.get(f"{runtime}/health").status_code == 200, runtime

        # The three agents found each other over gossip and formed one Raft group.
        members = subprocess.run(
            [sys.executable, "-m", "meshweb.cli", "ctl", "--agent", manifest["agents"][0]["grpc"], "members", "--json"],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert members.returncode == 0, members.stderr
        assert sorted(m["name"] for m in json.loads(members.stdout)["members"]) == ["gpu-a1", "gpu-a2", "gpu-b1"]

        # The replay of the trace slice finishes, all through the router.
        deadline = time.monotonic() + 90
        while "replay: 8/8 done" not in (tmp_path / "demo.out").read_text():
            assert time.monotonic() < deadline, (tmp_path / "demo.out").read_text()
            time.sleep(0.5)
        assert "8 ok, 0 failed" in (tmp_path / "demo.out").read_text()

        # The fault drill: gpu-b1's GPU reports an uncorrectable ECC error; the portal's beat and worker quarantine
        # the node, its agent applies it, and once the fault cleared and the cool-down passed it is released.
        assert (
            "fault drill     gpu-b1's GPU reports an uncorrectable ECC error 5s after start"
            in (tmp_path / "demo.out").read_text()
        )

        def b1_transitions() -> list[str]:  # the node states gpu-b1's agent took on, from its JSON log
            log = data / "demo" / "logs" / "agent-gpu-b1.log"
            msgs = [json.loads(line).get("msg", "") for line in log.read_text().splitlines() if line.startswith("{")]
            return [m.split(":")[0].removeprefix("node gpu-b1 is now ") for m in msgs if "node gpu-b1 is now" in m]

        deadline = time.monotonic() + 120
        while b1_transitions()[:2] != ["quarantined", "active"]:
            assert time.monotonic() < deadline, f"gpu-b1 was not quarantined and released: {b1_transitions()}"
            time.sleep(1.0)

        # The demo's training job, submitted through the portal: the leader's scheduler placed it and a trainer
        # launched its DDP workers (torch comes with the train extra, which the tests install).
        assert "demo: training job demo-ddp-" in (tmp_path / "demo.out").read_text()
        deadline = time.monotonic() + 120
        while not any("launched job" in log.read_text() for log in (data / "demo" / "logs").glob("agent-*.log")):
            assert time.monotonic() < deadline, "no trainer launched the demo's training job"
            time.sleep(1.0)

        # Celery worker and beat are up: beat hands out the static schedule, the worker runs it.
        names = set(manifest["processes"])
        assert {
            "portal",
            "celery-worker",
            "celery-beat",
            "router",
            "agent-gpu-a1",
            "agent-gpu-a2",
            "agent-gpu-b1",
        } <= names
        assert all(running(pid) for pid in manifest["processes"].values())

        tree = descendants(proc.pid)
        assert set(manifest["processes"].values()) <= tree
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:  # a failed assertion above: let the demo clean up, then make sure
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()  # its children get SIGTERM from their parent-death signal
                proc.wait()
        out.close()
    text = (tmp_path / "demo.out").read_text()
    assert "nothing left running" in text, text
    deadline = time.monotonic() + 10
    while any(running(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in tree if running(pid)], "processes of the demo survived SIGINT"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{portal_port}/healthz", timeout=2)


@pytest.mark.parametrize("which", ["--portal-port", "--router-port"])
def test_demo_with_a_taken_port_exits_before_it_starts_anything(tmp_path: Path, which: str) -> None:
    """Another program on the demo's port: the demo names the port and the flag, starts nothing, shows no banner."""
    ports = {"--portal-port": free_port(), "--router-port": free_port()}
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}}
    with socket.socket() as other:
        other.bind(("127.0.0.1", ports[which]))
        other.listen()
        r = subprocess.run(
            [sys.executable, "-m", "meshweb.cli", "demo", "--portal-port", str(ports["--portal-port"]),
             "--router-port", str(ports["--router-port"]), "--base-port", "0", "--data-dir", str(data)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"127.0.0.1:{ports[which]}" in r.stderr and f"change {which}" in r.stderr, r.stderr
    assert "InferMesh demo is running" not in r.stdout
    assert not (data / "demo" / "services.json").exists() and not (data / "demo" / "logs").exists()


def test_the_demo_probes_its_own_children_not_whatever_answers(tmp_path: Path) -> None:
    """A child counts as ready only on a port its own process group listens on; a listener of another program on
    the next port does not make a child ready, and a child that exits is named by the fleet."""
    from meshweb.demo import Fleet, Service

    own, foreign = free_port(), free_port()
    fleet = Fleet()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = [sys.executable, "-m", "http.server", str(own), "--bind", "127.0.0.1"]
    child = fleet.add(Service("child", server, tmp_path / "child.log", ports=(own,)), env)
    impostor = fleet.add(Service("impostor", [sys.executable, "-c", "import time; time.sleep(60)"],
                                 tmp_path / "impostor.log", ports=(foreign,)), env)  # fmt: skip
    try:
        with socket.socket() as other:
            other.bind(("127.0.0.1", foreign))
            other.listen()
            deadline = time.monotonic() + 30
            while not child.holds_ports():
                assert time.monotonic() < deadline, child.tail()
                time.sleep(0.2)
            assert not impostor.holds_ports()  # something answers on its port, but not its own process
        assert fleet.dead() is None
        child.signal_group(signal.SIGKILL)
        assert child.proc is not None
        child.proc.wait(timeout=10)
        assert fleet.dead() is child
    finally:
        fleet.stop()
