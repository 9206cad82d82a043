"""The run folder: every stage writes into ``OUT/STAGE/`` its resolved ``config.yaml``, its
inputs' fingerprints (``inputs.json``), its artifacts, and ``metrics.json`` last.
``metrics.json`` marks the stage finished: a finished stage with the same config and inputs is
reused, an unfinished one resumes, and one made with a different config, or from input files
whose content has changed since, is never silently mixed with the new one (``--force`` redoes
it). ``--force`` moves the old stage aside (``OUT/.STAGE.replaced``) and removes it only once
the new one has finished; a new run that fails puts it back.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from afd import dist
from afd.config import check_choice, opt, to_dict, unused
from afd.errors import AfdError, note

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
    """``path`` holds its old text or the new one, never part of it (a kill or a full disk
    mid-write leaves the old)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one per process: no two share one
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


# ---------------------------------------------------------------------------------------------
# Inputs: what a stage reads besides its options

# options that name files or folders a stage reads (data files and dataset folders, pools, model
# and reward-model folders, scorers): the content of those that are local is part of what the
# stage is, so a stage is never reused, nor resumed, on inputs that changed since it was made
INPUT_OPTIONS = ("data", "eval_pairs", "demos", "pool", "pools", "init_pool", "sft_pool", "model", "reward_model",
                 "ref_model", "reward", "scorer", "golden", "proxies", "kl_reference")
INPUTS = "inputs.json"
_hashes: dict[tuple, str] = {}  # (path, size, mtime): SHA-256, so each file is read once a process


def local_inputs(value: Any) -> list[str]:
    """The local files and folders an input option's value names: the value itself, or each part
    of a scorer's name (``density-ratio:P,R``, ``z:POOL:NAME``, ``rm:FOLDER``; ``python:MODULE:FN``
    names MODULE.py); the values of a mapping (``pools``, ``proxies``). Hub ids and built-in
    names are names, not local inputs."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in local_inputs(v)]
    if not isinstance(value, str) or not value:
        return []
    if os.path.exists(value):
        return [value]
    found = [part for part in re.split(r"[:,]", value) if part and os.path.exists(part)]
    if value.startswith("python:"):
        module = value.split(":")[1].replace(".", os.sep) + ".py"
        found += [module] if os.path.isfile(module) else []
    return found


def _sha256(path: Path, size: int, mtime: int) -> str:
    key = (str(path.resolve()), size, mtime)
    if key not in _hashes:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


def file_sha256(path: str | Path) -> str:
    """A file's SHA-256, read in blocks and remembered while its size and mtime stay the same."""
    st = Path(path).stat()
    return _sha256(Path(path), st.st_size, st.st_mtime_ns)


def _signature(path: str) -> dict:
    """A file: its size, modification time and SHA-256; a folder: the size and modification
    time of each file in it (a model folder's weights are not read), hidden files left out."""
    p = Path(path)
    if p.is_dir():
        files = {}
        for root, dirs, names in os.walk(p):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(n for n in names if not n.startswith(".")):
                st = (Path(root) / name).stat()
                files[str((Path(root) / name).relative_to(p))] = [st.st_size, st.st_mtime_ns]
        return {"files": files}
    st = p.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def input_signatures(cfg: Any) -> dict[str, dict[str, dict]]:
    """{option: {path: signature}} of the stage's local inputs (files without their hash yet)."""
    options = to_dict(cfg)
    out = {}
    for name in INPUT_OPTIONS:
        paths = local_inputs(options.get(name))
        if paths:
            out[name] = {path: _signature(path) for path in paths}
    return out


def _hashed(signatures: dict, recorded: dict) -> dict:
    """``signatures`` with each file's SHA-256: the recorded one where its size and time are
    the recorded ones, else read from the file."""
    out = {}
    for option, paths in signatures.items():
        out[option] = {}
        for path, sig in paths.items():
            if "size" in sig:
                old = recorded.get(option, {}).get(path, {})
                same = old.get("size") == sig["size"] and old.get("mtime_ns") == sig["mtime_ns"] and "sha256" in old
                sig = {**sig, "sha256": old["sha256"] if same else _sha256(Path(path), sig["size"], sig["mtime_ns"])}
            out[option][path] = sig
    return out


def changed_input(recorded: dict, now: dict) -> str | None:
    """How the inputs ``now`` differ from those ``recorded`` when the stage was made (None: they
    do not), as words: "data file demos.jsonl has changed". An input gone since is not a change
    (the stage needs it only if it runs, and then says so)."""
    for option, paths in now.items():
        if option not in recorded:
            continue
        for path, sig in paths.items():
            old = recorded[option].get(path)
            if old is None:
                return f"{option} {path} is new"
            if "files" in sig:
                if "files" not in old:
                    return f"{option} {path} is now a folder"
                diff = sorted(k for k in set(sig["files"]) | set(old["files"])
                              if sig["files"].get(k) != old["files"].get(k))
                if diff:
                    return f"{option} {path} has changed ({diff[0]}{' and more' if len(diff) > 1 else ''})"
            elif "files" in old or old.get("sha256") != sig["sha256"]:
                return f"{option} {path} has changed"
    return None


# ---------------------------------------------------------------------------------------------
# --force: the old stage is kept until the new one finishes

_replaced: list[tuple[Path, Path]] = []  # (stage folder, where its old content waits), this process's


def restore_on_failure(fn):
    """A stage function whose forced run, should it fail, puts back the stage it was replacing
    (``--force`` moved it aside in :meth:`StageDir.begin`; :meth:`StageDir.finish` removes it).
    A kill or an interrupt leaves both, and the next run decides (see ``_begin``)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        mark = len(_replaced)
        try:
            return fn(*args, **kwargs)
        except Exception:
            while len(_replaced) > mark:
                _put_back(*_replaced.pop())
            raise

    return run


def _put_back(path: Path, aside: Path) -> None:
    if aside.exists():
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            os.replace(aside, path)


def _aside(path: Path) -> Path:
    return path.with_name(f".{path.name}.replaced")


def _read_only_part(path: Path) -> Path | None:
    """A folder in ``path`` whose entries cannot be removed (--force could not replace it)."""
    for root, dirs, _ in os.walk(path):
        if not os.access(root, os.W_OK | os.X_OK):
            return Path(root)
    return None


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

    def _has_work(self) -> bool:
        """Whether the folder holds anything but its config and inputs (a run that stopped on its
        inputs has no work to protect)."""
        return self.path.is_dir() and any(p.name not in (CONFIG, INPUTS) for p in self.path.iterdir())

    def _begin(self) -> bool:
        self.check_folder()
        config_file, aside = self.path / CONFIG, _aside(self.path)
        if aside.exists() and not self._has_work():  # a forced run stopped before any work: undo it
            _put_back(self.path, aside)
        mine = fingerprint(self.cfg)
        inputs = input_signatures(self.cfg)
        recorded = {}
        if self.path.exists() and self.cfg.force:
            self._move_aside(aside)
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
            has_work = self._has_work()
            if changed and has_work:
                raise AfdError(
                    f"{self.path} was made with different options ({', '.join(changed)}); "
                    f"pass --force to redo it, or choose another --out")
            if (self.path / INPUTS).is_file() and not changed:
                recorded = json.loads((self.path / INPUTS).read_text())
                inputs = _hashed(inputs, recorded)
                why = changed_input(recorded, inputs)
                if why and has_work:
                    raise AfdError(f"{self.path} was made from other inputs: {why} since; pass --force to redo it, "
                                   f"or choose another --out")
            if self.done and not changed:
                return False
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AfdError(f"cannot make the stage folder {self.path}: {e.strerror or e}") from None
        atomic_write_text(config_file, yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
        write_json(self.path / INPUTS, _hashed(inputs, recorded))
        return True

    def _move_aside(self, aside: Path) -> None:
        """--force: the old stage waits in ``aside`` until the new one finishes (or goes back if
        it fails). Where an earlier forced run left one there, that one is the stage before
        --force and stays; what this folder holds then is that run's unfinished work, redone."""
        read_only = _read_only_part(self.path)
        if read_only is not None:
            raise AfdError(f"cannot redo {self.path} (--force): {read_only} is read-only; make it writable "
                           f"(chmod -R u+w {self.path}) or choose another --out")
        try:
            if aside.exists() and self.done:  # a finished forced run whose old stage outlived it
                shutil.rmtree(aside)
            if aside.exists():
                shutil.rmtree(self.path)
            else:
                os.replace(self.path, aside)
        except OSError as e:
            raise AfdError(f"cannot redo {self.path} (--force): {e.strerror or e} ({e.filename or self.path}); "
                           f"make it writable or choose another --out") from None
        _replaced.append((self.path, aside))

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
            aside = _aside(self.path)
            if (self.path, aside) in _replaced:  # --force: the stage it replaced goes now
                _replaced.remove((self.path, aside))
            if aside.exists():
                shutil.rmtree(aside, ignore_errors=True)
                if aside.exists():
                    note(f"could not remove {aside}, the stage that --force replaced; remove it by hand")
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
        from afd.models import check_device, check_template

        check_template(self.template)
        check_device(self.device)


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
