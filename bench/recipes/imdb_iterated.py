"""Recipe `imdb-iterated`: the iterated methods on the imdb-positive task (issue: iterated IRL).

Same data as `imdb-positive` (prompts: openings of IMDB reviews; demonstrations: human
continuations of positive reviews; policy smollm2-135m-instruct; golden judge VADER). One
table puts side by side, on held-out prompts: pi_0, SFT, AfD Best-of-16 from the SFT pool
with the `init-sft` reward, `irl` after 1, 2 and 3 iterations, `irft` with T = 1 (SPIN) and
T = 3, and `gail`; each with its golden reward and its KL to the SFT policy (Monte Carlo from
the sampled tokens; Best-of-N's is log N - (N-1)/N). All iterated methods start from the SFT
policy and use its demonstrations.

    python bench/recipes/imdb_iterated.py            # about 45 min on 2 CPU cores
    python bench/recipes/imdb_iterated.py --quick    # a smoke run of every stage

Results: bench/results/imdb-iterated/ (results.md, metrics.json, gold_vs_kl.png).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from common import RESULTS, machine  # noqa: E402
from imdb_positive import make_data  # noqa: E402

POLICY = "smollm2-135m-instruct"


def pipeline(out: str, files: dict, s: dict) -> dict:
    seq = {"max_length": 192, "max_prompt_length": 96}
    loop = {**seq, "model": "@sft", "data": files["demos"], "max_examples": s["n_loop"], "max_new_tokens": 48,
            "logging_steps": 2, "save_steps": 50}
    rl = {"kl_coef": 0.05, "num_generations": 4, "batch_size": 8, "lr": 3e-5, "epochs": 1,
          "max_steps": s["rl_steps"], "reward_model": "minilm-l6", "reward_epochs": 2, "reward_lr": 5e-5,
          "eval_fraction": 0.1}
    irft = {"epochs": 1, "lr": 3e-5, "batch_size": 8, "beta": 0.1, "eval_fraction": 0.0}
    pool = {"kind": "sample", "max_new_tokens": 64, "max_prompt_length": 96, "data": files["eval_prompts"],
            "num_samples": s["k_eval"]}
    out_path = Path(out)
    policies = {"init": POLICY, "sft": "@sft",
                **{f"irl_{t + 1}": str(out_path / "irl" / f"iter_{t}" / "rl" / "model") for t in range(3)},
                "irft_T1": "@spin", "irft_T3": "@irft", "gail": "@gail"}
    stages = {
        "sft": {"data": files["demos"], "epochs": 1, "lr": 5e-5, "batch_size": 8, "eval_fraction": 0.05,
                "logging_steps": 5, **seq},
        "rm_pool_init": {"kind": "sample", "max_new_tokens": 64, "max_prompt_length": 96,
                         "data": files["rm_prompts"], "num_samples": 4},
        "rm_pool_sft": {"kind": "sample", "model": "@sft", "max_new_tokens": 64, "max_prompt_length": 96,
                        "data": files["rm_prompts"], "num_samples": 4},
        "rm_init_sft": {"kind": "reward", "model": "minilm-l6", "variant": "init-sft", "init_pool": "@rm_pool_init",
                        "sft_pool": "@rm_pool_sft", "epochs": 3, "lr": 5e-5, "batch_size": 16,
                        "eval_fraction": 0.15, "max_length": 256, "max_prompt_length": 128},
        "irl": {**loop, **rl, "iterations": 3},
        "gail": {**loop, **rl, "iterations": 2},
        "spin": {"kind": "irft", **loop, **irft, "stages": 1},
        "irft": {**loop, **irft, "stages": 3},
    }
    for name, model in policies.items():
        stages[f"sample_{name}"] = {**pool, "model": model,
                                    **({"num_samples": s["k_bon"]} if name == "sft" else {})}
    stages["eval"] = {"golden": "vader", "pools": {name: f"@sample_{name}" for name in policies},
                      "proxies": {"init-sft": "@rm_init_sft"}, "bon_policy": "sft", "baseline": "sft",
                      "kl_reference": "@sft", "demos": files["norm_demos"]}
    return {"out": out, "seed": 0, "model": POLICY, "stages": stages}


def report(ev: dict, results: dict, s: dict, host: dict) -> str:
    pol, bon = ev["policies"], ev["bon"]["init-sft"]
    n16 = bon["n"].index(s["k_bon"])
    lines = [f"# imdb-iterated: iterated IRL on imdb-positive ({s['n_eval']} held-out prompts, VADER)", "",
             f"Machine: {host['cpu']}, {host['cores']} cores. smollm2-135m-instruct; SFT on {s['n_demos']} "
             f"positive-review continuations; the iterated methods use the first {s['n_loop']} of them; "
             f"RL: RLOO, 4 samples a prompt, 2 prompts a step, lr 3e-5, KL coefficient 0.05, {s['rl_steps']} "
             "steps an iteration (a small budget: one RL step of smollm2 takes ~25 s on this CPU), reward "
             f"models on MiniLM-L6. KL is to the SFT policy, in nats.", "",
             "| policy | golden reward (VADER) | 95% CI | KL to SFT | gap closed (pi_0 → demos) |",
             "|---|---|---|---|---|"]
    order = ["init", "sft", "irl_1", "irl_2", "irl_3", "irft_T1", "irft_T3", "gail"]
    for name in order:
        p = pol[name]
        kl = p.get("kl_to_reference")
        lines.append(f"| {name} | {p['gold']:.3f} | ±{p['gold_ci95']:.3f} | "
                     f"{'–' if kl is None else f'{kl:.2f}'} | {fmt(p.get('gap_closed'))} |")
        if name == "sft":
            lines.append(f"| AfD BoN-{s['k_bon']} (init-sft RM) | {bon['gold'][n16]:.3f} | – | "
                         f"{bon['kl'][n16]:.2f} | {fmt(bon['gap_closed'][n16])} |")
    lines.append(f"| demonstrations | {pol['demonstrations']['gold']:.3f} | ±{pol['demonstrations']['gold_ci95']:.3f} "
                 f"| – | 1.000 |")
    lines += ["", "Per iteration (reward model accuracy on held-out demo/sample pairs; RL's mean reward "
              "first → last step):", "", "| method | iteration | reward held-out pair accuracy | "
              "RL reward first → last | RL KL per token (last logged step) |", "|---|---|---|---|---|"]
    for method in ("irl", "gail"):
        for it in results[method]["iterations"]:
            lines.append(f"| {method} | {it['iteration'] + 1} | {fmt(it['reward_eval_pair_accuracy'])} | "
                         f"{fmt(it['rl_reward_first'])} → {fmt(it['rl_reward_last'])} | {fmt(it['rl_kl_last'])} |")
    lines += ["", "| method | stage | pairs | train loss | implicit-reward accuracy (last quarter) |",
              "|---|---|---|---|---|"]
    for method in ("spin", "irft"):
        for st in results[method]["stages"]:
            lines.append(f"| {method} | {st['stage'] + 1} | {st['pairs']} | {fmt(st['train_loss'])} | "
                         f"{fmt(st['implicit_reward_accuracy_last_quarter'])} |")
    lines += ["", "![golden reward against KL to SFT](gold_vs_kl.png)", ""]
    return "\n".join(lines)


def fmt(x, digits=3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/imdb-iterated")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    s = dict(n_demos=32, n_loop=8, n_rm=8, n_eval=4, k_eval=2, k_bon=4, rl_steps=2) if args.quick else \
        dict(n_demos=128, n_loop=64, n_rm=48, n_eval=32, k_eval=4, k_bon=16, rl_steps=8)
    files = make_data(Path(args.out) / "data", s["n_demos"], s["n_rm"], s["n_eval"], 24, 48)
    from afd.pipeline import run

    results = run(pipeline(args.out, files, s),
                  report=lambda name, m: print(f"[{name}] done in {m.get('seconds', 0):.0f} s", flush=True))
    table = report(results["eval"], results, s, machine())
    print(table)
    if not args.quick:
        dest = RESULTS / "imdb-iterated"
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "results.md").write_text(table)
        (dest / "metrics.json").write_text(json.dumps(
            {"eval": results["eval"], "setup": s, "machine": machine(),
             **{m: results[m] for m in ("irl", "gail", "spin", "irft", "rm_init_sft")},
             "seconds": {k: v.get("seconds") for k, v in results.items()}}, indent=2))
        shutil.copy(Path(args.out) / "eval" / "gold_vs_kl.png", dest / "gold_vs_kl.png")
        print("saved", dest)


if __name__ == "__main__":
    main()
