"""Usage reports from routers to the portal, defined once for both sides (`POST /api/v1/usage/reports/`).

A router counts per (UTC minute, tenant, key, model) and sends what it counted as batches with a unique id; the
portal applies a batch id once, so a batch resent after a lost answer or a router restart is never counted twice.
Histograms share fixed bounds so that they add up across routers.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Upper bounds (seconds) of the TTFT and latency histogram buckets; one more bucket counts everything above.
BOUNDS_S: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
MAX_ROWS = 10_000
REPORT_PATH = "/api/v1/usage/reports/"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UsageRow(_Strict):
    minute: int = Field(ge=0, description="Unix time of the UTC minute the requests finished in, divided by 60")
    tenant: str = Field(min_length=1, max_length=63)
    key: str = Field(default="", max_length=16, description="prefix of the inference key; empty for config keys")
    model: str = Field(default="", max_length=128)
    requests: int = Field(default=0, ge=0)
    errors: int = Field(default=0, ge=0)
    throttled: int = Field(default=0, ge=0, description="answered 429 by the router")
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    ttft: list[int] = Field(default_factory=lambda: [0] * (len(BOUNDS_S) + 1))
    latency: list[int] = Field(default_factory=lambda: [0] * (len(BOUNDS_S) + 1))


class SpillRow(_Strict):
    """Requests a router sent from its cell to another (router/cells.py), per UTC minute and reason."""

    minute: int = Field(ge=0)
    from_cell: str = Field(min_length=1, max_length=63)
    to_cell: str = Field(min_length=1, max_length=63)
    reason: str = Field(pattern=r"^(saturated|slow|failed|residency)$")
    requests: int = Field(default=0, ge=0)


class UsageBatch(_Strict):
    batch: str = Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    router: str = Field(default="", max_length=128)
    rows: list[UsageRow] = Field(max_length=MAX_ROWS)
    spills: list[SpillRow] = Field(default_factory=list, max_length=MAX_ROWS)


def bucket_of(seconds: float) -> int:
    for i, bound in enumerate(BOUNDS_S):
        if seconds <= bound:
            return i
    return len(BOUNDS_S)
