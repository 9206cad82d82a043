"""The run folder: every stage writes into ``OUT/STAGE/`` its resolved ``config.yaml``, its
artifacts, and ``metrics.json`` last. ``metrics.json`` marks the stage finished: a finished
stage with the same config is reused, an unfinished one resumes, and one made with a
different config is never silently mixed with the new one (``--force`` redoes it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from afd import dist
from afd.config import check_choice, opt, to_dict, unused
from afd.errors import AfdError

METRICS = "metrics.json"
CONFIG = "config.yaml"


@dataclass
class StageOptions:
    """Options every stage has (listed first in each stage's config)."""

    out: str = opt("runs/default", "run folder; the stage writes into OUT/STAGE")
    stage_name: str = opt("", "folder name of this stage inside OUT (default: the stage's kind)")
    force: bool = opt(False, "redo the stage even if it finished, discarding its old output")


# none changes what a stage makes
IGNORED_IN_FINGERPRINT = {"out", "stage_name", "force", "keep_checkpoints", "report_to"}


def _defaults(cls: type) -> dict[str, Any]:
    """The default of each option of a config class that has one."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def fingerprint(cfg: Any) -> dict[str, Any]:
    return {k: v for k, v in to_dict(cfg).items() if k not in IGNORED_IN_FINGERPRINT}


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one per process: no two share one
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(_finite(data), indent=2, sort_keys=False) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> str:
    """One JSON object a line, written atomically; returns the path as a str."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def write_demo_files(folder: Path, demos: list) -> tuple[str, str]:
    """Demonstrations as afd files in ``folder``: demos.jsonl (id, prompt, completion) and
    prompts.jsonl (id, prompt), one prompt per demonstration with its id, so a sample pool of
    the prompts pairs each sample with its demonstration by ``prompt_id``."""
    folder.mkdir(parents=True, exist_ok=True)
    return (write_jsonl(folder / "demos.jsonl", [{"id": d.id, "prompt": d.prompt, "completion": d.response,
                                                  **({} if d.ended else {"ended": False})} for d in demos]),
            write_jsonl(folder / "prompts.jsonl", [{"id": d.id, "prompt": d.prompt} for d in demos]))


def _finite(x: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


class StageDir:
    """One stage's folder in the run folder."""

    def __init__(self, cfg: Any, kind: str):
        self.cfg = cfg
        self.kind = kind
        self.path = Path(cfg.out) / (cfg.stage_name or kind)

    @property
    def done(self) -> bool:
        return (self.path / METRICS).is_file()

    def metrics(self) -> dict[str, Any]:
        return json.loads((self.path / METRICS).read_text())

    def begin(self) -> bool:
        """Prepare the folder. Returns False when a finished stage can be reused as it is.

        Under several processes the main one decides and writes; every rank gets its answer
        (or its error) once the folder is ready."""
        go = dist.on_main(self._begin)
        self.started = time.time()
        return go

    def check_folder(self) -> None:
        """The stage folder must be a folder that can be made: a file on its path (``--out``
        naming a file, say) is the user's error, reported before any work and touching nothing."""
        for p in (self.path, *self.path.parents):
            if p.exists():
                if not p.is_dir():
                    raise AfdError(f"option 'out' ({self.cfg.out}) must be a folder, but {p} is a file; "
                                   f"choose another --out")
                return

    def _begin(self) -> bool:
        self.check_folder()
        config_file = self.path / CONFIG
        mine = fingerprint(self.cfg)
        if self.path.exists() and self.cfg.force:
            shutil.rmtree(self.path)
        elif config_file.is_file():
            theirs = yaml.safe_load(config_file.read_text()) or {}
            # ignored options, and options this config's values make meaningless (an older
            # afd wrote them all)
            theirs = {k: v for k, v in theirs.items() if k not in IGNORED_IN_FINGERPRINT | unused(self.cfg)}
            # an option the saved config lacks (added by a newer afd) is unchanged at its default
            theirs = {**{k: v for k, v in _defaults(type(self.cfg)).items() if k in mine and k not in theirs}, **theirs}
            changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            # a folder holding nothing but its config (a run that stopped on its inputs)
            # has no work to protect: the corrected command simply starts it again
            has_work = any(p.name != CONFIG for p in self.path.iterdir())
            if changed and has_work:
                raise AfdError(
                    f"{self.path} was made with different options ({', '.join(changed)}); "
                    f"pass --force to redo it, or choose another --out")
            if self.done and not changed:
                return False
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AfdError(f"cannot make the stage folder {self.path}: {e.strerror or e}") from None
        atomic_write_text(config_file, yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
        return True

    def finish(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Write ``metrics.json`` (the main process, once every rank has got here); every rank
        returns the main process's metrics."""
        dist.barrier()

        def write() -> dict[str, Any]:
            out = {"stage": self.kind, **metrics}
            if hasattr(self, "started"):
                out.setdefault("seconds", round(time.time() - self.started, 2))
            from afd.cards import card_for_stage

            card_for_stage(self, out)  # the saved model's README.md, before metrics.json marks it done
            write_json(self.path / METRICS, out)
            if not getattr(self.cfg, "keep_checkpoints", True):  # a finished stage never resumes
                shutil.rmtree(self.path / "checkpoints", ignore_errors=True)
            return out

        return dist.on_main(write)


def link_final(folder: Path, target: str) -> None:
    """``folder/model`` -> the final policy of a multi-step stage (a relative symlink), so the
    stage's artifact is ``OUT/STAGE/model`` like every policy stage's. Main process only."""
    dist.on_main(_link, folder, target)


def _link(folder: Path, target: str) -> None:
    link = folder / "model"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(target, folder))


@dataclass
class ModelOptions:
    """How a stage places its models and renders prompts for them (sampling, training, scoring)."""

    template: str = opt("auto", "prompt rendering: auto (the chat template if the tokenizer has one), chat, raw, or "
                                "an input template holding {} (OpenRLHF's input_template, e.g. 'User: {}\\nAssistant: ')")
    device: str = opt("auto", "auto, cpu, cuda, cuda:N or mps (under accelerate launch: each process's own)")
    dtype: str = opt("auto", "auto (afd.models.pick_dtype: bf16 where the device computes it natively, fp32 where "
                             "log-probabilities are differenced), float32, bfloat16, float16")

    def validate_model_options(self) -> None:
        from afd.models import check_template

        check_template(self.template)


@dataclass
class PromptOptions:
    """What a stage does with a prompt too long for it (sampling and training)."""

    max_prompt_length: int | None = opt(None, "prompts longer than this many tokens follow long_prompts (none: half "
                                              "of max_length; 1024 in a stage without max_length)")
    long_prompts: str = opt("drop", "over-long prompts: drop (and count them) or error")

    def __post_init__(self) -> None:
        if self.max_prompt_length is None:  # a prompt length consistent with any max_length
            self.max_prompt_length = getattr(self, "max_length", 2048) // 2

    def validate_prompt_options(self) -> None:
        check_choice("long_prompts", self.long_prompts, ("drop", "error"))
        if self.max_prompt_length < 1:
            raise AfdError(f"option 'max_prompt_length' must be at least 1; got {self.max_prompt_length}")


@dataclass
class ScoringOptions(ModelOptions):
    """The options of a stage that scores pools with reward models (bon, eval)."""

    batch_size: int = opt(16, "responses scored together")


@dataclass
class DataOptions:
    """Where a stage's examples come from (see afd.data for formats and rules)."""

    data: str = opt("", "data file (.jsonl/.json/.csv/.parquet), dataset folder or hub dataset id")
    data_split: str = opt("train", "split of a hub dataset or dataset folder")
    data_format: str = opt("auto", "auto, prompt-completion, messages, preference, hh, alpaca, sharegpt, "
                                   "sharegpt-preference or prompt")
    columns: dict = opt({}, "column mapping, e.g. prompt=question,response=answer")
    on_invalid: str = opt("error", "malformed rows: error (stop, naming the row) or skip (count them)")
    max_examples: int | None = opt(None, "use only the first N valid examples")
    system_prompt: str | None = opt(None, "system message prepended to prompts that have none")
    roles: dict = opt({}, "role names of the file's conversations as afd's, e.g. bot=assistant,customer=user "
                          "(human, gpt and ShareGPT's others are known)")
    message_keys: dict = opt({}, "keys of a conversation's messages, e.g. role=from,content=value (Axolotl's "
                                 "message_property_mappings; role/content and from/value are known)")

    def data_config(self):
        if not self.data:
            raise AfdError("option 'data' is required: a data file or hub dataset id")
        return self.secondary_data_config("data", self.data, self.data_split, self.data_format, self.columns,
                                          self.max_examples)

    def secondary_data_config(self, option: str, path: str, split: str, format: str, columns: dict,
                              limit: int | None):
        """A DataConfig for another data option of the stage (``eval_pairs``), read with the
        stage's own rules: on_invalid, system_prompt, roles and message_keys."""
        from afd.data import DataConfig

        return DataConfig(path=path, split=split, format=format, columns=dict(columns), on_invalid=self.on_invalid,
                          limit=limit, system_prompt=self.system_prompt, roles=dict(self.roles),
                          message_keys=dict(self.message_keys), option=option)


@dataclass
class EvalPairsOptions:
    """Human preference pairs a reward model is scored on: a second data option of a stage, with
    the same options as ``data``; loaded and checked before any training."""

    eval_pairs: str = opt("", "preference pairs (any pair format: file, dataset folder or hub id) to report pair "
                              "accuracy on; never trained on")
    eval_pairs_split: str = opt("train", "split of eval_pairs when it is a hub dataset or dataset folder")
    eval_pairs_format: str = opt("auto", "format of eval_pairs: auto, preference, hh or sharegpt-preference")
    eval_pairs_columns: dict = opt({}, "column mapping of eval_pairs, e.g. chosen=good,rejected=bad")
    eval_pairs_max: int | None = opt(None, "use only the first N valid eval pairs")

    def eval_pairs_config(self):
        return self.secondary_data_config("eval_pairs", self.eval_pairs, self.eval_pairs_split,
                                          self.eval_pairs_format, self.eval_pairs_columns, self.eval_pairs_max)

    def eval_pairs_options(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(EvalPairsOptions)}
