"""Recipe `demo`: ``afd demo``'s pipeline, once per seed, to say how often its result holds.

``afd demo`` is one run (seed 0, the shipped split of its 80 prompts into 48 training and 32
held-out prompts). This study reruns the same pipeline (afd/demo.py's ``demo_config``, the same
settings) with seed = data split, sampling and training: each seed shuffles the 80 prompts
(they are drawn alike: one template over invented titles and genres) into 48 for the reward
model's pools and 32 held out for evaluation. Per seed: the golden reward (VADER) of pi_0, SFT
and Best-of-N from the SFT pool under the init-sft reward model and the density ratio, the
reward model's held-out accuracy beside its length-only control; across seeds, the mean and
a 95% t interval of each, and how many seeds' Best-of-N beat SFT.

    python bench/recipes/demo_study.py --seeds 0,1,2      # ~12 min a seed on 2 CPU cores
    python bench/recipes/demo_study.py --smoke --seeds 0,1

Results: bench/results/demo/ and the summary that ``afd demo`` prints,
afd/recipes/demo_study.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from common import (LENGTH_CONTROLS, RESULTS, aggregate, ci, machine, rm_figures, run_seeds, saves_result,  # noqa: E402
                    seeds_arg, with_length_controls)
from imdb_positive import eval_figures  # noqa: E402

from afd.demo import PROMPTS_EVAL, PROMPTS_TRAIN, STUDY, demo_config  # noqa: E402


def split(folder: Path, seed: int) -> dict:
    """The 80 demo prompts shuffled by ``seed`` into 48 training and 32 held-out prompts."""
    rows = [json.loads(line) for f in (PROMPTS_TRAIN, PROMPTS_EVAL) for line in open(f)]
    random.Random(seed).shuffle(rows)
    n_train = sum(1 for _ in open(PROMPTS_TRAIN))
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, part in (("train", rows[:n_train]), ("eval", rows[n_train:])):
        files[name] = str(folder / f"prompts_{name}.jsonl")
        Path(files[name]).write_text("".join(json.dumps(r) + "\n" for r in part))
    return files


def pipeline(out: str, files: dict, seed: int, smoke: bool) -> dict:
    config = demo_config(out, "tiny-random" if smoke else "smollm2-135m-instruct",
                         "tiny-random" if smoke else "minilm-l6", train=files["train"], held_out=files["eval"])
    config["seed"] = seed
    if smoke:
        for name, stage in config["stages"].items():
            if "max_new_tokens" in stage:
                stage["max_new_tokens"] = 16
            if name in ("sft", "reward"):
                stage["max_steps"] = 2
    return config


def seed_figures(results: dict, folder: Path) -> dict:
    ev = with_length_controls(eval_figures(results["eval"]), folder / "sample_sft" / "pool.jsonl")
    sft = ev["policies"]["sft"]["gold"]
    out = {**ev, "reward_model": rm_figures(results["reward"]), "bon_minus_sft": {}, "bon_beats_sft": {}}
    for proxy, b in ev["bon"].items():
        out["bon_minus_sft"][proxy] = b["gold"][-1] - sft
        out["bon_beats_sft"][proxy] = b["gold"][-1] > sft
    out["n"] = ev["bon"]["init-sft"]["n"][-1]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/demo-study")
    ap.add_argument("--seeds", type=seeds_arg, default=[0, 1, 2])
    ap.add_argument("--smoke", action="store_true", help="tiny-random, 16 new tokens: checks the plumbing")
    args = ap.parse_args()
    per_seed = run_seeds(args.out, args.seeds, lambda out, seed: split(Path(out) / "data", seed),
                         lambda out, files, seed: pipeline(out, files, seed, args.smoke), seed_figures)
    agg = aggregate(list(per_seed.values()))
    n = int(agg["n"]["mean"])
    beats = {p: sum(bool(s["bon_beats_sft"][p]) for s in per_seed.values()) for p in agg["bon_minus_sft"]}
    pol = agg["policies"]
    rm = agg["reward_model"]
    host = machine()
    lines = [f"# demo: `afd demo`'s pipeline over seeds {args.seeds}", "",
             f"Machine: {host['cpu']}, {host['cores']} cores. afd/demo.py's settings; each seed its own "
             "split of the 80 prompts (48 for the reward model's pools, 32 held out), sampling and training. "
             "Golden judge VADER; figures are mean [95% t interval] over seeds.", "",
             "| policy | golden reward |", "|---|---|",
             *[f"| {k} | {ci(v['gold'])} |" for k, v in pol.items()], "",
             f"| proxy | golden reward of BoN-{n} | BoN-{n} minus SFT | seeds where BoN-{n} beat SFT |",
             "|---|---|---|---|",
             *[f"| {p} | {ci(agg['bon'][p]['gold'][-1])} | {ci(agg['bon_minus_sft'][p])} | "
               f"{beats[p]} of {len(args.seeds)} |" for p in agg["bon_minus_sft"]], "",
             f"init-sft reward model: held-out accuracy {ci(rm['eval_accuracy'])}, length-only control "
             f"{ci(rm['length_only_accuracy'])}, EOS-only {ci(rm['eos_only_accuracy'])}.", ""]
    table = "\n".join(lines)
    print(table)
    if not saves_result(args.seeds, args.smoke):
        return
    dest = RESULTS / "demo"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "results.md").write_text(table)
    (dest / "metrics.json").write_text(json.dumps({"seeds": args.seeds, "across_seeds": agg, "per_seed": per_seed,
                                                   "bon_beats_sft_seeds": beats, "machine": host}, indent=2))
    # what `afd demo` prints: each reward, and the longest-sample control beside them
    shown = [p for p in agg["bon_minus_sft"] if p not in LENGTH_CONTROLS[1:]]
    summary = {"seeds": args.seeds, "n": n, "bon_beats_sft_seeds": {p: beats[p] for p in shown},
               "bon_minus_sft": {p: {"mean": agg["bon_minus_sft"][p]["mean"], "ci95": agg["bon_minus_sft"][p]["ci95"]}
                                 for p in shown},
               "reward_accuracy": {k: rm[k] and {"mean": rm[k]["mean"], "ci95": rm[k]["ci95"]}
                                   for k in ("eval_accuracy", "length_only_accuracy")}}
    STUDY.write_text(json.dumps(summary, indent=2) + "\n")
    print("saved", dest, "and", STUDY)


if __name__ == "__main__":
    main()
