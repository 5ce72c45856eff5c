"""Inference access records, defined once for the portal (which writes them) and the agents and routers (which
validate, store and enforce them).

The portal pushes them through its outbox into the agents' policy store:

- ``tenants/tenant-<id>``: a tenant's inference standing (active or suspended), priority class and quotas;
- ``apikeys/<sha256 of the key>``: one inference API key (only the hash crosses the boundary), its tenant, the
  models it may use, its expiry and its own limits. A revoked key's entry is deleted.

Routers load both prefixes from their agent and watch them (``router/access.py``).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TENANTS_PREFIX = "tenants/"
KEYS_PREFIX = "apikeys/"
PRIORITIES = ("batch", "standard", "critical")
Priority = Literal["batch", "standard", "critical"]
KEY_PREFIX = "imk_"  # inference keys look like imk_<12 hex>_<secret>; the prefix names them in lists and logs

# Upper bounds refuse absurd quotas (a typo of many zeros) instead of silently meaning "unlimited".
MAX_REQUESTS_PER_S = 1_000_000.0
MAX_TOKENS_PER_MIN = 10_000_000_000
MAX_CONCURRENT = 1_000_000
MAX_TOKENS_PER_DAY = 10_000_000_000_000

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InferenceLimits(_Strict):
    """Limits of a tenant or of one key; None means no limit of that kind."""

    requests_per_s: float | None = Field(default=None, gt=0, le=MAX_REQUESTS_PER_S)
    tokens_per_min: int | None = Field(default=None, gt=0, le=MAX_TOKENS_PER_MIN)
    concurrent: int | None = Field(default=None, gt=0, le=MAX_CONCURRENT)
    tokens_per_day: int | None = Field(default=None, gt=0, le=MAX_TOKENS_PER_DAY)


class TenantAccess(_Strict):
    """`tenants/tenant-<id>`: what a router needs to know of a tenant."""

    id: int = Field(ge=1)
    slug: str = Field(min_length=1, max_length=63)
    active: bool = True
    priority: Priority = "standard"
    limits: InferenceLimits = Field(default_factory=InferenceLimits)
    exhausted_until: float | None = Field(
        default=None, description="Unix time until which the daily tokens are spent (the portal's metering)"
    )
    regions: list[str] | None = Field(
        default=None,
        max_length=64,
        description="data residency: the regions whose cells may serve the tenant's requests; None = any region",
    )


class ApiKeyRecord(_Strict):
    """`apikeys/<sha256>`: one inference key. `models` empty = every model of the tenant."""

    id: int = Field(ge=1)
    tenant: int = Field(ge=1)
    prefix: str = Field(min_length=1, max_length=16)
    name: str = Field(default="", max_length=100)
    models: list[str] = Field(default_factory=list, max_length=256)
    expires_at: float | None = Field(default=None, description="Unix time after which the key is refused")
    limits: InferenceLimits = Field(default_factory=InferenceLimits)


def tenant_key(tenant_id: int) -> str:
    return f"{TENANTS_PREFIX}tenant-{tenant_id}"


def api_key_key(key_sha256: str) -> str:
    if not _SHA256.match(key_sha256):
        raise ValueError("an API key is stored under the lowercase hex SHA-256 of the key")
    return f"{KEYS_PREFIX}{key_sha256}"
