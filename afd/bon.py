"""``afd bon``: Best-of-N policy extraction, and the estimator of every N from one pool.

METHODS §1 (Sun & van der Schaar, 2024): sample N responses, keep the one the reward model
scores highest. The Best-of-N policy's KL from the sampling policy is
``log N - (N - 1) / N`` nats.

Estimating every N from one pool: with M scored samples of a prompt sorted by the proxy
reward, the i-th smallest (1-based) is the best of a uniformly drawn N-subset with
probability ``C(i-1, N-1) / C(M, N)``, so

    E[gold of BoN_N] = sum_i gold_i * C(i-1, N-1) / C(M, N)

is unbiased for every N <= M. Ties in the proxy reward are broken uniformly at random, in
expectation: tied samples share their positions' weights equally.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from afd import dist
from afd.config import opt
from afd.errors import AfdError
from afd.runs import ScoringOptions, StageDir, StageOptions, restore_on_failure
from afd.stats import tie_groups


def bon_kl(n: int) -> float:
    """KL(BoN_n || sampling policy) in nats."""
    return math.log(n) - (n - 1) / n


def bon_weights(m: int, n: int) -> list[float]:
    """P(the i-th smallest of m is the max of a random n-subset), i = 1..m."""
    if not 1 <= n <= m:
        raise ValueError(f"need 1 <= n <= m, got n={n}, m={m}")
    log_total = math.lgamma(m + 1) - math.lgamma(n + 1) - math.lgamma(m - n + 1)
    return [0.0 if i < n else
            math.exp(math.lgamma(i) - math.lgamma(n) - math.lgamma(i - n + 1) - log_total)
            for i in range(1, m + 1)]


def bon_expectation(proxy: list[float], gold: list[float], n: int) -> float:
    """Unbiased E[gold of the best-of-n under proxy], from one prompt's m >= n samples."""
    weights = bon_weights(len(proxy), n)
    total, start = 0.0, 0
    for group in tie_groups(proxy):  # tied proxy values share their positions' weights
        end = start + len(group)
        total += sum(weights[start:end]) * sum(gold[i] for i in group) / len(group)
        start = end
    return total


def powers_of_two(m: int) -> list[int]:
    ns, n = [], 1
    while n <= m:
        ns.append(n)
        n *= 2
    if ns[-1] != m:
        ns.append(m)
    return ns


def group_by_prompt(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["prompt_id"], []).append(r)
    for g in groups.values():
        g.sort(key=lambda r: r["sample_index"])
    return groups


def bon_curve(rows: list[dict], proxy_key: str, gold_key: str, ns: list[int] | None = None) -> dict[int, float]:
    """Mean over prompts of the unbiased BoN estimate, for each n (up to the smallest group)."""
    groups = group_by_prompt(rows)
    m = min(len(g) for g in groups.values())
    ns = [n for n in (ns or powers_of_two(m)) if n <= m]
    curve = {}
    for n in ns:
        values = [bon_expectation([r[proxy_key] for r in g], [r[gold_key] for r in g], n) for g in groups.values()]
        curve[n] = sum(values) / len(values)
    return curve


@dataclass
class BonConfig(StageOptions, ScoringOptions):
    pool: str = opt("", "sample pool (pool.jsonl / pool.parquet, or a sample stage folder)")
    scorer: str = opt("", "reward: a reward-model folder, density-ratio:POLICY,REFERENCE, vader, gold:NAME, "
                               "python:MODULE:FN, random or length (afd.rewards)")
    n: int = opt(0, "N: choose among each prompt's first N samples (0: all of them)")

    def validate(self) -> None:
        self.validate_model_options()
        if not self.pool or not self.scorer:
            raise AfdError("afd bon needs options 'pool' and 'scorer'")
        if self.n < 0:
            raise AfdError(f"option 'n' must be 0 (all samples) or positive; got {self.n}")


def load_reward(spec: str, cfg: ScoringOptions, memo: dict | None = None):
    """The reward model ``spec`` names (:func:`afd.rewards.load`), with a scoring stage's options
    (and ``memo``, where the stage scores the same rows under several names)."""
    from afd import rewards

    return rewards.load(spec, device=cfg.device, dtype=cfg.dtype, batch_size=cfg.batch_size, template=cfg.template,
                        memo=memo)


def score_pool(rows: list[dict], reward, key: str, **options) -> None:
    """Add ``row[key]`` = the reward of every row; ``reward`` is a :class:`afd.rewards.RewardModel`
    or its name (loaded with ``options``: device, dtype, batch_size, template). A pool's sampled
    tokens (``token_ids``) go with the text, for the models that score them exactly."""
    rm = load_reward(reward, ScoringOptions(**options)) if isinstance(reward, str) else reward
    token_ids = [r["token_ids"] for r in rows] if all("token_ids" in r for r in rows) else None
    values = rm.score([r["prompt"] for r in rows], [r["response"] for r in rows], token_ids)
    for r, v in zip(rows, values):
        r[key] = v


@dist.main_process_stage
@restore_on_failure
def bon(cfg: BonConfig) -> dict:
    """Run the stage: ``chosen.jsonl`` has one row per prompt, the best of its first N samples."""
    from afd.sampling import read_pool

    stage = StageDir(cfg, "bon")
    if not stage.begin():
        return stage.metrics()
    rows = read_pool(cfg.pool)
    if not rows:
        raise AfdError(f"sample pool {cfg.pool} is empty")
    score_pool(rows, load_reward(cfg.scorer, cfg), "reward")
    with (stage.path / "scores.jsonl").open("w") as f:
        f.writelines(json.dumps({"prompt_id": r["prompt_id"], "sample_index": r["sample_index"],
                                 "reward": r["reward"]}) + "\n" for r in rows)
    chosen = []
    for pid, group in group_by_prompt(rows).items():
        n = cfg.n or len(group)
        if len(group) < n:
            raise AfdError(f"prompt '{pid}' has {len(group)} samples in {cfg.pool}, fewer than n={n}")
        best = max(group[:n], key=lambda r: r["reward"])  # first of equals: the lowest sample index
        chosen.append({**best, "n": n})
    with (stage.path / "chosen.jsonl").open("w") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in chosen)
    n_used = chosen[0]["n"]
    return stage.finish({"prompts": len(chosen), "n": n_used, "kl_bon_nats": bon_kl(n_used),
                         "mean_reward_all": sum(r["reward"] for r in rows) / len(rows),
                         "mean_reward_chosen": sum(r["reward"] for r in chosen) / len(chosen)})
