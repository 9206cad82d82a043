"""Recipe `hh-ava`: AVA reward models against Bradley-Terry on human preferences (issue: AVA).

HH-RLHF harmless-base (test split, ../shared/data), split as in `hh-harmless`. Three reward
models with the same backbone (smollm2-135m-instruct; AVA's pretrained Q head needs a causal
LM), the same training pairs, epochs, learning rate and batch size:

- `bt`: ``AutoModelForSequenceClassification``, pairwise Bradley-Terry on the pairs;
- `ava-p`: AVA from the same pairs (METHODS §3);
- `ava-d`: AVA from the chosen replies only, as demonstrations: no preference label.

Each is scored on the same held-out pairs (accuracy of ranking chosen over rejected), next to
the paper's GPT-2 figures on the full data set (Harmless: BT 70.02, AVA-p 70.27, AVA-d 70.54),
once per seed (``--seeds``; each seed is its own split of training and held-out pairs, and its
own training): per-seed figures,
their mean with a 95% t-interval over seeds, ``prefers_longer`` (the share of unequal-length
pairs in which the longer reply gets the higher reward), and ``length_only_accuracy``, the
accuracy on the same held-out pairs of a length-only classifier: "the longer reply wins" or
"the shorter reply wins", whichever is right more often on the training pairs.

    python bench/recipes/hh_ava.py --seeds 0,1,2    # ~35 min a seed on 2 CPU cores
    python bench/recipes/hh_ava.py --smoke          # tiny-random, 16 pairs: checks the recipe runs
    python bench/recipes/hh_ava.py --report-only

Results: bench/results/hh-ava/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from common import RESULTS, across_seeds, ci, machine, saves_result, seeds_arg  # noqa: E402
from hh_harmless import make_data  # noqa: E402

PAPER = {"bt": 70.02, "ava-p": 70.27, "ava-d": 70.54}
BACKBONE = "smollm2-135m-instruct"


ABLATIONS = {"rm_ava_p_no_td": {"ava_lambda": 0.0}, "rm_ava_p_no_contrastive": {"ava_contrastive": 0.0},
             "rm_ava_p_uniform": {"ava_weighting": "uniform"}, "rm_ava_p_new_q": {"ava_q_head": "new"},
             # AVA-d's reward head is trained by the prior and TD terms only; at the backbone's lr 5e-5 for
             # ~10 steps it barely leaves its random start (bench/ava_d_diagnosis.py): the heads at 1e-3
             "rm_ava_d_head_lr": {"ava_head_lr": 1e-3}}


def ablation_base(name: str) -> str:
    """The model an ablation switches one option of: AVA-d's for rm_ava_d_*, else AVA-p's."""
    return "rm_ava_d" if name.startswith("rm_ava_d") else "rm_ava_p"


def pipeline(out: str, files: dict, epochs: float, ablations: list[str], seed: int,
             backbone: str = BACKBONE) -> dict:
    """One seed's reward models (seed = data split and training), on that seed's files."""
    limits = {"max_length": 320, "max_prompt_length": 256} if backbone == BACKBONE else \
        {"max_length": 1200, "max_prompt_length": 1000}  # tiny-random's byte-level tokens
    rm = {"kind": "reward", "model": backbone, "epochs": epochs, "lr": 5.0e-5, "batch_size": 4,
          "grad_accum": 2, "eval_fraction": 0.0, "logging_steps": 2, "eval_pairs": files["eval_pairs"],
          "save_steps": 20, "seed": seed, **limits}
    stages = {
        "rm_bt": {**rm, "variant": "bt", "data": files["train_pairs"]},
        "rm_ava_p": {**rm, "variant": "ava-p", "data": files["train_pairs"]},
        "rm_ava_d": {**rm, "variant": "ava-d", "data": files["demos"]},
    }
    for name in ablations:  # the paper's ablation switches, one at a time, on AVA-p (rm_ava_d_*: on AVA-d)
        stages[name] = {**stages[ablation_base(name)], **ABLATIONS[name]}
    return {"out": out, "seed": seed, "stages": stages}


def length_only(train_pairs: str, eval_pairs: str) -> dict:
    """Accuracy on the held-out pairs of "the longer reply wins" and of the length-only rule
    (longer or shorter wins) that is right more often on the training pairs (lengths in
    characters, as ``prefers_longer``; ties half)."""
    from afd.data import DataConfig, load_pairs

    def longer_wins(path: str) -> float:
        pairs, _ = load_pairs(DataConfig(path=path))
        return sum(1.0 if len(p.chosen) > len(p.rejected) else 0.5 if len(p.chosen) == len(p.rejected) else 0.0
                   for p in pairs) / len(pairs)

    train, held = longer_wins(train_pairs), longer_wins(eval_pairs)
    return {"longer_wins_accuracy": held, "length_only_rule": "longer wins" if train >= 0.5 else "shorter wins",
            "length_only_accuracy": held if train >= 0.5 else 1 - held}


def summarise(per_seed_results: dict, names: list[str]) -> dict:
    """name -> per-seed metrics, and across seeds the mean and 95% t interval of pair accuracy,
    prefers_longer and the length-only control (each seed has its own split, so its own control)."""
    out = {}
    for name in names:
        per_seed = {s: r[name] for s, r in per_seed_results.items()}
        first = next(iter(per_seed.values()))
        out[name] = {"variant": first["variant"], "per_seed": per_seed,
                     "pair_accuracy": across_seeds([m["pair_accuracy"] for m in per_seed.values()]),
                     "prefers_longer": across_seeds([m.get("prefers_longer") for m in per_seed.values()]),
                     "length_only_accuracy": across_seeds([r["length_only"]["length_only_accuracy"]
                                                           for r in per_seed_results.values()]),
                     "pairs": first["pairs"], "train_examples": first["train_examples"],
                     "minutes_per_seed": sum(m.get("seconds", 0) for m in per_seed.values()) / len(per_seed) / 60}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/hh-ava")
    ap.add_argument("--seeds", default="0", help="training seeds, comma-separated (results need at least 3)")
    ap.add_argument("--quick", action="store_true", help="smollm2 on 16 training and 32 held-out pairs")
    ap.add_argument("--smoke", action="store_true", help="tiny-random on 16 and 16 pairs, 2 steps: the recipe runs")
    ap.add_argument("--report-only", action="store_true", help="redraw the table and plot from the saved metrics")
    ap.add_argument("--ablations", nargs="?", const=",".join(ABLATIONS), default="",
                    help="also AVA-p (rm_ava_d_*: AVA-d) with one option switched: all (~12 min each a seed), "
                         "or a comma list of "
                         + ", ".join(ABLATIONS))
    ap.add_argument("--n-train", type=int, default=160, help="training pairs a seed")
    ap.add_argument("--n-eval", type=int, default=400, help="held-out pairs a seed")
    args = ap.parse_args()
    seeds = seeds_arg(args.seeds)
    ablations = [a for a in args.ablations.split(",") if a]
    unknown = [a for a in ablations if a not in ABLATIONS]
    if unknown:
        ap.error(f"unknown ablation {unknown[0]}; known: {', '.join(ABLATIONS)}")
    if args.report_only:
        saved = json.loads((RESULTS / "hh-ava" / "metrics.json").read_text())
        report(saved, save=True)
        return
    small = args.quick or args.smoke
    n_train, n_eval, epochs = (16, 32 if args.quick else 16, 1) if small else (args.n_train, args.n_eval, 1)
    backbone = "tiny-random" if args.smoke else BACKBONE
    from afd.pipeline import run

    per_seed = {}
    for seed in seeds:  # seed = data split (training and held-out pairs) and training
        out = Path(args.out) / f"seed-{seed}"
        files = make_data(out / "data", n_train, n_eval, seed)
        config = pipeline(str(out), files, epochs, ablations, seed, backbone)
        if args.smoke:
            for options in config["stages"].values():
                options["max_steps"] = 2
        results = run(config, report=lambda name, m: print(f"[seed {seed}: {name}] done in {m.get('seconds', 0):.0f} s",
                                                           flush=True))
        per_seed[str(seed)] = {**results, "length_only": length_only(files["train_pairs"], files["eval_pairs"])}
    names = ["rm_bt", "rm_ava_p", "rm_ava_d", *ablations]
    saved = {"seeds": seeds, "models": summarise(per_seed, names), "paper": PAPER,
             "length_only": {s: r["length_only"] for s, r in per_seed.items()},
             "length_only_accuracy": across_seeds([r["length_only"]["length_only_accuracy"] for r in per_seed.values()]),
             "longer_wins_accuracy": across_seeds([r["length_only"]["longer_wins_accuracy"] for r in per_seed.values()]),
             "setup": {"n_train": n_train, "n_eval": n_eval, "epochs": epochs, "backbone": backbone},
             "machine": machine()}
    for m in saved["models"].values():  # the figures the issue asks for at the top level of each model
        m["seeds"] = seeds
    report(saved, save=not small)


def report(saved: dict, save: bool) -> None:
    from afd.plots import bar_plot

    results, setup, host, seeds = saved["models"], saved["setup"], saved["machine"], saved["seeds"]
    rows, bars = [], {}
    for name, m in results.items():
        acc = m["pair_accuracy"]
        mean, (lo, hi) = acc["mean"], acc["ci95"] or (acc["mean"], acc["mean"])
        data = "chosen replies only (no label)" if m["variant"] == "ava-d" else "pairs"
        label = m["variant"] + "".join(f", {k}={v}" for k, v in ABLATIONS.get(name, {}).items())
        paper = f"{PAPER[m['variant']]:.2f}" if name not in ABLATIONS else "–"
        per_seed = ", ".join(f"{s['pair_accuracy']:.3f}" for s in m["per_seed"].values())
        longer = (m.get("prefers_longer") or {}).get("mean")
        rows.append(f"| {label} | {data} | {m['train_examples']} | {per_seed} | {mean:.3f} | "
                    f"[{lo:.3f}, {hi:.3f}] | {'–' if longer is None else f'{longer:.3f}'} | {paper} | "
                    f"{m['minutes_per_seed']:.1f} |")
        bars[label.replace("ava_", "")] = (mean, lo, hi)
    pairs = next(iter(results.values()))["pairs"]
    table = "\n".join([
        f"# hh-ava: reward accuracy on {pairs} held-out HH-RLHF harmless pairs", "",
        f"Machine: {host['cpu']}, {host['cores']} cores. Backbone {setup['backbone']} for all three; "
        f"{setup['n_train']} training pairs, of which those whose prompt fits 256 tokens are used, {setup['epochs']} "
        "epoch, lr 5e-5, 8 sequences or pairs a step; seeds " + ", ".join(map(str, seeds)) + " (each seed its own "
        "split, held out by prompt, and its own training). AVA defaults (afd/ava.py): alpha 1, beta 20, gamma 1, lambda 1, contrastive 1, attention weights "
        "from the last layer; AVA-p ranks by the last step's reward (Eq. 18), AVA-d by sum_t w_t mu_t. The paper "
        "trained GPT-2 on the whole data set.", "",
        "| reward model | trained on | training examples | pair accuracy per seed | mean | 95% interval (t, over "
        "seeds) | prefers the longer reply | paper (GPT-2, %) | minutes a seed |",
        "|---|---|---|---|---|---|---|---|---|", *rows, "",
        "\"Prefers the longer reply\": the share of the pairs of unequal length in which the model ranks the longer "
        "reply higher (mean over seeds). A length-only classifier (longer or shorter wins, whichever is right more "
        f"often on the seed's training pairs) scores {ci(saved['length_only_accuracy'])} on the held-out pairs; "
        f"\"the longer reply wins\", {ci(saved['longer_wins_accuracy'])}.", "",
        "![pair accuracy](pair_accuracy.png)", ""])
    print(table)
    if save:
        if not saves_result(seeds, False):
            return
        dest = RESULTS / "hh-ava"
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "results.md").write_text(table)
        (dest / "metrics.json").write_text(json.dumps(saved, indent=2))
        bar_plot(dest / "pair_accuracy.png", bars, "accuracy on held-out human pairs",
                 f"{pairs} held-out HH harmless pairs (mean over seeds, 95% t-interval)", hline=0.5)
        print("saved", dest)


if __name__ == "__main__":
    main()
