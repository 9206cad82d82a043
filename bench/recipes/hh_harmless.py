"""Recipe `hh-harmless`: a reward model from demonstrations only, scored on human preferences.

Demonstrations are the `chosen` final assistant turns of HH-RLHF harmless-base (test split,
../shared/data). The `init-sft` reward model never sees a preference label: it learns to
tell samples of the SFT policy from samples of pi_0. Its accuracy on held-out human
chosen/rejected pairs is reported beside a `bt` reward model trained on the other pairs, with
the same backbone and the same number of training examples and epochs.

    python bench/recipes/hh_harmless.py --seeds 0,1,2   # ~15 min a seed on 2 CPU cores (at cap 64)
    python bench/recipes/hh_harmless.py --smoke         # tiny-random, every stage
    python bench/recipes/hh_harmless.py --report-only   # redraw table and plot from metrics.json

Results: bench/results/hh-harmless/.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from common import RESULTS, SHARED_DATA, aggregate, ci, machine, rm_figures, run_seeds, saves_result, seeds_arg  # noqa: E402

HH = SHARED_DATA / "hh-rlhf_harmless-base_test.jsonl.gz"


def make_data(folder: Path, n_train: int, n_eval: int, seed: int = 0) -> dict:
    """Split the HH pairs: train pairs (their chosen replies are the demonstrations, and
    the bt baseline trains on them) and held-out evaluation pairs."""
    from afd.data import DataConfig, load_pairs, split

    pairs, _ = load_pairs(DataConfig(path=str(HH), on_invalid="skip"))
    # held out by prompt: no conversation is both trained on and evaluated on
    train, held = split(pairs, n_eval / len(pairs), seed, key=lambda p: json.dumps(p.prompt, sort_keys=True))
    # the training pairs are a seeded draw too (not the file's first n_train), so seed = data split
    random.Random(seed).shuffle(train)
    train, held = train[:n_train], held[:n_eval]
    folder.mkdir(parents=True, exist_ok=True)

    def write(name, rows):
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)

    return {
        "train_pairs": write("train_pairs", [{"id": p.id, "prompt": p.prompt, "chosen": p.chosen,
                                              "rejected": p.rejected} for p in train]),
        "eval_pairs": write("eval_pairs", [{"id": p.id, "prompt": p.prompt, "chosen": p.chosen,
                                            "rejected": p.rejected} for p in held]),
        "demos": write("demos", [{"id": p.id, "prompt": p.prompt, "completion": p.chosen} for p in train]),
        "prompts": write("prompts", [{"id": p.id, "prompt": p.prompt} for p in train]),
    }


NEW_TOKENS = 128  # sample cap; each pool's share of samples cut at it is reported


def pipeline(out: str, files: dict, k: int, new_tokens: int, seed: int = 0, smoke: bool = False) -> dict:
    x = 4 if smoke else 1  # tiny-random's byte tokens: longer sequences
    rm = {"kind": "reward", "model": "tiny-random" if smoke else "minilm-l6", "epochs": 2, "lr": 5.0e-5,
          "batch_size": 16, "eval_fraction": 0.1, "max_length": 320 * x, "max_prompt_length": 256 * x,
          "logging_steps": 5, "eval_pairs": files["eval_pairs"]}
    pool = {"kind": "sample", "max_new_tokens": new_tokens, "max_prompt_length": 256 * x, "num_samples": k,
            "data": files["prompts"]}
    return {
        "out": out, "seed": seed, "model": "tiny-random" if smoke else "smollm2-135m-instruct",
        "stages": {
            "sft": {"data": files["demos"], "epochs": 1, "lr": 5.0e-5, "batch_size": 8, "eval_fraction": 0.05,
                    "max_length": 320 * x, "max_prompt_length": 256 * x, "logging_steps": 5},
            "pool_init": {**pool},
            "pool_sft": {**pool, "model": "@sft"},
            "rm_init_sft": {**rm, "variant": "init-sft", "init_pool": "@pool_init", "sft_pool": "@pool_sft"},
            # the same budget: init-sft sees 2k sequences a prompt for `epochs`; bt sees 2 a pair, k times as often
            "rm_bt": {**rm, "variant": "bt", "data": files["train_pairs"], "epochs": rm["epochs"] * k},
        },
    }


def seed_figures(results: dict) -> dict:
    """One seed's figures: each reward model's human-pair accuracy (ties counted) and its
    held-out figures beside the length-only control; the pools' share of cut samples."""
    return {"reward_models": {results[k]["variant"]: {**rm_figures(results[k]), "pairs": results[k]["pairs"],
                                                      "train_examples": results[k]["train_examples"]}
                              for k in ("rm_init_sft", "rm_bt")},
            "cut_at_max_new_tokens": {k: 1 - results[k]["finished_by_eos"] for k in ("pool_init", "pool_sft")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/hh-harmless")
    ap.add_argument("--quick", action="store_true", help="a small run of every stage (results not saved)")
    ap.add_argument("--smoke", action="store_true", help="--quick with tiny-random as policy and reward backbone")
    ap.add_argument("--seeds", type=seeds_arg, default=[0], help="e.g. 0,1,2: one run per seed (data split, "
                                                                  "sampling, training); mean and 95%% interval across")
    ap.add_argument("--max-new-tokens", type=int, default=NEW_TOKENS, help="sample cap of the pools")
    ap.add_argument("--report-only", action="store_true", help="redraw the table and plot from the saved metrics")
    args = ap.parse_args()
    quick = args.quick or args.smoke
    n_train, n_eval, k = (48, 64, 2) if quick else (160, 400, 2)
    setup = {"n_train": n_train, "n_eval": n_eval, "k": k, "new_tokens": args.max_new_tokens}
    if args.report_only:
        saved = json.loads((RESULTS / "hh-harmless" / "metrics.json").read_text())
        report(saved["per_seed"], saved["seeds"], saved["setup"], saved["machine"], save=True)
        return
    per_seed = run_seeds(args.out, args.seeds, lambda out, seed: make_data(Path(out) / "data", n_train, n_eval, seed),
                         lambda out, files, seed: pipeline(out, files, k, args.max_new_tokens, seed, args.smoke),
                         lambda results, out: seed_figures(results))
    report(per_seed, args.seeds, setup, machine(), save=saves_result(args.seeds, quick))


def report(per_seed: dict, seeds: list[int], setup: dict, host: dict, save: bool) -> None:
    """The results table (results.md), the figures (metrics.json) and a bar plot of pair
    accuracy, mean over seeds with its 95% t interval (one seed: Wilson interval)
    (pair_accuracy.png)."""
    from afd.stats import wilson_interval
    from afd.plots import bar_plot

    agg = aggregate(list(per_seed.values()))
    rows, bars = [], {}
    for name, m in agg["reward_models"].items():
        acc = m["pair_accuracy"]
        if acc["ci95"] is not None:
            lo, hi = acc["ci95"]
        else:
            lo, hi = wilson_interval(acc["mean"], int(m["pairs"]["mean"]))
        labels = "none (demonstrations only)" if name != "bt" else "train pairs"
        rows.append(f"| {name} | {labels} | {ci(acc)} | {ci(m['pair_accuracy_untied'])} | {ci(m['pairs_tied'], 1)} | "
                    f"{ci(m['longer_chosen_accuracy'])} | {ci(m['prefers_longer'])} | {ci(m['eval_accuracy'])} | "
                    f"{ci(m['length_only_accuracy'])} | {ci(m['eval_pair_accuracy'])} | "
                    f"{ci(m['length_only_pair_accuracy'])} |")
        bars[name] = (acc["mean"], lo, hi)
    pairs = int(next(iter(agg["reward_models"].values()))["pairs"]["mean"])
    cut = ", ".join(f"{k} {ci(v, 2)}" for k, v in agg["cut_at_max_new_tokens"].items())
    table = "\n".join([
        f"# hh-harmless: accuracy on {pairs} held-out human preference pairs (seeds {seeds})", "",
        f"Machine: {host['cpu']}, {host['cores']} cores. Per seed (split by prompt, sampling, training): "
        f"MiniLM-L6 backbone for both reward models; SFT of smollm2-135m-instruct on {setup['n_train']} chosen "
        f"replies; init-sft pools: {setup['k']} samples a prompt, at most {setup.get('new_tokens')} new tokens "
        f"(share cut: {cut}). Mean [95% t interval] over seeds. Reward-model inputs longer than max_length lose "
        "prompt tokens from the left, so two replies never become one input; tied pairs count half and are "
        "also left out (untied). Length controls: on the human pairs, \"the longer reply wins\"; on each "
        "model's own held-out split, a length-only classifier fitted on its training split.", "",
        "| reward model | preference labels used | human pair accuracy | untied | tied pairs | longer-wins accuracy | "
        "prefers longer | held-out accuracy (own split) | length-only accuracy (same split) | held-out pair "
        "accuracy | length-only pair accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|---|", *rows, "", "![pair accuracy](pair_accuracy.png)", ""])
    print(table)
    if save:
        dest = RESULTS / "hh-harmless"
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "results.md").write_text(table)
        (dest / "metrics.json").write_text(json.dumps(
            {"seeds": seeds, "setup": setup, "reward_models": agg["reward_models"], "across_seeds": agg,
             "per_seed": per_seed, "machine": host}, indent=2))
        bar_plot(dest / "pair_accuracy.png", bars, "accuracy on held-out human pairs",
                 f"{pairs} held-out human pairs (95% interval)", hline=0.5)
        print("saved", dest)


if __name__ == "__main__":
    main()
