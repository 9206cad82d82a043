"""Recipe `imdb-positive`: AfD's reward-model comparison on new data (issue: AfD end to end).

Prompts are the openings of IMDB reviews; demonstrations are the human-written continuations
of positive reviews; the policy is smollm2-135m-instruct; the golden judge is VADER. Compares
pi_0, SFT, and Best-of-N (N = 1..32, from one pool per policy) under the `init-sft`,
`init-demo` and `sft-demo` reward models and the density ratio, and reports whether the
heterogeneous reward models (demonstrations against model samples) reward-hack.

    python bench/recipes/imdb_positive.py            # ~30-40 min on 2 CPU cores
    python bench/recipes/imdb_positive.py --quick    # a smaller smoke run

Data is read from ../shared/data/imdb_subset.csv and written, as prompt and demonstration
files, into the run folder only. Results: bench/results/imdb-positive/.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from common import RESULTS, SHARED_DATA, machine  # noqa: E402

INSTRUCTION = "Continue this movie review:\n\n"


def words(text: str) -> list[str]:
    return text.replace("<br />", " ").split()


def make_data(folder: Path, n_demos: int, n_rm: int, n_eval: int, open_words: int, cont_words: int, seed: int = 0):
    with open(SHARED_DATA / "imdb_subset.csv", newline="") as f:
        reviews = [r for r in csv.DictReader(f) if len(words(r["review"])) >= open_words + cont_words]
    rng = random.Random(seed)
    rng.shuffle(reviews)
    positive = [r for r in reviews if r["sentiment"] == "positive"]
    demos_src, rest = positive[:n_demos], reviews
    used = {id(r) for r in demos_src}
    others = [r for r in rest if id(r) not in used]
    rm_src, eval_src = others[:n_rm], others[n_rm:n_rm + n_eval]
    norm_src = [r for r in positive[n_demos:] if id(r) not in {id(x) for x in rm_src + eval_src}][:100]

    def prompt(r):
        return INSTRUCTION + " ".join(words(r["review"])[:open_words])

    def cont(r):
        return " ".join(words(r["review"])[open_words:open_words + cont_words])

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, rows in [("demos", [{"id": f"demo-{i}", "prompt": prompt(r), "completion": cont(r)}
                                  for i, r in enumerate(demos_src)]),
                       ("norm_demos", [{"id": f"norm-{i}", "prompt": prompt(r), "completion": cont(r)}
                                       for i, r in enumerate(norm_src)]),
                       ("rm_prompts", [{"id": f"rm-{i}", "prompt": prompt(r)} for i, r in enumerate(rm_src)]),
                       ("eval_prompts", [{"id": f"eval-{i}", "prompt": prompt(r)} for i, r in enumerate(eval_src)])]:
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(x) + "\n" for x in rows))
        files[name] = str(path)
    return files


def pipeline(out: str, files: dict, k_eval: int, k_rm: int, new_tokens: int, sft_epochs: float) -> dict:
    policy = "smollm2-135m-instruct"
    pool = {"kind": "sample", "max_new_tokens": new_tokens, "max_prompt_length": 256}
    rm = {"kind": "reward", "model": "minilm-l6", "epochs": 3, "lr": 5.0e-5, "batch_size": 16,
          "eval_fraction": 0.15, "max_length": 256, "max_prompt_length": 128, "logging_steps": 5}
    return {
        "out": out, "seed": 0, "model": policy,
        "stages": {
            "sft": {"data": files["demos"], "epochs": sft_epochs, "lr": 5.0e-5, "batch_size": 8,
                    "eval_fraction": 0.05, "max_length": 256, "max_prompt_length": 128, "logging_steps": 5},
            "rm_pool_init": {**pool, "data": files["rm_prompts"], "num_samples": k_rm},
            "rm_pool_sft": {**pool, "model": "@sft", "data": files["rm_prompts"], "num_samples": k_rm},
            "rm_init_sft": {**rm, "variant": "init-sft", "init_pool": "@rm_pool_init", "sft_pool": "@rm_pool_sft"},
            "rm_init_demo": {**rm, "variant": "init-demo", "init_pool": "@rm_pool_init", "data": files["demos"]},
            "rm_sft_demo": {**rm, "variant": "sft-demo", "sft_pool": "@rm_pool_sft", "data": files["demos"]},
            "sample_init": {**pool, "data": files["eval_prompts"], "num_samples": k_eval},
            "sample_sft": {**pool, "model": "@sft", "data": files["eval_prompts"], "num_samples": k_eval},
            "eval": {"golden": "vader", "pools": {"init": "@sample_init", "sft": "@sample_sft"},
                     "proxies": {"init-sft": "@rm_init_sft", "init-demo": "@rm_init_demo",
                                 "sft-demo": "@rm_sft_demo", "density-ratio": f"density-ratio:@sft,{policy}"},
                     "demos": files["norm_demos"]},
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/imdb-positive")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    sizes = dict(n_demos=64, n_rm=16, n_eval=8, k_eval=8, k_rm=4, sft_epochs=1) if args.quick else \
        dict(n_demos=300, n_rm=96, n_eval=32, k_eval=32, k_rm=4, sft_epochs=1)
    files = make_data(Path(args.out) / "data", sizes["n_demos"], sizes["n_rm"], sizes["n_eval"], 24, 48)
    from afd.pipeline import run

    results = run(pipeline(args.out, files, sizes["k_eval"], sizes["k_rm"], 64, sizes["sft_epochs"]),
                  report=lambda name, m: print(f"[{name}] done in {m.get('seconds', 0):.0f} s", flush=True))
    ev = results["eval"]
    rms = {name: results[name] for name in ("rm_init_sft", "rm_init_demo", "rm_sft_demo")}
    lines = [f"# imdb-positive (smollm2-135m-instruct, golden judge VADER, "
             f"{sizes['n_eval']} held-out prompts x {sizes['k_eval']} samples per policy)", "",
             f"Machine: {machine()['cpu']}, {machine()['cores']} cores. SFT on {sizes['n_demos']} positive-review "
             f"continuations; reward models on MiniLM-L6 from {sizes['n_rm']} prompts x {sizes['k_rm']} samples.", "",
             "| reward model | held-out accuracy | AUC |", "|---|---|---|"]
    for name, m in rms.items():
        lines.append(f"| {m['variant']} | {m.get('eval_accuracy', float('nan')):.3f} | {m.get('eval_auc') or float('nan'):.3f} |")
    lines += ["", (Path(args.out) / "eval" / "report.md").read_text()]
    table = "\n".join(lines)
    print(table)
    if not args.quick:
        dest = RESULTS / "imdb-positive"
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "results.md").write_text(table)
        (dest / "metrics.json").write_text(json.dumps({"eval": ev, "reward_models": rms, "machine": machine()},
                                                      indent=2))
        for png in (Path(args.out) / "eval").glob("*.png"):
            shutil.copy(png, dest / png.name)
        print("saved", dest)


if __name__ == "__main__":
    main()
