"""Which inference APIs each runtime serves, so that a request only goes to targets that can answer it.

The table follows the runtimes' releases (and the emulator's flavours, agents/emulator/apis.py, which serve the same
routes). A runtime not named here is given the request and answers for itself; KServe targets serve only KServe v2.
"""

from __future__ import annotations

from collections.abc import Iterable

from router.service import Refusal
from router.view import Target

BASIC = frozenset({"chat", "completions"})
RUNTIME_APIS: dict[str, frozenset[str]] = {
    "vllm": BASIC | {"embeddings", "responses", "messages", "tokenize"},
    "vllm-v0": BASIC | {"embeddings", "tokenize"},
    "sglang": BASIC | {"embeddings"},
    "tgi": BASIC,
    "triton": BASIC,
}
PATHS = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
    "responses": "/v1/responses",
    "messages": "/v1/messages",
    "tokenize": "/tokenize",
}


def serves(target: Target, api: str) -> bool:
    if target.api != "openai":
        return False
    apis = RUNTIME_APIS.get(target.runtime)
    return apis is None or api in apis


def check(targets: Iterable[Target], model: str, api: str) -> None:
    """Refuse (501) a request for a model none of whose targets serves `api`; nothing to check without targets."""
    ts = list(targets)
    if ts and not any(serves(t, api) for t in ts):
        kinds = sorted({t.runtime if t.api == "openai" else f"{t.api} ({t.runtime})" for t in ts})
        raise Refusal(
            501,
            "api_not_served",
            f"model {model!r} is served by {', '.join(kinds)} runtimes, which do not serve {PATHS.get(api, api)}",
        )


def only_serving_or_all(ranked: list[Target], api: str) -> list[Target]:
    """The ranked targets that serve `api`; all of them when none does (its runtime then answers for itself)."""
    return [t for t in ranked if serves(t, api)] or ranked
