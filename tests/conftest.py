"""Session-wide fixtures: the real vLLM (CPU build) that adapter conformance, the client matrix and abort propagation
run against, started once per test session; its install and start-up times are printed at the end of the run."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

_COST: dict[str, float] = {}

# What may not run beside other tests when the suite runs on several workers (`make test` runs the rest on workers,
# then these alone): the network test bed clears stale namespaces and shapes links, one restarts the machine's
# PostgreSQL, one fills a disk, one shifts a clock, and the rest judge latency or timing that other work on the cores
# would skew (a browser's waits for a live update, the real vLLM aborting a stream before its last token).
SERIAL = (
    "tests/faults/",
    "tests/browser/",
    "tests/e2e/test_router_fairness.py",
    "tests/e2e/test_router_resilience.py",
    "tests/e2e/test_training_ddp.py",
    "tests/e2e/test_training_rest.py",
    "tests/e2e/test_thermal_quarantine_e2e.py",
    "tests/e2e/test_real_vllm.py",  # the real vLLM's users (its session fixture starts the server once)
    "tests/e2e/test_real_vllm_kv.py",
    "tests/e2e/test_client_matrix.py",
    "tests/agents/gossip/test_gossip_processes.py",
    "tests/agents/raft/test_cluster_processes.py",
)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups to suffix the node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the serial tests, and keep a module's tests together on one worker (`--dist loadgroup`): they share its
    processes and databases."""
    for item in items:
        if item.nodeid.startswith(SERIAL):
            item.add_marker(pytest.mark.serial)
        item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))


@pytest.fixture(scope="session")
def real_vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One vLLM server on the tiny local model for the whole session (installed first if .venv-vllm lacks it:
    `python -m tests.realvllm install`, which CI runs before the tests). INFERMESH_TEST_VLLM_URL (and
    INFERMESH_TEST_VLLM_KV, its KV-events endpoint) use a server already running instead."""
    from tests import realvllm
    from tests.router.procs import free_port

    if os.environ.get("INFERMESH_TEST_VLLM_URL"):  # a server already running (iterating on these tests)
        yield realvllm.attach(os.environ["INFERMESH_TEST_VLLM_URL"], os.environ.get("INFERMESH_TEST_VLLM_KV", ""))
        return
    t0 = time.monotonic()
    realvllm.install(tmp_path_factory.mktemp("vllm-install") / "pip.log")
    realvllm.build_model()
    _COST["install_and_model_s"] = time.monotonic() - t0
    srv = realvllm.start(free_port(), free_port(), tmp_path_factory.mktemp("vllm") / "vllm.log")
    _COST["start_s"] = srv.started_in_s
    _COST["starts"] = _COST.get("starts", 0) + 1
    t1 = time.monotonic()
    yield srv
    srv.stop()
    _COST["held_s"] = time.monotonic() - t1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _COST:
        terminalreporter.write_line(
            "real vLLM: {:.0f} start(s), install/model check {:.1f}s, start-up {:.1f}s, served the session for {:.1f}s"
            .format(_COST.get("starts", 0), _COST.get("install_and_model_s", 0.0), _COST.get("start_s", 0.0),
                    _COST.get("held_s", 0.0))
        )  # fmt: skip
