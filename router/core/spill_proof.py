"""The proof that a request spilled from another cell was already charged to its tenant there (sans-IO).

A router that sends a request to another cell's router (router/cells.py) charges the tenant's quotas itself: requests
per second, concurrency and tokens are taken where the request entered the mesh. It signs the spill with a MAC over
the request id, the tenant and the time, keyed by a secret every router of the mesh shares (`cells.mesh_secret_file`);
the receiving router checks it (`verify`) and then does not charge the tenant again. Anything else, a missing,
malformed, stale or forged proof, is an ordinary request there: charged as usual (and counted by its verdict).

Header: `x-infermesh-spill-proof: v1.<unix milliseconds>.<hex HMAC-SHA256>`. The MAC covers a version tag and each
field with its length, so no two (request id, tenant, time) triples share a message. A proof is fresh for
`max_age_s` either side of the receiver's clock (the cells' clocks need only agree that well); `ReplayGuard` takes
each proof once per receiving process within that window. A router may hold several secrets while one is rotated:
it signs with the first and accepts any.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Sequence
from enum import StrEnum

HEADER = "x-infermesh-spill-proof"
MIN_SECRET_BYTES = 32  # an HMAC-SHA256 key of at least the hash's own size
_VERSION = "v1"
_MAC_HEX = 64


class Verdict(StrEnum):
    VERIFIED = "verified"  # charged where it entered the mesh: not charged here
    MISSING = "missing"  # spilled without a proof (the sender has no secret)
    NO_SECRET = "no_secret"  # a proof, but this router has no secret to check it with
    MALFORMED = "malformed"
    STALE = "stale"  # outside the freshness window (either way)
    INVALID = "invalid"  # the MAC does not match: another secret, or the request id, tenant or time changed
    REPLAYED = "replayed"  # a proof this router has already taken


def _message(request_id: str, tenant: str, ts_ms: int) -> bytes:
    rid, ten = request_id.encode(), tenant.encode()
    return b"infermesh-spill-%s\n%d:%s\n%d:%s\n%d" % (_VERSION.encode(), len(rid), rid, len(ten), ten, ts_ms)


def _mac(secret: bytes, request_id: str, tenant: str, ts_ms: int) -> str:
    return hmac.new(secret, _message(request_id, tenant, ts_ms), hashlib.sha256).hexdigest()


def sign(secret: bytes, request_id: str, tenant: str, now: float) -> str:
    """The header value for a request spilled at wall time `now` (seconds)."""
    ts_ms = int(now * 1000)
    return f"{_VERSION}.{ts_ms}.{_mac(secret, request_id, tenant, ts_ms)}"


def parse(value: str) -> tuple[int, str] | None:
    """(unix milliseconds, MAC) of a header value, None when it is not one."""
    parts = value.strip().split(".")
    if len(parts) != 3 or parts[0] != _VERSION or not parts[1].isdigit() or len(parts[1]) > 15:
        return None
    mac = parts[2].lower()
    if len(mac) != _MAC_HEX or any(c not in "0123456789abcdef" for c in mac):
        return None
    return int(parts[1]), mac


def verify(
    secret: bytes | Sequence[bytes] | None,
    value: str | None,
    request_id: str,
    tenant: str,
    now: float,
    max_age_s: float,
) -> Verdict:
    """Whether `value` proves that the request `request_id` of `tenant` was charged by a router of this mesh within
    `max_age_s` of `now` (wall seconds), signed with `secret` (or any of several)."""
    if not value:
        return Verdict.MISSING
    keys = [secret] if isinstance(secret, bytes) else list(secret or ())
    if not keys:
        return Verdict.NO_SECRET
    parsed = parse(value)
    if parsed is None:
        return Verdict.MALFORMED
    ts_ms, mac = parsed
    if abs(now - ts_ms / 1000.0) > max_age_s:
        return Verdict.STALE
    if not any(hmac.compare_digest(mac, _mac(k, request_id, tenant, ts_ms)) for k in keys):
        return Verdict.INVALID
    return Verdict.VERIFIED


class ReplayGuard:
    """The proofs taken within the freshness window, so that one is honoured once (per process; bounded: when full,
    the oldest are forgotten first: that can only let a replay through uncharged, never charge an honest spill)."""

    def __init__(self, max_age_s: float, capacity: int = 65536) -> None:
        self.max_age_s = max_age_s
        self.capacity = capacity
        self._seen: OrderedDict[str, float] = OrderedDict()  # MAC -> when it stops being fresh (wall seconds)

    def first_use(self, value: str, now: float) -> bool:
        """True the first time a (verified) proof is seen while fresh; False for a repeat."""
        while self._seen:
            mac, until = next(iter(self._seen.items()))
            if until > now and len(self._seen) < self.capacity:
                break
            del self._seen[mac]
        parsed = parse(value)
        if parsed is None:
            return False
        ts_ms, mac = parsed
        if mac in self._seen:
            return False
        self._seen[mac] = ts_ms / 1000.0 + self.max_age_s
        return True
