"""One configuration loader for the agent and the router: a YAML file, environment overrides
(`PREFIX__SECTION__FIELD=value`, values read as YAML scalars), a strict pydantic model, and one error format.

Every error names the field, where its value came from (the environment variable, or the file) and, for a field the
model does not know, the closest one it does ("did you mean"). `resolved()` renders the values in force with the
ones the environment set marked, for `--print-config`.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A configuration that cannot start the process; the message names the field and where it came from."""


@dataclass
class Overrides:
    """Values from the environment, nested like the YAML, and which variable set each dotted field."""

    data: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)


def env_overrides(env: Mapping[str, str], prefix: str) -> Overrides:
    """`PREFIX__LISTEN__PORT=9000` -> {"listen": {"port": 9000}}; a value is a YAML scalar or flow collection."""
    out = Overrides()
    for key in sorted(env):
        if not key.startswith(prefix):
            continue
        path = [p.lower() for p in key[len(prefix) :].split("__")]
        if not path or not all(path):
            raise ConfigError(f"{key}: an empty part in the variable's name (use {prefix}SECTION__FIELD)")
        cursor = out.data
        for part in path[:-1]:
            nxt = cursor.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"{key}: {part} is both a value and a section")
            cursor = nxt
        raw = env[key]
        try:
            cursor[path[-1]] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"{key}: not a YAML value ({str(exc).splitlines()[0]})") from None
        out.origin[".".join(path)] = key
    return out


def merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` laid onto `base`, section by section (a value replaces a section and the other way round)."""
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = json.loads(json.dumps(value)) if isinstance(value, Mapping) else value
    return base


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({' '.join(str(exc).split())})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: the top level must be a mapping, not {type(raw).__name__}")
    return raw


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that holds the field at `loc` (for "did you mean"), or None when it cannot be told."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        info = current.model_fields.get(str(part))
        if info is None:
            if isinstance(part, int):
                continue
            return None
        current = _inner(info.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _inner(annotation: Any) -> Any:
    """The model inside `X | None`, `list[X]` and `dict[str, X]`."""
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        found = _inner(arg)
        if found is not None:
            return found
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _names(model: type[BaseModel]) -> list[str]:
    names = []
    for name, info in model.model_fields.items():
        names.append(info.alias or name)
    return names


def format_errors(exc: ValidationError, model: type[BaseModel], source: str, origin: Mapping[str, str]) -> str:
    """One line per problem: `WHERE: field.path: what is wrong`, WHERE being the variable or the file."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
            holder = _model_at(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), _names(holder), n=1) if holder else []
            if close:
                msg += f"; did you mean {'.'.join([*(str(p) for p in loc[:-1]), close[0]])!r}?"
        where = next((var for f, var in origin.items() if dotted == f or dotted.startswith(f + ".")), source)
        lines.append(f"{where}: {dotted}: {msg}")
    return "\n".join(lines)


def resolved(config: BaseModel, origin: Mapping[str, str], source: str) -> str:
    """The configuration in force as YAML, each value that an environment variable set marked `# from VAR`."""
    data = config.model_dump(mode="json", by_alias=True)
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    out = [f"# resolved configuration (file: {source}; # from VAR marks a value from the environment)"]
    stack: list[tuple[int, str]] = []
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        indent = len(line) - len(stripped)
        if stripped.startswith("- ") or ":" not in stripped:
            out.append(line)
            continue
        key = stripped.split(":", 1)[0]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        dotted = ".".join(k for _, k in stack)
        var = origin.get(dotted)
        out.append(f"{line}  # from {var}" if var else line)
    return "\n".join(out) + "\n"
