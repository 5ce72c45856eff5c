"""Regenerate the Python modules of every .proto file in `agents/proto/infermesh/v1` with grpcio-tools.

`python -m agents.proto.build` rewrites them in place; `--check` only reports whether they are current (used by the
tests). Imports between .proto files are written as `import "infermesh/v1/x.proto"` and rewritten to the package
path `agents.proto.infermesh.v1` so the modules import from anywhere.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_DIR = PROTO_ROOT / "infermesh" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
_IMPORT_RE = re.compile(r"^(\s*)from infermesh\.v1 import ", re.MULTILINE)
_DOTTED_RE = re.compile(r"^(\s*)import infermesh\.v1\.", re.MULTILINE)


class ProtoBuildError(RuntimeError):
    """protoc failed on one of the sources."""


def proto_sources() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def _rewrite_imports(text: str) -> str:
    text = _IMPORT_RE.sub(r"\1from agents.proto.infermesh.v1 import ", text)
    return _DOTTED_RE.sub(r"\1import agents.proto.infermesh.v1.", text)


def generate(out_dir: Path) -> list[Path]:
    """Compile every source into `out_dir/infermesh/v1`; return the generated files."""
    import grpc_tools
    from grpc_tools import protoc

    sources = proto_sources()
    if not sources:
        raise ProtoBuildError(f"no .proto files in {PROTO_DIR}")
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(PROTO_ROOT)) for p in sources],
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise ProtoBuildError(f"protoc exited with {rc} for {', '.join(p.name for p in sources)}")
    generated = sorted(p for p in (out_dir / "infermesh" / "v1").iterdir() if p.name.endswith(GENERATED_SUFFIXES))
    for path in generated:
        path.write_text(_rewrite_imports(path.read_text()))
    return generated


def stale_files() -> list[str]:
    """Names of generated files that differ from what the sources produce now (missing or extra included)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p.read_text() for p in generate(Path(tmp))}
    current = {p.name: p.read_text() for p in PROTO_DIR.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}
    names = sorted(set(fresh) | set(current))
    return [name for name in names if fresh.get(name) != current.get(name)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agents.proto.build", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the generated modules are not current")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print("generated protobuf modules are out of date: " + ", ".join(stale), file=sys.stderr)
            print("run: python -m agents.proto.build", file=sys.stderr)
            return 1
        print("generated protobuf modules are current")
        return 0
    # Remove generated files whose .proto is gone, so the folder mirrors the sources exactly.
    expected_stems = {p.stem for p in proto_sources()}
    for path in PROTO_DIR.iterdir():
        if path.name.endswith(GENERATED_SUFFIXES) and path.name.split("_pb2")[0] not in expected_stems:
            path.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(Path(tmp)):
            (PROTO_DIR / path.name).write_text(path.read_text())
            print(f"wrote {(PROTO_DIR / path.name).relative_to(PROTO_ROOT.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
