"""The fleet's MIG slices as the portal knows them, and the one rule that refuses, at submission, what asks for more
slices of a profile than the enrolled fleet exposes (a training job's workers, a deployment's replicas)."""

from __future__ import annotations

from collections.abc import Collection

from agents.proto.vocab import MIG_PROFILES, gpu_type_of
from meshweb.core.exceptions import NeverFits
from meshweb.fleet.models import Gpu, GpuTelemetry


def mig_slices(nodes: Collection[str] | None = None) -> dict[str, dict[str, tuple[str, str]]]:
    """node -> slice UUID -> (profile, GPU family), from the GPUs registered with the portal and those the nodes'
    agents report in their telemetry (of the named nodes only, when given)."""
    out: dict[str, dict[str, tuple[str, str]]] = {}
    registered = Gpu.objects.exclude(mig_profile="")
    reported = GpuTelemetry.objects.filter(data__has_key="mig_profile").exclude(data__mig_profile="")
    if nodes is not None:
        registered, reported = registered.filter(node__name__in=nodes), reported.filter(node__name__in=nodes)
    for uuid, node, profile, family in registered.values_list("uuid", "node__name", "mig_profile", "gpu_type"):
        out.setdefault(node, {})[uuid] = (profile, family)
    for uuid, node, data in reported.values_list("uuid", "node__name", "data"):
        profile = str(data.get("mig_profile") or "")
        if profile:
            out.setdefault(node, {}).setdefault(uuid, (profile, gpu_type_of(str(data.get("name") or ""))))
    return out


def require_mig_slices(profile: str, need: int, families: Collection[str], subject: str, unit: str) -> None:
    """Refuse (422 never_fits) when the whole fleet exposes fewer than `need` slices of `profile` (of one of
    `families`, when given). The scheduler places on existing slices and does not re-partition GPUs, so what the
    fleet's layout cannot hold would wait forever. The reason reads "<subject> needs <need> <unit> on MIG ..."."""
    fleet = mig_slices()
    fits = sum(
        1 for slices in fleet.values() for p, f in slices.values() if p == profile and (not families or f in families)
    )
    if fits >= need:
        return
    kinds = f" of type {'/'.join(sorted(families))}" if families else ""
    layout = []
    for node, slices in sorted(fleet.items()):
        counts: dict[str, int] = {}
        for p, f in slices.values():
            key = f"{f} {p}" if f else p
            counts[key] = counts.get(key, 0) + 1
        order = sorted(counts, key=lambda k: (-MIG_PROFILES.get(k.split()[-1], (0, 0))[0], k))
        layout.append(f"{node} has {', '.join(f'{k} x{counts[k]}' for k in order)}")
    seen = "; ".join(layout) if layout else "no enrolled node exposes MIG slices"
    raise NeverFits(
        f"Can never fit: {subject} needs {need} {unit} on MIG {profile} slices{kinds}, the enrolled fleet exposes "
        f"{fits} ({seen})."
    )
