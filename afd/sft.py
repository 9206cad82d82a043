"""``afd sft``: supervised fine-tuning on demonstrations = forward-KL imitation.

METHODS §1 (Sun & van der Schaar, 2024): minimising KL(d_demo(y|x) || d_pi(y|x)) over
trajectories is exactly the token-level SFT loss

    L(theta) = -E_(x, y*) ~ D_demo [ sum_t log pi_theta(y*_t | x, y*_<t) ]

with the loss on response tokens only (prompt tokens are labelled -100). Training is
``transformers.Trainer``: checkpoints, resume, gradient accumulation, mixed precision, and
``accelerate launch`` (DDP, FSDP, DeepSpeed) come from it. LoRA adapters come from PEFT and
are merged into the saved policy, so any tool loads ``OUT/sft/model`` with
``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

from afd import models
from afd.config import check_choice, opt
from afd.errors import AfdError
from afd.runs import DataOptions, StageDir, StageOptions


@dataclass
class SFTConfig(StageOptions, DataOptions):
    model: str = opt("tiny-random", "initial policy pi_0: built-in name, local folder or hub id")
    template: str = opt("auto", "prompt rendering: auto (chat template if the tokenizer has one), chat, raw")
    eval_fraction: float = opt(0.05, "share of demonstrations held out for eval loss")
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
    max_prompt_length: int = opt(512, "prompts longer than this many tokens follow long_prompts")
    long_prompts: str = opt("drop", "over-long prompts: drop (and count them) or error")
    lora_r: int = opt(0, "LoRA rank (0: full fine-tuning)")
    lora_alpha: int = opt(32, "LoRA alpha")
    lora_dropout: float = opt(0.05, "LoRA dropout")
    lora_target_modules: str = opt("all-linear", "LoRA target modules (PEFT syntax, comma-separated)")
    gradient_checkpointing: bool = opt(False, "trade compute for memory")
    save_steps: int = opt(100, "checkpoint every N steps (a killed run resumes from the last one)")
    logging_steps: int = opt(5, "log the training loss every N steps")
    eval_steps: int = opt(0, "evaluate every N steps (0: at the start and the end only)")
    device: str = opt("auto", "auto, cpu, cuda, cuda:N or mps (ignored under accelerate launch)")
    dtype: str = opt("auto", "auto (bf16 mixed precision on CUDA, else fp32), float32, bfloat16, float16")

    def validate(self) -> None:
        check_choice("template", self.template, models.TEMPLATES)
        check_choice("long_prompts", self.long_prompts, ("drop", "error"))
        if not 0 <= self.eval_fraction < 1:
            raise AfdError(f"option 'eval_fraction' must be in [0, 1); got {self.eval_fraction}")
        for name in ("batch_size", "grad_accum", "max_length", "max_prompt_length"):
            if getattr(self, name) < 1:
                raise AfdError(f"option '{name}' must be at least 1; got {getattr(self, name)}")
        if self.lora_r < 0:
            raise AfdError(f"option 'lora_r' must be 0 (full fine-tuning) or a positive rank; got {self.lora_r}")
        from transformers import SchedulerType

        check_choice("lr_scheduler", self.lr_scheduler, tuple(s.value for s in SchedulerType))
        if self.max_prompt_length >= self.max_length:
            raise AfdError("option 'max_prompt_length' must be smaller than 'max_length'")


def tokenize_demos(tokenizer, demos, cfg) -> tuple[list[dict], dict]:
    """input_ids / labels per demonstration (labels = -100 on the prompt), with counts."""
    rows, dropped, truncated = [], 0, 0
    for d in demos:
        p = models.encode_prompt(tokenizer, d.prompt, cfg.template)
        if len(p) > cfg.max_prompt_length:
            if cfg.long_prompts == "error":
                raise AfdError(f"demonstration '{d.id}' in {cfg.data} has a prompt of {len(p)} tokens, "
                               f"over max_prompt_length={cfg.max_prompt_length}")
            dropped += 1
            continue
        r = models.encode_response(tokenizer, d.prompt, d.response, cfg.template)
        if len(p) + len(r) > cfg.max_length:
            r = r[: cfg.max_length - len(p)]
            truncated += 1
        rows.append({"input_ids": p + r, "labels": [-100] * len(p) + r})
    return rows, {"prompts_dropped_too_long": dropped, "responses_truncated": truncated}


class TokenRate(TrainerCallback):
    """Non-padding tokens per second of one ``train()`` call (a resumed run counts its own)."""

    tokens, rate = 0, None

    def on_train_begin(self, args, state, control, **kw):
        self.start_tokens, self.start = state.num_input_tokens_seen, time.time()

    def on_train_end(self, args, state, control, **kw):
        self.tokens = state.num_input_tokens_seen - self.start_tokens
        self.rate = self.tokens / max(time.time() - self.start, 1e-9)


class PadCollator:
    """Right-pads a batch; padded positions are masked and carry label -100."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        out = {k: torch.full((len(batch), width), v, dtype=torch.long)
               for k, v in (("input_ids", self.pad_id), ("labels", -100), ("attention_mask", 0))}
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            out["input_ids"][i, :n] = torch.tensor(b["input_ids"])
            out["labels"][i, :n] = torch.tensor(b["labels"])
            out["attention_mask"][i, :n] = 1
        return out


def apply_lora(model, cfg):
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora_target_modules
    targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",")]
    return get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                            lora_dropout=cfg.lora_dropout, target_modules=targets,
                                            task_type="CAUSAL_LM"))


def training_arguments(cfg, output_dir: Path, has_eval: bool, **extra):
    """TrainingArguments shared by afd's Trainer-based stages."""
    from transformers import TrainingArguments

    device = models.pick_device(cfg.device)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported() and cfg.dtype in ("auto", "bfloat16", "bf16")
    fp16 = device.type == "cuda" and cfg.dtype in ("float16", "fp16")
    return TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        learning_rate=cfg.lr, lr_scheduler_type=cfg.lr_scheduler, **_warmup(TrainingArguments, cfg.warmup_ratio),
        weight_decay=cfg.weight_decay, per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        bf16=bf16, fp16=fp16,
        use_cpu=device.type == "cpu", seed=cfg.seed, data_seed=cfg.seed,
        logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=2, eval_strategy="steps" if has_eval and cfg.eval_steps > 0 else "no",
        eval_steps=cfg.eval_steps or None, report_to="none", remove_unused_columns=False,
        dataloader_num_workers=0, include_num_input_tokens_seen="non_padding", **_checkpointing(TrainingArguments, cfg.gradient_checkpointing), **extra)


def _warmup(cls, ratio: float) -> dict:
    """transformers 5 takes a ratio as a fractional ``warmup_steps``; 4.x has ``warmup_ratio``."""
    import inspect

    if "warmup_ratio" in inspect.signature(cls.__init__).parameters:
        return {"warmup_ratio": ratio}
    return {"warmup_steps": ratio}


def _checkpointing(cls, on: bool) -> dict:
    if not on:
        return {}
    import inspect

    name = "activation_checkpointing" if "activation_checkpointing" in inspect.signature(cls.__init__).parameters \
        else "gradient_checkpointing"
    return {name: True}


def save_policy(model, tokenizer, folder: Path) -> None:
    """Save a plain HF policy folder (LoRA merged in)."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def loss_plot(log_history: list[dict], path: Path) -> None:
    from afd.plots import line_plot

    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    series = {name: ([s for s, _ in pts], [v for _, v in pts]) for name, pts in
              (("train loss", train), ("eval loss", evals)) if pts}
    if series:
        line_plot(path, series, "optimiser step", "token-level NLL (nats)", "SFT loss")


def sft(cfg: SFTConfig) -> dict:
    """Run the stage; returns its metrics. The policy is saved to OUT/sft/model."""
    from transformers import AutoModelForCausalLM, Trainer

    from afd.data import load_demos, split

    stage = StageDir(cfg, "sft")
    if not stage.begin():
        return stage.metrics()
    demos, stats = load_demos(cfg.data_config())
    train_demos, eval_demos = split(demos, cfg.eval_fraction, cfg.seed)
    tok = models.load_tokenizer(cfg.model)
    train_rows, counts = tokenize_demos(tok, train_demos, cfg)
    eval_rows, _ = tokenize_demos(tok, eval_demos, cfg)
    if not train_rows:
        raise AfdError(f"no demonstration in {cfg.data} fits max_prompt_length={cfg.max_prompt_length}")

    dtype = torch.float32 if cfg.dtype == "auto" else models.pick_dtype(cfg.dtype, models.pick_device(cfg.device))
    try:
        model = AutoModelForCausalLM.from_pretrained(models.resolve(cfg.model), dtype=dtype)
    except (OSError, ValueError) as e:
        raise models._load_error(cfg.model, e) from None
    if cfg.lora_r > 0:
        model = apply_lora(model, cfg)

    checkpoints = stage.path / "checkpoints"
    args = training_arguments(cfg, checkpoints, bool(eval_rows))
    rate = TokenRate()
    trainer = Trainer(model=model, args=args, train_dataset=train_rows, eval_dataset=eval_rows or None,
                      data_collator=PadCollator(tok.pad_token_id), processing_class=tok,
                      callbacks=[rate])
    resume = any(checkpoints.glob("checkpoint-*"))
    eval_before = trainer.evaluate()["eval_loss"] if eval_rows and not resume else None
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    eval_after = trainer.evaluate()["eval_loss"] if eval_rows else None

    if trainer.is_world_process_zero():
        save_policy(trainer.model, tok, stage.path / "model")
    history = trainer.state.log_history
    if eval_before is not None:  # train() starts a fresh log; keep the step-0 evaluation
        history = [{"step": 0, "eval_loss": eval_before}] + history
    (stage.path / "log_history.json").write_text(json.dumps(history, indent=1))
    loss_plot(history, stage.path / "loss.png")
    return stage.finish({
        "model": str(stage.path / "model"), "train_examples": len(train_rows), "eval_examples": len(eval_rows),
        "rows_read": stats.rows, "rows_skipped": stats.skipped, **counts,
        "response_tokens": sum(sum(1 for x in r["labels"] if x != -100) for r in train_rows),
        "train_loss": result.training_loss, "eval_loss_before": eval_before, "eval_loss_after": eval_after,
        "steps": trainer.state.global_step, "resumed": resume,
        "train_tokens": rate.tokens, "train_tokens_per_second": rate.rate,
        "train_runtime": result.metrics.get("train_runtime"),
    })
