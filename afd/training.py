"""Training machinery shared by afd's Trainer-based stages (SFT, reward models, ...).

``transformers.Trainer`` does the training (checkpoints and resume, gradient accumulation,
mixed precision, ``accelerate launch`` for DDP / FSDP / DeepSpeed); this module holds the
options every such stage has and the few pieces around the Trainer that afd adds.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
import shutil
import time
from contextlib import contextmanager
from functools import lru_cache
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

from afd import models
from afd.config import check_choice, opt, options_of
from afd.errors import AfdError, note
from afd.runs import ModelOptions, PromptOptions


REPORT_TO = ("none", "tensorboard", "trackio", "wandb")  # each but none is an optional extra of the same name


@dataclass
class TrainOptions(ModelOptions, PromptOptions):
    eval_fraction: float = opt(0.05, "share of examples held out for evaluation")
    seed: int = opt(0, "seed for the train/eval split, initialisation of LoRA and data order")
    epochs: float = opt(1.0, "passes over the training demonstrations")
    max_steps: int = opt(-1, "stop after this many optimiser steps (-1: use epochs)")
    lr: float = opt(2e-5, "peak learning rate (LoRA usually wants ~1e-4 to 2e-4)")
    lr_scheduler: str = opt("cosine", "learning-rate schedule (transformers names: linear, cosine, constant, ...)")
    warmup_ratio: float = opt(0.03, "share of steps spent warming the learning rate up")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    batch_size: int = opt(8, "sequences per device per step")
    grad_accum: int = opt(1, "gradient accumulation steps")
    max_length: int = opt(1024, "longest prompt + response in tokens; longer responses are cut (and counted)")
    lora_r: int = opt(0, "LoRA rank (0: full fine-tuning)")
    lora_alpha: int = opt(32, "LoRA alpha")
    lora_dropout: float = opt(0.05, "LoRA dropout")
    lora_target_modules: str = opt("all-linear", "LoRA target modules (PEFT syntax, comma-separated)")
    gradient_checkpointing: bool = opt(False, "trade compute for memory")
    save_steps: int = opt(100, "checkpoint every N steps (a killed run resumes from the last one)")
    keep_checkpoints: bool = opt(False, "keep OUT/STAGE/checkpoints (optimiser state included) once the stage has "
                                        "finished; by default they are removed then, as they only serve resuming")
    logging_steps: int = opt(5, "log the training loss every N steps")
    eval_steps: int = opt(0, "evaluate every N steps (0: at the start and the end only)")
    report_to: list = opt(["none"], "send the training logs to tensorboard (written to <stage>/logs), trackio, "
                                    "wandb, several of them (tensorboard,wandb) or none")
    bf16: bool | None = opt(None, "bf16 mixed precision (autocast; weights and optimiser state in fp32); default: on "
                                  "where the device computes bf16 natively (CUDA, CPUs with AVX512-BF16 or AMX), off "
                                  "for losses that difference log-probabilities (irft, ava); --no-bf16: fp32")

    def train_options(self) -> dict:
        """These options as a mapping, to pass on to the stages a multi-step stage runs."""
        return options_of(self, TrainOptions)

    def validate_training(self) -> None:
        self.validate_model_options()
        self.validate_prompt_options()
        self.report_to = [self.report_to] if isinstance(self.report_to, str) else list(self.report_to)
        for name in self.report_to:
            check_choice("report_to", name, REPORT_TO)
        if "none" in self.report_to and len(self.report_to) > 1:
            raise AfdError(f"option 'report_to' is {','.join(self.report_to)}; 'none' cannot go with another")
        missing = [name for name in self.report_to if name != "none" and importlib.util.find_spec(name) is None]
        if missing:
            raise AfdError(f"option 'report_to' names {missing[0]}, which is not installed; install it with "
                           f"pip install 'afd[{missing[0]}]'")
        if not 0 <= self.eval_fraction < 1:
            raise AfdError(f"option 'eval_fraction' must be in [0, 1); got {self.eval_fraction}")
        for name in ("batch_size", "grad_accum", "max_length"):
            if getattr(self, name) < 1:
                raise AfdError(f"option '{name}' must be at least 1; got {getattr(self, name)}")
        if self.lora_r < 0:
            raise AfdError(f"option 'lora_r' must be 0 (full fine-tuning) or a positive rank; got {self.lora_r}")
        from transformers import SchedulerType

        check_choice("lr_scheduler", self.lr_scheduler, tuple(s.value for s in SchedulerType))
        if self.max_steps == 0 or self.max_steps < -1:
            raise AfdError(f"option 'max_steps' must be a positive number of steps, or -1 to train for 'epochs'; "
                           f"got {self.max_steps}")
        if self.max_steps == -1 and not self.epochs > 0:
            raise AfdError(f"option 'epochs' must be above 0 (with max_steps -1 it sets how long to train, and "
                           f"{self.epochs} would train nothing)")
        if not self.lr > 0:
            raise AfdError(f"option 'lr' must be positive; got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise AfdError(f"option 'warmup_ratio' must be in [0, 1); got {self.warmup_ratio}")
        if self.weight_decay < 0:
            raise AfdError(f"option 'weight_decay' must be at least 0; got {self.weight_decay}")
        for name in ("save_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise AfdError(f"option '{name}' must be at least 1; got {getattr(self, name)}")
        if self.eval_steps < 0:
            raise AfdError(f"option 'eval_steps' must be 0 (at the start and the end only) or positive; "
                           f"got {self.eval_steps}")
        if self.max_prompt_length >= self.max_length:
            raise AfdError("option 'max_prompt_length' must be smaller than 'max_length'")


@lru_cache(maxsize=None)
def _postfix_progress_class():
    from transformers.trainer_callback import ProgressCallback

    class PostfixProgress(ProgressCallback):
        """transformers' progress bar, with the latest loss, learning rate and tokens/s as its
        postfix instead of a raw dict printed below it at every log step."""

        def on_train_begin(self, args, state, control, **kw):
            # tqdm itself, not transformers' wrapper: the afd command hides libraries' loading
            # bars (transformers' disable_progress_bar), and this one is afd's own
            from tqdm.auto import tqdm

            if state.is_world_process_zero:
                self.training_bar = tqdm(total=state.max_steps, dynamic_ncols=True)
            self.current_step = 0
            self.start, self.start_tokens = time.time(), state.num_input_tokens_seen

        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero or self.training_bar is None or not logs:
                return
            shown = {}
            for key, name in (("loss", "loss"), ("eval_loss", "eval_loss"), ("reward", "reward"),
                              ("learning_rate", "lr")):
                if isinstance(logs.get(key), (int, float)):
                    shown[name] = f"{logs[key]:.4g}"
            seconds = time.time() - self.start
            tokens = state.num_input_tokens_seen - self.start_tokens
            if tokens > 0 and seconds > 0:
                shown["tokens/s"] = f"{tokens / seconds:.0f}"
            if shown:
                self.training_bar.set_postfix(shown, refresh=True)

    return PostfixProgress


def use_postfix_progress(trainer) -> None:
    """Swap the Trainer's progress printer (a dict per log step) for a postfix on the bar."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    cls = _postfix_progress_class()
    if any(isinstance(c, cls) for c in trainer.callback_handler.callbacks):
        return
    for old in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(old)
    trainer.add_callback(cls())  # even where quiet library logging set args.disable_tqdm


class Collator:
    """The one collator of afd's Trainer stages: right-padded rows. A row is a dict with
    ``input_ids`` and optionally ``labels`` (a list; padded with -100), ``start`` (the response's
    first position; gives a bool ``response`` mask) and any other numbers (stacked into a float
    tensor under their own key). A pair ``{"chosen": row, "rejected": row}`` gives the chosen
    rows, then the rejected rows (the pairwise losses chunk the batch in two).

    ``logits_for_labels``: the batch also says ``logits_to_keep``, so that the model projects onto
    the vocabulary only the positions from the earliest labelled token's on (a transformers
    causal LM's ``logits_to_keep``), and ``labels`` are cut to match; prompt positions before it,
    which carry no label, cost no LM-head work and no vocabulary-sized logits. The loss and its
    count of labelled tokens are unchanged (tests/test_sft.py checks it against the whole batch)."""

    def __init__(self, pad_id: int, logits_for_labels: bool = False):
        self.pad_id, self.logits_for_labels = pad_id, logits_for_labels

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        if "chosen" in batch[0]:
            batch = [b["chosen"] for b in batch] + [b["rejected"] for b in batch]
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        out = {"input_ids": ids, "attention_mask": torch.zeros_like(ids)}
        if "labels" in batch[0]:
            out["labels"] = torch.full_like(ids, -100)
        if "start" in batch[0]:
            out["response"] = torch.zeros_like(ids, dtype=torch.bool)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            out["attention_mask"][i, :n] = 1
            if "labels" in out:
                out["labels"][i, :n] = torch.tensor(b["labels"])
            if "response" in out:
                out["response"][i, b["start"]:n] = True
        for key, value in batch[0].items():
            if key != "start" and isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = torch.tensor([float(b[key]) for b in batch], dtype=torch.float32)
        if self.logits_for_labels and "labels" in out:
            labelled = (out["labels"] != -100).any(0).nonzero()
            first = int(labelled[0]) if len(labelled) else width - 1  # the earliest labelled position
            start = max(first - 1, 0)  # the position that predicts it
            out["labels"], out["logits_to_keep"] = out["labels"][:, start:], width - start
        return out


@torch.no_grad()
def heldout_loss(model, rows: list[dict], pad: int, batch_size: int) -> float:
    """Token-mean NLL of ``rows`` (``input_ids`` and ``labels``, -100 where not scored) in fp32,
    whatever precision the model trains in: the model class's own forward, not the autocast
    wrapper accelerate puts on a mixed-precision model, so that runs with and without bf16 are
    measured alike."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    core = getattr(core, "module", core)
    device, was_training = next(core.parameters()).device, core.training
    core.eval()
    collate, total, count = Collator(pad), 0.0, 0
    for s in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in collate(rows[s:s + batch_size]).items()}
        labels = batch.pop("labels")[:, 1:]
        logits = type(core).forward(core, **batch).logits[:, :-1].float()
        mask = labels != -100
        nll = torch.nn.functional.cross_entropy(logits[mask], labels[mask], reduction="sum")
        total, count = total + float(nll), count + int(mask.sum())
    core.train(was_training)
    return total / max(count, 1)


def model_width(model) -> int | None:
    """A model's hidden size (its text config's, for a multimodal one), or None when it has none."""
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(config, "hidden_size", None)


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@lru_cache(maxsize=None)
def loss_trainer_class():
    """``transformers.Trainer`` whose evaluation is its loss alone: the base of the stages whose
    loss is the method's own (reward models, AVA, IRFT), each overriding ``compute_loss``."""
    from transformers import Trainer

    class LossTrainer(Trainer):
        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            with torch.no_grad():
                loss = self.compute_loss(model, dict(inputs))
            return loss.detach(), None, None

    return LossTrainer


def load_for_training(auto_class, name: str, cfg, **kw):
    """The model a training stage starts from (``auto_class`` is AutoModelForCausalLM or
    AutoModelForSequenceClassification), in the dtype of ``cfg.dtype`` (auto: fp32 weights;
    Trainer adds mixed precision where the device has it), or one sentence if it cannot load.
    Every random initialisation that follows (a new classification head, AVA's heads, LoRA
    adapters) draws from ``cfg.seed``: two runs with the same options train the same model."""
    from transformers import set_seed

    set_seed(cfg.seed)
    dtype = torch.float32 if cfg.dtype == "auto" else models.pick_dtype(cfg.dtype, models.pick_device(cfg.device))
    try:
        return auto_class.from_pretrained(models.resolve(name), dtype=dtype, **kw)
    except (OSError, ValueError) as e:
        raise models.load_error(name, e) from None


def make_trainer(stage, cfg, model, tokenizer, train_rows: list, eval_rows: list | None = None, trainer_class=None,
                 differenced: bool = False, logits_for_labels: bool = False, **args):
    """A Trainer for a stage: checkpoints in ``STAGE/checkpoints``, afd's collator and
    TrainingArguments from the stage's options (``args`` adds to them; ``differenced``: the loss
    differences log-probabilities, see :func:`mixed_precision`; ``logits_for_labels``: see
    :class:`Collator`)."""
    if trainer_class is None:
        from transformers import Trainer as trainer_class
    return trainer_class(model=model, args=training_arguments(cfg, stage.path / "checkpoints", bool(eval_rows),
                                                              differenced, model_width(model), **args),
                         train_dataset=train_rows, eval_dataset=eval_rows or None,
                         data_collator=Collator(pad_id(tokenizer), logits_for_labels), processing_class=tokenizer)


def finish_training(stage, trainer, tokenizer, title: str, ylabel: str = "loss", save=None,
                    history: list[dict] | None = None) -> None:
    """The end of every Trainer stage: the trained model saved to ``STAGE/model`` (by
    ``save(model, tokenizer, folder)``, default :func:`save_model`; gathered first when sharded),
    ``log_history.json`` and the loss plot ``loss.png``."""
    from afd import dist

    dist.save_trained(trainer, tokenizer, stage.path / "model", save or save_model)
    history = trainer.state.log_history if history is None else history
    if dist.is_main():
        (stage.path / "log_history.json").write_text(json.dumps(history, indent=1))
        loss_plot(history, stage.path / "loss.png", ylabel, title)


def lora_config(cfg: TrainOptions, task_type: str = "CAUSAL_LM"):
    """PEFT's LoraConfig from afd's lora_* options."""
    from peft import LoraConfig

    targets = cfg.lora_target_modules
    targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",")]
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type=task_type)


def apply_lora(model, cfg: TrainOptions, task_type: str = "CAUSAL_LM", config=None):
    """``peft.get_peft_model`` (with ``config``, else a LoraConfig from afd's options)."""
    from peft import get_peft_model

    with checkpointing_alias_quiet():
        return get_peft_model(model, config or lora_config(cfg, task_type))


@contextmanager
def checkpointing_alias_quiet():
    """PEFT and TRL read ``model.is_gradient_checkpointing``, deprecated in transformers 5.24
    (``is_activation_checkpointing``); nothing afd can change on its side, so that one
    FutureWarning is silenced around the calls into them."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _supports(cls, name: str) -> bool:
    return name in inspect.signature(cls.__init__).parameters


MIXED_PRECISION_MIN_WIDTH = 256  # narrower models train faster in fp32 (autocast's casts outweigh the matmuls)


def mixed_precision(cfg, device: torch.device, differenced: bool = False, width: int | None = None) -> bool:
    """Whether a training stage runs in bf16 mixed precision: ``bf16`` when given; else, with
    ``dtype`` auto, where the device computes bf16 natively (``models.pick_dtype(..., "train")``),
    the loss does not difference log-probabilities (``differenced``: IRFT's implicit reward and
    AVA's TD terms, whose bf16 error, ~0.04 nats a token, is the size of what they learn), and the
    model, on a CPU, is wide enough to gain (``width``, its hidden size, at least 256: on a 2-core
    Xeon with AMX a 64-wide model trained 1.8x slower under autocast, SmolLM2's 576 1.4-1.7x
    faster, bench/results/train-cpu.md; on CUDA any width, as TRL). An explicit ``dtype`` is the
    weights' own dtype, without autocast."""
    if getattr(cfg, "bf16", None) is not None:
        return bool(cfg.bf16)
    wide = width is None or width >= MIXED_PRECISION_MIN_WIDTH or device.type != "cpu"
    return cfg.dtype == "auto" and not differenced and wide and \
        models.pick_dtype("auto", device, "train") == torch.bfloat16


def training_arguments(cfg: TrainOptions, output_dir: Path, has_eval: bool, differenced: bool = False,
                       width: int | None = None, **extra):
    """TrainingArguments from afd's options (names differ between transformers 4.x and 5); bf16
    mixed precision by :func:`mixed_precision` (``width``: the model's hidden size)."""
    from transformers import TrainingArguments

    device = models.pick_device(cfg.device)
    bf16 = mixed_precision(cfg, device, differenced, width)
    fp16 = device.type == "cuda" and cfg.dtype in ("float16", "fp16")
    # transformers 5 takes the warm-up ratio as a fractional warmup_steps
    warmup = {"warmup_ratio" if _supports(TrainingArguments, "warmup_ratio") else "warmup_steps": cfg.warmup_ratio}
    if cfg.gradient_checkpointing:
        name = "activation_checkpointing" if _supports(TrainingArguments, "activation_checkpointing") \
            else "gradient_checkpointing"
        extra[name] = True
    report_to = getattr(cfg, "report_to", ["none"])
    report_to = [report_to] if isinstance(report_to, str) else list(report_to)
    if report_to != ["none"]:
        logs = str(Path(output_dir).parent / "logs")  # output_dir is <stage>/checkpoints
        if _supports(TrainingArguments, "logging_dir"):
            extra["logging_dir"] = logs
        else:  # transformers 5.24: TensorBoardCallback reads the folder from the environment
            import os

            os.environ["TENSORBOARD_LOGGING_DIR"] = logs
    return TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        learning_rate=cfg.lr, lr_scheduler_type=cfg.lr_scheduler, weight_decay=cfg.weight_decay,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, bf16=bf16, fp16=fp16,
        use_cpu=device.type == "cpu", seed=cfg.seed, data_seed=cfg.seed,
        logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=2, eval_strategy="steps" if has_eval and cfg.eval_steps > 0 else "no",
        eval_steps=cfg.eval_steps or None, report_to=report_to, remove_unused_columns=False,
        dataloader_num_workers=0, include_num_input_tokens_seen="non_padding", **warmup, **extra)


CHECKPOINT = re.compile(r"checkpoint-(\d+)")
WEIGHTS = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin",
           "model.safetensors.index.json", "pytorch_model.bin.index.json")


def checkpoint_problem(folder: Path) -> str | None:
    """Why a Trainer checkpoint cannot be resumed from, or None when it is whole: its
    ``trainer_state.json`` (which Trainer writes after the weights, optimiser, scheduler and RNG
    states) is there and reads, it holds model weights, and each safetensors file and each
    ``torch.save`` archive in it is complete (a kill or a full disk mid-write leaves one cut
    short). Sharded checkpoints (FSDP, DeepSpeed) keep their own layout; their
    ``trainer_state.json`` is what is checked."""
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "it has no trainer_state.json"
    try:
        json.loads(state.read_text())
    except (ValueError, UnicodeDecodeError):
        return "its trainer_state.json is cut short"
    names = {p.name for p in folder.iterdir()}
    sharded = any(n.startswith(("global_step", "pytorch_model_fsdp", "optimizer_0")) for n in names)
    if not sharded:
        if not names & set(WEIGHTS):
            return "it holds no model weights"
        missing = [n for n in ("optimizer.pt", "scheduler.pt") if n not in names]
        if missing:
            return f"it has no {missing[0]}"
    for p in sorted(folder.iterdir()):
        problem = _safetensors_problem(p) if p.suffix == ".safetensors" else \
            _archive_problem(p) if p.suffix in (".pt", ".pth", ".bin") else None
        if problem:
            return f"its {p.name} {problem}"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file is an 8-byte header length, the JSON header, then the tensors' bytes,
    whose last offset the header gives: a file cut short is shorter than that."""
    try:
        with path.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return "is unreadable"
    return None if path.stat().st_size == 8 + n + end else "is cut short"


def _archive_problem(path: Path) -> str | None:
    """``torch.save`` writes a zip archive whose directory comes last: a file cut short has none."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            z.infolist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return "is cut short"
    return None


def resume_point(output_dir: Path) -> Path | None:
    """The newest whole checkpoint in ``output_dir`` (None: start afresh). A checkpoint torn by
    a kill or a full disk while it was written is never resumed from: each is named in a note
    and removed, so that it neither blocks the resume nor mixes with the checkpoint that the
    resumed run writes under its name. Trainer keeps the last two checkpoints and removes the
    older one only once the newer is whole, so a kill at any moment leaves a whole one."""
    from afd import dist

    def pick() -> Path | None:
        found = sorted((p for p in Path(output_dir).glob("checkpoint-*")
                        if p.is_dir() and CHECKPOINT.fullmatch(p.name)),
                       key=lambda p: int(CHECKPOINT.fullmatch(p.name).group(1)), reverse=True)
        chosen, torn = None, []
        for p in found:
            problem = checkpoint_problem(p)
            if problem is None and chosen is None:
                chosen = p
            elif problem is not None:
                torn.append((p, problem))
        for p, problem in torn:
            shutil.rmtree(p, ignore_errors=True)
            where = f"resuming from {chosen.name}" if chosen is not None else "starting afresh"
            note(f"{p} is incomplete ({problem}: a kill or a full disk while it was written); {where}, "
                 f"and it is removed")
        return chosen

    return dist.on_main(pick)


class RunTotals(TrainerCallback):
    """What a stage's metrics report of its whole run, however often it was killed and resumed:
    the mean training loss over every step, the wall time and tokens of every ``train()`` call,
    the checkpoints it resumed from, and ``before`` (a figure taken before the first step, as
    SFT's eval_loss_before). They are kept in each checkpoint's ``trainer_state.json`` (under
    ``stateful_callbacks["afd"]``), so a resumed run carries on from the figures of the very
    checkpoint it resumed from."""

    KEY = "afd"

    def __init__(self, trainer, checkpoint: Path | None):
        self.trainer, self.checkpoint = trainer, checkpoint
        self.extra: dict = {}

    def on_train_begin(self, args, state, control, **kw):
        self.prior = dict(state.stateful_callbacks.get(self.KEY) or {}) if self.checkpoint else {}
        self.extra = {**{k: v for k, v in self.prior.items() if k == "before"}, **self.extra}
        self.resumed_from = self.prior.get("resumed_from", []) + \
            ([f"{self.checkpoint.parent.name}/{self.checkpoint.name}"] if self.checkpoint else [])
        self.start, self.start_step = time.time(), state.global_step

    def _loss_sum(self) -> float | None:
        """The sum of the per-step losses of this ``train()`` call so far (Trainer's own running
        sum and the part not yet logged), or None where Trainer keeps neither."""
        total, pending = getattr(self.trainer, "_total_loss_scalar", None), getattr(self.trainer, "_tr_loss", None)
        if total is None or pending is None:
            return None
        return total + float(pending)

    def totals(self, state, loss_sum: float | None) -> dict:
        prior_loss = self.prior.get("loss_sum", 0.0 if not self.checkpoint else None)
        return {"loss_sum": None if loss_sum is None or prior_loss is None else prior_loss + loss_sum,
                "seconds": self.prior.get("seconds", 0.0) + time.time() - self.start,
                "resumed_from": self.resumed_from, **self.extra}

    def on_step_end(self, args, state, control, **kw):
        if control.should_save:  # Trainer writes this into the checkpoint it is about to save
            state.stateful_callbacks[self.KEY] = self.totals(state, self._loss_sum())

    def summary(self, result, state) -> dict:
        """The whole run's figures, for metrics.json (the loss a mean over ranks)."""
        from afd import dist

        steps = state.global_step - self.start_step
        whole = self.totals(state, result.training_loss * steps)
        loss = whole["loss_sum"] / state.global_step if whole["loss_sum"] is not None and state.global_step \
            else result.training_loss  # a checkpoint written before afd kept its sums: this call's steps
        tokens = state.num_input_tokens_seen or None
        return {"train_loss": dist.reduce_mean(loss), "train_runtime": whole["seconds"], "train_tokens": tokens,
                "train_tokens_per_second": tokens / whole["seconds"] if tokens and whole["seconds"] > 0 else None,
                "resumed": bool(self.resumed_from), "resumed_from": self.resumed_from,
                **({"before": self.extra["before"]} if "before" in self.extra else {})}


def train_resuming(trainer, before=None):
    """``trainer.train()``, resuming from the newest whole checkpoint a killed run left in its
    ``output_dir`` (:func:`resume_point`); returns (the train output, the whole run's figures for
    metrics.json: :meth:`RunTotals.summary`). ``before()``, when given, runs only on a fresh
    start (before the first step); its value is kept in the checkpoints and returned, on a
    resume too, as the figures' ``before``."""
    checkpoint = resume_point(Path(trainer.args.output_dir))
    totals = RunTotals(trainer, checkpoint)
    trainer.add_callback(totals)
    use_postfix_progress(trainer)
    if before is not None and checkpoint is None:
        totals.extra["before"] = before()
    with checkpointing_alias_quiet():
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    return result, totals.summary(result, trainer.state)


def trained_model(trainer):
    """A finished Trainer's model: LoRA adapters merged in, and accelerate's autocast wrapper of
    mixed precision removed (training is over: what follows, held-out scoring and saving, runs in
    the weights' own fp32)."""
    return merged(trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)).eval()


def merged(model):
    """The model with its LoRA adapters merged in (the model itself when it has none)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def save_model(model, tokenizer, folder: Path) -> None:
    """Save a plain HF folder (LoRA adapters merged in), loadable by any tool."""
    model = merged(model)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def loss_plot(log_history: list[dict], path: Path, ylabel: str = "token-level NLL (nats)",
              title: str = "SFT loss") -> None:
    from afd.plots import line_plot

    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    series = {name: ([s for s, _ in pts], [v for _, v in pts]) for name, pts in
              (("train loss", train), ("eval loss", evals)) if pts}
    if series:
        line_plot(path, series, "optimiser step", ylabel, title)
