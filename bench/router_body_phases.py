"""Our router's work on a request body, in-process and phase by phase: parse, validate, the prompt's block hashes, and
the prefix index's booking and match, on the many-turn chats of `bench/router_overhead.py` (16 KB, 256 KB, 2 MB).

    .venv/bin/python bench/router_body_phases.py [--root CHECKOUT] [--repeat 9]

Microseconds per request, the minimum over repeats (the machine's neighbours only ever add). `--root` measures another
checkout of the project (e.g. an older commit unpacked with `git archive`), so before and after can be alternated on
the same machine; a checkout without the partial parse of large chats is measured with its full parse.
"""

from __future__ import annotations

import argparse
import os
import sys
import timeit
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SIZES = (("16k", 16 << 10), ("256k", 256 << 10), ("2m", 2 << 20))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="checkout whose router is measured (default: this one)")
    ap.add_argument("--repeat", type=int, default=9, help="repeats; the minimum is reported")
    args = ap.parse_args()
    if not (args.root / "router" / "openai_api.py").is_file():
        ap.error(f"--root {args.root} is not a checkout of this project (no router/openai_api.py)")
    sys.path.insert(0, str(args.root.resolve()))
    sys.path.insert(1, str(ROOT))  # the bodies come from this checkout's bench
    import router.openai_api as oa
    from agents.signals.prefixindex import PrefixIndex
    from bench.router_overhead import chat_body
    from router.config import CacheConfig
    from router.prefix import request_prefix

    cfg = CacheConfig()
    partial = getattr(oa, "parse_chat_body", None)
    print(f"# {oa.__file__}: {'partial parse of large chats' if partial else 'full parse'}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    print(f"{'body':<6} {'parse':>8} {'validate':>9} {'prefix':>8} {'idx add':>8} {'idx match':>10} {'all':>8}")

    def measure(label: str, size: int) -> None:
        head, tail = chat_body(size)
        bodies = [head + str(i).encode() + tail for i in range(8)]
        turn = [0]

        def parse() -> Any:
            body = bodies[turn[0] % 8]
            turn[0] += 1
            return partial(body, 5 * cfg.max_prompt_tokens) if partial else oa.parse_json_body(body)

        objs = [parse() for _ in range(8)]
        hashes = [request_prefix("chat", o, {}, cfg).hashes for o in objs]
        index = PrefixIndex()

        def validate() -> Any:
            return oa.validate("chat", objs[turn[0] % 8])

        def prefix() -> Any:
            turn[0] += 1
            return request_prefix("chat", objs[turn[0] % 8], {}, cfg)

        def add() -> None:
            turn[0] += 1
            index.note_routed("t", hashes[turn[0] % 8])

        def match() -> int:
            return index.match("t", hashes[turn[0] % 8])

        add()
        phases = (parse, validate, prefix, add, match)
        us = [min(timeit.repeat(f, number=8, repeat=args.repeat)) / 8 * 1e6 for f in phases]
        every = sum(us) + us[4]  # hybrid_mesh matches twice (ranking, booking)
        print(f"{label:<6} {us[0]:>8.1f} {us[1]:>9.1f} {us[2]:>8.1f} {us[3]:>8.1f} {us[4]:>10.1f} {every:>8.1f}")

    for label, size in SIZES:
        measure(label, size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
