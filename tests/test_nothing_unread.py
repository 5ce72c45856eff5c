"""Nothing configured goes unread: every field of the agent's config (its sections and every component's section),
of the router's config and of the portal's environment settings, and every key family of the policy store, has a
reader in the source tree.

A field counts as read when `.field` is accessed somewhere in `agents/`, `router/` or `meshweb/` outside the class
body that declares it (validators inside the model do not count); a settings name when `settings.NAME` (or
`"NAME"`) appears outside `meshweb/settings.py`; a store family when its prefix (`"family/"`) is used by the agent
or router code outside the schema and the portal↔agent wire list. Generic names (`id`, `url`) are matched by any
access of that name, so this is a floor, not a proof. Indirect readers are allowed explicitly below, each with the
reader named; an entry that is no longer needed fails the test too, so the list stays short and true.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import textwrap
import typing
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from pydantic import BaseModel

from agents.meshd.component import COMPONENT_FACTORIES
from agents.meshd.config import AgentConfig
from agents.store.schema import NAMESPACES
from router.config import RouterConfig

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agents", "router", "meshweb")

# model.field -> the reader that does not spell `.field`
INDIRECT: dict[str, str] = {}
# Django, Celery and channels read these settings themselves
FRAMEWORK_SETTINGS = frozenset(
    {
        "DEBUG",
        "SECRET_KEY",
        "ALLOWED_HOSTS",
        "CSRF_TRUSTED_ORIGINS",
        "DATA_UPLOAD_MAX_MEMORY_SIZE",
        "CELERY_BROKER_URL",
        "CELERY_RESULT_BACKEND",
    }
)


@cache
def sources() -> dict[Path, str]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            if "migrations" in path.parts or path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            out[path] = path.read_text()
    return out


def _nested_models(annotation: object) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    if typing.get_origin(annotation) is typing.Annotated:
        yield from _nested_models(typing.get_args(annotation)[0])
        return
    for arg in typing.get_args(annotation):
        yield from _nested_models(arg)


def walk(model: type[BaseModel], seen: set[type[BaseModel]] | None = None) -> Iterator[tuple[type[BaseModel], str]]:
    seen = set() if seen is None else seen
    if model in seen:
        return
    seen.add(model)
    for name, info in model.model_fields.items():
        yield model, name
        for sub in _nested_models(info.annotation):
            yield from walk(sub, seen)


def component_sections() -> list[type[BaseModel]]:
    out = []
    for target in COMPONENT_FACTORIES.values():
        module = importlib.import_module(target.split(":")[0])
        out += [
            obj
            for name, obj in vars(module).items()
            if name.endswith("Section") and isinstance(obj, type) and issubclass(obj, BaseModel)
            and obj.__module__ == module.__name__
        ]  # fmt: skip
    return out


_VALIDATORS = ("field_validator", "model_validator", "validator", "root_validator")


@cache
def _not_readers(model: type[BaseModel]) -> tuple[Path, frozenset[int]]:
    """The model's file and the lines of its class body that do not count as reading a field: the field
    declarations and the validators (a method of the model that uses a field, e.g. to build a component's own
    config from its section, does count)."""
    lines, start = inspect.getsourcelines(model)
    tree = ast.parse(textwrap.dedent("".join(lines)))
    cls = tree.body[0]
    assert isinstance(cls, ast.ClassDef)
    skip: set[int] = set()
    for node in cls.body:
        decorators = [ast.unparse(d) for d in getattr(node, "decorator_list", [])]
        validator = any(name in d for d in decorators for name in _VALIDATORS)
        if validator or not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            end = node.end_lineno or node.lineno
            skip.update(range(start + node.lineno - 1, start + end))
    return Path(inspect.getsourcefile(model) or "").resolve(), frozenset(skip)


def is_read(model: type[BaseModel], field: str) -> bool:
    """`.field` accessed in the source tree outside the model's field declarations and validators."""
    pattern = re.compile(rf"\.{re.escape(field)}\b")
    own_file, skip = _not_readers(model)
    for path, text in sources().items():
        if not pattern.search(text):
            continue
        if path.resolve() != own_file:
            return True
        for lineno, line in enumerate(text.splitlines(), start=1):
            if lineno not in skip and pattern.search(line):
                return True
    return False


def config_fields() -> list[tuple[type[BaseModel], str]]:
    fields: list[tuple[type[BaseModel], str]] = []
    seen: set[type[BaseModel]] = set()
    for root in (AgentConfig, RouterConfig, *component_sections()):
        fields += list(walk(root, seen))
    return fields


def test_every_config_field_has_a_reader() -> None:
    fields = config_fields()
    assert len(fields) > 100  # the walk reached the nested sections
    unread = [
        f"{m.__module__}.{m.__name__}.{f}"
        for m, f in fields
        if f"{m.__name__}.{f}" not in INDIRECT and not is_read(m, f)
    ]
    assert not unread, "config fields no code path reads (read them, remove them, or name the reader):\n" + "\n".join(
        unread
    )


def test_the_allow_list_is_needed_and_names_real_fields() -> None:
    known = {f"{m.__name__}.{f}": m for m, f in config_fields()}
    for entry, reader in INDIRECT.items():
        assert entry in known, f"{entry}: not a config field any more; drop it from INDIRECT"
        model, field = known[entry], entry.split(".", 1)[1]
        assert not is_read(model, field), f"{entry}: read directly now; drop it from INDIRECT"
        assert reader.split()[0].endswith(".py") and (ROOT / reader.split()[0]).exists(), reader


def settings_from_env() -> list[str]:
    tree = ast.parse((ROOT / "meshweb" / "settings.py").read_text())
    names = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            text = ast.unparse(node.value)
            if "os.environ" in text or "_env_" in text:
                names.append(node.targets[0].id)
    return names


def test_every_portal_setting_from_the_environment_has_a_reader() -> None:
    names = settings_from_env()
    assert "INFERMESH_QUARANTINE_PERIOD_S" in names and len(names) > 15
    settings_path = (ROOT / "meshweb" / "settings.py").resolve()
    tree = ast.parse(settings_path.read_text())
    # a name used by another setting (a beat schedule, the LOGGING dict) is read by the framework that reads that
    used_in_settings = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    unread = []
    for name in names:
        if name in FRAMEWORK_SETTINGS or name in used_in_settings:
            continue
        pattern = re.compile(rf"settings\.{name}\b|[\"']{name}[\"']")
        if not any(pattern.search(t) for p, t in sources().items() if p.resolve() != settings_path):
            unread.append(name)
    assert not unread, "portal settings nothing reads: " + ", ".join(unread)


# store family -> the reader that does not spell its prefix
STORE_INDIRECT: dict[str, str] = {
    # every key is free-form under kv/; its readers spell longer prefixes such as "kv/portal/jobs/"
}


def test_every_store_key_family_has_a_reader() -> None:
    skip = {
        (ROOT / "agents" / "store" / "schema.py").resolve(),
        (ROOT / "agents" / "proto" / "portal_link.py").resolve(),  # the wire's list of families the portal may write
    }
    unread = []
    for family in NAMESPACES:
        if family in STORE_INDIRECT:
            continue
        pattern = re.compile(rf"[\"']{re.escape(family)}/")
        readers = [
            p
            for p, t in sources().items()
            if p.resolve() not in skip and p.parts[len(ROOT.parts)] in ("agents", "router") and pattern.search(t)
        ]
        if not readers:
            unread.append(family)
    assert not unread, "store key families no agent or router code reads: " + ", ".join(unread)


def test_the_walk_sees_through_optional_lists_and_dicts() -> None:
    class Inner(BaseModel):
        x: int = 0

    class Outer(BaseModel):
        a: Inner | None = None
        b: list[Inner] = []
        c: dict[str, Inner] = {}

    assert [f for _, f in walk(Outer)] == ["a", "x", "b", "c"]


def test_the_portal_and_the_agents_share_one_vocabulary_of_gpu_types_and_job_states() -> None:
    import pytest

    from agents.proto import vocab
    from agents.scheduler.model import GPU_TYPES

    assert set(GPU_TYPES) == set(vocab.GPU_TYPES)
    vocab.check_choices("JobStatus", vocab.JOB_STATUSES, vocab.JOB_STATUSES)
    with pytest.raises(ValueError, match=r"GpuType differs from agents/proto/vocab.py: only here \['B200'\]"):
        vocab.check_choices("GpuType", [*vocab.GPU_TYPES, "B200"], vocab.GPU_TYPES)
