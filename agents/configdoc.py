"""Writes docs/reference/config.md from the agent's and the router's config models: every field with its type,
default, description and environment variable. `python -m agents.configdoc` rewrites the page;
tests/test_config_reference.py fails when it is not current."""

from __future__ import annotations

import importlib
import socket
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

PAGE = Path(__file__).resolve().parents[1] / "docs" / "reference" / "config.md"
# The agent's component sections: each is validated by its component's own model.
COMPONENT_MODELS = {
    "gossip": "agents.gossip.component:GossipSection",
    "raft": "agents.raft.component:RaftSection",
    "scheduler": "agents.scheduler.component:SchedulerSection",
    "trainer": "agents.trainer.component:TrainerSection",
    "portal": "agents.portal_link.component:PortalSection",
    "io": "agents.io.component:IoSection",
    "wan": "agents.wan.component:WanSection",
}


def _load(target: str) -> type[BaseModel]:
    module, _, name = target.partition(":")
    model: type[BaseModel] = getattr(importlib.import_module(module), name)
    return model


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out += _models_in(arg)
    return out


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"map of {_type_name(args[1])}" if len(args) == 2 else "map"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation)).replace("|", "\\|")


def _default(info: Any) -> str:
    if info.default_factory is not None:
        if info.default_factory is socket.gethostname:
            return "(this machine's host name)"
        try:
            value = info.default_factory()
        except TypeError:
            return "(computed)"
        if isinstance(value, BaseModel):
            return "(section)"
    elif info.default is PydanticUndefined:
        return "**required**"
    else:
        value = info.default
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if value == "" or value == [] or value == {}:
        return f"`{value!r}`" if value == "" else f"`{value}`"
    return f"`{value}`"


def rows(model: type[BaseModel], path: list[str], env_prefix: str) -> list[str]:
    out = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        dotted = ".".join([*path, key])
        env = env_prefix + "__".join(p.upper() for p in [*path, key]) if "[]" not in dotted else "—"
        desc = " ".join((info.description or "").split()).replace("|", "\\|")
        out.append(f"| `{dotted}` | {_type_name(info.annotation)} | {_default(info)} | {desc} | `{env}` |")
        for sub in _models_in(info.annotation):
            origin = typing.get_origin(info.annotation)
            args = [typing.get_origin(a) for a in typing.get_args(info.annotation)]
            if origin is list or list in args:
                out += rows(sub, [*path, key + "[]"], env_prefix)
            elif origin is dict or dict in args:
                out += rows(sub, [*path, key, "<name>"], env_prefix)
            else:
                out += rows(sub, [*path, key], env_prefix)
    return [r.replace("`—`", "—") for r in out]


HEADER = "| field | type | default | meaning | environment |\n|---|---|---|---|---|"


def render() -> str:
    from agents.meshd.config import ENV_PREFIX as AGENT_ENV
    from agents.meshd.config import AgentConfig
    from router.config import ENV_PREFIX as ROUTER_ENV
    from router.config import RouterConfig

    parts = [
        "# Configuration reference",
        "",
        "Generated from the config models by `python -m agents.configdoc`; `tests/test_config_reference.py` fails",
        "when it is not current. Both processes read a YAML file (`--config FILE`) and environment variables that",
        "override single fields (`PREFIX__SECTION__FIELD=value`, the value read as YAML). Unknown fields are refused,",
        "with the closest known name; every error names the field and the variable or file its value came from.",
        "`--print-config` prints the values in force, marking those the environment set; `--check` validates and",
        "exits. Both spell logging the same way: `logging.level` is debug, info, warning or error, in any case.",
        "",
        "## Agent (`infermesh agent`)",
        "",
        HEADER,
        *(r for r in rows(AgentConfig, [], AGENT_ENV) if not r.startswith("| `components`")),
        "",
        "`log:` is read as the former name of `logging:`.",
    ]
    for section, target in COMPONENT_MODELS.items():
        parts += ["", f"### Agent component `{section}:`", "", HEADER, *rows(_load(target), [section], AGENT_ENV)]
    parts += ["", "## Router (`infermesh router`)", "", HEADER, *rows(RouterConfig, [], ROUTER_ENV), ""]
    return "\n".join(parts)


def main() -> int:
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(render())
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
