"""The generated protobuf modules match their .proto sources, and every service is importable."""

from __future__ import annotations

import importlib

from agents.proto import build


def test_generated_code_is_current() -> None:
    assert build.stale_files() == [], "run: python -m agents.proto.build"


def test_every_proto_has_importable_modules() -> None:
    sources = build.proto_sources()
    assert {p.stem for p in sources} >= {"state", "scoring", "control"}
    for src in sources:
        pb2 = importlib.import_module(f"agents.proto.infermesh.v1.{src.stem}_pb2")
        assert pb2.DESCRIPTOR.package == "infermesh.v1"
        importlib.import_module(f"agents.proto.infermesh.v1.{src.stem}_pb2_grpc")


def test_check_mode_reports_a_stale_module(tmp_path, monkeypatch) -> None:
    # A copy of the sources with one extra field: the committed modules no longer match it.
    proto_dir = tmp_path / "infermesh" / "v1"
    proto_dir.mkdir(parents=True)
    for src in build.proto_sources():
        (proto_dir / src.name).write_text(src.read_text())
    for path in build.PROTO_DIR.iterdir():
        if path.name.endswith(build.GENERATED_SUFFIXES):
            (proto_dir / path.name).write_text(path.read_text())
    state = proto_dir / "state.proto"
    state.write_text(state.read_text().replace("message StateAck {", "message StateAck {\n  string extra = 9;"))
    monkeypatch.setattr(build, "PROTO_ROOT", tmp_path)
    monkeypatch.setattr(build, "PROTO_DIR", proto_dir)
    assert build.main(["--check"]) == 1
    assert set(build.stale_files()) == {"state_pb2.py", "state_pb2.pyi"}
    assert build.main([]) == 0
    assert build.stale_files() == []
