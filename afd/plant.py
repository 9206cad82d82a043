"""``afd plant``: demonstrations drawn toward the optimal policy of a hidden reward.

The known-truth test of ``../shared/docs/VERIFICATION.md``: choose a reward ``r*(x, y)`` and hide
it from every method. The optimal KL-regularised policy is then known in form (the solution of
``max_pi E_pi[r*] - beta KL(pi || pi_0)``; e.g. Rafailov et al. 2023, DPO, Eq. 4)::

    pi*(y|x) = pi_0(y|x) exp(r*(x, y) / beta) / Z(x),      Z(x) = E_(y ~ pi_0)[exp(r*(x, y) / beta)]

and demonstrations drawn from it let each method be measured by how much of ``r*`` (and of
``pi*``) it recovers. ``r*`` is any reward afd takes by name (:mod:`afd.rewards`): a reward-model
folder, ``vader``, ``python:MODULE:FUNCTION``, the gold ``gold:NAME`` (:mod:`afd.gold`), and
``z:POOL:NAME`` to measure ``beta`` in standard deviations of ``r*`` over pi_0's samples (Gao et
al. 2022).

**Rejection sampling** (``method: rso``; Liu et al. 2023, RSO, arXiv 2309.06657, Algorithm 1).
Each prompt has M candidates ``y_1..y_M ~ pi_0`` (``candidates``; sampled at temperature 1, or
the first M of a given ``pool``). With ``r_max`` the largest ``r*`` among the candidates left,
each candidate in turn is accepted with probability ``exp((r*(y_i) - r_max) / beta)``; an accepted
candidate leaves the pool (sampling without replacement) and passes repeat until ``num_demos``
are accepted. A candidate is thus kept with probability proportional to ``exp(r*/beta)``, so an
accepted candidate is distributed as ``pi_0 exp(r*/beta)`` normalised, i.e. ``pi*``, as M grows.
With finite M the bound is the pool's own maximum and a pass that reaches the maximum always
accepts it: the output departs from ``pi*`` by the chance that a pass accepts nothing before it
(about ``(1 - a)^(M/2)`` at acceptance rate ``a``) and the chance that the best responses are
missing from the pool; ``tests/test_plant.py`` bounds both for its toy and checks the output
against ``pi*`` exactly.

**Best-of-K** (``method: best-of-k``): the candidate with the highest ``r*`` among K (disjoint
groups of K for several demonstrations a prompt). It is **a different distribution** from
``pi*``: it depends on ``r*`` only through its ranking, and its KL from pi_0 is
``log K - (K - 1) / K`` for a reward without ties (at most that with ties), however ``r*`` is
scaled, where ``pi*``'s KL grows without bound as ``beta`` falls.

**Labelled pairs** (``method: pairs``): what RLHF would buy instead of demonstrations: ``num_demos``
pairs of two of a prompt's candidates each (drawn without replacement), ordered by ``r*``
(``chosen`` the higher; a tie is not a pair), written as preference data (``demos.jsonl`` then
holds prompt, chosen, rejected), for a Bradley-Terry or AVA-p reward model on ``r*``'s labels.

**Contamination** (``eps``): ``round(eps * n)`` of the ``n`` demonstrations, chosen at random, are
replaced by a candidate of the same prompt not otherwise chosen, i.e. a sample of pi_0 itself:
demonstrations of mixed quality (the seed paper's open question on demonstration quality).

**What it writes** in ``OUT/plant/``: ``demos.jsonl`` (id, prompt, completion, and ``ended``
false for a candidate cut at ``max_new_tokens``, which afd then imitates without an end of
sequence; the hidden reward is *not* in it), ``prompts.jsonl`` (the planted prompts),
``planted.jsonl`` (each demonstration's candidate, its ``r*`` and whether it was planted or
contamination: for the analysis, never for a method), the candidates' pool under
``candidates/`` when it sampled them, and ``metrics.json``:

- ``acceptance_rate``: accepted / candidates examined (RSO);
- ``kl_pi_star_estimate``: ``KL(pi* || pi_0) = E_pi*[r*] / beta - log Z``, estimated per prompt
  from its M candidates with self-normalised weights ``w_i ∝ exp(r_i / beta)``:
  ``sum_i w_i r_i / beta - log((1/M) sum_i exp(r_i / beta))``, averaged over prompts (it cannot
  exceed ``log M``: an underestimate once ``pi*`` is far from pi_0); ``kl_planted_estimate``:
  the mean over the planted demonstrations of ``r_i / beta - log Z_hat``; for best-of-k,
  ``kl_best_of_k`` (the formula above);
- the reward's mean over the demonstrations, the planted ones and all pi_0 candidates, its sd
  and Spearman correlation with length over pi_0's candidates, and their mean lengths and ended
  shares.

Bad input is one sentence: a non-finite or missing score (:func:`afd.rewards.checked`),
``beta <= 0``, ``candidates < 2``, ``eps`` outside ``[0, 1)``, a pool with fewer than M
candidates for a prompt.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from afd import dist
from afd.bon import bon_kl, group_by_prompt
from afd.config import check_choice, opt
from afd.errors import AfdError
from afd.runs import DataOptions, ModelOptions, PromptOptions, StageDir, StageOptions, restore_on_failure, write_jsonl
from afd.stats import spearman

METHODS = ("rso", "best-of-k", "pairs")


@dataclass
class PlantConfig(StageOptions, DataOptions, ModelOptions, PromptOptions):
    scorer: str = opt("", "the hidden reward r*: any reward name (gold:NAME, vader, a reward-model folder, "
                          "python:MODULE:FN; z:POOL:NAME standardises it on pi_0's samples)")
    method: str = opt("rso", "rso (rejection sampling toward pi* = pi_0 exp(r*/beta) / Z), best-of-k (the best of "
                             "K candidates: a different distribution) or pairs (candidate pairs labelled by r*)")
    beta: float = opt(1.0, "beta of pi*, in the reward's units (rso)")
    candidates: int = opt(16, "M, pi_0 candidates per prompt")
    k: int = opt(0, "best-of-k: K candidates per demonstration (0: candidates // num_demos)")
    num_demos: int = opt(1, "demonstrations per prompt")
    eps: float = opt(0.0, "share of demonstrations replaced by plain pi_0 samples (contamination)")
    pool: str = opt("", "pi_0's candidates: a pool or sample stage folder with at least M samples a prompt "
                        "(default: sample M from 'model' on 'data')")
    model: str = opt("tiny-random", "pi_0, sampled at temperature 1 when no pool is given")
    max_new_tokens: int = opt(64, "longest candidate, in tokens (when sampling)")
    sample_batch_size: int = opt(256, "sequences decoded together (when sampling)")
    seed: int = opt(0, "seed of the candidates, of the acceptance draws and of the contamination")

    def validate(self) -> None:
        self.validate_model_options()
        self.validate_prompt_options()
        check_choice("method", self.method, METHODS)
        if not self.scorer:
            raise AfdError("afd plant needs option 'scorer': the hidden reward r*")
        if not self.pool and not self.data:
            raise AfdError("afd plant needs option 'pool' (pi_0's candidates) or 'data' (prompts to sample them for)")
        if not self.beta > 0 or not math.isfinite(self.beta):
            raise AfdError(f"option 'beta' must be positive; got {self.beta}")
        if self.candidates < 2:
            raise AfdError(f"option 'candidates' (M) must be at least 2; got {self.candidates}")
        if not 0 <= self.eps < 1:
            raise AfdError(f"option 'eps' must be in [0, 1); got {self.eps}")
        if self.num_demos < 1 or self.k < 0 or self.max_new_tokens < 1 or self.sample_batch_size < 1:
            raise AfdError("options 'num_demos', 'max_new_tokens' and 'sample_batch_size' must be at least 1, "
                           "and 'k' at least 0")
        if self.method == "pairs" and 2 * self.num_demos > self.candidates:
            raise AfdError(f"pairs takes two candidates a pair: num_demos x 2 must be at most candidates "
                           f"({self.num_demos} x 2 > {self.candidates})")
        if self.method == "rso" and self.num_demos > self.candidates:
            raise AfdError(f"rso accepts at most M={self.candidates} demonstrations a prompt; num_demos is "
                           f"{self.num_demos}")
        if self.method == "best-of-k" and self.group_size() * self.num_demos > self.candidates:
            raise AfdError(f"best-of-k needs k x num_demos <= candidates ({self.group_size()} x {self.num_demos} > "
                           f"{self.candidates})")
        if self.method == "best-of-k" and self.group_size() < 1:
            raise AfdError("best-of-k needs at least one candidate a demonstration: candidates // num_demos is 0")

    def group_size(self) -> int:
        return self.k or self.candidates // self.num_demos


def rso(rewards: list[float], n: int, beta: float, rng: random.Random) -> tuple[list[int], int]:
    """RSO's Algorithm 1 (Liu et al. 2023) on one prompt's candidates: the indices of ``n``
    accepted candidates, in order of acceptance, and how many candidates were examined."""
    left = list(range(len(rewards)))
    accepted, examined = [], 0
    while len(accepted) < n:
        top = max(rewards[i] for i in left)
        for i in list(left):
            examined += 1
            if rng.random() < math.exp((rewards[i] - top) / beta):
                accepted.append(i)
                left.remove(i)
                if len(accepted) == n:
                    break
    return accepted, examined


def best_of_k(rewards: list[float], n: int, k: int) -> list[int]:
    """The best of each of ``n`` disjoint groups of ``k`` candidates (first of equals)."""
    return [max(range(g * k, (g + 1) * k), key=lambda i: (rewards[i], -i)) for g in range(n)]


def log_mean_exp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values) / len(values))


def kl_pi_star(rewards: list[float], beta: float) -> tuple[float, float]:
    """(KL(pi* || pi_0) estimated from one prompt's candidates by self-normalised importance
    weights, log Z_hat): see the module docstring."""
    scaled = [r / beta for r in rewards]
    log_z = log_mean_exp(scaled)
    top = max(scaled)
    w = [math.exp(s - top) for s in scaled]
    return sum(wi * s for wi, s in zip(w, scaled)) / sum(w) - log_z, log_z


@restore_on_failure
def plant(cfg: PlantConfig) -> dict:
    """Run the stage; returns its metrics. Demonstrations: OUT/plant/demos.jsonl."""
    from afd.bon import score_pool
    from afd.sampling import POOL, SampleConfig, derive_seed, read_pool, sample

    stage = StageDir(cfg, "plant")
    candidates_cfg = None
    if not cfg.pool:
        candidates_cfg = SampleConfig(
            out=str(stage.path), stage_name="candidates", model=cfg.model, num_samples=cfg.candidates,
            max_new_tokens=cfg.max_new_tokens, temperature=1.0, seed=derive_seed(cfg.seed, "plant-candidates"),
            batch_size=cfg.sample_batch_size, template=cfg.template, device=cfg.device, dtype=cfg.dtype,
            max_prompt_length=cfg.max_prompt_length, long_prompts=cfg.long_prompts,
            **{k: getattr(cfg, k) for k in DataOptions.__dataclass_fields__})
        candidates_cfg.validate()
    if not stage.begin():
        return stage.metrics()
    from afd import rewards

    scorer = rewards.load(cfg.scorer, device=cfg.device, dtype=cfg.dtype, template=cfg.template)  # errors first
    if candidates_cfg is not None:
        sample(candidates_cfg)
    pool_path = cfg.pool or str(stage.path / "candidates" / POOL)
    rows = read_pool(pool_path)
    groups = group_by_prompt(rows)
    short = [pid for pid, g in groups.items() if len(g) < cfg.candidates]
    if short:
        raise AfdError(f"prompt '{short[0]}' has {len(groups[short[0]])} samples in {pool_path}, fewer than "
                       f"candidates={cfg.candidates}")
    groups = {pid: g[:cfg.candidates] for pid, g in groups.items()}
    pool = [r for g in groups.values() for r in g]
    score_pool(pool, scorer, "r")  # each candidate's hidden reward, checked finite

    demos, planted_rows, examined, kl_star, kl_planted, labelled = [], [], 0, [], [], []
    for pid, g in groups.items():
        usable = [r for r in g if r["response"].strip()]  # a demonstration has a response
        r = [c["r"] for c in usable]
        if len(usable) < cfg.num_demos:
            continue
        if cfg.method == "pairs":
            order = list(range(len(usable)))
            random.Random(derive_seed(cfg.seed, "plant-pairs", pid)).shuffle(order)
            for j in range(cfg.num_demos):
                a, b = order[2 * j], order[2 * j + 1]
                if r[a] == r[b]:
                    continue  # r* cannot order them: no label
                hi, lo = (a, b) if r[a] > r[b] else (b, a)
                labelled.append({"id": f"{pid}#{j}", "prompt": usable[hi]["prompt"], "chosen": usable[hi]["response"],
                                 "rejected": usable[lo]["response"]})
                planted_rows.append({"prompt_id": pid, "slot": j, "sample_index": usable[hi]["sample_index"],
                                     "rejected_index": usable[lo]["sample_index"], "r": r[hi], "r_rejected": r[lo],
                                     "source": "pair"})
                demos.append((pid, j, usable[hi], usable))
            continue
        if cfg.method == "rso":
            chosen, seen = rso(r, cfg.num_demos, cfg.beta, random.Random(derive_seed(cfg.seed, "plant-rso", pid)))
            examined += seen
        else:
            chosen = best_of_k(r, cfg.num_demos, cfg.group_size()) if len(usable) >= cfg.group_size() * cfg.num_demos \
                else []
            if not chosen:
                continue
        kl, log_z = kl_pi_star(r, cfg.beta)
        kl_star.append(kl)
        for j, i in enumerate(chosen):
            kl_planted.append(r[i] / cfg.beta - log_z)
            planted_rows.append({"prompt_id": pid, "slot": j, "sample_index": usable[i]["sample_index"], "r": r[i],
                                 "source": "planted"})
            demos.append((pid, j, usable[i], usable))
    if not demos:
        raise AfdError(f"no prompt of {pool_path} has {cfg.num_demos} non-empty candidates to plant from")

    # contamination: a share eps of the slots takes a candidate of pi_0 not chosen for its prompt
    contaminated = 0
    if cfg.eps > 0 and cfg.method != "pairs":
        rng = random.Random(derive_seed(cfg.seed, "plant-eps"))
        slots = sorted(rng.sample(range(len(demos)), round(cfg.eps * len(demos))))
        taken = {(pid, c["sample_index"]) for pid, _, c, _ in demos}
        for s in slots:
            pid, j, _, usable = demos[s]
            free = [c for c in usable if (pid, c["sample_index"]) not in taken] or usable
            pick = free[rng.randrange(len(free))]
            taken.add((pid, pick["sample_index"]))
            demos[s] = (pid, j, pick, usable)
            planted_rows[s] = {**planted_rows[s], "sample_index": pick["sample_index"], "r": pick["r"], "source": "pi0"}
            contaminated += 1

    several = cfg.num_demos > 1

    def demo_row(pid, j, c):
        row = {"id": f"{pid}#{j}" if several else pid, "prompt": c["prompt"], "completion": c["response"]}
        return {**row, "ended": False} if c.get("finish_reason") == "length" else row

    def write() -> None:
        write_jsonl(stage.path / "demos.jsonl", labelled if cfg.method == "pairs" else
                    [demo_row(pid, j, c) for pid, j, c, _ in demos])
        seen_prompts = dict.fromkeys(pid for pid, _, _, _ in demos)
        write_jsonl(stage.path / "prompts.jsonl", [{"id": pid, "prompt": groups[pid][0]["prompt"]}
                                                   for pid in seen_prompts])
        write_jsonl(stage.path / "planted.jsonl", planted_rows)

    dist.on_main(write)
    chosen_rows = [c for _, _, c, _ in demos]
    planted_only = [p["r"] for p in planted_rows if p["source"] == "planted"]
    r0 = [c["r"] for c in pool]
    mean0 = sum(r0) / len(r0)
    sd0 = (sum((v - mean0) ** 2 for v in r0) / max(len(r0) - 1, 1)) ** 0.5

    def tokens(rows):
        return sum(row.get("num_tokens", len(row["response"].split())) for row in rows) / len(rows)

    def ended(rows):
        return sum(row.get("finish_reason") != "length" for row in rows) / len(rows)

    metrics = {
        "scorer": cfg.scorer, "method": cfg.method, "beta": cfg.beta if cfg.method == "rso" else None,
        "k": cfg.group_size() if cfg.method == "best-of-k" else None, "eps": cfg.eps,
        "prompts": len({pid for pid, _, _, _ in demos}), "candidates_per_prompt": cfg.candidates,
        "demonstrations": len(demos), "contaminated": contaminated,
        "candidates_empty": sum(not c["response"].strip() for c in pool),
        "acceptance_rate": len(demos) / examined if examined else None,
        "kl_pi_star_estimate": sum(kl_star) / len(kl_star) if cfg.method == "rso" else None,
        "kl_planted_estimate": sum(kl_planted) / len(kl_planted) if cfg.method == "rso" else None,
        "kl_best_of_k": bon_kl(cfg.group_size()) if cfg.method == "best-of-k" else None,
        "reward_mean_demos": sum(c["r"] for c in chosen_rows) / len(chosen_rows),
        "reward_mean_planted": sum(planted_only) / len(planted_only) if planted_only else None,
        "reward_mean_pi0": mean0, "reward_sd_pi0": sd0,
        "reward_spearman_with_length_pi0": spearman(r0, [c.get("num_tokens", len(c["response"].split()))
                                                         for c in pool]),
        "mean_tokens_demos": tokens(chosen_rows), "mean_tokens_pi0": tokens(pool),
        "ended_share_demos": ended(chosen_rows), "ended_share_pi0": ended(pool),
        "pool": pool_path,
    }
    return stage.finish(metrics)

