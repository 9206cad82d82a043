"""Recipe `hh-harmless`: a reward model from demonstrations only, scored on human preferences.

Demonstrations are the `chosen` final assistant turns of HH-RLHF harmless-base (test split,
../shared/data). The `init-sft` reward model never sees a preference label: it learns to
tell samples of the SFT policy from samples of pi_0. Its accuracy on held-out human
chosen/rejected pairs is reported beside a `bt` reward model trained on the other pairs, with
the same backbone and the same number of training examples and epochs.

    python bench/recipes/hh_harmless.py            # ~15 min on 2 CPU cores
    python bench/recipes/hh_harmless.py --quick
    python bench/recipes/hh_harmless.py --report-only   # redraw table and plot from metrics.json

Results: bench/results/hh-harmless/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from common import RESULTS, SHARED_DATA, machine  # noqa: E402

HH = SHARED_DATA / "hh-rlhf_harmless-base_test.jsonl.gz"


def make_data(folder: Path, n_train: int, n_eval: int, seed: int = 0) -> dict:
    """Split the HH pairs: train pairs (their chosen replies are the demonstrations, and
    the bt baseline trains on them) and held-out evaluation pairs."""
    from afd.data import DataConfig, load_pairs, split

    pairs, _ = load_pairs(DataConfig(path=str(HH), on_invalid="skip"))
    train, held = split(pairs, n_eval / len(pairs), seed)
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


def pipeline(out: str, files: dict, k: int, new_tokens: int) -> dict:
    rm = {"kind": "reward", "model": "minilm-l6", "epochs": 2, "lr": 5.0e-5, "batch_size": 16,
          "eval_fraction": 0.1, "max_length": 320, "max_prompt_length": 256, "logging_steps": 5,
          "eval_pairs": files["eval_pairs"]}
    pool = {"kind": "sample", "max_new_tokens": new_tokens, "max_prompt_length": 256, "num_samples": k,
            "data": files["prompts"]}
    return {
        "out": out, "seed": 0, "model": "smollm2-135m-instruct",
        "stages": {
            "sft": {"data": files["demos"], "epochs": 1, "lr": 5.0e-5, "batch_size": 8, "eval_fraction": 0.05,
                    "max_length": 320, "max_prompt_length": 256, "logging_steps": 5},
            "pool_init": {**pool},
            "pool_sft": {**pool, "model": "@sft"},
            "rm_init_sft": {**rm, "variant": "init-sft", "init_pool": "@pool_init", "sft_pool": "@pool_sft"},
            # the same budget: init-sft sees 2k sequences a prompt for `epochs`; bt sees 2 a pair, k times as often
            "rm_bt": {**rm, "variant": "bt", "data": files["train_pairs"], "epochs": rm["epochs"] * k},
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/hh-harmless")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--report-only", action="store_true", help="redraw the table and plot from the saved metrics")
    args = ap.parse_args()
    n_train, n_eval, k = (48, 64, 2) if args.quick else (160, 400, 2)
    from afd.pipeline import run

    if args.report_only:
        saved = json.loads((RESULTS / "hh-harmless" / "metrics.json").read_text())
        report(saved, saved.pop("setup", {"n_train": n_train, "k": k}), saved.pop("machine"), save=True)
        return
    files = make_data(Path(args.out) / "data", n_train, n_eval)
    results = run(pipeline(args.out, files, k, 64),
                  report=lambda name, m: print(f"[{name}] done in {m.get('seconds', 0):.0f} s", flush=True))
    report({name: results[name] for name in ("rm_init_sft", "rm_bt")}, {"n_train": n_train, "k": k}, machine(),
           save=not args.quick)


def report(results: dict, setup: dict, host: dict, save: bool) -> None:
    """The results table (results.md), the figures (metrics.json) and a bar plot of pair
    accuracy with 95% Wilson intervals (pair_accuracy.png)."""
    from afd.eval import wilson_interval
    from afd.plots import bar_plot

    rows, bars = [], {}
    for name, m in results.items():
        lo, hi = wilson_interval(m["pair_accuracy"], m["pairs"])
        labels = "none (demonstrations only)" if m["variant"] != "bt" else "train pairs"
        rows.append(f"| {m['variant']} | {labels} | {m['train_examples']} | {m['pair_accuracy']:.3f} | "
                    f"[{lo:.3f}, {hi:.3f}] |")
        bars[m["variant"]] = (m["pair_accuracy"], lo, hi)
    pairs = next(iter(results.values()))["pairs"]
    table = "\n".join([
        f"# hh-harmless: accuracy on {pairs} held-out human preference pairs", "",
        f"Machine: {host['cpu']}, {host['cores']} cores. Backbone: MiniLM-L6 for both reward models. "
        f"SFT of smollm2-135m-instruct on {setup['n_train']} chosen replies; init-sft pools: {setup['k']} samples "
        "a prompt.", "",
        "| reward model | preference labels used | training examples | pair accuracy | 95% interval |",
        "|---|---|---|---|---|", *rows, "", "![pair accuracy](pair_accuracy.png)", ""])
    print(table)
    if save:
        dest = RESULTS / "hh-harmless"
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "results.md").write_text(table)
        (dest / "metrics.json").write_text(json.dumps(results | {"setup": setup, "machine": host}, indent=2))
        bar_plot(dest / "pair_accuracy.png", bars, "accuracy on held-out human pairs",
                 f"{pairs} held-out human pairs (95% Wilson interval)", hline=0.5)
        print("saved", dest)

if __name__ == "__main__":
    main()
