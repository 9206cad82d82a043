"""``afd run CONFIG``: run stages in order from one YAML file, each cached in the run folder.

    out: runs/tiny           # the run folder
    seed: 0                  # any other top-level key is a default for every stage that has it
    stages:
      sft:                   # a section's name is its folder; its kind is the name, or `kind:`
        data: demos.jsonl
      sample_sft:
        kind: sample
        model: "@sft"        # "@NAME" is the artifact of stage NAME: a policy folder, a pool file
        data: prompts.jsonl

The stage functions do the work; this file only resolves options and calls them.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import Any, Callable

from afd import aliases
from afd.config import field_types, from_sources, read_yaml
from afd.errors import ConfigError, note


# kind -> (module, config class, stage function): read without importing anything heavy, so that
# `afd --help` builds every stage's options from their declarations (afd.config.declared_options)
STAGES = {
    "sft": ("afd.sft", "SFTConfig", "sft"),
    "sample": ("afd.sampling", "SampleConfig", "sample"),
    "demonstrate": ("afd.demonstrate", "DemonstrateConfig", "demonstrate"),
    "reward": ("afd.reward", "RewardConfig", "reward"),
    "bon": ("afd.bon", "BonConfig", "bon"),
    "eval": ("afd.eval", "EvalConfig", "evaluate"),
    "rl": ("afd.rl", "RLConfig", "rl"),
    "irl": ("afd.irl", "IRLConfig", "irl"),
    "irft": ("afd.irft", "IRFTConfig", "irft"),
    "gail": ("afd.irl", "IRLConfig", "gail"),
    "ava": ("afd.ava", "AVAConfig", "ava"),
    "gold": ("afd.gold", "GoldConfig", "gold"),
    "plant": ("afd.plant", "PlantConfig", "plant"),
    "split": ("afd.study", "SplitConfig", "split"),
}
# a stage's artifact, the file (or folder, "") that "@NAME" names; "model" where not listed
ARTIFACTS = {"sample": "pool.jsonl", "demonstrate": "demos.jsonl", "bon": "chosen.jsonl", "eval": "report.md",
             "gold": "", "plant": "demos.jsonl", "split": ""}


def stage(kind: str) -> tuple[type, Callable[[Any], dict]]:
    """(config class, stage function) of a stage kind; imports its module."""
    module, cls, fn = STAGES[kind]
    loaded = importlib.import_module(module)
    return getattr(loaded, cls), getattr(loaded, fn)


def registry() -> dict[str, tuple[type, Callable[[Any], dict], Callable[[Path], str]]]:
    """kind -> (config class, stage function, artifact of a stage folder); imports every stage."""
    return {kind: (*stage(kind), lambda p, name=ARTIFACTS.get(kind, "model"): str(p / name)) for kind in STAGES}


REF = re.compile(r"@([A-Za-z0-9_.\-]+)")
# "@NAME/PATH": a path from stage NAME's artifact, ".." read lexically (``@irl/../iter_0/rl/model``
# is the policy of irl's first iteration, whatever OUT/irl/model links to)
TAILED = re.compile(r"@([A-Za-z0-9_.\-]+)/.*")


def resolve_refs(options: dict[str, Any], artifacts: dict[str, str], where: str) -> dict[str, Any]:
    """Replace "@NAME" by the artifact of earlier stage NAME: a whole value must name an
    earlier stage; inside a longer string (``density-ratio:@sft,tiny-random``) or a mapping's
    values, known names are replaced."""

    def sub(key: str, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: sub(key, v) for k, v in value.items()}
        if not isinstance(value, str) or "@" not in value:
            return value
        tailed = TAILED.fullmatch(value)
        whole = REF.fullmatch(value) or tailed
        if whole and whole.group(1) not in artifacts:
            raise ConfigError(f"{where}: option '{key}' refers to stage '{whole.group(1)}', "
                              f"which is not an earlier stage")
        if tailed:  # a path from the artifact, "..": lexically (OUT/irl/model is a link)
            return os.path.normpath(artifacts[tailed.group(1)] + value[len(tailed.group(1)) + 1:])
        return REF.sub(lambda m: artifacts.get(m.group(1), m.group(0)), value)

    return {key: sub(key, value) for key, value in options.items()}


def plan(config: str | dict, overrides: dict[str, Any] | None = None, out: str | None = None,
         artifacts: dict[str, str] | None = None) -> list[tuple[str, str, Any]]:
    """[(stage name, kind, config)] in order, with references resolved. ``config`` is a YAML
    file or the same mapping in code. ``artifacts``: stages "@NAME" may refer to besides the
    config's own (``afd study``'s shared stages); the config's own are added to it."""
    raw = dict(config) if isinstance(config, dict) else read_yaml(config)
    config_path = "the pipeline config" if isinstance(config, dict) else config
    stages = raw.pop("stages", None)
    if not isinstance(stages, dict) or not stages:
        raise ConfigError(f"{config_path} needs a 'stages:' mapping of stage name to options")
    default_out = "runs/pipeline" if isinstance(config, dict) else "runs/" + Path(config).stem
    out = Path(out or str(raw.pop("out", default_out)))
    raw.pop("out", None)
    shared = {str(k).replace("-", "_"): v for k, v in {**raw, **(overrides or {})}.items()}
    reg = registry()
    artifacts = {} if artifacts is None else artifacts
    result = []
    everyone = set().union(*(field_types(cls) for cls, _, _ in reg.values()))
    unknown = sorted(k for k in set(shared) - everyone if not aliases.known(k))
    ignored = aliases.translate({k: v for k, v in shared.items() if k not in unknown}, everyone, config_path)[2]
    if ignored:
        note(f"ignoring {', '.join(repr(n) for n in ignored)} ({config_path}): no stage has "
             f"{'it' if len(ignored) == 1 else 'them'}, or {'it changes' if len(ignored) == 1 else 'they change'} "
             f"nothing afd does")
    if unknown:
        raise ConfigError(f"{config_path}: top-level option '{unknown[0]}' is not an option of any stage")
    for name, options in stages.items():
        if options is not None and not isinstance(options, dict):
            raise ConfigError(f"{config_path}, stage '{name}': expected a mapping of option: value, "
                              f"got {type(options).__name__}")
        options = dict(options or {})
        kind = options.pop("kind", name)
        where = f"{config_path}, stage '{name}'"
        if kind not in reg:
            raise ConfigError(f"{where}: unknown stage kind '{kind}' (known: {', '.join(reg)})")
        cls, _, artifact = reg[kind]
        # top-level options are defaults for the stages that have them (other libraries' names too)
        known = set(field_types(cls))
        common, soft, _ = aliases.translate(shared, known, config_path)
        common = {k: v for k, v in {**soft, **common}.items() if k in known}
        sources = [(common, config_path), (options, where), ({"out": str(out), "stage_name": name}, where)]
        cfg = from_sources(cls, [(resolve_refs(s, artifacts, where), w) for s, w in sources], where)
        artifacts[name] = artifact(out / name)
        result.append((name, kind, cfg))
    return result


def run(config_path: str | dict, overrides: dict[str, Any] | None = None, out: str | None = None,
        report: Callable[[str, dict], None] | None = None, artifacts: dict[str, str] | None = None) -> dict[str, dict]:
    reg = registry()
    results = {}
    for name, kind, cfg in plan(config_path, overrides, out, artifacts):
        metrics = reg[kind][1](cfg)
        results[name] = metrics
        if report:
            report(name, metrics)
    return results
