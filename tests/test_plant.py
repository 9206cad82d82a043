"""Known truth (VERIFICATION.md §2): plant a reward, draw demonstrations from its optimal policy,
and check every method against it exactly, each check beside a null and a broken twin that
must fail it."""

import json
import math
import random

import pytest

from conftest import WORDS, write_jsonl
from afd.errors import AfdError
from afd.plant import best_of_k, kl_pi_star, rso

# A discrete toy: six responses with pi_0 and r* as tables. The best response (r* = 3) has pi_0
# mass 0.2, so it is missing from a pool of M = 64 candidates with probability 0.8^64 < 1e-6:
# RSO's bound (the pool's max) is then the true max, which makes it exact rejection sampling.
P0 = [0.3, 0.2, 0.15, 0.1, 0.05, 0.2]
R = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]
BETA, M, DRAWS = 1.0, 64, 4000
# The 0.999 quantile of chi-square with 5 degrees of freedom (6 categories - 1): a correct
# sampler exceeds it with probability 1e-3 (the draws are seeded, so the test is deterministic).
CHI2_5_999 = 20.515


def pi_star_table(p0, r, beta):
    w = [p * math.exp(x / beta) for p, x in zip(p0, r)]
    return [x / sum(w) for x in w]


def chi_square(counts, probs):
    n = sum(counts)
    return sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, probs))


def draw_pool(rng, m=M):
    return rng.choices(range(len(P0)), weights=P0, k=m)


def rso_counts(seed, shuffle=False):
    rng = random.Random(seed)
    counts = [0] * len(P0)
    for _ in range(DRAWS):
        pool = draw_pool(rng)
        rewards = [R[y] for y in pool]
        if shuffle:  # the broken twin: rewards no longer belong to their candidates
            rng.shuffle(rewards)
        (i,), _ = rso(rewards, 1, BETA, rng)
        counts[pool[i]] += 1
    return counts


def test_rso_draws_from_pi_star_and_a_broken_sampler_does_not():
    target = pi_star_table(P0, R, BETA)
    stat = chi_square(rso_counts(0), target)
    assert stat < CHI2_5_999, stat
    broken = chi_square(rso_counts(0, shuffle=True), target)
    assert broken > CHI2_5_999, broken
    assert chi_square(rso_counts(1), P0) > CHI2_5_999  # and pi* is not pi_0: the test can tell them apart


def test_rso_without_replacement_accepts_distinct_candidates():
    rng = random.Random(0)
    rewards = [R[y] for y in draw_pool(rng, 16)]
    chosen, examined = rso(rewards, 5, BETA, rng)
    assert len(set(chosen)) == 5 and examined >= 5


def best_of_k_table(p0, r, k):
    """Exact distribution of the best of k i.i.d. pi_0 draws, ties among responses of equal r*
    split by their pi_0 mass (first of equals among exchangeable draws)."""
    out = [0.0] * len(p0)
    for v in sorted(set(r)):
        below = sum(p for p, x in zip(p0, r) if x < v)
        at = sum(p for p, x in zip(p0, r) if x == v)
        top = (below + at) ** k - below ** k
        for y, (p, x) in enumerate(zip(p0, r)):
            if x == v:
                out[y] = top * p / at
    return out


@pytest.mark.parametrize("rewards", [R, [0.0, 1.0, 1.0, 2.0, 2.0, 3.0]])  # distinct, and with ties
def test_best_of_k_is_another_distribution_within_its_kl_bound(rewards):
    from afd.bon import bon_kl

    k = 4
    q = best_of_k_table(P0, rewards, k)
    kl_bok = sum(a * math.log(a / b) for a, b in zip(q, P0) if a > 0)
    assert kl_bok <= bon_kl(k) + 1e-12  # log K - (K-1)/K bounds it; equality needs a continuous reward
    rng = random.Random(3)
    counts = [0] * len(P0)
    for _ in range(DRAWS):
        pool = draw_pool(rng, k)
        counts[pool[best_of_k([rewards[y] for y in pool], 1, k)[0]]] += 1
    assert chi_square(counts, q) < CHI2_5_999
    assert chi_square(counts, pi_star_table(P0, rewards, BETA)) > CHI2_5_999  # not pi*


def test_kl_estimate_of_pi_star_from_a_pool():
    """The self-normalised estimate of KL(pi* || pi_0) from M candidates against the exact value
    of the table; and it rises as beta falls."""
    exact = lambda beta: sum(q * math.log(q / p) for q, p in zip(pi_star_table(P0, R, beta), P0))
    rng = random.Random(0)
    pools = [[R[y] for y in draw_pool(rng, 512)] for _ in range(200)]
    for beta in (2.0, 1.0, 0.5):
        est = sum(kl_pi_star(p, beta)[0] for p in pools) / len(pools)
        assert est == pytest.approx(exact(beta), rel=0.05), beta
    assert exact(0.5) > exact(1.0) > exact(2.0)


# --------------------------------------------------------------------------------------------
# the stage

def prompts_file(tmp_path, words, name="prompts.jsonl"):
    return write_jsonl(tmp_path / name, [{"id": w, "prompt": f"Say {w}"} for w in words])


def test_plant_stage_bad_input_is_one_sentence(tmp_path):
    from afd.config import from_dict
    from afd.plant import PlantConfig, plant

    base = {"scorer": "length", "data": prompts_file(tmp_path, WORDS[:2])}
    for bad, message in (({"beta": 0}, "'beta' must be positive"), ({"candidates": 1}, r"'candidates' \(M\)"),
                         ({"eps": 1.0}, r"'eps' must be in \[0, 1\)"), ({"eps": -0.1}, "'eps'"),
                         ({"scorer": ""}, "needs option 'scorer'"), ({"method": "top"}, "'method' must be one of")):
        with pytest.raises(AfdError, match=message):
            from_dict(PlantConfig, {**base, **bad}, "test")
    (tmp_path / "plant_golds.py").write_text("def nan(p, r): return [float('nan')] * len(r)\n")
    import os
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(AfdError, match="returned nan .* finite"):
            plant(PlantConfig(out=str(tmp_path / "run"), scorer="python:plant_golds:nan", data=base["data"], candidates=2,
                              max_new_tokens=2, device="cpu"))
    finally:
        sys.path.remove(str(tmp_path))
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"prompt_id": "a", "prompt": [{"role": "user", "content": "x"}],
                                                  "sample_index": i, "response": "yes"} for i in range(3)])
    with pytest.raises(AfdError, match="prompt 'a' has 3 samples .* fewer than candidates=4"):
        plant(PlantConfig(out=str(tmp_path / "run2"), scorer="length", pool=pool, candidates=4))
    assert sorted(os.listdir(tmp_path / "run2" / "plant")) == ["config.yaml", "inputs.json"]  # stopped before any work


def test_plant_stage_metrics_follow_beta_and_contamination(tmp_path):
    """On tiny-random with the toy's r*: as beta falls, the planted reward's mean and the KL to
    pi_0 rise; best-of-k reports its formula; eps replaces that share with pi_0 samples; a
    rerun reuses the finished stage."""
    from afd.pipeline import run

    config = {"out": str(tmp_path / "run"), "seed": 0, "device": "cpu", "model": "tiny-random",
              "stages": {"candidates": {"kind": "sample", "data": prompts_file(tmp_path, WORDS[:12]), "num_samples": 32,
                                        "max_new_tokens": 1},
                         **{f"plant_{b}": {"kind": "plant", "pool": "@candidates", "scorer": "python:afd.toy:reward",
                                           "beta": b, "candidates": 32, "num_demos": 2} for b in (2.0, 0.5)},
                         "bok": {"kind": "plant", "pool": "@candidates", "scorer": "python:afd.toy:reward",
                                 "method": "best-of-k", "k": 8, "num_demos": 2, "candidates": 32},
                         "mixed": {"kind": "plant", "pool": "@candidates", "scorer": "python:afd.toy:reward",
                                   "beta": 0.5, "candidates": 32, "num_demos": 2, "eps": 0.5}}}
    res = run(config)
    hi, lo, bok, mixed = res["plant_2.0"], res["plant_0.5"], res["bok"], res["mixed"]
    assert lo["reward_mean_planted"] > hi["reward_mean_planted"] > hi["reward_mean_pi0"]
    assert lo["kl_pi_star_estimate"] > hi["kl_pi_star_estimate"] > 0 and lo["kl_planted_estimate"] > 0
    assert 0 < lo["acceptance_rate"] < hi["acceptance_rate"] <= 1
    assert bok["kl_best_of_k"] == pytest.approx(math.log(8) - 7 / 8) and bok["acceptance_rate"] is None
    assert mixed["contaminated"] == 12 and mixed["reward_mean_demos"] < lo["reward_mean_planted"]
    planted = [json.loads(x) for x in (tmp_path / "run" / "mixed" / "planted.jsonl").read_text().splitlines()]
    assert sum(p["source"] == "pi0" for p in planted) == 12
    demos = [json.loads(x) for x in (tmp_path / "run" / "plant_0.5" / "demos.jsonl").read_text().splitlines()]
    assert len(demos) == 24 and all("r" not in d for d in demos)  # the hidden reward is not in the demonstrations
    assert all(d.get("ended") is False for d in demos if d["completion"])  # cut at max_new_tokens: no EOS taught
    assert run(config)["plant_0.5"] == lo  # finished: reused


# --------------------------------------------------------------------------------------------
# End to end on the exact toy (afd.toy): one-token responses of tiny-ascii, r* a table of 4
# levels, pi* = pi_0 exp(r*/beta) / Z computable exactly. Every stage is the real one.
#
# Thresholds. r* and every learnt reward here are functions of the response token alone, shared
# by all prompts, so prompts do not add independent evidence: a reward unrelated to r* still
# has, by chance, a correlation with it of sd about 1/sqrt(V) over the V = 96 responses (within-
# prompt Spearman averages that one chance correlation, plus sampling noise of sd
# 1/sqrt(P (n - 1)) = 0.03 for P = 32 prompts of n = 16 samples). A null passes |rho| >= 0.35
# (3.4 sd) with probability < 1e-3. Best-of-4 from pi_0's pool gains E[max of 4 standard
# normals] x sd(r*) x rho = 1.03 x 1.1 x rho, so under the null its sd is 0.11 and a gain of
# 0.39 (3.4 sd) is the bar. (Measured when written: the density ratio rho 0.58, init-sft 0.48;
# the nulls -0.24 and -0.19.)
RHO_MIN, GAIN_MIN, TOY_BETA = 0.35, 0.39, 0.5
TRAIN = [f"{w}{i}" for w in WORDS for i in range(2)][:32]
HELD = [f"{w}{i}" for w in WORDS for i in range(2, 3)][:32]


def toy_config(tmp_path, out, null):
    one = {"kind": "sample", "max_new_tokens": 1}
    train, held = prompts_file(tmp_path, TRAIN, "train.jsonl"), prompts_file(tmp_path, HELD, "held.jsonl")
    plant = {"kind": "plant", "pool": "@candidates", "scorer": "python:afd.toy:reward", "candidates": 64,
             "num_demos": 16, **({"method": "best-of-k", "k": 1} if null else {"beta": TOY_BETA})}  # k = 1: pi_0 itself
    seq = {"max_length": 72, "max_prompt_length": 64}
    return {"out": str(tmp_path / out), "seed": 0, "device": "cpu", "model": "tiny-ascii", "stages": {
        "candidates": {**one, "data": train, "num_samples": 64, "seed": 1},
        "plant": plant,
        "sft": {"data": "@plant", "epochs": 6, "lr": 1e-2, "batch_size": 16, "eval_fraction": 0.0, **seq},
        "rm_init": {**one, "data": train, "num_samples": 16, "seed": 2},
        "rm_sft": {**one, "model": "@sft", "data": train, "num_samples": 16, "seed": 2},
        "reward": {"variant": "init-sft", "init_pool": "@rm_init", "sft_pool": "@rm_sft", "epochs": 4, "lr": 3e-3,
                   "batch_size": 16, "eval_fraction": 0.2, **seq},
        "sample_init": {**one, "data": held, "num_samples": 16, "seed": 3},
        "sample_sft": {**one, "model": "@sft", "data": held, "num_samples": 16, "seed": 3},
        "bon": {"pool": "@sample_init", "scorer": "density-ratio:@sft,tiny-ascii", "n": 4},
        "eval": {"golden": "python:afd.toy:reward", "pools": {"init": "@sample_init", "sft": "@sample_sft"},
                 "proxies": {"init-sft": "@reward", "density-ratio": "density-ratio:@sft,tiny-ascii"},
                 "bon_policy": "init", "baseline": "init"},
    }}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from afd.pipeline import run

    tmp = tmp_path_factory.mktemp("toy")
    return tmp, {kind: run(toy_config(tmp, kind, kind == "null")) for kind in ("planted", "null")}


def gain_at(entry, n):
    return entry["gold"][entry["n"].index(n)] - entry["gold"][0]


def test_rewards_learnt_from_planted_demonstrations_recover_r_star(toy):
    tmp, runs = toy
    ev = runs["planted"]["eval"]
    print({k: (round(b["spearman_within_prompts"], 3), round(gain_at(b, 4), 3)) for k, b in ev["bon"].items()})
    for proxy in ("density-ratio", "init-sft"):
        b = ev["bon"][proxy]
        assert b["spearman_within_prompts"] >= RHO_MIN, proxy
        assert gain_at(b, 4) >= GAIN_MIN, proxy
    # the bon stage's choice is the one-pool estimate's N = 4 for its first 4 samples: it beats them
    chosen = [json.loads(x) for x in (tmp / "planted" / "bon" / "chosen.jsonl").read_text().splitlines()]
    from afd import toy as toy_task

    assert sum(toy_task.level(c["response"]) for c in chosen) / len(chosen) > ev["policies"]["init"]["gold"] + GAIN_MIN


def test_a_null_from_pi0_demonstrations_recovers_nothing(toy):
    _, runs = toy
    ev = runs["null"]["eval"]
    print({k: (round(b["spearman_within_prompts"], 3), round(gain_at(b, 4), 3)) for k, b in ev["bon"].items()})
    assert runs["null"]["reward"]["eval_accuracy"] < 0.6  # pi_sft ~ pi_0: nothing to tell apart
    for proxy in ("density-ratio", "init-sft"):
        b = ev["bon"][proxy]
        assert abs(b["spearman_within_prompts"]) < RHO_MIN, proxy
        assert gain_at(b, 4) < GAIN_MIN, proxy


def test_the_recovery_check_fails_on_broken_rewards(toy):
    """The same check, on the planted run's pools, with the density ratio's classes swapped
    (log pi_0 - log pi_sft: what a classifier with swapped labels learns) and with its values
    shuffled within each prompt: both fail it."""
    from afd import rewards
    from afd.bon import bon_curve, group_by_prompt
    from afd.sampling import read_pool
    from afd.stats import within_group_correlation

    tmp, _ = toy
    rows = read_pool(tmp / "planted" / "sample_init")
    dr = rewards.load(f"density-ratio:{tmp / 'planted' / 'sft' / 'model'},tiny-ascii", device="cpu")
    values = dr.score([r["prompt"] for r in rows], [r["response"] for r in rows], [r["token_ids"] for r in rows])
    from afd import toy as toy_task

    rng = random.Random(0)
    for r, v in zip(rows, values):
        r["gold"], r["swapped"] = toy_task.level(r["response"]), -v
    for g in group_by_prompt(rows).values():
        shuffled = [r["swapped"] for r in g]
        rng.shuffle(shuffled)
        for r, s in zip(g, shuffled):
            r["shuffled"] = -s
    for broken in ("swapped", "shuffled"):
        groups = [([r[broken] for r in g], [r["gold"] for r in g]) for g in group_by_prompt(rows).values()]
        curve = bon_curve(rows, broken, "gold", [1, 4])
        assert within_group_correlation(groups) < RHO_MIN and curve[4] - curve[1] < GAIN_MIN, broken


def test_iterated_methods_and_ava_against_pi_star(toy, tmp_path):
    """SFT on planted demonstrations moves toward pi* in both directions of KL (maximum likelihood
    on pi*'s samples: asserted). irl, gail, IRFT, SPIN and AVA-d start from that SFT policy on the
    same demonstrations; whether they end closer to pi* than SFT is not promised at this size, so
    it is recorded (printed, and written to the run folder), not asserted."""
    from afd import toy as toy_task
    from afd.pipeline import run

    tmp, _ = toy
    planted = tmp / "planted"
    held = [[{"role": "user", "content": f"Say {w}"}] for w in HELD]
    kls = {name: toy_task.kl_to_pi_star(model, "tiny-ascii", held, TOY_BETA)
           for name, model in (("pi_0", "tiny-ascii"), ("sft", str(planted / "sft" / "model")))}
    assert kls["sft"]["kl_pi_star_to_policy"] < kls["pi_0"]["kl_pi_star_to_policy"]
    assert kls["sft"]["kl_policy_to_pi_star"] < kls["pi_0"]["kl_policy_to_pi_star"]
    assert kls["sft"]["expected_reward"] > kls["pi_0"]["expected_reward"]
    common = {"model": str(planted / "sft" / "model"), "data": str(planted / "plant" / "demos.jsonl"),
              "max_new_tokens": 1, "max_length": 72, "max_prompt_length": 64}
    rl = {"iterations": 2, "kl_coef": 0.05, "num_generations": 4, "batch_size": 16, "lr": 3e-3, "max_steps": 4,
          "reward_model": "tiny-ascii", "reward_epochs": 2, "reward_lr": 3e-3, "eval_fraction": 0.0}
    res = run({"out": str(tmp_path / "iterated"), "seed": 0, "device": "cpu", "stages": {
        "irl": {**common, **rl}, "gail": {**common, **rl},
        "spin": {"kind": "irft", **common, "stages": 1, "epochs": 1, "lr": 1e-3, "batch_size": 16, "beta": 0.1},
        "irft": {**common, "stages": 2, "epochs": 1, "lr": 1e-3, "batch_size": 16, "beta": 0.1},
        "ava_d": {"kind": "ava", **{k: v for k, v in common.items() if k != "max_new_tokens"}, "objective": "ava-d",
                  "epochs": 1, "lr": 1e-3, "batch_size": 16, "eval_fraction": 0.0}}})
    for name in ("irl", "gail", "spin", "irft", "ava_d"):
        kls[name] = toy_task.kl_to_pi_star(res[name]["model"], "tiny-ascii", held, TOY_BETA)
        kls[name]["closer_than_sft"] = kls[name]["kl_pi_star_to_policy"] < kls["sft"]["kl_pi_star_to_policy"]
    (tmp_path / "iterated" / "kl_to_pi_star.json").write_text(json.dumps(kls, indent=1))
    print(json.dumps({k: {m: round(v, 3) if isinstance(v, float) else v for m, v in d.items()} for k, d in kls.items()}))
    assert all(math.isfinite(d["kl_pi_star_to_policy"]) for d in kls.values())
