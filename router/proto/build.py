"""Regenerate router/proto/grpc_predict_v2_pb2*.py; `--check` reports whether the checked-in modules are current."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SOURCE = HERE / "grpc_predict_v2.proto"
GENERATED = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py")


def generate(out_dir: Path) -> dict[str, str]:
    from grpc_tools import protoc

    rel = SOURCE.relative_to(ROOT)
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{ROOT}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(rel),
        ]
    )
    if rc != 0:
        raise RuntimeError(f"protoc exited with {rc} for {rel}")
    folder = out_dir / rel.parent
    texts = {name: (folder / name).read_text() for name in GENERATED}
    texts["grpc_predict_v2_pb2.py"] = private_pool(texts["grpc_predict_v2_pb2.py"])
    return texts


# KServe v2 requires the package `inference`, which NVIDIA's tritonclient also registers in protobuf's default pool
# (from its own grpc_service.proto): the two cannot share that pool in one process, so ours gets a pool of its own.
DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
OWN_POOL = "_POOL = _descriptor_pool.DescriptorPool()\nDESCRIPTOR = _POOL.AddSerializedFile("


def private_pool(text: str) -> str:
    if DEFAULT_POOL not in text:
        raise RuntimeError("protoc's output no longer adds the file to the default pool; update private_pool")
    return text.replace(DEFAULT_POOL, OWN_POOL)


def stale() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    out = []
    for name, text in fresh.items():
        p = HERE / name
        if not p.exists() or p.read_text() != text:
            out.append(name)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m router.proto.build", description=__doc__)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    if args.check:
        s = stale()
        if s:
            print("out of date: " + ", ".join(s) + "; run python -m router.proto.build", file=sys.stderr)
            return 1
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in generate(Path(tmp)).items():
            (HERE / name).write_text(text)
            print(f"wrote router/proto/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
