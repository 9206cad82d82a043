"""``afd rl``: improve a policy against a reward by on-policy RL with a KL penalty.

The RL step of the iterated methods (METHODS §2, Zeng et al.; and AfD's reverse-KL / GAIL
loop, METHODS §1) is the KL-regularised objective

    max_pi  E_(x, y ~ pi) [ r(x, y) ]  -  kl_coef * KL( pi(.|x) || pi_ref(.|x) )

solved with RLOO (REINFORCE with a leave-one-out baseline over ``num_generations`` samples of
each prompt). The trainer is TRL's ``RLOOTrainer``: it samples (HF ``generate`` or vLLM with
``use_vllm``), subtracts ``kl_coef`` times the sequence KL estimate from the reward, forms the
leave-one-out advantages and, with ``normalize_rewards``, standardises them per batch, which
makes one ``kl_coef`` and one learning rate work for rewards of any scale. Checkpoints,
resume and ``accelerate launch`` come from ``transformers.Trainer`` under it.

afd supplies the reward: any scorer of :mod:`afd.scorers` (a reward-model folder, the density
ratio, ``python:MODULE:FN``, ...), called on the prompt messages and response text, so the
reward model sees the prompt rendered exactly as it was trained on. The reference is the
starting policy unless ``ref_model`` names another one (the iterated loops keep the SFT policy
as the reference while the policy moves).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from afd import models
from afd.config import opt
from afd.errors import AfdError
from afd.runs import DataOptions, StageDir, StageOptions
from afd.training import TrainOptions, lora_config, save_model, training_arguments


@dataclass
class RLOptions:
    """Options of the RL step, shared by ``afd rl`` and the iterated loops that call it."""

    kl_coef: float = opt(0.05, "KL penalty coefficient (TRL's beta; 0 = no reference model)")
    num_generations: int = opt(4, "samples per prompt; RLOO's baseline for each is the mean reward of the others")
    max_new_tokens: int = opt(64, "longest sampled response, in tokens")
    temperature: float = opt(1.0, "sampling temperature")
    normalize_rewards: bool = opt(True, "standardise the advantages per batch (rewards of any scale)")
    reward_batch_size: int = opt(16, "responses scored together by the reward")
    use_vllm: bool = opt(False, "generate with vLLM during RL (TRL's colocate mode; needs vLLM and a GPU)")

    def validate_rl(self) -> None:
        if self.num_generations < 2:
            raise AfdError("option 'num_generations' must be at least 2 (RLOO's baseline needs the others)")
        if (self.batch_size * self.grad_accum) % self.num_generations:
            raise AfdError(f"batch_size x grad_accum ({self.batch_size} x {self.grad_accum}) must be a multiple of "
                           f"num_generations ({self.num_generations}): each step holds whole groups of samples")
        if self.kl_coef < 0:
            raise AfdError(f"option 'kl_coef' must be >= 0; got {self.kl_coef}")

    def rl_options(self) -> dict:
        return {f: getattr(self, f) for f in RLOptions.__dataclass_fields__}


@dataclass
class RLConfig(StageOptions, DataOptions, TrainOptions, RLOptions):
    model: str = opt("tiny-random", "policy to improve (usually the SFT policy): built-in name, folder or hub id")
    reward: str = opt("", "reward: a reward-model folder or any afd scorer (rm:ID, density-ratio:P,R, python:M:F)")
    ref_model: str = opt("", "KL reference policy (default: the starting policy)")

    def validate(self) -> None:
        self.validate_training()
        self.validate_rl()
        if not self.reward:
            raise AfdError("option 'reward' is required: a reward-model folder or an afd scorer")


def trl_prompts(tokenizer, prompts, template: str) -> list:
    """Prompts as TRL takes them: message lists (TRL applies the chat template, as afd does) or,
    for the raw template, afd's rendered text."""
    if models.uses_chat_template(tokenizer, template):
        return [p.prompt for p in prompts]
    return [models.render_raw(p.prompt) for p in prompts]


def reward_function(scorer, batch_size: int):
    """TRL reward function around an afd scorer: the original prompt messages travel in the
    dataset's ``afd_prompt`` column (JSON), completions come back as text or messages."""

    def afd_reward(prompts, completions, afd_prompt, **_):
        messages = [json.loads(p) for p in afd_prompt]
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        out = []
        for s in range(0, len(texts), batch_size):
            out += scorer(messages[s:s + batch_size], texts[s:s + batch_size])
        return [float(x) for x in out]

    return afd_reward


def _rloo_config(cfg: RLConfig, output_dir, has_eval: bool):
    from trl import RLOOConfig

    base = training_arguments(cfg, output_dir, has_eval).to_dict()
    base.update(beta=cfg.kl_coef, num_generations=cfg.num_generations, max_completion_length=cfg.max_new_tokens,
                temperature=cfg.temperature, normalize_advantages=cfg.normalize_rewards, use_vllm=cfg.use_vllm,
                log_completions=False)
    known = set(RLOOConfig.__dataclass_fields__)
    return RLOOConfig(**{k: v for k, v in base.items() if k in known and not k.startswith("_")})


def rl(cfg: RLConfig) -> dict:
    """Run the stage; returns its metrics. The improved policy is saved to OUT/rl/model."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import RLOOTrainer

    from afd.data import load_prompts
    from afd.scorers import make_scorer

    stage = StageDir(cfg, "rl")
    if not stage.begin():
        return stage.metrics()
    prompts, stats = load_prompts(cfg.data_config())
    tok = models.load_tokenizer(cfg.model)
    kept, dropped = [], 0
    for p in prompts:
        if models.encode_prompt_within(tok, p.prompt, cfg.template, cfg.max_prompt_length, cfg.long_prompts,
                                       f"prompt '{p.id}' in {cfg.data}") is None:
            dropped += 1
        else:
            kept.append(p)
    if not kept:
        raise AfdError(f"no prompt in {cfg.data} is within max_prompt_length={cfg.max_prompt_length} tokens")
    dataset = Dataset.from_dict({"prompt": trl_prompts(tok, kept, cfg.template),
                                 "afd_prompt": [json.dumps(p.prompt) for p in kept]})

    dev = models.pick_device(cfg.device)
    dtype = torch.float32 if cfg.dtype == "auto" else models.pick_dtype(cfg.dtype, dev)
    try:
        policy = AutoModelForCausalLM.from_pretrained(models.resolve(cfg.model), dtype=dtype)
    except (OSError, ValueError) as e:
        raise models._load_error(cfg.model, e) from None
    peft_config = lora_config(cfg) if cfg.lora_r > 0 else None
    scorer = make_scorer(cfg.reward, device=cfg.device, template=cfg.template)

    checkpoints = stage.path / "checkpoints"
    trainer = RLOOTrainer(model=policy, reward_funcs=reward_function(scorer, cfg.reward_batch_size),
                          args=_rloo_config(cfg, checkpoints, False), train_dataset=dataset,
                          processing_class=tok, peft_config=peft_config)
    if cfg.ref_model and cfg.kl_coef > 0:
        if peft_config is not None:
            raise AfdError("option 'ref_model' cannot be combined with LoRA (the reference is the adapter-free model)")
        ref, _ = models.load_causal_lm(cfg.ref_model, cfg.device, cfg.dtype)
        try:
            trainer.ref_model.load_state_dict(ref.state_dict())
        except RuntimeError as e:
            raise AfdError(f"ref_model '{cfg.ref_model}' does not have the policy's architecture ({e})") from None
        del ref
    resume = any(checkpoints.glob("checkpoint-*"))
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    if trainer.is_world_process_zero():
        save_model(trainer.model, tok, stage.path / "model")
    history = trainer.state.log_history
    (stage.path / "log_history.json").write_text(json.dumps(history, indent=1))
    logged = [h for h in history if "reward" in h]
    rl_plot(logged, stage.path / "reward_kl.png")
    return stage.finish({
        "model": str(stage.path / "model"), "prompts": len(kept), "prompts_dropped_too_long": dropped,
        "rows_skipped": stats.skipped, "steps": trainer.state.global_step, "resumed": resume,
        "train_loss": result.training_loss,
        "reward_first": logged[0]["reward"] if logged else None,
        "reward_last": logged[-1]["reward"] if logged else None,
        "kl_last": logged[-1].get("kl") if logged else None,
    })


def rl_plot(logged: list[dict], path) -> None:
    from afd.plots import line_plot

    if not logged:
        return
    steps = [h["step"] for h in logged]
    line_plot(path, {"reward": (steps, [h["reward"] for h in logged]),
                     **({"kl": (steps, [h.get("kl", 0.0) for h in logged])} if "kl" in logged[0] else {})},
              "optimiser step", "mean reward / KL (nats)", "RL: reward and KL to the reference")
