"""Claims -> tenant roles: the configurable mapping applied at each OIDC login and to each OIDC bearer token.

The mapping is JSON or YAML, from `OIDC_CLAIM_MAPPING` (inline) or `OIDC_CLAIM_MAPPING_FILE` (re-read when the
file changes, so an edit takes effect at the next login without a restart):

    rules:
      - {claim: groups, value: acme-admins, tenant: acme, role: tenant_admin}
      - {claim: email_domain, value: acme.example, tenant: acme, role: viewer}

A rule matches when the claim equals the value, or is a list containing it. `email_domain` is derived from `email`.
Several matching rules for one tenant give the highest role.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROLES = ("viewer", "member", "operator", "tenant_admin", "platform_admin")
_RANK = {role: rank for rank, role in enumerate(ROLES)}


class MappingError(ValueError):
    """The claim mapping is malformed; the message names the rule and field."""


@dataclass(frozen=True)
class Rule:
    claim: str
    value: str
    tenant: str
    role: str

    def matches(self, claims: Mapping[str, Any]) -> bool:
        got = claims.get(self.claim)
        if isinstance(got, list | tuple):
            return any(isinstance(item, str) and item == self.value for item in got)
        return isinstance(got, str | int | bool) and str(got) == self.value


def parse_mapping(text: str, *, source: str = "OIDC_CLAIM_MAPPING") -> list[Rule]:
    if not text.strip():
        return []
    try:
        data = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as err:
        raise MappingError(f"{source}: not valid JSON/YAML: {err}") from None
    if not isinstance(data, dict) or set(data) - {"rules"}:
        raise MappingError(f"{source}: expected an object with one key 'rules'")
    raw_rules = data.get("rules") or []
    if not isinstance(raw_rules, list):
        raise MappingError(f"{source}: rules: expected a list")
    rules = []
    for index, raw in enumerate(raw_rules):
        where = f"{source}: rules[{index}]"
        if not isinstance(raw, dict):
            raise MappingError(f"{where}: expected an object")
        unknown = set(raw) - {"claim", "value", "tenant", "role"}
        if unknown:
            raise MappingError(f"{where}: unknown field {sorted(unknown)[0]!r}")
        for key in ("claim", "value", "tenant", "role"):
            if not isinstance(raw.get(key), str | int) or not str(raw[key]).strip():
                raise MappingError(f"{where}.{key}: required, a non-empty string")
        if raw["role"] not in _RANK:
            raise MappingError(f"{where}.role: {raw['role']!r} is not one of {', '.join(ROLES)}")
        rules.append(
            Rule(claim=str(raw["claim"]), value=str(raw["value"]), tenant=str(raw["tenant"]), role=raw["role"])
        )
    return rules


def derived_claims(claims: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(claims)
    email = claims.get("email")
    if isinstance(email, str) and "@" in email:
        out.setdefault("email_domain", email.rsplit("@", 1)[1].lower())
    return out


def roles_for(claims: Mapping[str, Any], rules: list[Rule]) -> dict[str, str]:
    """Tenant slug -> highest role that the claims earn."""
    full = derived_claims(claims)
    result: dict[str, str] = {}
    for rule in rules:
        if rule.matches(full):
            current = result.get(rule.tenant)
            if current is None or _RANK[rule.role] > _RANK[current]:
                result[rule.tenant] = rule.role
    return result


class MappingSource:
    """Inline text or a file, re-parsed only when the file's mtime/size changes."""

    def __init__(self, inline: str = "", path: str = "") -> None:
        self._inline = inline
        self._path = Path(path) if path else None
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._rules: list[Rule] = parse_mapping(inline) if inline and not path else []

    def rules(self) -> list[Rule]:
        if self._path is None:
            return self._rules
        try:
            stat = self._path.stat()
        except OSError as err:
            raise MappingError(f"OIDC_CLAIM_MAPPING_FILE: cannot read {self._path}: {err.strerror}") from None
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp != self._stamp:
                self._rules = parse_mapping(self._path.read_text(), source=str(self._path))
                self._stamp = stamp
            return self._rules


_sources: dict[tuple[str, str], MappingSource] = {}


def mapping_source(inline: str, path: str) -> MappingSource:
    key = (inline, path)
    source = _sources.get(key)
    if source is None:
        source = _sources[key] = MappingSource(inline, path)
    return source
