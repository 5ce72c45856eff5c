"""Nodes the control plane keeps for inference, from the policy store: a model's routing policy pinned to nodes
(`pinning/<key>`) and a deployment's placement (`placements/<key>`: `replicas` of its `nodes`). The scheduler plans
no new training work on them, the way it treats a cordoned node; work already running there stays."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PINNING = "pinning/"
PLACEMENTS = "placements/"


def reserved_nodes(pinning: Mapping[str, Any], placements: Mapping[str, Any]) -> dict[str, str]:
    """node -> the reason it is kept for inference. Keys are as read (with their namespace prefix)."""
    out: dict[str, str] = {}
    for key, value in sorted(pinning.items()):
        if not isinstance(value, dict):
            continue
        for node in value.get("nodes") or []:
            out.setdefault(str(node), f"pinned to model {value.get('model', '?')} ({key})")
    for key, value in sorted(placements.items()):
        if not isinstance(value, dict):
            continue
        nodes = sorted(str(n) for n in value.get("nodes") or [])
        replicas = value.get("replicas", 1)
        want = replicas if isinstance(replicas, int) and replicas >= 0 else 1
        # The first `replicas` nodes of the placement (in name order, stable across passes and leaders).
        for node in nodes[:want]:
            out.setdefault(node, f"placement of model {value.get('model', '?')} ({key})")
    return out
