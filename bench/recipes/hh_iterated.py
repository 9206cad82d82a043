"""Recipe `hh-iterated`: how well each `afd irl` iteration's reward ranks human preferences.

Same split as `hh-harmless` (its make_data, same seed): demonstrations are the `chosen`
final assistant turns of the train pairs of HH-RLHF harmless-base; the 400 held-out
chosen/rejected pairs are never trained on. SFT of smollm2-135m-instruct on the
demonstrations, then `afd irl` for 3 iterations; each iteration's Bradley-Terry reward model
(demonstrations versus the policy's own samples, all iterations' pairs so far; MiniLM-L6
backbone, as in hh-harmless) is scored on the held-out human pairs. No reward model here sees
a preference label.

    python bench/recipes/hh_iterated.py --seeds 0,1,2   # about 25 min a seed on 2 CPU cores (at cap 64)
    python bench/recipes/hh_iterated.py --smoke         # tiny-random, every stage

Results: bench/results/hh-iterated/ (results.md, metrics.json, pair_accuracy.png).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from common import RESULTS, aggregate, ci, machine, rm_figures, run_seeds, saves_result, seeds_arg  # noqa: E402
from hh_harmless import NEW_TOKENS, make_data  # noqa: E402


def pipeline(out: str, files: dict, s: dict, seed: int = 0) -> dict:
    x = s.get("length_scale", 1)  # tiny-random's byte tokens (--smoke): longer sequences
    seq = {"max_length": 320 * x, "max_prompt_length": 256 * x}
    return {
        "out": out, "seed": seed, "model": s.get("policy", "smollm2-135m-instruct"),
        "stages": {
            "sft": {"data": files["demos"], "epochs": 1, "lr": 5.0e-5, "batch_size": 8, "eval_fraction": 0.05,
                    "logging_steps": 5, **seq},
            # max_new_tokens caps both the pairs' samples and RL's
            "irl": {"model": "@sft", "data": files["demos"], "iterations": s["iterations"],
                    "max_new_tokens": s["new_tokens"], "reward_model": s.get("rm_backbone", "minilm-l6"),
                    "reward_epochs": 2, "reward_lr": 5e-5, "eval_fraction": 0.1, "eval_pairs": files["eval_pairs"],
                    "kl_coef": 0.05, "num_generations": 4, "batch_size": 8, "lr": 3e-5, "max_steps": s["rl_steps"],
                    "logging_steps": 2, **seq},
        },
    }


def seed_figures(results: dict) -> dict:
    """Each iteration's reward model: human-pair accuracy (ties counted), held-out figures on
    its own demo-vs-sample split beside the length-only control; the share of cut samples."""
    out = {"iterations": {}}
    for it in results["irl"]["iterations"]:
        rm = json.loads((Path(it["reward_model"]).parent / "metrics.json").read_text())
        out["iterations"][str(it["iteration"] + 1)] = {**rm_figures(rm), "pairs": rm.get("pairs"),
                                                       "training_pairs": it["pairs"],
                                                       "sample_cut_share": it.get("sample_cut_share")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/hh-iterated")
    ap.add_argument("--quick", action="store_true", help="a small run of every stage (results not saved)")
    ap.add_argument("--smoke", action="store_true", help="--quick with tiny-random as policy and reward backbone")
    ap.add_argument("--seeds", type=seeds_arg, default=[0], help="e.g. 0,1,2: one run per seed (data split, "
                                                                  "sampling, training); mean and 95%% interval across")
    ap.add_argument("--max-new-tokens", type=int, default=NEW_TOKENS, help="sample cap of the pairs and of RL")
    args = ap.parse_args()
    quick = args.quick or args.smoke
    s = dict(n_train=16, n_eval=32, iterations=2, rl_steps=1) if quick else \
        dict(n_train=160, n_eval=400, iterations=3, rl_steps=4)
    s["new_tokens"] = args.max_new_tokens
    if args.smoke:
        s.update(policy="tiny-random", rm_backbone="tiny-random", length_scale=4)
    from afd.stats import wilson_interval
    from afd.plots import bar_plot

    per_seed = run_seeds(args.out, args.seeds,
                         lambda out, seed: make_data(Path(out) / "data", s["n_train"], s["n_eval"], seed),
                         lambda out, files, seed: pipeline(out, files, s, seed),
                         lambda results, out: seed_figures(results))
    agg = aggregate(list(per_seed.values()))
    host = machine()
    rows, bars = [], {}
    for t, m in agg["iterations"].items():
        acc = m["pair_accuracy"]
        lo, hi = acc["ci95"] if acc["ci95"] is not None else wilson_interval(acc["mean"], s["n_eval"])
        rows.append(f"| {t} | {ci(m['training_pairs'], 0)} | {ci(m['sample_cut_share'], 2)} | "
                    f"{ci(m['eval_pair_accuracy'])} | {ci(m['length_only_pair_accuracy'])} | {ci(acc)} | "
                    f"{ci(m['pair_accuracy_untied'])} | {ci(m['pairs_tied'], 1)} | {ci(m['prefers_longer'])} |")
        bars[f"irl iter {t}"] = (acc["mean"], lo, hi)
    longer = next(iter(agg["iterations"].values()))["longer_chosen_accuracy"]
    table = "\n".join([
        f"# hh-iterated: each irl iteration's reward on {s['n_eval']} held-out human preference pairs "
        f"(seeds {args.seeds})", "",
        f"Machine: {host['cpu']}, {host['cores']} cores. Per seed (split by prompt, sampling, training): SFT of "
        f"smollm2-135m-instruct on {s['n_train']} chosen replies, then `afd irl` ({s['rl_steps']} RLOO steps of 2 "
        f"prompts x 4 samples an iteration, lr 3e-5, KL coefficient 0.05, at most {s['new_tokens']} new tokens); "
        "reward models Bradley-Terry on MiniLM-L6, demonstrations versus policy samples; no preference label "
        f"seen. Mean [95% t interval] over seeds. \"The longer reply wins\" scores {ci(longer)} on the human "
        "pairs; the length-only pair accuracy is a length rule fitted on each model's own training split and "
        "scored on its held-out demo-vs-sample pairs.", "",
        "| iteration | training pairs (demo vs sample) | samples cut at max_new_tokens | held-out demo-vs-sample "
        "pair accuracy | length-only (same split) | human pair accuracy | untied | tied pairs | prefers longer |",
        "|---|---|---|---|---|---|---|---|---|", *rows, "", "![pair accuracy](pair_accuracy.png)", ""])
    print(table)
    if saves_result(args.seeds, quick):
        dest = RESULTS / "hh-iterated"
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "results.md").write_text(table)
        (dest / "metrics.json").write_text(json.dumps(
            {"seeds": args.seeds, "setup": s,
             "reward_models": {f"irl iter {t}": m for t, m in agg["iterations"].items()},
             "across_seeds": agg, "per_seed": per_seed, "machine": host}, indent=2))
        bar_plot(dest / "pair_accuracy.png", bars, "accuracy on held-out human pairs",
                 f"{s['n_eval']} held-out human pairs (95% interval)", hline=0.5)
        print("saved", dest)


if __name__ == "__main__":
    main()
