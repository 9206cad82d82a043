"""``afd sft``: supervised fine-tuning on demonstrations = forward-KL imitation.

METHODS §1 (Sun & van der Schaar, 2024): minimising KL(d_demo(y|x) || d_pi(y|x)) over
trajectories is exactly the token-level SFT loss

    L(theta) = -E_(x, y*) ~ D_demo [ sum_t log pi_theta(y*_t | x, y*_<t) ]

with the loss on response tokens only (prompt tokens are labelled -100). A demonstration's
response is its conversation's last assistant turn; ``assistant_only_loss`` (TRL's name) trains
every assistant turn of a multi-turn conversation, each in the context of the turns before it,
and a file's per-turn ``train`` flags (Axolotl) choose the turns themselves. Training is
``transformers.Trainer``: checkpoints, resume, gradient accumulation, mixed precision, and
``accelerate launch`` (DDP, FSDP, DeepSpeed) come from it. LoRA adapters come from PEFT and
are merged into the saved policy, so any tool loads ``OUT/sft/model`` with
``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

from dataclasses import dataclass

from afd import dist, models
from afd.config import opt
from afd.errors import AfdError, note
from afd.runs import DataOptions, StageDir, StageOptions, restore_on_failure
from afd.training import (TrainOptions, apply_lora, finish_training, heldout_loss, load_for_training, make_trainer,
                          pad_id, train_resuming)


@dataclass
class SFTConfig(StageOptions, DataOptions, TrainOptions):
    model: str = opt("tiny-random", "initial policy pi_0: built-in name, local folder or hub id")
    assistant_only_loss: bool = opt(False, "train every assistant turn of a multi-turn conversation (TRL's name; "
                                           "Axolotl's default), not only its last; per-turn 'train' flags in the "
                                           "data choose turns either way")

    def validate(self) -> None:
        self.validate_training()


def trained_turns(demo, every_assistant_turn: bool) -> list[int]:
    """The earlier assistant turns of a demonstration's prompt to train on: those its file flags
    ``train: true``, and, with ``every_assistant_turn``, every other one not flagged false."""
    flags = demo.train_flags or (None,) * len(demo.prompt)
    return [i for i, (m, flag) in enumerate(zip(demo.prompt, flags))
            if m["role"] == "assistant" and (flag or (flag is None and every_assistant_turn))]


def turn_labels(tokenizer, demo, turns: list[int], template: str, prompt_ids: list[int]) -> list[int]:
    """Labels of the prompt's tokens: -100, except on the tokens of the assistant turns ``turns``
    (and the EOS that ends each, where the rendering has one). Each turn is found, in order, in
    the prompt exactly as it is rendered, so it is trained in the context it appears in."""
    text, special = models.prompt_text(tokenizer, demo.prompt, template)
    if not getattr(tokenizer, "is_fast", False):
        raise AfdError(f"training earlier assistant turns needs a fast tokenizer (offsets); {tokenizer.name_or_path} "
                       f"has none")
    enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    if enc["input_ids"] != prompt_ids:
        raise AfdError(f"the prompt of demonstration '{demo.id}' tokenizes differently with offsets; its earlier "
                       f"assistant turns cannot be trained")
    labels, cursor = [-100] * len(prompt_ids), 0
    for i, m in enumerate(demo.prompt):
        content = m["content"].strip()
        start = text.find(content, cursor) if content else -1
        if start < 0:
            if i in turns:
                raise AfdError(f"assistant turn {i + 1} of demonstration '{demo.id}' is not in its prompt as written "
                               f"(the template changes it), so it cannot be trained; leave it untrained")
            continue
        end = cursor = start + len(content)
        if i not in turns:
            continue
        inside = [k for k, (a, b) in enumerate(enc["offset_mapping"]) if b > start and a < end and b > a]
        for k in inside:
            labels[k] = prompt_ids[k]
        after = inside[-1] + 1 if inside else None
        if after is not None and after < len(prompt_ids) and prompt_ids[after] == tokenizer.eos_token_id:
            labels[after] = prompt_ids[after]  # the turn's end, as a reply's EOS is trained
    return labels


def tokenize_demos(tokenizer, demos, cfg, required: bool = True) -> tuple[list[dict], dict]:
    """input_ids / labels per demonstration (labels = -100 on the prompt, except on its earlier
    assistant turns that are trained), with counts; none within max_prompt_length is an error
    when ``required``."""
    kept, dropped = models.prompts_within(tokenizer, demos, cfg, cfg.data, "demonstration", required)
    rows, truncated, earlier = [], 0, 0
    every = getattr(cfg, "assistant_only_loss", False)
    for d, p in kept:
        r = models.encode_response(tokenizer, d.prompt, d.response, cfg.template, d.ended)  # a cut reply: no EOS
        if len(p) + len(r) > cfg.max_length:
            r = r[: cfg.max_length - len(p)]
            truncated += 1
        turns = trained_turns(d, every)
        earlier += len(turns)
        labels = turn_labels(tokenizer, d, turns, cfg.template, p) if turns else [-100] * len(p)
        rows.append({"input_ids": p + r, "labels": labels + r})
    return rows, {"prompts_dropped_too_long": dropped, "responses_truncated": truncated,
                  "earlier_turns_trained": earlier}


def say_which_turns(demos, cfg) -> None:
    """State, when conversations have several assistant turns, which of them SFT trains."""
    multi = sum(any(m["role"] == "assistant" for m in d.prompt) for d in demos)
    if not multi:
        return
    flagged = sum(bool(d.train_flags) for d in demos)
    if cfg.assistant_only_loss:
        note(f"{multi} of {len(demos)} demonstrations are conversations with several assistant turns: every "
             f"assistant turn is trained (assistant_only_loss){', as their train flags allow' if flagged else ''}")
    else:
        note(f"{multi} of {len(demos)} demonstrations are conversations with several assistant turns: only the "
             f"last assistant turn of each is trained{', and the earlier ones flagged train: true' if flagged else ''} "
             f"(--assistant-only-loss trains every assistant turn)")


@restore_on_failure
def sft(cfg: SFTConfig) -> dict:
    """Run the stage; returns its metrics. The policy is saved to OUT/sft/model."""
    from transformers import AutoModelForCausalLM

    from afd.data import load_demos, split

    stage = StageDir(cfg, "sft")
    if not stage.begin():
        return stage.metrics()
    demos, stats = load_demos(cfg.data_config())
    say_which_turns(demos, cfg)
    train_demos, eval_demos = split(demos, cfg.eval_fraction, cfg.seed)
    tok = models.load_tokenizer(cfg.model)
    train_rows, counts = tokenize_demos(tok, train_demos, cfg)
    eval_rows, _ = tokenize_demos(tok, eval_demos, cfg, required=False)

    model = load_for_training(AutoModelForCausalLM, cfg.model, cfg)
    if cfg.lora_r > 0:
        model = apply_lora(model, cfg)
    trainer = make_trainer(stage, cfg, model, tok, train_rows, eval_rows, logits_for_labels=True)

    def held_out() -> float | None:  # in fp32 whether or not training is bf16 (training.heldout_loss)
        return heldout_loss(trainer.model, eval_rows, pad_id(tok), cfg.batch_size) if eval_rows else None

    # the eval loss before the first step is taken on a fresh start and kept in the checkpoints
    _, run = train_resuming(trainer, before=held_out)
    eval_before = run.pop("before")
    eval_after = held_out()
    history = trainer.state.log_history  # a resumed run's includes the checkpoint's history
    if eval_before is not None:  # train() starts a fresh log; keep the step-0 evaluation
        history = [{"step": 0, "eval_loss": eval_before}] + history
    if eval_after is not None:
        history = history + [{"step": trainer.state.global_step, "eval_loss": eval_after}]
    finish_training(stage, trainer, tok, "SFT loss", "token-level NLL (nats)", history=history)
    return stage.finish({
        "model": str(stage.path / "model"), "train_examples": len(train_rows), "eval_examples": len(eval_rows),
        "rows_read": stats.rows, "rows_skipped": stats.skipped, "rows_labelled_false": stats.undesirable, **counts,
        "response_tokens": sum(sum(1 for x in r["labels"] if x != -100) for r in train_rows),
        "eval_loss_before": eval_before, "eval_loss_after": eval_after, "steps": trainer.state.global_step,
        **run, "processes": dist.world(),
    })
