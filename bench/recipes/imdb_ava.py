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

    python bench/recipes/imdb_ava.py --seeds 0,1,2  # ~20 min a seed on 2 CPU cores (more without imdb-iterated's)
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
from common import RESULTS, SHARED_DATA, machine  # noqa: E402
from imdb_iterated import POLICY, pipeline as iterated_pipeline  # noqa: E402
from imdb_positive import INSTRUCTION, make_data, words  # noqa: E402

SEQ = {"max_length": 192, "max_prompt_length": 96}


def pipeline(out: str, files: dict, s: dict, seeds: list[int]) -> dict:
    base = iterated_pipeline(out, files, s)["stages"]
    keep = ("sft", "rm_pool_init", "rm_pool_sft", "rm_init_sft", "sample_init", "sample_sft")
    stages = {name: base[name] for name in keep}
    rm = {"kind": "reward", "model": POLICY, "epochs": 1, "lr": 5e-5, "batch_size": 8, "eval_fraction": 0.0,
          "logging_steps": 2, **SEQ}
    for seed in seeds:
        stages[f"rm_init_sft_smollm2_s{seed}"] = {**rm, "variant": "init-sft", "init_pool": "@rm_pool_init",
                                                   "sft_pool": "@rm_pool_sft", "seed": seed}
        # the new heads at their own rate: at 5e-5 for 16 steps they barely leave their initial N(0, 1)
        stages[f"rm_ava_d_s{seed}"] = {**rm, "variant": "ava-d", "data": files["demos"], "ava_head_lr": 1e-3,
                                       "seed": seed}
        stages[f"eval_ava_s{seed}"] = {
            "kind": "eval", "golden": "vader", "pools": {"init": "@sample_init", "sft": "@sample_sft"},
            "proxies": {"ava-d": f"@rm_ava_d_s{seed}", "init-sft (smollm2)": f"@rm_init_sft_smollm2_s{seed}",
                        "init-sft (MiniLM)": "@rm_init_sft"},
            "bon_policy": "sft", "baseline": "sft", "demos": files["norm_demos"]}
    return {"out": out, "seed": 0, "model": POLICY, "stages": stages}


def over_seeds(evals: list[dict]) -> dict:
    """proxy -> n, and per N the golden reward's per-seed values, mean and 95% t-interval."""
    import math

    out = {}
    t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78}.get(len(evals), 2.0)
    for proxy in evals[0]["bon"]:
        golds = list(zip(*[ev["bon"][proxy]["gold"] for ev in evals]))  # per N, one value a seed
        means = [statistics.fmean(g) for g in golds]
        half = [t * statistics.stdev(g) / math.sqrt(len(g)) if len(g) > 1 else 0.0 for g in golds]
        out[proxy] = {"n": evals[0]["bon"][proxy]["n"], "gold_per_seed": [list(g) for g in golds], "gold": means,
                      "gold_ci95": [[m - h, m + h] for m, h in zip(means, half)],
                      "win_rate": [statistics.fmean(w) for w in zip(*[ev["bon"][proxy]["win_rate"] for ev in evals])]}
    return out


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
    from afd.ava import AVARewardModel
    from afd.reward import auc

    rm = AVARewardModel.from_pretrained(model_path, "cpu")
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
             f"{s['n_rm']} prompts x 4 samples of SFT vs pi_0. Training seeds {', '.join(map(str, seeds))} (the "
             "SFT policy, pools and MiniLM init-sft are shared).", "",
             "## Best-of-N golden reward (VADER) from the SFT pool", "",
             "Mean over seeds [95% t-interval]; win rate against an SFT sample at the largest N, mean over seeds.", "",
             "| reward | " + " | ".join(f"N={n}" for n in ns) + " | win rate vs SFT at N=" + str(ns[-1]) + " |",
             "|---|" + "---|" * (len(ns) + 1)]
    for name, b in bon.items():
        lines.append(f"| {name} | " + " | ".join(f"{g:.3f} [{lo:.3f}, {hi:.3f}]" for g, (lo, hi)
                                                 in zip(b["gold"], b["gold_ci95"])) + f" | {b['win_rate'][-1]:.3f} |")
    pol = ev["policies"]
    lines += ["", f"pi_0 {pol['init']['gold']:.3f}, SFT {pol['sft']['gold']:.3f} (±{pol['sft']['gold_ci95']:.3f}), "
              f"demonstrations {pol['demonstrations']['gold']:.3f}.", "",
              f"## Per-token reward standard deviation (AVA-d, seed {seeds[0]})", "",
              "Mean over responses of the mean per-token std (± standard error), the mean sequence reward, and "
              "the AUC with which the std separates each source from unseen responses of the training source "
              "(0.5: not at all; 1: the other source always has the higher std).", "",
              "| responses | n | per-token std | ± | sequence reward | AUC vs unseen same-source |",
              "|---|---|---|---|---|---|"]
    for name, r in unc.items():
        lines.append(f"| {name} | {r['n']} | {r['std_mean']:.4f} | {r['std_se']:.4f} | {r['reward_mean']:.3f} | "
                     f"{fmt(r['auc_vs_unseen_same_source'])} |")
    lines += ["", f"AVA-d training: {rm_metrics['steps']} steps, {rm_metrics['seconds'] / 60:.1f} min.", "",
              "![BoN golden reward](bon_gold_vs_n.png)", ""]
    return "\n".join(lines)


def fmt(x, digits=3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/imdb-iterated", help="run folder (imdb-iterated's, to reuse its stages)")
    ap.add_argument("--seeds", default="0", help="training seeds of the reward models, comma-separated")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    seeds = [int(x) for x in args.seeds.split(",") if x != ""]
    s = dict(n_demos=32, n_loop=8, n_rm=8, n_eval=4, k_eval=2, k_bon=4, rl_steps=2, n_unc=8) if args.quick else \
        dict(n_demos=128, n_loop=64, n_rm=48, n_eval=32, k_eval=4, k_bon=16, rl_steps=8, n_unc=64)
    files = make_data(Path(args.out) / "data", s["n_demos"], s["n_rm"], s["n_eval"], 24, 48)
    from afd.pipeline import run

    results = run(pipeline(args.out, files, s, seeds),
                  report=lambda name, m: print(f"[{name}] done in {m.get('seconds', 0):.0f} s", flush=True))
    evals = [results[f"eval_ava_s{seed}"] for seed in seeds]
    bon = over_seeds(evals)
    unc = uncertainty(str(Path(args.out) / f"rm_ava_d_s{seeds[0]}" / "model"),
                      sources(Path(args.out), files, s["n_unc"]))
    table = report(evals[0], unc, results[f"rm_ava_d_s{seeds[0]}"], s, machine(), seeds, bon)
    print(table)
    if not args.quick and len(seeds) < 3:
        print(f"not saved to bench/results: {len(seeds)} seed(s); a result needs at least 3 (--seeds 0,1,2)")
    elif not args.quick:
        dest = RESULTS / "imdb-ava"
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "results.md").write_text(table)
        (dest / "metrics.json").write_text(json.dumps(
            {"seeds": seeds, "bon": bon, "eval_per_seed": {str(k): ev for k, ev in zip(seeds, evals)},
             "uncertainty": unc, "setup": s, "machine": machine(), "rm_init_sft": results["rm_init_sft"],
             **{f"{m}_s{k}": results[f"{m}_s{k}"] for m in ("rm_ava_d", "rm_init_sft_smollm2") for k in seeds}},
            indent=2))
        shutil.copy(Path(args.out) / f"eval_ava_s{seeds[0]}" / "bon_gold_vs_n.png", dest / "bon_gold_vs_n.png")
        print("saved", dest)


if __name__ == "__main__":
    main()
