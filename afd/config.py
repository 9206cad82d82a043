"""Stage configs: dataclasses whose fields are the options of a stage.

Every field is an option with one name everywhere: the YAML key, the CLI flag (``lr`` ->
``--lr``, ``num_samples`` -> ``--num-samples``; ``--num_samples`` is read too) and the key in the
resolved ``config.yaml`` a stage writes. Values are read from YAML first, then overridden by
flags. TRL's, OpenRLHF's and Axolotl's names for the same options are read as afd's
(:mod:`afd.aliases`). Unknown keys and values of the wrong type are reported as one sentence
naming the key and the file.

:func:`declared_options` reads a config class's options from its source, without importing
its module, so that ``afd --help`` does not load torch, transformers and TRL.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import types
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from afd.errors import ConfigError, note


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
        if origin is list:  # a list, or text of comma-separated items (or a list of such texts)
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
                raise ValueError
            return [item.strip() for v in value for item in str(v).split(",") if item.strip()]
    except (ValueError, TypeError):
        pass
    else:
        return value
    kind = getattr(origin, "__name__", str(origin))
    raise ConfigError(f"option '{name}' in {where} should be {kind}, got {value!r}")


def from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build config ``cls`` from a mapping, rejecting unknown keys by name."""
    return from_sources(cls, [(data, where)], where)


def from_sources(cls: type, sources: list[tuple[dict[str, Any], str]], where: str) -> Any:
    """Build config ``cls`` from several mappings (a YAML file, then the command line), each
    named for errors; a later one overrides an earlier one. Other libraries' names are read as
    afd's (:func:`afd.aliases.translate`); those that mean nothing to this stage are named in one
    note."""
    from afd import aliases

    fields = set(field_types(cls))
    data: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    ignored: list[str] = []
    for source, source_where in sources:
        options, soft, names = aliases.translate(source, fields, source_where)
        data.update(options)
        defaults.update(soft)
        ignored += [n for n in names if n not in ignored]
    data = {**defaults, **data}
    if ignored:
        note(f"ignoring {', '.join(repr(n) for n in ignored)} ({where}): "
             f"{'it changes' if len(ignored) == 1 else 'they change'} nothing afd does in this stage")
    return _build(cls, data, where)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    types_ = field_types(cls)
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


# ---------------------------------------------------------------------------------------------
# Options read from the source of a config class, without importing its module


@dataclasses.dataclass(frozen=True)
class Declared:
    """One option as its config class declares it."""

    name: str
    annotation: str  # as written: "int", "float | None", "dict"
    default: Any
    help: str

    @property
    def kind(self) -> str:
        """The type's name without ``None``: bool, int, float, str, dict or list."""
        parts = [p.strip() for p in self.annotation.removeprefix("Optional[").rstrip("]").split("|")]
        rest = [p for p in parts if p != "None"]
        return rest[0].split("[")[0] if len(rest) == 1 else "str"


class _NotStatic(Exception):
    """A declaration that is not a literal: the module has to be imported."""


def declared_options(module: str, cls: str) -> list[Declared]:
    """The options of config class ``cls`` of ``module``, in ``dataclasses.fields`` order, read
    from the source when every declaration is a literal (``name: type = opt(default, "help")``),
    else by importing the module."""
    try:
        return _declared_from_source(module, cls)
    except _NotStatic:
        real = getattr(importlib.import_module(module), cls)
        hints = typing.get_type_hints(real)
        out = []
        for f in dataclasses.fields(real):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            base, nullable = _base_type(hints[f.name])
            name = getattr(typing.get_origin(base) or base, "__name__", "str")
            out.append(Declared(f.name, name + (" | None" if nullable else ""), default, f.metadata.get("help", "")))
        return out


@lru_cache(maxsize=None)
def _module_tree(module: str) -> ast.Module:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise _NotStatic(module)
    return ast.parse(Path(spec.origin).read_text())


def _class_def(module: str, name: str) -> tuple[str, ast.ClassDef]:
    """The class statement of ``name`` as seen from ``module`` (following ``from X import name``)."""
    tree = _module_tree(module)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return module, node
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return _class_def(node.module, alias.name)
    raise _NotStatic(f"{module}.{name}")


def _mro(module: str, name: str) -> list[tuple[str, ast.ClassDef]]:
    """C3 linearisation of the class, as Python computes it."""
    home, node = _class_def(module, name)
    bases = []
    for b in node.bases:
        if not isinstance(b, ast.Name):
            raise _NotStatic(ast.unparse(b))
        if b.id != "object":
            bases.append(_mro(home, b.id))
    seqs = [list(s) for s in bases] + [[s[0] for s in bases]]
    out = [(home, node)]
    while any(seqs):
        for seq in seqs:
            if not seq:
                continue
            head = seq[0]
            if not any(head in s[1:] for s in seqs):
                break
        else:
            raise _NotStatic(f"no consistent MRO for {name}")
        out.append(head)
        seqs = [[c for c in s if c != head] for s in seqs]
    return out


def _is_dataclass(node: ast.ClassDef) -> bool:
    for d in node.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        if isinstance(target, ast.Name) and target.id == "dataclass" or \
                isinstance(target, ast.Attribute) and target.attr == "dataclass":
            return True
    return False


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):  # 10 ** 9
            return _literal(node.left) ** _literal(node.right)
        raise _NotStatic(ast.unparse(node)) from None


def _declared_from_source(module: str, cls: str) -> list[Declared]:
    fields: dict[str, Declared] = {}
    for _, node in reversed(_mro(module, cls)):
        if not _is_dataclass(node):
            continue
        for stmt in node.body:
            if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name):
                continue
            annotation = ast.unparse(stmt.annotation)
            if annotation.startswith(("ClassVar", "typing.ClassVar")):
                continue
            value, help_ = stmt.value, ""
            if value is None:
                default = None
            elif isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "opt":
                args = {**dict(zip(("default", "help"), value.args)), **{k.arg: k.value for k in value.keywords}}
                if set(args) - {"default", "help"}:
                    raise _NotStatic(stmt.target.id)
                default = _literal(args["default"]) if "default" in args else None
                help_ = _literal(args["help"]) if "help" in args else ""
            else:
                default = _literal(value)
            fields[stmt.target.id] = Declared(stmt.target.id, annotation, default, help_)
    return list(fields.values())
