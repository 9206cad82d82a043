"""``afd irl`` and ``afd gail``: learn a reward from demonstrations versus the policy's own
samples, improve the policy against it by RL, repeat.

**IRL** — Zeng et al., 2025 (METHODS §2), maximum-likelihood IRL as a bilevel problem. The
reward gradient ``(1/beta) (E_demo[grad r] - E_(y~pi)[grad r])`` pushes the reward up on
demonstrations and down on the policy's own samples; in practice::

    pi <- the starting policy (the SFT policy)
    for t in 0..T-1:
        y ~ pi(.|x) for every demonstration prompt x            (num_samples each)
        pairs_t = {(x, chosen = y*, rejected = y)}; keep all earlier pairs too
        r_t <- Bradley-Terry reward model, -log sigma(r(x,y*) - r(x,y)), on all pairs so far
               (or, with reward_variant ava-p, AVA's token-level reward, METHODS §3)
        pi  <- RL on r_t with a KL penalty to the reference     (afd.rl: TRL's RLOO; per-token
               rewards with dense_rewards)

**GAIL** — AfD's reverse-KL objective (Sun & van der Schaar, METHODS §1): the same loop with a
discriminator instead: demonstrations (positive) versus the current policy's samples
(negative), binary cross-entropy, reward = the logit ``log D - log(1 - D)``; only the current
samples are negatives, and the discriminator is warm-started from the previous iteration's.

Each iteration's samples, reward model and policy are ordinary afd stages inside
``OUT/irl/iter_T/`` (``samples/``, ``reward/``, ``rl/``), each with its metrics, so a killed run
rerun with the same options reuses every finished stage and resumes inside the unfinished
one. The reference of the KL penalty is the starting policy throughout (``reference: start``)
or the policy the iteration starts from (``reference: previous``, a trust region).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from afd import dist
from afd.ava import AVAOptions
from afd.config import check_choice, opt
from afd.errors import AfdError
from afd.runs import (DataOptions, EvalPairsOptions, StageDir, StageOptions, link_final, restore_on_failure,
                      write_demo_files, write_jsonl)
from afd.rl import RLOptions
from afd.training import TrainOptions


@dataclass
class IRLConfig(StageOptions, DataOptions, EvalPairsOptions, TrainOptions, RLOptions, AVAOptions):
    model: str = opt("tiny-random", "starting policy (usually the SFT policy): built-in name, folder or hub id")
    reward_model: str = opt("", "reward-model backbone (default: the starting policy)")
    reward_variant: str = opt("bt", "irl's reward model on the pairs: bt, or ava-p (AVA's token-level reward; "
                                    "with dense_rewards its per-token rewards drive RL)")
    iterations: int = opt(3, "T, rounds of (sample, reward model, RL)")
    num_samples: int = opt(1, "policy samples per demonstration each iteration (the new pairs' rejected side)")
    reference: str = opt("start", "KL reference: start (the starting policy) or previous (the iteration's start)")
    reward_epochs: float = opt(1.0, "reward-model epochs per iteration")
    reward_lr: float = opt(5e-5, "reward-model learning rate")
    sample_batch_size: int = opt(256, "sequences decoded together when sampling pairs")

    def unused_options(self) -> tuple[str, ...]:
        """AVA's options mean something only to an ava-p reward (not to bt, nor to gail)."""
        return () if self.reward_variant == "ava-p" else tuple(AVAOptions.__dataclass_fields__)

    def validate(self) -> None:
        self.validate_training()
        check_choice("reference", self.reference, ("start", "previous"))
        check_choice("reward_variant", self.reward_variant, ("bt", "ava-p"))
        self.validate_ava()
        if self.dense_rewards and self.reward_variant != "ava-p":
            raise AfdError("dense_rewards needs reward_variant 'ava-p' (per-token rewards come from an AVA model)")
        if self.iterations < 1 or self.num_samples < 1:
            raise AfdError("options 'iterations' and 'num_samples' must be at least 1")
        self.validate_rl()


def write_pairs(path: Path, demos: dict, pools: list[str]) -> int:
    """(x, chosen = demonstration, rejected = policy sample) for every sample of every pool
    so far (``demos``: id -> Demo, the pools' prompt ids); returns the number of pairs. Empty
    samples are left out (a pair file, like any afd data, has no empty responses)."""
    from afd.sampling import read_pool

    rows = []
    for t, pool in enumerate(pools):
        for r in read_pool(pool):
            if not r["response"].strip():
                continue
            d = demos[r["prompt_id"]]
            rows.append({"id": f"{r['prompt_id']}/{t}/{r['sample_index']}", "prompt": d.prompt,
                         "chosen": d.response, "rejected": r["response"]})
    write_jsonl(path, rows)
    return len(rows)


@restore_on_failure
def iterate(cfg: IRLConfig, method: str) -> dict:
    """The loop of both methods (``method`` "irl" or "gail"); returns the stage's metrics."""
    from afd.data import check_unique_ids, load_demos, load_pairs
    from afd.reward import reward
    from afd.rl import rl
    from afd.sampling import POOL, sample

    if method == "gail" and (cfg.reward_variant != "bt" or cfg.dense_rewards):
        raise AfdError("afd gail's reward is its discriminator's logit (a classifier, no per-token rewards): "
                       "reward_variant and dense_rewards are afd irl's options")
    stage = StageDir(cfg, method)
    configs = Iteration(cfg, method, stage.path)
    for t in (0, cfg.iterations - 1):  # every option of every inner stage, before anything runs
        for inner in configs.at(t, cfg.model, cfg.reward_model or cfg.model):
            inner.validate()
    if not stage.begin():
        return stage.metrics()
    demos, _ = load_demos(cfg.data_config())
    check_unique_ids(demos, cfg.data, "demonstration", f"afd {method} pairs each sample with its demonstration by id")
    if cfg.eval_pairs:  # each iteration's reward stage reads them; checked here, before any sampling or training
        load_pairs(cfg.eval_pairs_config())
    dist.on_main(write_demo_files, stage.path, demos)  # where configs.at reads them
    by_id = {d.id: d for d in demos}
    policy, reward_init, pools, history = cfg.model, cfg.reward_model or cfg.model, [], []
    for t in range(cfg.iterations):
        it = f"iter_{t}"
        sample_cfg, rm_cfg, rl_cfg = configs.at(t, policy, reward_init)
        samples = sample(sample_cfg)
        pools.append(str(stage.path / it / "samples" / POOL))
        pairs = dist.on_main(write_pairs, stage.path / it / "pairs.jsonl", by_id, pools) if method == "irl" else None
        rm = reward(rm_cfg)
        if method == "gail":  # the discriminator is warm-started from the previous iteration's
            reward_init = str(stage.path / it / "reward" / "model")
        policy_metrics = rl(rl_cfg)
        policy = policy_metrics["model"]
        history.append({"iteration": t, "policy": policy, "reward_model": rl_cfg.reward, "pool": pools[-1],
                        "pairs": pairs, "sample_mean_tokens": samples["mean_num_tokens"],
                        "reward_eval_accuracy": rm.get("eval_accuracy"), "reward_eval_auc": rm.get("eval_auc"),
                        "reward_eval_pair_accuracy": rm.get("eval_pair_accuracy"),
                        "reward_length_only_accuracy": rm.get("length_only_accuracy"),
                        "reward_length_only_pair_accuracy": rm.get("length_only_pair_accuracy"),
                        "sample_cut_share": 1 - samples["finished_by_eos"],
                        "reward_pair_accuracy": rm.get("pair_accuracy"),
                        "rl_reward_first": policy_metrics["reward_first"],
                        "rl_reward_last": policy_metrics["reward_last"], "rl_kl_last": policy_metrics["kl_last"]})
        dist.on_main(stage.path.joinpath("history.json").write_text, json.dumps(history, indent=1))
    link_final(stage.path, policy)
    return stage.finish({"method": method, "model": str(stage.path / "model"), "final_policy": policy,
                         "demonstrations": len(demos),
                         "iterations": history})


class Iteration:
    """The configs of iteration t's three stages (samples, reward model, RL), from the loop's
    options: built once here, so they can all be checked before anything runs."""

    def __init__(self, cfg: IRLConfig, method: str, folder: Path):
        self.cfg, self.method, self.folder = cfg, method, folder
        self.demos_path, self.prompts_path = str(folder / "demos.jsonl"), str(folder / "prompts.jsonl")

    def at(self, t: int, policy: str, reward_init: str) -> tuple:
        from afd.reward import RewardConfig
        from afd.rl import RLConfig
        from afd.sampling import POOL, SampleConfig, derive_seed

        cfg, it, out = self.cfg, f"iter_{t}", str(self.folder)
        # the RL step takes epochs / max_steps / lr; the reward model has its own
        common = {k: v for k, v in cfg.train_options().items() if k not in ("epochs", "max_steps", "lr", "eval_fraction")}
        sample_cfg = SampleConfig(
            out=out, stage_name=f"{it}/samples", model=policy, data=self.prompts_path, data_format="prompt",
            template=cfg.template, num_samples=cfg.num_samples, max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature, seed=derive_seed(cfg.seed, "irl-iteration", t),
            batch_size=cfg.sample_batch_size, max_prompt_length=cfg.max_prompt_length, long_prompts=cfg.long_prompts,
            device=cfg.device, dtype=cfg.dtype)
        rm_opts = dict(common, out=out, stage_name=f"{it}/reward", epochs=cfg.reward_epochs, lr=cfg.reward_lr,
                       eval_fraction=cfg.eval_fraction, **cfg.eval_pairs_options(),
                       # the rules the eval pairs are read with (the pair files afd writes need none)
                       on_invalid=cfg.on_invalid, roles=cfg.roles, message_keys=cfg.message_keys,
                       system_prompt=cfg.system_prompt)
        if self.method == "irl":
            rm_cfg = RewardConfig(model=reward_init, variant=cfg.reward_variant, data_format="preference",
                                  data=str(self.folder / it / "pairs.jsonl"), **rm_opts, **cfg.ava_options())
        else:  # GAIL: demonstrations against this iteration's samples, BCE
            rm_cfg = RewardConfig(model=reward_init, variant="sft-demo", loss="bce", data=self.demos_path,
                                  data_format="prompt-completion", sft_pool=str(self.folder / it / "samples" / POOL),
                                  **rm_opts)
        rl_cfg = RLConfig(**dict(common, out=out, stage_name=f"{it}/rl", model=policy,
                                 reward=str(self.folder / it / "reward" / "model"),
                                 ref_model=cfg.model if cfg.reference == "start" and t > 0 else "",
                                 **cfg.rl_options(), data=self.prompts_path, data_format="prompt", epochs=cfg.epochs,
                                 max_steps=cfg.max_steps, lr=cfg.lr, eval_fraction=0.0))
        return sample_cfg, rm_cfg, rl_cfg


def irl(cfg: IRLConfig) -> dict:
    """``afd irl``: the final policy is OUT/irl/iter_{T-1}/rl/model."""
    return iterate(cfg, "irl")


def gail(cfg: IRLConfig) -> dict:
    """``afd gail``: the final policy is OUT/gail/iter_{T-1}/rl/model."""
    return iterate(cfg, "gail")
