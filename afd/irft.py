"""``afd irft``: implicit-reward fine-tuning from demonstrations; one stage is SPIN.

METHODS §2 (Li et al., 2024, "Getting More Juice Out of the SFT Data", generalising SPIN of
Chen et al., 2024). The reward is implicit, ``beta * log(pi_theta / pi_opp)``, with the
opponent ``pi_opp`` the previous iterate, and each stage minimises

    L(theta) = -E_(x, y*) ~ D_demo, y ~ pi_opp(.|x)
                 log sigma( beta * [ (log pi_theta(y*|x) - log pi_opp(y*|x))
                                   - (log pi_theta(y |x) - log pi_opp(y |x)) ] )

The demonstration prompts are split into ``stages`` (T) parts in a fixed random order;
stage t samples negatives ``y`` from the latest model on part t, then trains on part t with
that model as the opponent. T = 1 (all prompts in one stage) is SPIN's iteration.

The opponent's log-probabilities are computed once per stage, before training, with
:func:`afd.scoring.response_logprobs` (teacher forcing, tokenised exactly as SFT), so the
opponent is never in memory during training. Training is ``transformers.Trainer`` (resume,
accumulation, mixed precision, ``accelerate launch``). Stage t lives in ``OUT/irft/stage_T/``
(``samples/``, ``train/`` with ``model/``); a killed run resumes at the unfinished stage.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import torch

from afd import dist, models
from afd.config import opt
from afd.errors import AfdError
from afd.runs import DataOptions, StageDir, StageOptions, link_final, restore_on_failure, write_demo_files
from afd.training import (TrainOptions, apply_lora, finish_training, load_for_training, make_trainer,
                          train_resuming)


@dataclass
class IRFTConfig(StageOptions, DataOptions, TrainOptions):
    model: str = opt("tiny-random", "starting policy and first opponent (usually the SFT policy)")
    stages: int = opt(1, "T: stages, each on its share of the prompts with fresh negatives (1 = SPIN)")
    beta: float = opt(0.1, "beta of the implicit reward beta * log(pi / pi_opp)")
    num_samples: int = opt(1, "negatives sampled from the opponent per demonstration")
    max_new_tokens: int = opt(128, "longest sampled negative, in tokens")
    temperature: float = opt(1.0, "sampling temperature of the negatives")
    sample_batch_size: int = opt(256, "sequences decoded together when sampling negatives")

    def validate(self) -> None:
        self.validate_training()
        if self.stages < 1 or self.num_samples < 1:
            raise AfdError("options 'stages' and 'num_samples' must be at least 1")
        if self.beta <= 0:
            raise AfdError(f"option 'beta' must be positive; got {self.beta}")


def irft_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, opp_chosen: torch.Tensor,
              opp_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """The METHODS §2 loss (mean over pairs) from summed response log-probabilities."""
    margin = beta * ((policy_chosen - opp_chosen) - (policy_rejected - opp_rejected))
    return -torch.nn.functional.logsigmoid(margin).mean()


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed log pi(label_t | prefix) over positions whose label is not -100."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != -100
    picked = logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


def _trainer_class(beta: float):
    from transformers import Trainer

    class IRFTTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            opp = inputs.pop("opponent_logp")  # chosen rows then rejected rows (afd.training.Collator)
            labels = inputs.pop("labels")
            logps = sequence_logprobs(model(**inputs).logits, labels)
            pc, pr = logps.chunk(2)
            oc, orj = opp.chunk(2)
            loss = irft_loss(pc, pr, oc, orj, beta)
            margin = ((pc - oc) - (pr - orj)).detach()
            self.accuracies = getattr(self, "accuracies", []) + [float((margin > 0).float().mean())]
            return (loss, {"margin": margin}) if return_outputs else loss

    return IRFTTrainer


@dataclass
class StepConfig(StageOptions, TrainOptions):
    """One IRFT stage's training (its fingerprint covers the opponent and the data)."""

    model: str = opt("", "policy = opponent at the start of the stage")
    data: str = opt("", "the stage's demonstrations")
    pool: str = opt("", "the opponent's samples on the stage's prompts")
    beta: float = opt(0.1, "beta")


def encode_side(tok, prompt: list[dict], response: str | list[int], cfg) -> dict:
    """input_ids / labels (-100 on the prompt) of one side of a pair: a text response is
    tokenised as in SFT (EOS last), a list of token ids (a sample as drawn, EOS only where the
    sampler emitted it) is used as is."""
    p = models.encode_prompt(tok, prompt, cfg.template)
    r = list(response) if isinstance(response, list) else models.encode_response(tok, prompt, response, cfg.template)
    return {"input_ids": p + r, "labels": [-100] * len(p) + r}


def response_ids(side: dict) -> list[int]:
    return [t for t in side["labels"] if t != -100]


@restore_on_failure
def train_step(cfg: StepConfig) -> dict:
    from transformers import AutoModelForCausalLM

    from afd.data import DataConfig, load_demos
    from afd.sampling import read_pool
    from afd.scoring import response_logprobs

    stage = StageDir(cfg, "train")
    if not stage.begin():
        return stage.metrics()
    demos = {d.id: d for d in load_demos(DataConfig(path=cfg.data))[0]}
    pool = read_pool(cfg.pool)
    # negatives are the opponent's samples as drawn: its tokens, EOS only where it stopped
    pairs = [(demos[r["prompt_id"]], r.get("token_ids", r["response"])) for r in pool if r["prompt_id"] in demos]
    # (a demonstration cut before its end is imitated without EOS, as in SFT)
    tok = models.load_tokenizer(cfg.model)
    rows = []
    for d, y in pairs:
        chosen = d.response if d.ended else models.encode_response(tok, d.prompt, d.response, cfg.template, False)
        c, r = encode_side(tok, d.prompt, chosen, cfg), encode_side(tok, d.prompt, y, cfg)
        if len(c["input_ids"]) <= cfg.max_length and len(r["input_ids"]) <= cfg.max_length:
            rows.append({"chosen": c, "rejected": r, "prompt": d.prompt})  # a cut response is left out
    if not rows:
        raise AfdError(f"no IRFT pair fits max_length={cfg.max_length}")
    # the opponent scores the very tokens the policy trains on, in fp32 (its log-probs are differenced)
    opponent, _ = models.load_causal_lm(cfg.model, cfg.device, "float32")
    for side in ("chosen", "rejected"):
        items = [(row["prompt"], response_ids(row[side])) for row in rows]
        # each rank scores a share of the rows; every rank gets them all
        for row, lp in zip(rows, dist.map_sharded(lambda part: response_logprobs(
                opponent, tok, part, cfg.template, cfg.batch_size, progress=f"opponent log-probs ({side})"), items)):
            row[side]["opponent_logp"] = lp
    del opponent
    for row in rows:
        del row["prompt"]

    policy = load_for_training(AutoModelForCausalLM, cfg.model, cfg)
    if cfg.lora_r > 0:
        policy = apply_lora(policy, cfg)
    # its loss differences log-probabilities (policy against opponent): fp32 unless --bf16
    trainer = make_trainer(stage, cfg, policy, tok, rows, None, _trainer_class(cfg.beta), differenced=True,
                           logits_for_labels=True)
    _, run = train_resuming(trainer)
    finish_training(stage, trainer, tok, "IRFT stage", "IRFT loss")
    acc = getattr(trainer, "accuracies", [])  # this rank's batches
    tail = acc[-max(1, len(acc) // 4):]
    return stage.finish({"model": str(stage.path / "model"), "pairs": len(rows),
                         "pairs_too_long": len(pairs) - len(rows), "steps": trainer.state.global_step, **run,
                         "implicit_reward_accuracy_last_quarter":
                             dist.reduce_mean(sum(tail) / len(tail) if tail else None),
                         "opponent_logp_chosen": sum(r["chosen"]["opponent_logp"] for r in rows) / len(rows),
                         "opponent_logp_rejected": sum(r["rejected"]["opponent_logp"] for r in rows) / len(rows)})


@restore_on_failure
def irft(cfg: IRFTConfig) -> dict:
    """Run the stage; the final policy is OUT/irft/stage_{T-1}/train/model."""
    from afd.data import check_unique_ids, load_demos
    from afd.sampling import POOL, SampleConfig, derive_seed, sample

    stage = StageDir(cfg, "irft")

    def negatives(t: int, policy: str) -> SampleConfig:
        return SampleConfig(
            out=str(stage.path), stage_name=f"stage_{t}/samples", model=policy,
            data=str(stage.path / f"stage_{t}" / "prompts.jsonl"), data_format="prompt", template=cfg.template,
            num_samples=cfg.num_samples, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
            seed=derive_seed(cfg.seed, "irft-stage", t), batch_size=cfg.sample_batch_size,
            max_prompt_length=cfg.max_prompt_length, long_prompts=cfg.long_prompts, device=cfg.device,
            dtype=cfg.dtype)

    negatives(0, cfg.model).validate()  # the sampler's options too, before anything runs
    if not stage.begin():
        return stage.metrics()
    demos, _ = load_demos(cfg.data_config())
    if len(demos) < cfg.stages:
        raise AfdError(f"{len(demos)} demonstrations cannot be split into stages={cfg.stages}")
    check_unique_ids(demos, cfg.data, "demonstration", "IRFT pairs each demonstration with its own negatives by id")
    order = list(range(len(demos)))
    random.Random(cfg.seed).shuffle(order)
    parts = [sorted(order[t::cfg.stages]) for t in range(cfg.stages)]
    train_opts = cfg.train_options()
    policy, history = cfg.model, []
    for t, part in enumerate(parts):
        folder = stage.path / f"stage_{t}"
        demos_path, _ = dist.on_main(write_demo_files, folder, [demos[i] for i in part])
        samples = sample(negatives(t, policy))
        step = train_step(StepConfig(**train_opts, out=str(stage.path), stage_name=f"stage_{t}/train", model=policy,
                                     data=demos_path, pool=str(folder / "samples" / POOL),
                                     beta=cfg.beta))
        policy = step["model"]
        # a demonstration whose prompt is over max_prompt_length has no negative, so no pair (as
        # SFT drops it; long_prompts: error stops instead, naming it)
        history.append({"stage": t, "policy": policy, "demonstrations": len(part),
                        "prompts_dropped_too_long": samples["prompts_dropped_too_long"],
                        "negative_mean_tokens": samples["mean_num_tokens"], **{
                            k: step[k] for k in ("pairs", "train_loss", "steps",
                                                 "implicit_reward_accuracy_last_quarter")}})
        dist.on_main((stage.path / "history.json").write_text, json.dumps(history, indent=1))
    link_final(stage.path, policy)
    return stage.finish({"model": str(stage.path / "model"), "final_policy": policy, "stages": history})

