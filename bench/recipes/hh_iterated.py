"""Recipe `hh-iterated`: how well each `afd irl` iteration's reward ranks human preferences.

Same split as `hh-harmless` (its make_data, same seed): demonstrations are the `chosen`
final assistant turns of the train pairs of HH-RLHF harmless-base; the 400 held-out
chosen/rejected pairs are never trained on. SFT of smollm2-135m-instruct on the
demonstrations, then `afd irl` for 3 iterations; each iteration's Bradley-Terry reward model
(demonstrations versus the policy's own samples, all iterations' pairs so far; MiniLM-L6
backbone, as in hh-harmless) is scored on the held-out human pairs. No reward model here sees
a preference label.

    python bench/recipes/hh_iterated.py            # about 25 min on 2 CPU cores
    python bench/recipes/hh_iterated.py --quick

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
from common import RESULTS, machine  # noqa: E402
from hh_harmless import make_data  # noqa: E402


def pipeline(out: str, files: dict, s: dict) -> dict:
    seq = {"max_length": 320, "max_prompt_length": 256}
    return {
        "out": out, "seed": 0, "model": "smollm2-135m-instruct",
        "stages": {
            "sft": {"data": files["demos"], "epochs": 1, "lr": 5.0e-5, "batch_size": 8, "eval_fraction": 0.05,
                    "logging_steps": 5, **seq},
            "irl": {"model": "@sft", "data": files["demos"], "iterations": s["iterations"], "max_new_tokens": 64,
                    "reward_model": "minilm-l6", "reward_epochs": 2, "reward_lr": 5e-5, "eval_fraction": 0.1,
                    "eval_pairs": files["eval_pairs"], "kl_coef": 0.05, "num_generations": 4, "batch_size": 8,
                    "lr": 3e-5, "max_steps": s["rl_steps"], "logging_steps": 2, **seq},
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/hh-iterated")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    s = dict(n_train=16, n_eval=32, iterations=2, rl_steps=1) if args.quick else \
        dict(n_train=160, n_eval=400, iterations=3, rl_steps=4)
    files = make_data(Path(args.out) / "data", s["n_train"], s["n_eval"])
    from afd.eval import wilson_interval
    from afd.pipeline import run
    from afd.plots import bar_plot

    results = run(pipeline(args.out, files, s),
                  report=lambda name, m: print(f"[{name}] done in {m.get('seconds', 0):.0f} s", flush=True))
    host = machine()
    rows, bars = [], {}
    for it in results["irl"]["iterations"]:
        acc = it["reward_pair_accuracy"]
        lo, hi = wilson_interval(acc, s["n_eval"])
        rows.append(f"| {it['iteration'] + 1} | {it['pairs']} | {fmt(it['reward_eval_pair_accuracy'])} | "
                    f"{acc:.3f} | [{lo:.3f}, {hi:.3f}] |")
        bars[f"irl iter {it['iteration'] + 1}"] = (acc, lo, hi)
    table = "\n".join([
        f"# hh-iterated: each irl iteration's reward on {s['n_eval']} held-out human preference pairs", "",
        f"Machine: {host['cpu']}, {host['cores']} cores. SFT of smollm2-135m-instruct on {s['n_train']} chosen "
        f"replies, then `afd irl` ({s['rl_steps']} RLOO steps of 2 prompts x 4 samples an iteration, lr 3e-5, "
        "KL coefficient 0.05); reward models "
        "Bradley-Terry on MiniLM-L6, demonstrations versus policy samples; no preference label seen.", "",
        "| iteration | training pairs (demo vs sample) | held-out demo-vs-sample accuracy | "
        "human pair accuracy | 95% interval |", "|---|---|---|---|---|", *rows, "",
        "For comparison (bench/results/hh-harmless, same split and backbone): init-sft 0.537, bt on the "
        "train pairs' human labels 0.550.", "", "![pair accuracy](pair_accuracy.png)", ""])
    print(table)
    if not args.quick:
        dest = RESULTS / "hh-iterated"
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "results.md").write_text(table)
        (dest / "metrics.json").write_text(json.dumps({"irl": results["irl"], "sft": results["sft"], "setup": s,
                                                       "machine": host}, indent=2))
        bar_plot(dest / "pair_accuracy.png", bars, "accuracy on held-out human pairs",
                 f"{s['n_eval']} held-out human pairs (95% Wilson interval)", hline=0.5)
        print("saved", dest)


def fmt(x, digits=3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


if __name__ == "__main__":
    main()
