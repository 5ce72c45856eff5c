"""Runtime adapters: read vLLM, TGI, Triton, SGLang, TorchServe, TF Serving and OVMS /metrics into ModelStates."""

from agents.signals.runtime.exposition import MetricsParseError, histogram_quantile, parse_exposition
from agents.signals.runtime.flavors import FLAVORS, RuntimeReading, parse_metrics, read_runtime
from agents.signals.runtime.scrape import RuntimeScraper, RuntimeWindow, ScrapeError, scrape_runtime

__all__ = [
    "FLAVORS",
    "MetricsParseError",
    "RuntimeReading",
    "RuntimeScraper",
    "RuntimeWindow",
    "ScrapeError",
    "histogram_quantile",
    "parse_exposition",
    "parse_metrics",
    "read_runtime",
    "scrape_runtime",
]
