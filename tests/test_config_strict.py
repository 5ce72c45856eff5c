"""Strict configuration: every field of the agent's config (its sections and each component's section) and of the
router's, set to a bad value through its environment variable, stops the process at start with a message that names
the field and the variable.

The walk covers nested sections, `dict[str, Section]` maps (under a sample key) and `list[Section]` items (the list
given as one YAML flow value). A field's bad value is the first of: a number outside its bounds, a mapping, a list,
a word, that the process refuses. A field that accepts every one of them is free-form and must be listed below.
"""

from __future__ import annotations

import copy
import importlib
import json
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import annotated_types
import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from agents.configload import ConfigError
from agents.meshd.component import COMPONENT_FACTORIES, ComponentConfigError, build_component
from agents.meshd.config import ENV_PREFIX as AGENT_PREFIX
from agents.meshd.config import AgentConfig
from agents.meshd.config import parse_config_with_origin as parse_agent
from router.config import ENV_PREFIX as ROUTER_PREFIX
from router.config import RouterConfig
from router.config import parse_config_with_origin as parse_router

# Fields whose every value is a valid one (free text, labels); each entry is checked to exist and to stay free-form.
FREE_FORM: frozenset[str] = frozenset()

# Values for required fields, so that a list item or a component section is valid but for the field under test.
SAMPLES: dict[str, Any] = {
    "url": "http://127.0.0.1:9",
    "endpoint": "tcp://127.0.0.1:9",
    "model": "m",
    "name": "sample",
    "slug": "sample",
    "node_id": 1,
    "peers": {1: "127.0.0.1:7300"},
    "uri": "file:///tmp/infermesh-sample",
    "stores": [{"name": "sample", "uri": "file:///tmp/infermesh-sample"}],
    "a": "node-a",  # a link's two ends (router disaggregation.links)
    "b": "node-b",
    "gbps": 100.0,
}
# A component section's own values where the shared samples do not fit it.
SECTION_SAMPLES: dict[str, dict[str, Any]] = {"portal": {"url": "ws://127.0.0.1:9/ws/agent/", "credential": "sample"}}
BAD_WORD = "not-a-valid-value"


@dataclass(frozen=True)
class Case:
    process: str  # "agent", "router" or "agent:<component>"
    path: tuple[str, ...]  # the dotted field as errors name it (list items as their index)
    env_path: tuple[str, ...]  # the part of the variable's name after the prefix (a list is set as a whole)
    info: FieldInfo
    item: dict[str, Any] | None = None  # for a field of a list item: a valid item, and the field's path in it
    item_path: tuple[str, ...] = ()

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    @property
    def variable(self) -> str:
        return AGENT_PREFIX + "__".join(p.upper() for p in self.env_path) if self.process.startswith("agent") else (
            ROUTER_PREFIX + "__".join(p.upper() for p in self.env_path)
        )  # fmt: skip


def _unwrap(annotation: Any) -> Any:
    if typing.get_origin(annotation) is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    return annotation


def _model(annotation: Any) -> type[BaseModel] | None:
    """The section model of `X` or `X | None`."""
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        models = [m for a in typing.get_args(annotation) if (m := _model(a)) is not None]
        others = [a for a in typing.get_args(annotation) if a is not type(None) and _model(a) is None]
        return models[0] if len(models) == 1 and not others else None
    return None


def _container(annotation: Any, origin: Any) -> type[BaseModel] | None:
    annotation = _unwrap(annotation)
    if typing.get_origin(annotation) is origin:
        return _model(typing.get_args(annotation)[-1])
    return None


def _key(name: str, info: FieldInfo) -> str:
    return info.alias or name


def minimal(model: type[BaseModel]) -> dict[str, Any]:
    """The smallest valid value of `model` from the samples (its required fields only)."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if not info.is_required():
            continue
        sub = _model(info.annotation)
        if name not in SAMPLES and sub is None:
            raise LookupError(f"{model.__name__}.{name} is required: add a sample value to SAMPLES")
        out[_key(name, info)] = copy.deepcopy(SAMPLES[name]) if name in SAMPLES else minimal(sub)  # type: ignore[arg-type]
    return out


def cases(
    model: type[BaseModel], process: str, path: tuple[str, ...] = (), env: tuple[str, ...] = ()
) -> Iterator[Case]:
    for name, info in model.model_fields.items():
        key = _key(name, info)
        if model is AgentConfig and name == "components":
            continue  # filled from the component sections, which are walked on their own
        yield Case(process, (*path, key), (*env, key), info)
        if (sub := _model(info.annotation)) is not None:
            yield from cases(sub, process, (*path, key), (*env, key))
        elif (sub := _container(info.annotation, dict)) is not None:
            yield from cases(sub, process, (*path, key, "m"), (*env, key, "m"))
        elif (sub := _container(info.annotation, list)) is not None:
            base = minimal(sub)
            for item_case in cases(sub, process, (*path, key, "0"), (*env, key)):
                inner = item_case.path[len(path) + 2 :]
                yield Case(process, item_case.path, (*env, key), item_case.info, base, inner)


def component_models() -> dict[str, type[BaseModel]]:
    out = {}
    for section, target in COMPONENT_FACTORIES.items():
        module = importlib.import_module(target.split(":")[0])
        (model,) = [
            obj for name, obj in vars(module).items()
            if name.endswith("Section") and isinstance(obj, type) and issubclass(obj, BaseModel)
            and obj.__module__ == module.__name__ and name != "TlsSection"
        ]  # fmt: skip
        out[section] = model
    return out


def section_sample(section: str) -> dict[str, Any]:
    return {**minimal(component_models()[section]), **SECTION_SAMPLES.get(section, {})}


def all_cases() -> list[Case]:
    out = [*cases(AgentConfig, "agent"), *cases(RouterConfig, "router")]
    for section, model in component_models().items():
        out += cases(model, f"agent:{section}", (section,), (section,))
    return out


def candidates(info: FieldInfo) -> Iterator[Any]:
    for meta in info.metadata:
        if isinstance(meta, annotated_types.Ge | annotated_types.Gt):
            bound = meta.ge if isinstance(meta, annotated_types.Ge) else meta.gt
            yield bound - 1 if isinstance(meta, annotated_types.Ge) else bound
        if isinstance(meta, annotated_types.Le | annotated_types.Lt):
            bound = meta.le if isinstance(meta, annotated_types.Le) else meta.lt
            yield bound + 1 if isinstance(meta, annotated_types.Le) else bound
        if isinstance(meta, annotated_types.MaxLen):
            yield "x" * (meta.max_length + 1)
    yield {"bogus": 1}
    yield [1, 2]
    yield BAD_WORD


def yaml_value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value  # JSON is YAML's flow syntax


def start(case: Case, value: Any) -> Callable[[], None]:
    """What starting the process with the bad value set does, up to the point where the config is checked."""
    if case.item is not None:
        item = json.loads(json.dumps(case.item))
        cursor = item
        for part in case.item_path[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[case.item_path[-1]] = value
        value = [item]
    env = {case.variable: yaml_value(value)}
    if case.process == "router":
        return lambda: parse_router({}, env=env) and None
    section = case.process.partition(":")[2]
    if not section:
        return lambda: parse_agent({}, env) and None
    raw = {section: section_sample(section)}

    def run() -> None:
        config, origin = parse_agent(raw, env)
        build_component(section, config.components[section], origin)

    return run


def refusal(case: Case) -> tuple[Any, str] | None:
    for value in candidates(case.info):
        try:
            start(case, value)()
        except (ConfigError, ComponentConfigError) as exc:
            return value, str(exc)
    return None


CASES = all_cases()


def test_the_walk_reaches_every_section() -> None:
    processes = {c.process for c in CASES}
    assert {"agent", "router", *(f"agent:{s}" for s in COMPONENT_FACTORIES)} <= processes
    assert len(CASES) > 150


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.process}:{c.dotted}")
def test_a_bad_value_is_refused_naming_field_and_variable(case: Case) -> None:
    found = refusal(case)
    if case.dotted in FREE_FORM:
        assert found is None, f"{case.dotted} refuses {found}; remove it from FREE_FORM"
        return
    assert found is not None, f"{case.variable}: every value is accepted for {case.dotted}"
    value, message = found
    line = next((ln for ln in message.splitlines() if case.variable in ln), None)
    assert line is not None, f"{case.variable}={value!r}: the error does not name the variable: {message}"
    # the field itself, or a field inside it when the value given is a whole section
    assert f" {case.dotted}:" in line or f" {case.dotted}." in line, f"{case.variable}: {case.dotted} unnamed: {line}"


def test_free_form_fields_exist() -> None:
    assert {c.dotted for c in CASES} >= FREE_FORM


def test_unset_variables_leave_the_defaults() -> None:
    """The cases start from valid defaults: the base configs themselves are accepted."""
    assert parse_router({}, env={})[0] == RouterConfig()
    config, _ = parse_agent({}, {})
    assert config.components == {}
    for section in component_models():
        raw: Mapping[str, Any] = {section: section_sample(section)}
        config, origin = parse_agent(dict(raw), {})
        build_component(section, config.components[section], origin)
