"""``afd rl``: improve a policy against a reward by on-policy RL with a KL penalty.

The RL step of the iterated methods (METHODS §2, Zeng et al.; and AfD's reverse-KL / GAIL
loop, METHODS §1) is the KL-regularised objective

    max_pi  E_(x, y ~ pi) [ r(x, y) ]  -  kl_coef * KL( pi(.|x) || pi_ref(.|x) )

solved with RLOO (REINFORCE with a leave-one-out baseline over ``num_generations`` samples of
each prompt). The trainer is TRL's ``RLOOTrainer``: it samples (HF ``generate`` or vLLM with
``use_vllm``), subtracts ``kl_coef`` times the sequence KL estimate from the reward, forms the
leave-one-out advantages and, with ``normalize_rewards``, standardises them per batch, which
makes one learning rate work for rewards of any scale. It does **not** make one ``kl_coef``
work for any scale: the KL term is subtracted from the raw reward *before* the advantages are
standardised, so ``kl_coef`` is in units of the reward, and a reward ten times larger is a KL
penalty ten times weaker. ``reward_scaling: standardize`` standardises the reward over each
batch of samples (mean 0, standard deviation 1) before the KL term is applied, so that
``kl_coef`` is in units of the reward's spread; ``none`` (the default) leaves it raw. Either
way each logged step records the raw reward's mean and standard deviation
(``raw_reward_mean``, ``raw_reward_std`` in ``log_history.json``; TRL's own ``reward`` and
``reward_std`` are of the reward as scaled), so the scale that ``kl_coef`` meets is visible.
Checkpoints, resume and ``accelerate launch`` come from ``transformers.Trainer`` under it.

afd supplies the reward: any reward model of :mod:`afd.rewards` (a reward-model folder, the density
ratio, ``python:MODULE:FN``, ...), called on the prompt messages and response text, so the
reward model sees the prompt rendered exactly as it was trained on. The reference is the
starting policy unless ``ref_model`` names another one (the iterated loops keep the SFT policy
as the reference while the policy moves).

A reward model with per-token rewards (AVA, METHODS §3's use (b)) gives RL their plain sum
``sum_t E_q[R(y_1:t+1)]`` (Eq. 19), not the sequence reward that ranks responses.

**Dense rewards** (``dense_rewards``): a reward model with per-token rewards (AVA) gives every
response token ``y_t`` its reward ``r_t = E_q[R(y_1:t+1)] = mu_t`` (Eq. 19's terms). The KL
penalty is then per token too, ``r_t - kl_coef * (log pi(y_t) - log pi_ref(y_t))``, each token's
return is its reward-to-go ``G_t = sum_(t' >= t)`` of those, and its advantage is ``G_t`` minus the
leave-one-out mean of the other samples' whole returns ``G_0`` (a baseline independent of the
sample's own actions, so the gradient stays unbiased). With a sequence reward every token of a
response gets the same advantage; with dense rewards a token is credited only with what comes
after it. The loss is TRL's clipped ratio per token, averaged over tokens; TRL still samples,
checkpoints and distributes (a subclass of its ``RLOOTrainer`` swaps in these advantages).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from afd import dist, models
from afd.config import check_choice, opt, options_of
from afd.errors import AfdError
from afd.runs import DataOptions, StageDir, StageOptions, restore_on_failure
from afd.training import (TrainOptions, checkpointing_alias_quiet, finish_training, load_for_training, lora_config,
                          model_width,
                          train_resuming, training_arguments)


@dataclass
class RLOptions:
    """Options of the RL step, shared by ``afd rl`` and the iterated loops that call it."""

    kl_coef: float = opt(0.05, "KL penalty coefficient (TRL's beta; 0 = no reference model)")
    num_generations: int = opt(4, "samples per prompt; RLOO's baseline for each is the mean reward of the others")
    max_new_tokens: int = opt(64, "longest sampled response, in tokens")
    temperature: float = opt(1.0, "sampling temperature")
    normalize_rewards: bool = opt(True, "standardise the advantages per batch (one learning rate for rewards of "
                                        "any scale; the KL penalty still meets the reward's own scale)")
    reward_scaling: str = opt("none", "none, or standardize: the reward standardised over each batch of samples "
                                      "before the KL term, so kl_coef is in units of the reward's spread")
    reward_batch_size: int = opt(16, "responses scored together by the reward")
    use_vllm: bool = opt(False, "generate with vLLM during RL (TRL's colocate mode; needs vLLM and a GPU)")
    generation: str = opt("afd", "without vLLM, who samples RL's completions: afd (afd's sampler: one prefill per "
                                 "prompt for its num_generations samples, a seed per sample) or trl (TRL's "
                                 "model.generate)")
    generation_dtype: str = opt("auto", "dtype of the weights afd's sampler draws RL's completions with: auto "
                                        "(the policy's own, outside mixed precision's autocast), float32 or "
                                        "bfloat16 (a copy); log-probs, ratios and the KL stay the policy's")
    dense_rewards: bool = opt(False, "per-token rewards mu_t from an AVA reward model (Eq. 19), credited by "
                                     "reward-to-go")

    def validate_rl(self) -> None:
        if self.num_generations < 2:
            raise AfdError("option 'num_generations' must be at least 2 (RLOO's baseline needs the others)")
        if (self.batch_size * self.grad_accum) % self.num_generations:
            raise AfdError(f"batch_size x grad_accum ({self.batch_size} x {self.grad_accum}) must be a multiple of "
                           f"num_generations ({self.num_generations}): each step holds whole groups of samples")
        if self.kl_coef < 0:
            raise AfdError(f"option 'kl_coef' must be >= 0; got {self.kl_coef}")
        check_choice("reward_scaling", self.reward_scaling, ("none", "standardize"))
        check_choice("generation", self.generation, ("afd", "trl"))
        check_choice("generation_dtype", self.generation_dtype, ("auto", "float32", "bfloat16"))
        if self.dense_rewards and self.reward_scaling != "none":
            raise AfdError("reward_scaling 'standardize' is for sequence rewards; dense_rewards takes 'none'")

    def rl_options(self) -> dict:
        return options_of(self, RLOptions)


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
    return [models.render_raw(p.prompt, template) for p in prompts]


def reward_function(rm, batch_size: int, scaling: str = "none", store: dict | None = None, dense: bool = False):
    """TRL reward function around an afd reward model (:class:`afd.rewards.RewardModel`): the
    original prompt messages travel in the dataset's ``afd_prompt`` column (JSON), completions
    come back as text or messages, and their sampled token ids go with them (for the models that
    score exactly the tokens sampled). The reward is ``rm.rl_reward`` (for a model with per-token
    rewards, their sum, Eq. 19); with ``dense`` the per-token rewards themselves are kept in
    ``store["rewards"]`` for :func:`dense_advantages`. The raw rewards' mean and standard
    deviation of each call (over every process's share of the batch) go to ``store`` (see
    :class:`RawRewardLog`); with ``scaling`` "standardize" the call's rewards are returned
    standardised (TRL then subtracts the KL term from these)."""

    def afd_reward(prompts, completions, afd_prompt, completion_ids=None, **_):
        messages = [json.loads(p) for p in afd_prompt]
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        ids = [list(map(int, c)) for c in completion_ids] if completion_ids is not None else None
        out, per_token = [], []
        for s in range(0, len(texts), batch_size):
            part = (messages[s:s + batch_size], texts[s:s + batch_size], ids[s:s + batch_size] if ids else None)
            if dense:
                per_token += rm.dense_rewards(*part)
            else:
                out += rm.rl_reward(*part)
        if dense:
            store["rewards"] = per_token
            out = [float(sum(r)) for r in per_token]
        # over the whole batch: under several processes each rank scores only its share
        n, total = dist.reduce_sum(len(out)), dist.reduce_sum(sum(out))
        mean = total / n
        std = (dist.reduce_sum(sum((x - mean) ** 2 for x in out)) / max(n - 1, 1)) ** 0.5
        if store is not None:
            store.setdefault("mean", []).append(mean)
            store.setdefault("std", []).append(std)
        if scaling == "standardize":
            out = [(x - mean) / std if std > 0 else 0.0 for x in out]
        return out

    return afd_reward


def _raw_reward_log(store: dict):
    from transformers import TrainerCallback

    class RawRewardLog(TrainerCallback):
        """Adds the raw reward's mean and standard deviation since the last log (averaged over
        the reward calls between) to each logged step."""

        def on_log(self, args, state, control, logs=None, **kw):
            if store.get("mean") and state.log_history:
                n = len(store["mean"])
                state.log_history[-1].update(raw_reward_mean=sum(store.pop("mean")) / n,
                                             raw_reward_std=sum(store.pop("std")) / n)

    return RawRewardLog()


def dense_advantages(rewards: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float,
                     num_generations: int, normalize: bool) -> torch.Tensor:
    """Per-token RLOO advantages from per-token rewards (all (B, T), B in whole groups of
    ``num_generations`` consecutive samples): reward-to-go of ``rewards - kl_coef * kl`` minus the
    leave-one-out mean of the group's other whole returns; standardised over the real tokens
    with ``normalize``; 0 on padding."""
    mask = mask.float()
    per_token = (rewards - kl_coef * kl) * mask
    to_go = per_token.flip(-1).cumsum(-1).flip(-1)
    whole = to_go[:, 0].view(-1, num_generations)
    baseline = ((whole.sum(1, keepdim=True) - whole) / (num_generations - 1)).reshape(-1, 1)
    adv = (to_go - baseline) * mask
    if normalize:
        n = mask.sum().clamp(min=1)
        mean = adv.sum() / n
        std = (((adv - mean) * mask) ** 2).sum().div(n).sqrt()
        adv = (adv - mean) / (std + 1e-4) * mask
    return adv


def _trainer_class():
    from trl import RLOOTrainer

    class AfdRLOOTrainer(RLOOTrainer):
        """TRL's RLOO with its completions sampled by afd's engine (:class:`afd.sampling.HFEngine`)
        instead of ``model.generate``: the ``num_generations`` copies of a prompt share one
        prefill, finished rows leave the batch, and each sample has its own seed (of the run's
        seed, the step, the process and the row), so a rerun draws the same samples. TRL keeps
        everything else; vLLM (``use_vllm``), TRL's own path (``generation: trl``) and sampling
        settings afd's engine lacks (min_p, repetition_penalty, multimodal prompts) go to TRL."""

        afd_generation = "afd"
        afd_generation_dtype = None  # a dtype other than the policy's: sample from a copy in it

        def _afd_sampling_model(self, model):
            """The model afd's engine samples with: the policy itself, or a copy of it in
            ``afd_generation_dtype`` (bf16 on CPU: about twice the decoding speed), refreshed
            from the policy's current weights before every generation. Only the sampling runs
            in the copy's dtype: TRL's log-probabilities, ratios and KL are the policy's own,
            so the loss sees the sampled tokens exactly as the policy scores them."""
            dtype = self.afd_generation_dtype
            if dtype is None or dtype == next(model.parameters()).dtype:
                return model
            copy = getattr(self, "_afd_copy", None)
            if copy is None:
                import copy as copy_module

                copy = self._afd_copy = copy_module.deepcopy(model).to(dtype).eval()
            copy.load_state_dict(model.state_dict())  # cast on copy
            return copy

        def _afd_can_generate(self, images, multimodal_fields) -> bool:
            return (self.afd_generation == "afd" and not self.use_vllm
                    and not getattr(self, "use_transformers_continuous_batching", False)
                    and not (images and any(i is not None for i in images)) and not multimodal_fields
                    and not self.min_p and (self.repetition_penalty or 1.0) == 1.0)

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields):
            if not self._afd_can_generate(images, multimodal_fields):
                return super()._generate_single_turn(prompt_ids, images, multimodal_fields)
            from trl.models import unwrap_model_for_generation

            from afd.sampling import HFEngine, row_seed

            # TRL repeats each prompt num_generations times in a row: sample each run of copies
            # as one prompt with K samples (K = 1 per row if the runs are uneven)
            runs = []
            for ids in prompt_ids:
                if runs and runs[-1][0] == ids:
                    runs[-1][1] += 1
                else:
                    runs.append([ids, 1])
            k = runs[0][1] if len({n for _, n in runs}) == 1 else 1
            prompts = [ids for ids, n in runs] if k > 1 else list(prompt_ids)
            step = f"rl-step-{self.state.global_step}-process-{self.accelerator.process_index}"
            seeds = [[row_seed(self.args.seed, step, i * k + j) for j in range(k)] for i in range(len(prompts))]
            with (unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                              gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                                              gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs)
                  as model, torch.no_grad(), self._dist.summon_full_params(self.model_wrapped, recurse=False)):
                model = self._afd_sampling_model(model)
                if getattr(self, "_afd_engine_model", None) is not model:
                    self._afd_engine = HFEngine(model, self._tokenizer, list(self.eos_token_ids))
                    self._afd_engine_model = model
                with own_precision(model):
                    outs = self._afd_engine.generate(prompts, seeds, self.max_completion_length, self.temperature,
                                                     self.top_k or 0, self.top_p if self.top_p is not None else 1.0)
            # TRL's completions end with their EOS where one was sampled
            return [c.token_ids + ([c.stop_id] if c.stop_id is not None else []) for row in outs for c in row]

    return AfdRLOOTrainer


def _dense_trainer_class():
    class DenseRLOOTrainer(_trainer_class()):
        """RLOO with per-token advantages (see the module docstring). Scoring, sampling and
        the optimiser loop are TRL's; only the advantages and the per-token loss change."""

        dense_store: dict

        def _get_per_token_logps_and_entropies(self, model, *args, **kw):
            out = super()._get_per_token_logps_and_entropies(model, *args, **kw)
            if getattr(self, "_capture", False) and not torch.is_grad_enabled():
                self._captured = out[0]  # the policy's per-token log-probs at sampling time
            return out

        def _generate_and_score_completions(self, inputs):
            from accelerate.utils import gather

            beta, self.beta, self._capture = self.beta, 0.0, True  # TRL's own sequence KL is replaced below
            try:
                out = super()._generate_and_score_completions(inputs)
            finally:
                self.beta, self._capture = beta, False
            old = self._captured
            ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
            attn = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
            mask = out["completion_mask"]
            width = mask.shape[1]
            rewards = torch.zeros(mask.shape, device=mask.device)
            for i, r in enumerate(self.dense_store.pop("rewards")):
                rewards[i, : min(len(r), width)] = torch.tensor(r[:width], device=mask.device)
            kl = torch.zeros_like(rewards)
            if beta > 0:
                with torch.no_grad():
                    ref, _, _ = self._get_per_token_logps_and_entropies(self.ref_model, ids, attn, width,
                                                                        self.args.per_device_train_batch_size)
                kl = (old - ref) * mask
                mode = "train" if self.model.training else "eval"
                self._metrics[mode]["kl"].append(float(kl.sum() / mask.sum().clamp(min=1)))
            # whole groups live across processes: gather, compute, keep this process's rows
            n = rewards.shape[0]
            all_adv = dense_advantages(gather(rewards), gather(kl), gather(mask), beta, self.num_generations,
                                       self.normalize_advantages)
            start = self.accelerator.process_index * n
            out["advantages"] = all_adv[start:start + n]
            out["old_per_token_logps"] = old
            return out

        def _compute_loss(self, model, inputs):
            ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
            attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
            mask = inputs["completion_mask"].float()
            logps, _, _ = self._get_per_token_logps_and_entropies(model, ids, attn, inputs["completion_ids"].shape[1])
            ratio = torch.exp(logps - inputs["old_per_token_logps"])
            adv = inputs["advantages"]
            clipped = torch.clamp(ratio, 1 - self.epsilon_low, 1 + self.epsilon_high)
            per_token = -torch.min(ratio * adv, clipped * adv)
            return (per_token * mask).sum() / mask.sum().clamp(min=1)

    return DenseRLOOTrainer


def _rloo_config(cfg: RLConfig, output_dir, has_eval: bool, width: int | None = None):
    from trl import RLOOConfig

    base = training_arguments(cfg, output_dir, has_eval, width=width).to_dict()
    base.update(beta=cfg.kl_coef, num_generations=cfg.num_generations, max_completion_length=cfg.max_new_tokens,
                temperature=cfg.temperature, normalize_advantages=cfg.normalize_rewards, use_vllm=cfg.use_vllm,
                log_completions=False)
    known = set(RLOOConfig.__dataclass_fields__)
    return RLOOConfig(**{k: v for k, v in base.items() if k in known and not k.startswith("_")})


@restore_on_failure
def rl(cfg: RLConfig) -> dict:
    """Run the stage; returns its metrics. The improved policy is saved to OUT/rl/model."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from afd import rewards
    from afd.data import load_prompts

    stage = StageDir(cfg, "rl")
    if not stage.begin():
        return stage.metrics()
    prompts, stats = load_prompts(cfg.data_config())
    tok = models.load_tokenizer(cfg.model)
    kept, dropped = models.prompts_within(tok, prompts, cfg, cfg.data)
    dataset = Dataset.from_dict({"prompt": trl_prompts(tok, [p for p, _ in kept], cfg.template),
                                 "afd_prompt": [json.dumps(p.prompt) for p, _ in kept]})

    dev = models.pick_device(cfg.device)
    rm = rewards.load(cfg.reward, device=cfg.device, batch_size=cfg.reward_batch_size, template=cfg.template)
    if cfg.dense_rewards:
        check_dense_reward(rm, cfg.reward, tok)
    policy = load_for_training(AutoModelForCausalLM, cfg.model, cfg)
    peft_config = lora_config(cfg) if cfg.lora_r > 0 else None
    raw: dict = {}
    with checkpointing_alias_quiet():  # TRL wraps the policy with PEFT when peft_config is given
        trainer = (_dense_trainer_class() if cfg.dense_rewards else _trainer_class())(
            model=policy, reward_funcs=reward_function(rm, cfg.reward_batch_size, cfg.reward_scaling, raw,
                                                       dense=cfg.dense_rewards),
            args=_rloo_config(cfg, stage.path / "checkpoints", False, model_width(policy)), train_dataset=dataset,
            processing_class=tok,
            peft_config=peft_config, callbacks=[_raw_reward_log(raw)])
    trainer.dense_store = raw
    trainer.afd_generation = cfg.generation
    trainer.afd_generation_dtype = generation_dtype(cfg, dev, trainer)
    if cfg.ref_model and cfg.kl_coef > 0:
        if peft_config is not None:
            raise AfdError("option 'ref_model' cannot be combined with LoRA (the reference is the adapter-free model)")
        ref, _ = models.load_causal_lm(cfg.ref_model, cfg.device, cfg.dtype)
        try:
            trainer.ref_model.load_state_dict(ref.state_dict())
        except RuntimeError as e:
            raise AfdError(f"ref_model '{cfg.ref_model}' does not have the policy's architecture ({e})") from None
        del ref
    _, run = train_resuming(trainer)  # (it silences TRL's deprecated read)
    logged = [h for h in trainer.state.log_history if "reward" in h]
    finish_training(stage, trainer, tok, "RL", ylabel="loss")
    if dist.is_main():
        rl_plot(logged, stage.path / "reward_kl.png")
    return stage.finish({
        "model": str(stage.path / "model"), "prompts": len(kept), "prompts_dropped_too_long": dropped,
        "rows_skipped": stats.skipped, "steps": trainer.state.global_step, **run,
        "reward_first": logged[0]["reward"] if logged else None,
        "reward_last": logged[-1]["reward"] if logged else None,
        "kl_last": logged[-1].get("kl") if logged else None,
        "reward_scaling": cfg.reward_scaling,
        "raw_reward_mean_first": logged[0].get("raw_reward_mean") if logged else None,
        "raw_reward_mean_last": logged[-1].get("raw_reward_mean") if logged else None,
        "raw_reward_std_first": logged[0].get("raw_reward_std") if logged else None,
        "raw_reward_std_last": logged[-1].get("raw_reward_std") if logged else None,
    })


def check_dense_reward(rm, name: str, tokenizer) -> None:
    """Dense rewards need a reward model with per-token rewards, read on the policy's tokens."""
    if not rm.has_dense:
        raise AfdError(f"dense_rewards needs an AVA reward model (afd reward --variant ava-d|ava-p), a reward model "
                       f"with per-token rewards; '{name}' is not one")
    if rm.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise AfdError(f"dense_rewards needs the AVA reward model '{name}' to share the policy's tokenizer "
                       f"(its per-token rewards are read on the sampled tokens)")


@contextmanager
def own_precision(model):
    """Run ``model`` in its weights' own precision for the block: under bf16 mixed precision
    accelerate wraps its forward in autocast (``model._original_forward`` keeps the plain one),
    which the sampler sets aside (measured below, ``generation_dtype``)."""
    original = getattr(model, "_original_forward", None)
    if original is None:
        yield
        return
    patched = model.forward
    model.forward = original
    try:
        yield
    finally:
        model.forward = patched


def generation_dtype(cfg: RLOptions, device: torch.device, trainer=None) -> torch.dtype | None:
    """The dtype afd's sampler draws RL's completions in, or None for the policy's own. ``auto``
    is the policy's own (fp32 weights, outside autocast): at RL's batches a bf16 copy sampled
    slower on a 2-core Xeon with AMX (6.3 against 4.5 s a step at 8 sequences, 7.5 against 6.9 s
    at 32; bench/results/train-cpu-rl8.md, -rl32.md: decoding a few sequences is bound by
    per-step latency, and the copy is refreshed every step), though bf16 samples 1.8x faster at
    afd sample's 256 sequences. ``bfloat16`` asks for the copy. Sharded policies (FSDP,
    DeepSpeed) always sample in their own dtype."""
    sharded = trainer is not None and str(trainer.accelerator.distributed_type).split(".")[-1] in ("FSDP", "DEEPSPEED")
    if cfg.generation_dtype == "auto":
        return None
    if sharded:
        raise AfdError("option 'generation_dtype' other than auto is not supported with FSDP or DeepSpeed")
    return models.pick_dtype(cfg.generation_dtype, device)


def rl_plot(logged: list[dict], path) -> None:
    from afd.plots import line_plot

    if not logged:
        return
    steps = [h["step"] for h in logged]
    line_plot(path, {"reward": (steps, [h["reward"] for h in logged]),
                     **({"kl": (steps, [h.get("kl", 0.0) for h in logged])} if "kl" in logged[0] else {})},
              "optimiser step", "mean reward / KL (nats)", "RL: reward and KL to the reference")
