"""``afd demo``: AfD end to end, offline, on the default model, in minutes on a laptop CPU.

The task: write short, glowing film reviews. Demonstrations come from a demonstrator, the
same SmolLM2-135M-Instruct given an expert instruction that the student never sees
(``afd demonstrate``). The student (pi_0, the plain model) is fine-tuned on them (SFT), both
policies are sampled, an ``init-sft`` IRL reward model learns to tell pi_sft's samples from
pi_0's (on a small encoder, MiniLM-L6, to stay fast), and Best-of-N with that reward and with
the density ratio log pi_sft - log pi_0 is evaluated by an independent golden judge, VADER
sentiment, on held-out prompts. Reward-model pools use the 48 training prompts; evaluation
uses 32 other prompts, so no BoN pool was ever trained on.

The pipeline is written to ``OUT/demo.yaml``: ``afd run OUT/demo.yaml`` reruns it, and a copy
is the starting point for one's own model and data.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

RECIPES = Path(__file__).resolve().parent / "recipes"
PROMPTS_TRAIN = RECIPES / "demo_prompts_train.jsonl"
PROMPTS_EVAL = RECIPES / "demo_prompts_eval.jsonl"
# the recorded study of this pipeline over seeds (bench/recipes/demo_study.py writes it)
STUDY = RECIPES / "demo_study.json"

INSTRUCTION = ("You are an enthusiastic film critic who loves cinema. Write warm, glowing, joyful "
               "reviews full of praise.")


def demo_config(out: str = "runs/demo", model: str = "smollm2-135m-instruct",
                reward_backbone: str = "minilm-l6", train: str = str(PROMPTS_TRAIN),
                held_out: str = str(PROMPTS_EVAL)) -> dict:
    pool = {"kind": "sample", "max_new_tokens": 80, "max_prompt_length": 256}
    return {
        "out": out, "seed": 0, "model": model,
        "stages": {
            "demonstrate": {"data": train, "instruction": INSTRUCTION, "num_samples": 1, "max_new_tokens": 128,
                            "temperature": 0.7},
            "sft": {"data": "@demonstrate", "epochs": 3, "lr": 1.0e-4, "batch_size": 8, "eval_fraction": 0.1,
                    "max_length": 256, "max_prompt_length": 128, "logging_steps": 1},
            "rm_pool_init": {**pool, "data": train, "num_samples": 4},
            "rm_pool_sft": {**pool, "model": "@sft", "data": train, "num_samples": 4},
            "reward": {"variant": "init-sft", "model": reward_backbone, "init_pool": "@rm_pool_init",
                       "sft_pool": "@rm_pool_sft", "epochs": 3, "lr": 5.0e-5, "batch_size": 16,
                       "eval_fraction": 0.15, "max_length": 256, "max_prompt_length": 128, "logging_steps": 2},
            "sample_init": {**pool, "data": held_out, "num_samples": 8},
            "sample_sft": {**pool, "model": "@sft", "data": held_out, "num_samples": 8},
            "eval": {"golden": "vader", "pools": {"init": "@sample_init", "sft": "@sample_sft"},
                     "proxies": {"init-sft": "@reward", "density-ratio": f"density-ratio:@sft,{model}"},
                     "demos": "@demonstrate"},
        },
    }


def run_demo(out: str = "runs/demo", force: bool = False) -> dict:
    from afd import dist
    from afd.pipeline import run

    config = demo_config(out)
    if dist.is_main():
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "demo.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    results = run(config, {"force": True} if force else None,
                  report=lambda name, m: dist.print_main(f"[{name}] done in {m.get('seconds', 0):.0f} s", flush=True))
    if not dist.is_main():
        return results
    print()
    print((Path(out) / "eval" / "report.md").read_text())
    print(f"Plots and the full report: {Path(out) / 'eval'}/ (bon_gold_vs_n.png, bon_win_rate.png, "
          f"bon_gold_vs_kl.png, proxy_vs_gold.png, report.md)")
    print()
    print(verdict(results["eval"]))
    return results


def verdict(ev: dict) -> str:
    """Plain words: did the AfD reward's Best-of-N beat SFT on this run, and how often does it
    across the recorded study's seeds."""
    sft = ev["policies"]["sft"]["gold"]
    lines = []
    for proxy, b in ev["bon"].items():
        n, gold = b["n"][-1], b["gold"][-1]
        lines.append(f"This run: Best-of-{n} with the {proxy} reward scored {gold:.3f} (VADER) against SFT's "
                     f"{sft:.3f}: it {'beat' if gold > sft else 'did not beat'} SFT.")
    if STUDY.exists():
        study = json.loads(STUDY.read_text())
        k = len(study["seeds"])
        for proxy, wins in study["bon_beats_sft_seeds"].items():
            d = study["bon_minus_sft"][proxy]
            interval = f" [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d.get("ci95") else ""
            if proxy.startswith("length ("):  # a control, not a reward: the longest of the N samples
                which = proxy[len("length ("):-1]
                lines.append(f"Control in the same study: taking the {which} of {study['n']} samples (no reward "
                             f"model) beat SFT in {wins} of {k} seeds; mean gain {d['mean']:+.3f}{interval}. A "
                             "reward whose gain is not above this one may be tracking length.")
                continue
            lines.append(f"Across the recorded study ({k} seeds, bench/results/demo): Best-of-{study['n']} with "
                         f"{proxy} beat SFT in {wins} of {k} seeds; mean gain {d['mean']:+.3f}{interval}.")
    return "\n".join(lines)
