"""Drivers that feed fusion from in-process adapters: one scrape loop per configured runtime and a GPU poller.

Every record goes through the same validation as a delta pushed over gRPC; a runtime that cannot be scraped marks
its targets unhealthy at once, and a parse error is logged and counted, never fatal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp

from agents.meshd.config import GpuSourceConfig, RuntimeConfig
from agents.meshd.logs import RateLimitedLog
from agents.signals.fusion import IngestResult

if TYPE_CHECKING:
    from agents.meshd.host import AgentHost

log = logging.getLogger("meshd.adapters")


class AdapterUnavailableError(RuntimeError):
    """An adapter package the config asks for cannot be imported."""


def _runtime_api() -> tuple[Callable[..., Any], type[Exception], type[Exception]]:
    """The adapters' scraper class (it keeps the window between scrapes: rates, recent quantiles) and errors."""
    try:
        from agents.signals.runtime import MetricsParseError, RuntimeScraper, ScrapeError
    except ImportError as exc:
        raise AdapterUnavailableError(f"runtimes: runtime adapters are not available ({exc})") from exc
    return RuntimeScraper, ScrapeError, MetricsParseError


def make_gpu_source(cfg: GpuSourceConfig) -> Any:
    try:
        from agents.signals.gpu import make_gpu_source as factory
    except ImportError as exc:
        raise AdapterUnavailableError(f"gpu.source: GPU adapters are not available ({exc})") from exc
    try:
        return factory(cfg.source, **cfg.options)
    except (TypeError, ValueError) as exc:
        raise AdapterUnavailableError(f"gpu.options: {exc}") from exc


class GpuPoller:
    """Reads the GPU source every `poll_interval_s` (in a thread: NVML calls block) and folds the readings in."""

    def __init__(self, agent: AgentHost, cfg: GpuSourceConfig, source: Any) -> None:
        self.agent = agent
        self.cfg = cfg
        self.source = source
        self.limited = RateLimitedLog(log)
        self.index_to_uuid: dict[int, str] = {}

    async def poll_once(self) -> None:
        m = self.agent.metrics
        try:
            states = await asyncio.to_thread(self.source.read)
        except Exception as exc:  # a flaky driver must not stop the agent
            m.gpu_polls.labels("error").inc()
            self.limited.warning("gpu.read", f"GPU source read failed: {exc!r}", source=self.cfg.source)
            return
        m.gpu_polls.labels("ok").inc()
        fusion = self.agent.fusion
        if self.cfg.strict_inventory:
            fusion.set_gpu_inventory({s.uuid for s in states})
        for state in states:
            if not state.mig_profile:
                self.index_to_uuid[state.index] = state.uuid
            self.agent.record_ingest("gpu", fusion.ingest_gpu_state(state))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.poll_interval_s)
            await self.poll_once()

    def close(self) -> None:
        try:
            self.source.close()
        except Exception as exc:
            log.warning("GPU source close failed: %r", exc)


class RuntimeLoop:
    """Scrapes one runtime's /metrics each interval. A failed scrape marks its targets down at once."""

    def __init__(self, agent: AgentHost, cfg: RuntimeConfig, session: aiohttp.ClientSession) -> None:
        self.agent = agent
        self.cfg = cfg
        self.session = session
        scraper_cls, self.scrape_error, self.parse_error = _runtime_api()
        self.scraper = scraper_cls(cfg.url, cfg.flavor, timeout_s=agent.config.scrape.timeout_s)
        self.limited = RateLimitedLog(log)
        self.up: bool | None = None

    def gpu_uuids(self) -> list[str]:
        out = []
        index_to_uuid = self.agent.gpu_poller.index_to_uuid if self.agent.gpu_poller else {}
        for ref in self.cfg.gpus:
            if isinstance(ref, int):
                uuid = index_to_uuid.get(ref)
                if uuid is None:
                    self.limited.warning(f"gpuidx.{ref}", f"runtime {self.cfg.url}: no GPU with index {ref}")
                    continue
                out.append(uuid)
            else:
                out.append(ref)
        return out

    async def scrape_once(self) -> None:
        url = self.cfg.url
        m = self.agent.metrics
        fusion = self.agent.fusion
        start = time.perf_counter()
        try:
            states = await self.scraper.scrape(self.session)
        except self.parse_error as exc:
            m.scrapes.labels(url, "parse_error").inc()
            m.rejections.labels("model", "metrics", "parse").inc()
            self.limited.warning(f"parse.{url}", f"runtime {url}: unparseable /metrics: {exc}", endpoint=url)
            return
        except (TimeoutError, self.scrape_error, aiohttp.ClientError, OSError) as exc:
            m.scrapes.labels(url, "error").inc()
            reason = f"scrape failed: {exc}" if str(exc) else f"scrape failed: {type(exc).__name__}"
            if self.up is not False:
                log.warning("runtime %s is down: %s", url, reason, extra={"fields": {"endpoint": url}})
                self.agent.events.emit("runtime.down", f"{url}: {reason}", severity=2, attrs={"endpoint": url})
            self.up = False
            fusion.mark_endpoint_down(url, reason)
            self.drive_gpus(None)
            return
        m.scrape_seconds.labels(url).observe(time.perf_counter() - start)
        m.scrapes.labels(url, "ok").inc()
        if self.up is False:
            log.info("runtime %s is back", url)
            self.agent.events.emit("runtime.up", f"{url} answers again", attrs={"endpoint": url})
        self.up = True
        adapters_error = getattr(self.scraper, "adapters_error", "")
        if adapters_error:  # the adapters last listed stay served; said once per interval of the rate limit
            self.limited.warning(f"lora.{url}", f"runtime {url}: LoRA adapters not refreshed: {adapters_error}")
        present: set[str] = set()
        gpus = self.gpu_uuids()
        for state in states:
            state.endpoint = url  # one identity per runtime, whatever the adapter derived
            result: IngestResult = fusion.ingest_model_state(
                state, gpu_uuids=gpus, mig_profile=self.cfg.mig_profile, cost_per_mtok=self.cfg.cost_per_mtok
            )
            self.agent.record_ingest("model", result)
            if result.accepted:
                present.add(result.target_id)
        fusion.retain_endpoint(url, present)
        self.drive_gpus([s for s in states if not s.parent])  # an adapter's state repeats its base model's load

    def drive_gpus(self, states: list[Any] | None) -> None:
        """An emulated GPU and the runtime on it are one device: hand the runtime's load (running and waiting
        sequences, KV-cache use; None when it is down) to the GPUs it runs on. Real GPUs measure this themselves."""
        poller = self.agent.gpu_poller
        follow = getattr(poller.source, "follow", None) if poller is not None else None
        if follow is None or not self.cfg.gpus:
            return
        running = sum(s.requests_running or 0.0 for s in states or [])
        waiting = sum(s.requests_waiting or 0.0 for s in states or [])
        kv = max((s.kv_cache_usage or 0.0 for s in states or []), default=0.0)
        assert poller is not None
        uuid_to_index = {u: i for i, u in poller.index_to_uuid.items()}
        share = 1.0 / len(self.cfg.gpus)
        for ref in self.cfg.gpus:
            index = ref if isinstance(ref, int) else uuid_to_index.get(ref)
            if index is None:
                continue  # a MIG slice or a GPU the source does not list: nothing to drive
            try:
                if states is None:
                    follow(index, running=0.0, waiting=0.0, kv_usage=0.0, share=0.0)
                else:
                    follow(index, running=running, waiting=waiting, kv_usage=kv, share=share)
            except ValueError as exc:
                self.limited.warning(f"follow.{index}", f"runtime {self.cfg.url}: GPU {index}: {exc}")

    async def run(self) -> None:
        interval = self.agent.config.scrape.interval_s
        while True:
            started = time.monotonic()
            await self.scrape_once()
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
