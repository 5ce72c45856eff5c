"""Count the imports that climb the portal's layers and the import circles among its apps.

The layer order is the one the import contract states (`[tool.importlinter]` in pyproject.toml, the contract with
id "meshweb-layers"): an import from an app to an app listed above it climbs. Imports inside functions count too
(as they do for the linter). Run it from the repository root:

    .venv/bin/python tools/import_graph.py            # summary
    .venv/bin/python tools/import_graph.py --list     # every climbing import, importer -> imported (line)
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
CONTRACT_ID = "meshweb-layers"


def layers() -> list[list[str]]:
    """The contract's layers, top first; each layer a list of sibling apps (`a | b` in the config)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for contract in config["tool"]["importlinter"]["contracts"]:
        if contract.get("id") == CONTRACT_ID:
            return [[m.strip() for m in layer.replace(":", "|").split("|")] for layer in contract["layers"]]
    raise SystemExit(f"pyproject.toml has no import contract with id {CONTRACT_ID!r}")


def app_of(module: str, apps: list[str]) -> str | None:
    for app in apps:
        if module == app or module.startswith(app + "."):
            return app
    return None


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary circle of the app graph, each listed once (from its smallest app)."""
    out: list[list[str]] = []
    nodes = sorted(edges)

    def walk(start: str, node: str, path: list[str], seen: set[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt == start:
                out.append([*path])
            elif nxt > start and nxt not in seen:
                seen.add(nxt)
                walk(start, nxt, [*path, nxt], seen)
                seen.discard(nxt)

    for start in nodes:
        walk(start, start, [start], {start})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="list every climbing import")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    order = layers()
    rank = {app: i for i, layer in enumerate(order) for app in layer}
    apps = sorted(rank, key=len, reverse=True)
    graph = grimp.build_graph("meshweb", cache_dir=None)
    climbs: list[tuple[str, str, int]] = []
    app_edges: dict[str, set[str]] = defaultdict(set)
    for importer in sorted(graph.modules):
        src = app_of(importer, apps)
        if src is None or ".migrations" in importer:
            continue
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            dst = app_of(imported, apps)
            if dst is None or dst == src:
                continue
            app_edges[src].add(dst)
            if rank[dst] < rank[src]:  # listed above: the importer reaches up
                details = graph.get_import_details(importer=importer, imported=imported)
                for d in details or [{"line_number": 0}]:
                    climbs.append((importer, imported, int(d["line_number"])))
    loops = circles(app_edges)
    pairs = sorted({tuple(sorted((a, b))) for a in app_edges for b in app_edges[a] if a in app_edges.get(b, set())})
    print(f"layers (top first): {' > '.join(' | '.join(a.split('.')[-1] for a in layer) for layer in order)}")
    print(f"climbing imports: {len(climbs)} (module pairs: {len({(a, b) for a, b, _ in climbs})})")
    climbing_edges = {(src, dst) for src, dsts in app_edges.items() for dst in dsts if rank[dst] < rank[src]}
    print(f"app-to-app import edges: {sum(len(v) for v in app_edges.values())}, of which climb: {len(climbing_edges)}")
    print(f"circles among apps: {len(loops)} (apps importing each other directly: {len(pairs)})")
    if args.list:
        for importer, imported, line in climbs:
            print(f"  {importer}:{line} -> {imported}")
        for a, b in pairs:
            print(f"  pair: {a} <-> {b}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
