"""Stage configs: dataclasses whose fields are the options of a stage.

Every field is an option with one name everywhere: the YAML key, the CLI flag (``lr`` ->
``--lr``, ``num_samples`` -> ``--num-samples``) and the key in the resolved ``config.yaml`` a
stage writes. Values are read from YAML first, then overridden by flags. Unknown keys and
values of the wrong type are reported as one sentence naming the key and the file.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from afd.errors import ConfigError


def opt(default: Any = dataclasses.MISSING, help: str = "", **kw: Any) -> Any:
    """A config field with its one-line help (shown by ``afd STAGE --help``)."""
    if isinstance(default, (dict, list)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kw)
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(the type without Optional, whether None is allowed)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return tp, False


def coerce(name: str, tp: Any, value: Any, where: str) -> Any:
    """Convert a YAML or CLI value to the field's type, or say clearly why not."""
    base, nullable = _base_type(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and nullable):
        if nullable:
            return None
        raise ConfigError(f"option '{name}' in {where} cannot be empty")
    origin = typing.get_origin(base) or base
    try:
        if origin is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.lower() in ("true", "yes", "1")
            raise ValueError
        if origin is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if origin is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if origin is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if origin is dict:
            if isinstance(value, str):  # CLI form: key=value,key=value
                pairs = [p for p in value.split(",") if p.strip()]
                value = dict(p.split("=", 1) for p in pairs)
            if not isinstance(value, dict):
                raise ValueError
            return {str(k).strip(): str(v).strip() for k, v in value.items()}
        if origin is list:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list):
                raise ValueError
            return [str(v) for v in value]
    except (ValueError, TypeError):
        pass
    else:
        return value
    kind = getattr(origin, "__name__", str(origin))
    raise ConfigError(f"option '{name}' in {where} should be {kind}, got {value!r}")


def from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build config ``cls`` from a mapping, rejecting unknown keys by name."""
    types_ = field_types(cls)
    data = {k.replace("-", "_"): v for k, v in (data or {}).items()}
    unknown = sorted(set(data) - set(types_))
    if unknown:
        known = ", ".join(sorted(types_))
        raise ConfigError(f"unknown option '{unknown[0]}' in {where} (known options: {known})")
    values = {k: coerce(k, types_[k], v, where) for k, v in data.items()}
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"option '{missing[0]}' is required ({where})")
    cfg = cls(**values)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def options_of(cfg: Any, group: type) -> dict[str, Any]:
    """The values in ``cfg`` of the options that the mixin ``group`` declares (to pass them on
    to the stages a multi-step stage runs)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(group)}


def unused(cfg: Any) -> set[str]:
    return set(cfg.unused_options()) if hasattr(cfg, "unused_options") else set()


def to_dict(cfg: Any) -> dict[str, Any]:
    """The options of ``cfg`` as a mapping, without those its own values make meaningless
    (``cfg.unused_options()``, where it has one: AVA's options of a classifier reward model)."""
    drop = unused(cfg)
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in drop}


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {p} is not valid YAML{at}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} should hold a mapping of option: value")
    return data


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"option '{name}' must be one of {', '.join(choices)}; got {value!r}")
