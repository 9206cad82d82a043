"""Recipe `imdb-ava`: an AVA-d reward from demonstrations on imdb-positive (issue: AVA).

The data, SFT policy and pools of `imdb-iterated` (its stages are reused when its run folder
exists). Two questions:

1. **Best-of-N**: the golden reward (VADER) of Best-of-N from the SFT pool (32 held-out prompts
   x 16 samples) under an AVA-d reward (smollm2 backbone, trained on the 128 demonstrations only)
   versus AfD's `init-sft` reward (SFT samples versus pi_0 samples) on the same backbone, and the
   MiniLM `init-sft` reward of imdb-iterated.
2. **Uncertainty**: AVA's per-token reward standard deviation on responses it was trained on,
   on unseen responses of the same source (held-out positive-review continuations), and on
   responses from other sources (model samples, negative reviews, HH-RLHF dialogue replies,
   demonstrations with their words shuffled). Does the std flag what the model has not seen?

    python bench/recipes/imdb_ava.py --seeds 0,1,2  # ~70 min a seed at 1 thread beside 2 other runs (less after imdb-iterated)
    python bench/recipes/imdb_ava.py --quick

``--seeds`` trains the two smollm2 reward models once per seed (the SFT policy and its pools are
imdb-iterated's, shared by all seeds) and reports per-seed Best-of-N curves and their mean with
a 95% t-interval over seeds; results are saved only with at least 3 seeds.

Results: bench/results/imdb-ava/.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from common import RESULTS, SHARED_DATA, across_seeds, ci, machine, saves_result, seeds_arg, with_length_controls  # noqa: E402
from imdb_iterated import POLICY, pipeline as iterated_pipeline, seed_data, settings  # noqa: E402
from imdb_positive import INSTRUCTION, words  # noqa: E402

SEQ = {"max_length": 192, "max_prompt_length": 96}


def pipeline(out: str, files: dict, s: dict, seed: int) -> dict:
    """One seed's stages: imdb-iterated's SFT, pools and MiniLM init-sft (reused from its run
    folder when it has run), and the smollm2-backbone AVA-d and init-sft reward models."""
    base = iterated_pipeline(out, files, s, seed)["stages"]
    keep = ("sft", "rm_pool_init", "rm_pool_sft", "rm_init_sft", "sample_init", "sample_sft")
    stages = {name: base[name] for name in keep}
    rm = {"kind": "reward", "model": s.get("policy", POLICY), "epochs": 1, "lr": 5e-5, "batch_size": 8,
          "eval_fraction": 0.0, "logging_steps": 2, "seed": seed,
          **{k: v * s.get("length_scale", 1) for k, v in SEQ.items()}}  # tiny-random's byte tokens are longer
    stages["rm_init_sft_smollm2"] = {**rm, "variant": "init-sft", "init_pool": "@rm_pool_init",
                                     "sft_pool": "@rm_pool_sft"}
    # the new heads at their own rate: at 5e-5 for 16 steps they barely leave their initial N(0, 1)
    stages["rm_ava_d"] = {**rm, "variant": "ava-d", "data": files["demos"], "ava_head_lr": 1e-3}
    stages["eval_ava"] = {
        "kind": "eval", "golden": "vader", "pools": {"init": "@sample_init", "sft": "@sample_sft"},
        "proxies": {"ava-d": "@rm_ava_d", "init-sft (smollm2)": "@rm_init_sft_smollm2",
                    "init-sft (MiniLM)": "@rm_init_sft"},
        "bon_policy": "sft", "baseline": "sft", "demos": files["norm_demos"]}
    return {"out": out, "seed": seed, "model": s.get("policy", POLICY), "stages": stages}


def over_seeds(evals: list[dict]) -> dict:
    """proxy -> n, and per N the golden reward's per-seed values, mean and 95% t-interval."""
    out = {}
    for proxy in evals[0]["bon"]:
        golds = [across_seeds(list(g)) for g in zip(*[ev["bon"][proxy]["gold"] for ev in evals])]  # per N
        out[proxy] = {"n": evals[0]["bon"][proxy]["n"], "gold_per_seed": [g["per_seed"] for g in golds],
                      "gold": [g["mean"] for g in golds],
                      "gold_ci95": [g["ci95"] or [g["mean"], g["mean"]] for g in golds]}
        if all("win_rate" in ev["bon"][proxy] for ev in evals):
            wins = [across_seeds(list(w)) for w in zip(*[ev["bon"][proxy]["win_rate"] for ev in evals])]
            out[proxy].update({"win_rate": [w["mean"] for w in wins], "win_rate_ci95": [w["ci95"] for w in wins]})
    return out


def uncertainty_over_seeds(per_seed: list[dict]) -> dict:
    """source -> its per-token std, sequence reward and AUC against unseen same-source responses,
    each as a mean over seeds with its 95% t interval."""
    return {name: {"n": per_seed[0][name]["n"],
                   **{k: across_seeds([u[name][k] for u in per_seed])
                      for k in ("std_mean", "reward_mean", "auc_vs_unseen_same_source")}}
            for name in per_seed[0]}


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def sources(out: Path, files: dict, n: int) -> dict[str, tuple[list, list]]:
    """name -> (prompts as message lists, responses)."""
    def user(text):
        return [{"role": "user", "content": text}]

    demos = read_jsonl(files["demos"])[:n]
    held = read_jsonl(files["norm_demos"])[:n]
    out_ = {"trained on (demonstrations)": ([user(d["prompt"]) for d in demos], [d["completion"] for d in demos]),
            "unseen, same source (held-out positive continuations)":
                ([user(d["prompt"]) for d in held], [d["completion"] for d in held])}
    for name, pool in (("SFT samples", "sample_sft"), ("pi_0 samples", "sample_init")):
        rows = [r for r in read_jsonl(out / pool / "pool.jsonl") if r["sample_index"] == 0][:n]
        out_[name] = ([r["prompt"] for r in rows], [r["response"] for r in rows])
    with open(SHARED_DATA / "imdb_subset.csv", newline="") as f:
        negative = [r for r in csv.DictReader(f) if r["sentiment"] == "negative" and len(words(r["review"])) >= 72]
    random.Random(1).shuffle(negative)
    neg = negative[:n]
    out_["negative-review continuations"] = ([user(INSTRUCTION + " ".join(words(r["review"])[:24])) for r in neg],
                                             [" ".join(words(r["review"])[24:72]) for r in neg])
    from afd.data import DataConfig, load_pairs

    hh, _ = load_pairs(DataConfig(path=str(SHARED_DATA / "hh-rlhf_harmless-base_test.jsonl.gz"), on_invalid="skip",
                                  limit=4 * n))
    hh = [p for p in hh if len(p.chosen.split()) >= 8][:n]
    out_["HH-RLHF dialogue replies"] = ([p.prompt for p in hh], [p.chosen for p in hh])
    rng = random.Random(2)
    shuffled = []
    for d in held:
        w = d["completion"].split()
        rng.shuffle(w)
        shuffled.append(" ".join(w))
    out_["held-out continuations, words shuffled"] = ([user(d["prompt"]) for d in held], shuffled)
    return out_


def uncertainty(model_path: str, srcs: dict) -> dict:
    from afd.rewards import AVAReward
    from afd.stats import auc

    rm = AVAReward.from_pretrained(model_path, "cpu")
    result = {}
    for name, (prompts, responses) in srcs.items():
        tokens = rm.token_rewards(prompts, responses, batch_size=8)
        stds = [statistics.fmean(t.std) for t in tokens]  # mean per-token std of each response
        result[name] = {"n": len(tokens), "std_mean": statistics.fmean(stds),
                        "std_se": statistics.stdev(stds) / len(stds) ** 0.5,
                        "reward_mean": statistics.fmean(t.reward for t in tokens), "stds": stds}
    ref = result["unseen, same source (held-out positive continuations)"]["stds"]
    for name, r in result.items():
        # AUC of "the other source has the higher std": 0.5 = the std does not tell them apart
        r["auc_vs_unseen_same_source"] = auc(r["stds"] + ref, [1.0] * len(r["stds"]) + [0.0] * len(ref))
    return result


def report(ev: dict, unc: dict, rm_metrics: dict, s: dict, host: dict, seeds: list[int], bon: dict) -> str:
    ns = bon["ava-d"]["n"]
    lines = [f"# imdb-ava: AVA-d reward on imdb-positive ({s['n_eval']} held-out prompts x {s['k_bon']} SFT samples,"
             " VADER)", "",
             f"Machine: {host['cpu']}, {host['cores']} cores. Policy and SFT as in imdb-iterated "
             f"(smollm2-135m-instruct, SFT on {s['n_demos']} positive-review continuations). AVA-d: smollm2 "
             f"backbone, the {s['n_demos']} demonstrations only, 1 epoch, lr 5e-5 (heads 1e-3), default options "
             f"otherwise (afd/ava.py; it ranks by sum_t w_t mu_t). init-sft (smollm2): same backbone and epochs, on "
             f"{s['n_rm']} prompts x {s.get('k_rm', 1)} sample(s) of SFT vs pi_0. Seeds {', '.join(map(str, seeds))}: "
             "each seed its own data split, SFT policy, pools and reward models (imdb-iterated's seed folders).", "",
             "## Best-of-N golden reward (VADER) from the SFT pool", "",
             "Mean over seeds [95% t-interval]; win rate against an SFT sample at the largest N, mean over seeds.", "",
             "| reward | " + " | ".join(f"N={n}" for n in ns) + " | win rate vs SFT at N=" + str(ns[-1]) + " |",
             "|---|" + "---|" * (len(ns) + 1)]
    for name, b in bon.items():
        win = f"{b['win_rate'][-1]:.3f}" if "win_rate" in b else "–"
        lines.append(f"| {name} | " + " | ".join(f"{g:.3f} [{lo:.3f}, {hi:.3f}]" for g, (lo, hi)
                                                 in zip(b["gold"], b["gold_ci95"])) + f" | {win} |")
    pol = ev["policies"]
    lines += ["", "The `length` rows are the control: Best-of-N from the same pools with the response's token "
              "count as the reward (longest or shortest first), which a reward model that only tracked length "
              "would match."]
    lines += ["", f"First seed: pi_0 {pol['init']['gold']:.3f}, SFT {pol['sft']['gold']:.3f} (±{pol['sft']['gold_ci95']:.3f}), "
              f"demonstrations {pol['demonstrations']['gold']:.3f}.", "",
              "## Per-token reward standard deviation (AVA-d)", "",
              "Mean over seeds [95% t-interval] of: the mean over responses of the mean per-token std, the mean "
              "sequence reward, and the AUC with which the std separates each source from unseen responses of the "
              "training source (0.5: not at all; 1: the other source always has the higher std).", "",
              "| responses | n a seed | per-token std | sequence reward | AUC vs unseen same-source |",
              "|---|---|---|---|---|"]
    for name, r in unc.items():
        lines.append(f"| {name} | {r['n']} | {ci(r['std_mean'], 4)} | {ci(r['reward_mean'])} | "
                     f"{ci(r['auc_vs_unseen_same_source'])} |")
    lines += ["", f"AVA-d training: {rm_metrics['steps']} steps, {rm_metrics['seconds'] / 60:.1f} min.", "",
              "![BoN golden reward](bon_gold_vs_n.png)", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/imdb-iterated", help="run folder (imdb-iterated's, to reuse its stages)")
    ap.add_argument("--seeds", type=seeds_arg, default=[0],
                    help="seeds (each: data split, sampling and training), e.g. 0,1,2; results need at least 3")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny-random everywhere: the recipe runs (not results)")
    args = ap.parse_args()
    seeds = args.seeds
    s = {**settings(args.quick, args.smoke), "n_unc": 8 if args.quick or args.smoke else 64}
    from afd.pipeline import run

    evals, uncs, rms = [], [], []
    for seed in seeds:  # the folders and splits of imdb-iterated's seeds, so its stages are reused
        out = Path(args.out) / f"seed-{seed}"
        files = seed_data(str(out), s, seed)
        results = run(pipeline(str(out), files, s, seed),
                      report=lambda name, m: print(f"[seed {seed}: {name}] done in {m.get('seconds', 0):.0f} s",
                                                   flush=True))
        evals.append(with_length_controls(results["eval_ava"], out / "sample_sft" / "pool.jsonl"))
        rms.append({k: results[k] for k in ("rm_ava_d", "rm_init_sft_smollm2", "rm_init_sft")})
        uncs.append(uncertainty(str(out / "rm_ava_d" / "model"), sources(out, files, s["n_unc"])))
    bon, unc = over_seeds(evals), uncertainty_over_seeds(uncs)
    table = report(evals[0], unc, rms[0]["rm_ava_d"], s, machine(), seeds, bon)
    print(table)
    small = args.quick or args.smoke
    if saves_result(seeds, small):
        dest = RESULTS / "imdb-ava"
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "results.md").write_text(table)
        (dest / "metrics.json").write_text(json.dumps(
            {"seeds": seeds, "bon": bon, "eval_per_seed": {str(k): ev for k, ev in zip(seeds, evals)},
             "uncertainty": unc, "uncertainty_per_seed": {str(k): u for k, u in zip(seeds, uncs)},
             "reward_models_per_seed": {str(k): r for k, r in zip(seeds, rms)}, "setup": s, "machine": machine()},
            indent=2))
        shutil.copy(Path(args.out) / f"seed-{seeds[0]}" / "eval_ava" / "bon_gold_vs_n.png", dest / "bon_gold_vs_n.png")
        print("saved", dest)


if __name__ == "__main__":
    main()
