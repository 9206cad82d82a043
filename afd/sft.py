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
from dataclasses import dataclass

import torch

from afd import dist, models
from afd.config import opt
from afd.errors import AfdError
from afd.runs import DataOptions, StageDir, StageOptions
from afd.training import (PadCollator, TokenRate, TrainOptions, apply_lora, loss_plot, save_model,
                          train_resuming, training_arguments)


@dataclass
class SFTConfig(StageOptions, DataOptions, TrainOptions):
    model: str = opt("tiny-random", "initial policy pi_0: built-in name, local folder or hub id")

    def validate(self) -> None:
        self.validate_training()


def tokenize_demos(tokenizer, demos, cfg) -> tuple[list[dict], dict]:
    """input_ids / labels per demonstration (labels = -100 on the prompt), with counts."""
    rows, dropped, truncated = [], 0, 0
    for d in demos:
        p = models.encode_prompt_within(tokenizer, d.prompt, cfg.template, cfg.max_prompt_length,
                                        cfg.long_prompts, f"the prompt of demonstration '{d.id}' in {cfg.data}")
        if p is None:
            dropped += 1
            continue
        r = models.encode_response(tokenizer, d.prompt, d.response, cfg.template)
        if len(p) + len(r) > cfg.max_length:
            r = r[: cfg.max_length - len(p)]
            truncated += 1
        rows.append({"input_ids": p + r, "labels": [-100] * len(p) + r})
    return rows, {"prompts_dropped_too_long": dropped, "responses_truncated": truncated}


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
    result, _ = train_resuming(trainer, checkpoints)
    eval_after = trainer.evaluate()["eval_loss"] if eval_rows else None

    dist.save_trained(trainer, tok, stage.path / "model", save_model)  # rank 0 writes
    history = trainer.state.log_history
    if eval_before is not None:  # train() starts a fresh log; keep the step-0 evaluation
        history = [{"step": 0, "eval_loss": eval_before}] + history
    if dist.is_main():
        (stage.path / "log_history.json").write_text(json.dumps(history, indent=1))
        loss_plot(history, stage.path / "loss.png")
    return stage.finish({
        "model": str(stage.path / "model"), "train_examples": len(train_rows), "eval_examples": len(eval_rows),
        "rows_read": stats.rows, "rows_skipped": stats.skipped, "rows_labelled_false": stats.undesirable, **counts,
        "response_tokens": sum(sum(1 for x in r["labels"] if x != -100) for r in train_rows),
        "train_loss": dist.reduce_mean(result.training_loss), "eval_loss_before": eval_before, "eval_loss_after": eval_after,
        "steps": trainer.state.global_step, "resumed": resume,
        "train_tokens": rate.tokens, "train_tokens_per_second": rate.rate,
        "train_runtime": result.metrics.get("train_runtime"), "processes": dist.world(),
    })
