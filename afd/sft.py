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

from dataclasses import dataclass

from afd import dist, models
from afd.config import opt
from afd.runs import DataOptions, StageDir, StageOptions
from afd.training import (TrainOptions, apply_lora, finish_training, load_for_training, make_trainer,
                          train_resuming)


@dataclass
class SFTConfig(StageOptions, DataOptions, TrainOptions):
    model: str = opt("tiny-random", "initial policy pi_0: built-in name, local folder or hub id")

    def validate(self) -> None:
        self.validate_training()


def tokenize_demos(tokenizer, demos, cfg, required: bool = True) -> tuple[list[dict], dict]:
    """input_ids / labels per demonstration (labels = -100 on the prompt), with counts; none
    within max_prompt_length is an error when ``required``."""
    kept, dropped = models.prompts_within(tokenizer, demos, cfg, cfg.data, "demonstration", required)
    rows, truncated = [], 0
    for d, p in kept:
        r = models.encode_response(tokenizer, d.prompt, d.response, cfg.template, d.ended)  # a cut reply: no EOS
        if len(p) + len(r) > cfg.max_length:
            r = r[: cfg.max_length - len(p)]
            truncated += 1
        rows.append({"input_ids": p + r, "labels": [-100] * len(p) + r})
    return rows, {"prompts_dropped_too_long": dropped, "responses_truncated": truncated}


def sft(cfg: SFTConfig) -> dict:
    """Run the stage; returns its metrics. The policy is saved to OUT/sft/model."""
    from transformers import AutoModelForCausalLM

    from afd.data import load_demos, split

    stage = StageDir(cfg, "sft")
    if not stage.begin():
        return stage.metrics()
    demos, stats = load_demos(cfg.data_config())
    train_demos, eval_demos = split(demos, cfg.eval_fraction, cfg.seed)
    tok = models.load_tokenizer(cfg.model)
    train_rows, counts = tokenize_demos(tok, train_demos, cfg)
    eval_rows, _ = tokenize_demos(tok, eval_demos, cfg, required=False)

    model = load_for_training(AutoModelForCausalLM, cfg.model, cfg)
    if cfg.lora_r > 0:
        model = apply_lora(model, cfg)
    trainer = make_trainer(stage, cfg, model, tok, train_rows, eval_rows)
    resume = any((stage.path / "checkpoints").glob("checkpoint-*"))
    eval_before = trainer.evaluate()["eval_loss"] if eval_rows and not resume else None
    result, _ = train_resuming(trainer)
    eval_after = trainer.evaluate()["eval_loss"] if eval_rows else None
    history = trainer.state.log_history
    if eval_before is not None:  # train() starts a fresh log; keep the step-0 evaluation
        history = [{"step": 0, "eval_loss": eval_before}] + history
    finish_training(stage, trainer, tok, "SFT loss", "token-level NLL (nats)", history=history)
    return stage.finish({
        "model": str(stage.path / "model"), "train_examples": len(train_rows), "eval_examples": len(eval_rows),
        "rows_read": stats.rows, "rows_skipped": stats.skipped, "rows_labelled_false": stats.undesirable, **counts,
        "response_tokens": sum(sum(1 for x in r["labels"] if x != -100) for r in train_rows),
        "train_loss": dist.reduce_mean(result.training_loss), "eval_loss_before": eval_before, "eval_loss_after": eval_after,
        "steps": trainer.state.global_step, "resumed": resume,
        "train_tokens": trainer.afd_rate.tokens, "train_tokens_per_second": trainer.afd_rate.rate,
        "train_runtime": result.metrics.get("train_runtime"), "processes": dist.world(),
    })
