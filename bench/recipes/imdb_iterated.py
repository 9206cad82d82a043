"""Recipe `imdb-iterated`: the iterated methods on the imdb-positive task (issue: iterated IRL).

Same data as `imdb-positive` (prompts: openings of IMDB reviews; demonstrations: human
continuations of positive reviews; policy smollm2-135m-instruct; golden judge VADER). One
table puts side by side, on held-out prompts: pi_0, SFT, AfD Best-of-16 from the SFT pool
with the `init-sft` reward, `irl` after 1, 2 and 3 iterations, `irft` with T = 1 (SPIN) and
T = 3, and `gail`; each with its golden reward and its KL to the SFT policy (Monte Carlo from
the sampled tokens; Best-of-N's is log N - (N-1)/N). All iterated methods start from the SFT
policy and use its demonstrations.

    python bench/recipes/imdb_iterated.py --seeds 0,1,2   # one run per seed; hours on 2 CPU cores
    python bench/recipes/imdb_iterated.py --smoke         # tiny-random, every stage, in minutes

Prompt sets, controls and caps as in `imdb-positive` (its make_data): every pool, the loops'
samples and RL share one cap, ``max_new_tokens``, chosen so that most samples end with EOS;
each reward model (init-sft and every irl / gail iteration's) reports its held-out accuracy
beside a length-only classifier's on the same split; results are split by the opening's
sentiment.

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
from common import (LENGTH_CONTROLS, RESULTS, aggregate, ci, cut_shares, machine, rm_figures, rm_table,  # noqa: E402
                    run_seeds, saves_result, seeds_arg, with_length_controls)
from imdb_positive import NEW_TOKENS, eval_figures, make_data  # noqa: E402

POLICY = "smollm2-135m-instruct"


def pipeline(out: str, files: dict, s: dict, seed: int = 0) -> dict:
    new_tokens = s.get("new_tokens", 64)
    x = s.get("length_scale", 1)  # tiny-random's byte tokens (--smoke): longer sequences
    policy = s.get("policy", POLICY)
    seq = {"max_length": 96 * x + max(new_tokens, 96 * x), "max_prompt_length": 96 * x}
    # RL and the loops' samples share the evaluation pools' cap, so RL can move along length
    loop = {**seq, "model": "@sft", "data": files["demos"], "max_examples": s["n_loop"], "max_new_tokens": new_tokens,
            "logging_steps": 2, "save_steps": 50}
    rl = {"kl_coef": 0.05, "num_generations": 4, "batch_size": 8, "lr": 3e-5, "epochs": 1,
          "max_steps": s["rl_steps"], "reward_model": s.get("rm_backbone", "minilm-l6"), "reward_epochs": 2,
          "reward_lr": 5e-5, "eval_fraction": 0.1}
    irft = {"epochs": 1, "lr": 3e-5, "batch_size": 8, "beta": 0.1, "eval_fraction": 0.0}
    pool = {"kind": "sample", "max_new_tokens": new_tokens, "max_prompt_length": 96 * x,
            "num_samples": s["k_eval"]}
    rm_pool = {"kind": "sample", "max_new_tokens": new_tokens, "max_prompt_length": 96 * x,
               "data": files["rm_prompts"], "num_samples": s.get("k_rm", 4)}
    out_path = Path(out)
    methods = s.get("methods", METHODS)
    policies = {"init": policy, "sft": "@sft",
                **({f"irl_{t + 1}": str(out_path / "irl" / f"iter_{t}" / "rl" / "model") for t in range(3)}
                   if "irl" in methods else {}),
                **({"irft_T1": "@spin"} if "spin" in methods else {}),
                **({"irft_T3": "@irft"} if "irft" in methods else {}), **({"gail": "@gail"} if "gail" in methods else {})}
    stages = {
        "sft": {"data": files["demos"], "epochs": 1, "lr": 5e-5, "batch_size": 8, "eval_fraction": 0.05,
                "logging_steps": 5, **seq},
        "rm_pool_init": dict(rm_pool),
        "rm_pool_sft": {**rm_pool, "model": "@sft"},
        "rm_init_sft": {"kind": "reward", "model": s.get("rm_backbone", "minilm-l6"), "variant": "init-sft",
                        "init_pool": "@rm_pool_init", "sft_pool": "@rm_pool_sft", "epochs": 3, "lr": 5e-5,
                        "batch_size": 16, "eval_fraction": 0.15, "max_length": 128 * x + 2 * new_tokens,
                        "max_prompt_length": 128 * x,
                        **({"response_tokens": s["rm_response_tokens"]} if s.get("rm_response_tokens") else {})},
        "irl": {**loop, **rl, "iterations": 3},
        "gail": {**loop, **rl, "iterations": 2},
        "spin": {"kind": "irft", **loop, **irft, "stages": 1},
        "irft": {**loop, **irft, "stages": 3},
    }
    for method in set(METHODS) - set(methods):
        del stages[method]
    sets = [("", files["eval_prompts"])]
    if s.get("n_eval_negative"):  # openings of negative reviews, evaluated apart
        sets.append(("_neg", files["eval_prompts_negative"]))
    for suffix, data in sets:
        for name, model in policies.items():
            stages[f"sample_{name}{suffix}"] = {**pool, "model": model, "data": data,
                                                **({"num_samples": s["k_bon"]} if name == "sft" else {})}
        stages["eval" + ("_negative" if suffix else "")] = {
            "kind": "eval", "golden": "vader", "pools": {name: f"@sample_{name}{suffix}" for name in policies},
            "proxies": {"init-sft": "@rm_init_sft"}, "bon_policy": "sft", "baseline": "sft",
            "kl_reference": "@sft", **({} if suffix else {"demos": files["norm_demos"]})}
    return {"out": out, "seed": seed, "model": policy, "stages": stages}


METHODS = ("irl", "spin", "irft", "gail")
ORDER = ["init", "sft", "irl_1", "irl_2", "irl_3", "irft_T1", "irft_T3", "gail"]


def seed_figures(results: dict, s: dict, folder: Path) -> dict:
    """One seed's figures: policies (gold, KL to SFT) and AfD Best-of-N by the opening's
    sentiment; every reward model with its length-only control on the same split (init-sft,
    and each irl / gail iteration's); the loops' RL rewards; the share of samples cut at
    max_new_tokens in every pool."""
    out = {"positive_openings": with_length_controls(eval_figures(results["eval"]),
                                                     folder / "sample_sft" / "pool.jsonl"),
           "reward_models": {"init-sft": rm_figures(results["rm_init_sft"])},
           "cut_at_max_new_tokens": {k: 1 - v["finished_by_eos"] for k, v in results.items()
                                     if isinstance(v, dict) and "finished_by_eos" in v},
           "iterations": {}}
    if "eval_negative" in results:
        out["negative_openings"] = eval_figures(results["eval_negative"])
    # each policy's mean sample length beside its golden reward: VADER rises with length (the
    # Best-of-N length control), so a policy can gain by writing longer
    for key, suffix in (("positive_openings", ""), ("negative_openings", "_neg")):
        for name, p in out.get(key, {}).get("policies", {}).items():
            if f"sample_{name}{suffix}" in results:
                p["mean_tokens"] = results[f"sample_{name}{suffix}"].get("mean_num_tokens")
    for method in ("irl", "gail"):
        for it in results.get(method, {}).get("iterations", []):
            rm = json.loads((Path(it["reward_model"]).parent / "metrics.json").read_text())
            out["reward_models"][f"{method} iter {it['iteration'] + 1}"] = rm_figures(rm)
            out["cut_at_max_new_tokens"][f"{method} iter {it['iteration'] + 1} samples"] = it.get("sample_cut_share")
            out["iterations"][f"{method} iter {it['iteration'] + 1}"] = {
                k: it.get(k) for k in ("rl_reward_first", "rl_reward_last", "rl_kl_last", "pairs")}
    for method in ("spin", "irft"):
        for st in results.get(method, {}).get("stages", []):
            out["iterations"][f"{method} stage {st['stage'] + 1}"] = {
                k: st.get(k) for k in ("pairs", "train_loss", "implicit_reward_accuracy_last_quarter")}
    return out


def policy_table(agg: dict, s: dict, title: str) -> list[str]:
    pol, bon = agg["policies"], agg["bon"]["init-sft"]
    ns = [x["mean"] if isinstance(x, dict) else x for x in bon["n"]]
    i = ns.index(s["k_bon"]) if s["k_bon"] in ns else len(ns) - 1
    lines = [f"**{title}**", "", "| policy | golden reward (VADER) | KL to SFT (nats) | gap closed (pi_0 → demos) "
             "| mean sample length (tokens) |", "|---|---|---|---|---|"]
    for name in ORDER + ["demonstrations"]:
        if name not in pol:
            continue
        p = pol[name]
        lines.append(f"| {name} | {ci(p['gold'])} | {ci(p.get('kl_to_reference'), 2)} | {ci(p.get('gap_closed'))} "
                     f"| {ci(p.get('mean_tokens'), 1)} |")
        if name == "sft":
            lines.append(f"| AfD BoN-{int(ns[i])} (init-sft RM) | {ci(bon['gold'][i])} | {ci(bon['kl'][i], 2)} | "
                         f"{ci(bon['gap_closed'][i])} | – |")
            for control in LENGTH_CONTROLS:  # Best-of-N by length alone, from the same pool
                if control in agg["bon"]:
                    lines.append(f"| control: BoN-{int(ns[i])} by {control} | {ci(agg['bon'][control]['gold'][i])} | "
                                 f"{ci(bon['kl'][i], 2)} | – | – |")
    return lines + [""]


def report(agg: dict, s: dict, seeds: list[int], host: dict) -> str:
    lines = [f"# imdb-iterated: iterated IRL on imdb-positive ({s.get('policy', POLICY)}, VADER, seeds {seeds})", "",
             f"Machine: {host['cpu']}, {host['cores']} cores. Per seed (data split, sampling, training): SFT on "
             f"{s['n_demos']} positive-review continuations; the iterated methods use the first {s['n_loop']}; "
             f"RL: RLOO, 4 samples a prompt, 2 prompts a step, lr 3e-5, KL coefficient 0.05, {s['rl_steps']} steps "
             f"an iteration; reward models on MiniLM-L6; at most {s['new_tokens']} new tokens everywhere (RL "
             f"included). Evaluation on {s['n_eval']} held-out positive-review openings (the demonstrations' "
             f"distribution) and, apart, {s.get('n_eval_negative', 0)} negative-review openings; {s['k_eval']} "
             f"samples a prompt. KL is to the SFT policy. Figures: mean [95% t interval] over seeds.", "",
             *rm_table(agg["reward_models"], len(seeds)), "",
             cut_shares(agg), "",
             *policy_table(agg["positive_openings"], s, "Openings of positive reviews (the demonstrations' prompts)")]
    if "negative_openings" in agg:
        lines += policy_table(agg["negative_openings"], s, "Openings of negative reviews")
    lines += ["| method, step | figures (mean [95% interval]) |", "|---|---|"]
    for name, it in agg["iterations"].items():
        lines.append(f"| {name} | " + ", ".join(f"{k} {ci(v)}" for k, v in it.items()) + " |")
    lines += ["", "![golden reward against KL to SFT (first seed)](gold_vs_kl.png)", ""]
    return "\n".join(lines)


def settings(quick: bool = False, smoke: bool = False, max_new_tokens: int | None = None,
             rm_response_tokens: int | None = None) -> dict:
    """The recipe's sizes (imdb-ava reuses them, and so this recipe's stages)."""
    s = dict(n_demos=32, n_loop=8, n_rm=8, n_eval=4, n_eval_negative=2, k_eval=2, k_bon=4, k_rm=1, rl_steps=2,
             new_tokens=32) if quick or smoke else \
        dict(n_demos=128, n_loop=64, n_rm=192, n_eval=32, n_eval_negative=16, k_eval=4, k_bon=16, k_rm=1,
             rl_steps=8, new_tokens=NEW_TOKENS)
    if smoke:
        s.update(policy="tiny-random", rm_backbone="tiny-random", length_scale=4)
    if max_new_tokens:
        s["new_tokens"] = max_new_tokens
    if rm_response_tokens:
        s["rm_response_tokens"] = rm_response_tokens
    return s


def seed_data(out: str, s: dict, seed: int) -> dict:
    """One seed's data split (seed = data split, sampling and training), in OUT/data."""
    return make_data(Path(out) / "data", s["n_demos"], s["n_rm"], s["n_eval"], 24, 48, seed, s["n_eval_negative"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/imdb-iterated")
    ap.add_argument("--quick", action="store_true", help="a small run of every stage (results not saved)")
    ap.add_argument("--smoke", action="store_true", help="--quick with tiny-random as policy and reward backbone")
    ap.add_argument("--seeds", type=seeds_arg, default=[0], help="e.g. 0,1,2: one run per seed (data split, "
                                                                  "sampling, training); mean and 95%% interval across")
    ap.add_argument("--rm-response-tokens", type=int, default=None,
                    help="reward models see at most N response tokens (afd reward's response_tokens): length "
                         "matched by cutting every response alike; choose N on the reward models' held-out split")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="sample cap of every pool and of RL")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help="iterated methods to run, a comma list of " + ", ".join(METHODS) + " (default: all)")
    args = ap.parse_args()
    s = settings(args.quick, args.smoke, args.max_new_tokens, args.rm_response_tokens)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown method {unknown[0]}; known: {', '.join(METHODS)}")
    if tuple(methods) != METHODS:
        s["methods"] = methods
    args.quick = args.quick or args.smoke
    per_seed = run_seeds(args.out, args.seeds, lambda out, seed: seed_data(out, s, seed),
                         lambda out, files, seed: pipeline(out, files, s, seed),
                         lambda results, out: seed_figures(results, s, out))
    agg = aggregate(list(per_seed.values()))
    host = machine()
    table = report(agg, s, args.seeds, host)
    print(table)
    if saves_result(args.seeds, args.quick):
        dest = RESULTS / "imdb-iterated"
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "results.md").write_text(table)
        (dest / "metrics.json").write_text(json.dumps(
            {"seeds": args.seeds, "setup": s, "reward_models": agg["reward_models"], "across_seeds": agg,
             "per_seed": per_seed, "machine": host}, indent=2))
        shutil.copy(Path(args.out) / f"seed-{args.seeds[0]}" / "eval" / "gold_vs_kl.png", dest / "gold_vs_kl.png")
        print("saved", dest)


if __name__ == "__main__":
    main()
