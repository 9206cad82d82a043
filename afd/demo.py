"""``afd demo``: AfD end to end where its assumption holds, offline, in minutes on a CPU.

The task: SmolLM2-135M-Instruct (pi_0) continues the opening of a movie review. A reward r* is
planted and hidden from every method (VERIFICATION.md): the IMDB gold (``afd gold``: a sentiment
classifier trained once on labelled reviews that nothing else sees), in standard deviations of
pi_0's samples. Demonstrations are drawn from the optimal policy pi* = pi_0 exp(r*/beta) / Z by
rejection sampling over pi_0's candidates (``afd plant``, beta 1). Then, from the
demonstrations alone: SFT, AfD's ``init-sft`` reward model (MiniLM-L6, trained to tell pi_sft's
samples from pi_0's) and the density ratio log pi_sft - log pi_0 (its closed-form optimum);
Best-of-N from pi_sft's samples on held-out prompts is judged by r* itself, beside the oracle
(Best-of-N under r*), a Bradley-Terry reward trained on as many r*-labelled pairs as there are
demonstrations (what RLHF would buy) and the length control.

The demo is one seed of a study (``afd.study``): it prints this run's figures and ends with
what the recorded study of the same pipeline over 10 seeds (``bench/recipes/demo_study.py``,
``bench/results/demo/``) decided for each claim. Its YAML is written to ``OUT/demo.yaml``:
``afd study OUT/demo.yaml`` reruns it, with ``--seeds 0-9`` the whole study.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

RECIPES = Path(__file__).resolve().parent / "recipes"
# the recorded study of this pipeline over seeds (bench/recipes/demo_study.py writes it)
STUDY = RECIPES / "demo_study.json"
N = 16  # Best-of-N the demo reports


def demo_study(out: str = "runs/demo", seeds=(0,), model: str = "smollm2-135m-instruct",
               reward_backbone: str = "minilm-l6") -> dict:
    """The demo as a study (one seed by default): shared stages, each seed's pipeline, claims."""
    # SFT's learning rate is the one of 1e-4, 5e-5 and 2e-5 with the lowest held-out NLL of the
    # demonstrations (3.43, 3.34, 3.30 against pi_0's 3.27 on seed 0: 173 demonstrations drawn from
    # pi_0 itself, reweighted, leave little to learn). init-sft sees as many pi_sft samples as pi_0
    # candidates (12 a prompt), so its accuracy is not a class imbalance's.
    r_star = "z:@candidates:gold:@gold"  # the hidden reward, in pi_0 standard deviations
    rm = {"kind": "reward", "model": reward_backbone, "epochs": 3, "lr": 5.0e-5, "batch_size": 16,
          "eval_fraction": 0.15, "max_length": 160, "max_prompt_length": 64, "logging_steps": 2}
    return {
        "out": out, "seeds": list(seeds), "model": model, "plot": "eval",
        "shared": {
            "gold": {"kind": "gold"},
            "candidates": {"kind": "sample", "data": "@gold/prompts.jsonl", "max_examples": 72, "num_samples": 12,
                           "max_new_tokens": 40, "seed": 1},
        },
        "stages": {
            "split": {"data": "@candidates", "train": 48, "eval": 24},
            "plant": {"pool": "@split/train.jsonl", "scorer": r_star, "beta": 1.0, "candidates": 12, "num_demos": 4},
            "gold_pairs": {"kind": "plant", "method": "pairs", "pool": "@split/train.jsonl", "scorer": r_star,
                           "candidates": 12, "num_demos": 4},
            "sft": {"data": "@plant", "epochs": 2, "lr": 2.0e-5, "batch_size": 8, "eval_fraction": 0.1,
                    "max_length": 128, "max_prompt_length": 64, "logging_steps": 2},
            "rm_sft": {"kind": "sample", "model": "@sft", "data": "@split/train_prompts.jsonl", "num_samples": 12,
                       "max_new_tokens": 40},
            "init_sft": {**rm, "variant": "init-sft", "init_pool": "@split/train.jsonl", "sft_pool": "@rm_sft"},
            "bt_gold": {**rm, "variant": "bt", "data": "@gold_pairs"},
            "sample_sft": {"kind": "sample", "model": "@sft", "data": "@split/eval_prompts.jsonl", "num_samples": N,
                           "max_new_tokens": 40, "seed": 3},
            "eval": {"golden": r_star, "pools": {"init": "@split/eval.jsonl", "sft": "@sample_sft"},
                     "demos": "@plant", "oracle": "oracle",
                     "proxies": {"init-sft": "@init_sft", "density-ratio": f"density-ratio:@sft,{model}",
                                 "bt-gold": "@bt_gold", "oracle": r_star, "length": "length", "random": "random:0"}},
        },
        "claims": [
            {"claim": "SFT on planted demonstrations moves the policy toward r*",
             "figure": "eval.policies.sft.gold - eval.policies.init.gold"},
            {"claim": "init-sft ranks pi_sft's samples like r* (within prompts)",
             "figure": "eval.bon.init-sft.spearman_within_prompts",
             "controls": ["eval.bon.length.spearman_within_prompts", "eval.bon.random.spearman_within_prompts"]},
            {"claim": "The density ratio ranks pi_sft's samples like r*",
             "figure": "eval.bon.density-ratio.spearman_within_prompts"},
            {"claim": f"Best-of-{N} with init-sft beats SFT", "figure": f"eval.bon.init-sft.gold@{N} - eval.policies.sft.gold",
             "controls": [f"eval.bon.length.gold@{N} - eval.policies.sft.gold",
                          f"eval.bon.oracle.gold@{N} - eval.policies.sft.gold"]},
            {"claim": f"Best-of-{N} with the density ratio beats SFT",
             "figure": f"eval.bon.density-ratio.gold@{N} - eval.policies.sft.gold"},
            {"claim": f"init-sft (demonstrations only) against BT on as many r*-labelled pairs, Best-of-{N}",
             "figure": f"eval.bon.init-sft.gold@{N} - eval.bon.bt-gold.gold@{N}"},
        ],
    }


def run_demo(out: str = "runs/demo", force: bool = False) -> dict:
    from afd import dist
    from afd.study import run_study

    config = demo_study(out)
    if dist.is_main():
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "demo.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    summary = run_study(config, overrides={"force": True} if force else None,
                        report=lambda where, name, m: dist.print_main(
                            f"[{where}: {name}] done in {m.get('seconds', 0):.0f} s", flush=True))
    if not dist.is_main():
        return summary
    ev = json.loads((Path(out) / "seed-0" / "eval" / "metrics.json").read_text())
    print()
    print(this_run(ev))
    print(f"Plots and the full report: {Path(out) / 'seed-0' / 'eval'}/ (report.md, bon_gold_vs_n.png, "
          f"bon_gold_vs_kl.png, proxy_vs_gold.png)")
    print()
    print(verdict(ev))
    return summary


def this_run(ev: dict) -> str:
    """This run's table: each reward's recovery of r* and its Best-of-N, beside the controls."""
    pol = ev["policies"]
    sft = pol["sft"]["gold"]
    lines = ["# afd demo: the planted reward r* (IMDB gold, in pi_0 standard deviations), this run", "",
             f"pi_0 {pol['init']['gold']:+.3f}, SFT {sft:+.3f}, demonstrations "
             f"{pol.get('demonstrations', {}).get('gold', float('nan')):+.3f} (mean r* of their samples)", "",
             f"| reward | Spearman with r* within prompts | Best-of-{N} r* | gain over SFT | share of the oracle's gain |"
             f" mean tokens of Best-of-{N} |", "|---|---|---|---|---|---|"]
    for name, b in ev["bon"].items():
        i = b["n"].index(N) if N in b["n"] else -1
        frac = (b.get("fraction_of_oracle_gain") or [None])[i]
        rho = b.get("spearman_within_prompts")
        lines.append(f"| {name} | {'–' if rho is None else f'{rho:.3f}'} | {b['gold'][i]:+.3f} | {b['gold'][i] - sft:+.3f} | "
                     f"{'–' if frac is None else f'{frac:.2f}'} | {b['mean_tokens'][i]:.1f} |")
    return "\n".join(lines) + "\n"


def verdict(ev: dict) -> str:
    """Plain words: did each demonstration-learnt reward's Best-of-N beat SFT on this run, and what
    the recorded study decided across its seeds."""
    sft = ev["policies"]["sft"]["gold"]
    lines = []
    for proxy in ("init-sft", "density-ratio"):
        b = ev["bon"].get(proxy)
        if b is None:
            continue
        i = b["n"].index(N) if N in b["n"] else -1
        gold = b["gold"][i]
        lines.append(f"This run: Best-of-{b['n'][i]} with the {proxy} reward scored {gold:+.3f} (r*) against SFT's "
                     f"{sft:+.3f}: it {'beat' if gold > sft else 'did not beat'} SFT.")
    if STUDY.exists():
        study = json.loads(STUDY.read_text())
        lines.append(f"Across the recorded study of this pipeline ({len(study['seeds'])} seeds, bench/results/demo; "
                     "95% bootstrap intervals over seeds and prompts):")
        for c in study["claims"]:
            ci = c.get("ci95")
            interval = f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""
            lines.append(f"- {c['claim']}: {c['mean']:+.3f}{interval}, {c['verdict']}" + "".join(
                f"; control {x['figure']}: {x['mean']:+.3f}" for x in c.get("controls", [])
                if x.get("mean") is not None) + ".")
    return "\n".join(lines)
