"""Recipe `hh-ava`: AVA reward models against Bradley-Terry on human preferences (issue: AVA).

HH-RLHF harmless-base (test split, ../shared/data), split as in `hh-harmless`. Three reward
models with the same backbone (smollm2-135m-instruct; AVA's pretrained Q head needs a causal
LM), the same training pairs, epochs, learning rate and batch size:

- `bt`: ``AutoModelForSequenceClassification``, pairwise Bradley-Terry on the pairs;
- `ava-p`: AVA from the same pairs (METHODS §3);
- `ava-d`: AVA from the chosen replies only, as demonstrations: no preference label.

Each is scored on the same held-out pairs (accuracy of ranking chosen over rejected), next to
the paper's GPT-2 figures on the full data set (Harmless: BT 70.0, AVA-p 70.3, AVA-d 70.5).

    python bench/recipes/hh_ava.py            # ~35 min on 2 CPU cores
    python bench/recipes/hh_ava.py --quick
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
from common import RESULTS, machine  # noqa: E402
from hh_harmless import make_data  # noqa: E402

PAPER = {"bt": 70.0, "ava-p": 70.3, "ava-d": 70.5}
BACKBONE = "smollm2-135m-instruct"


ABLATIONS = {"rm_ava_p_no_td": {"ava_lambda": 0.0}, "rm_ava_p_no_contrastive": {"ava_contrastive": 0.0},
             "rm_ava_p_uniform": {"ava_weighting": "uniform"}, "rm_ava_p_new_q": {"ava_q_head": "new"}}


def pipeline(out: str, files: dict, epochs: float, ablations: list[str]) -> dict:
    rm = {"kind": "reward", "model": BACKBONE, "epochs": epochs, "lr": 5.0e-5, "batch_size": 4,
          "grad_accum": 2, "eval_fraction": 0.0, "max_length": 320, "max_prompt_length": 256, "logging_steps": 2,
          "eval_pairs": files["eval_pairs"], "save_steps": 20}
    stages = {
        "rm_bt": {**rm, "variant": "bt", "data": files["train_pairs"]},
        "rm_ava_p": {**rm, "variant": "ava-p", "data": files["train_pairs"]},
        "rm_ava_d": {**rm, "variant": "ava-d", "data": files["demos"]},
    }
    for name in ablations:  # the paper's ablation switches, one at a time, on AVA-p
        stages[name] = {**stages["rm_ava_p"], **ABLATIONS[name]}
    return {"out": out, "seed": 0, "stages": stages}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/hh-ava")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--report-only", action="store_true", help="redraw the table and plot from the saved metrics")
    ap.add_argument("--ablations", nargs="?", const=",".join(ABLATIONS), default="",
                    help="also AVA-p with ablation switches: all (~12 min each), or a comma list of "
                         + ", ".join(ABLATIONS))
    args = ap.parse_args()
    ablations = [a for a in args.ablations.split(",") if a]
    unknown = [a for a in ablations if a not in ABLATIONS]
    if unknown:
        ap.error(f"unknown ablation {unknown[0]}; known: {', '.join(ABLATIONS)}")
    n_train, n_eval, epochs = (16, 32, 1) if args.quick else (160, 400, 1)
    if args.report_only:
        saved = json.loads((RESULTS / "hh-ava" / "metrics.json").read_text())
        report(saved["models"], saved["setup"], saved["machine"], save=True)
        return
    from afd.pipeline import run

    files = make_data(Path(args.out) / "data", n_train, n_eval)
    results = run(pipeline(args.out, files, epochs, ablations),
                  report=lambda name, m: print(f"[{name}] done in {m.get('seconds', 0):.0f} s", flush=True))
    chosen = {name: results[name] for name in ("rm_bt", "rm_ava_p", "rm_ava_d", *ablations)}
    for name, m in chosen.items():
        if "prefers_longer" not in m:  # stages finished before afd reported it: score them again
            m.update(length_metrics(str(Path(args.out) / name / "model"), files["eval_pairs"]))
    report(chosen,
           {"n_train": n_train, "epochs": epochs, "backbone": BACKBONE}, machine(), save=not args.quick)


def length_metrics(model: str, pairs_path: str) -> dict:
    from afd.data import DataConfig, load_pairs
    from afd.reward import length_bias
    from afd.scorers import make_scorer

    pairs, _ = load_pairs(DataConfig(path=pairs_path))
    score = make_scorer(model, batch_size=8)
    prompts = [p.prompt for p in pairs]
    return length_bias(score(prompts, [p.chosen for p in pairs]), score(prompts, [p.rejected for p in pairs]),
                       [(len(p.chosen), len(p.rejected)) for p in pairs])


def report(results: dict, setup: dict, host: dict, save: bool) -> None:
    from afd.eval import wilson_interval
    from afd.plots import bar_plot

    rows, bars = [], {}
    for name, m in results.items():
        lo, hi = wilson_interval(m["pair_accuracy"], m["pairs"])
        data = "chosen replies only (no label)" if m["variant"] == "ava-d" else "pairs"
        label = m["variant"] + "".join(f", {k}={v}" for k, v in ABLATIONS.get(name, {}).items())
        paper = f"{PAPER[m['variant']]:.1f}" if name not in ABLATIONS else "–"
        longer = m.get("prefers_longer")
        rows.append(f"| {label} | {data} | {m['train_examples']} | {m['pair_accuracy']:.3f} | "
                    f"[{lo:.3f}, {hi:.3f}] | {'–' if longer is None else f'{longer:.3f}'} | {paper} | "
                    f"{m['seconds'] / 60:.1f} |")
        bars[label.replace("ava_", "")] = (m["pair_accuracy"], lo, hi)
    pairs = next(iter(results.values()))["pairs"]
    table = "\n".join([
        f"# hh-ava: reward accuracy on {pairs} held-out HH-RLHF harmless pairs", "",
        f"Machine: {host['cpu']}, {host['cores']} cores. Backbone {setup['backbone']} for all three; "
        f"{setup['n_train']} training pairs, of which those whose prompt fits 256 tokens are used, {setup['epochs']} "
        "epoch, "
        "lr 5e-5, 8 sequences or pairs a step. AVA defaults: alpha 1, beta 10, gamma 1, lambda 1, contrastive 1, "
        "attention weights from the last layer. The paper trained GPT-2 on the whole data set.", "",
        "| reward model | trained on | training examples | pair accuracy | 95% interval | prefers the longer reply | "
        "paper (GPT-2, %) | minutes |", "|---|---|---|---|---|---|---|---|", *rows, "",
        "\"Prefers the longer reply\": the share of the pairs of unequal length in which the model ranks the longer "
        "reply higher. The rule \"the longer reply wins\" alone scores "
        f"{next(iter(results.values())).get('longer_chosen_accuracy', float('nan')):.3f} on these pairs.", "",
        "![pair accuracy](pair_accuracy.png)", ""])
    print(table)
    if save:
        dest = RESULTS / "hh-ava"
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "results.md").write_text(table)
        (dest / "metrics.json").write_text(json.dumps({"models": results, "setup": setup, "machine": host},
                                                      indent=2))
        bar_plot(dest / "pair_accuracy.png", bars, "accuracy on held-out human pairs",
                 f"{pairs} held-out HH harmless pairs (95% Wilson interval)", hline=0.5)
        print("saved", dest)


if __name__ == "__main__":
    main()
