"""Recipe `imdb-positive`: AfD's reward-model comparison on new data (issue: AfD end to end).

Prompts are the openings of IMDB reviews; demonstrations are the human-written continuations
of positive reviews; the policy is smollm2-135m-instruct; the golden judge is VADER. Compares
pi_0, SFT, and Best-of-N (N = 1..32, from one pool per policy) under the `init-sft`,
`init-demo` and `sft-demo` reward models and the density ratio, and reports whether the
heterogeneous reward models (demonstrations against model samples) reward-hack.

    python bench/recipes/imdb_positive.py --seeds 0,1,2   # one run per seed; hours on 2 CPU cores
    python bench/recipes/imdb_positive.py --quick         # a small smoke run of every stage

Prompts for SFT, reward models and evaluation are openings of positive reviews from disjoint
parts of one shuffle per seed (the demonstrations' distribution); openings of negative
reviews are evaluated apart. Reward models see positives and negatives of the same prompts;
each reports, beside its held-out accuracy, the accuracy of a length-only (and EOS-only)
classifier on the same split. Every pool records the share of samples cut at
``max_new_tokens``.

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
from common import (RESULTS, SHARED_DATA, aggregate, ci, cut_shares, machine, rm_figures, rm_table,  # noqa: E402
                    run_seeds, saves_result, seeds_arg, with_length_controls)

INSTRUCTION = "Continue this movie review:\n\n"
# Sample cap of every pool: long enough that most samples end with EOS (chosen on a validation
# sample of positive-review openings, not on evaluation prompts; see the module docstring).
NEW_TOKENS = 160


def words(text: str) -> list[str]:
    return text.replace("<br />", " ").split()


def make_data(folder: Path, n_demos: int, n_rm: int, n_eval: int, open_words: int, cont_words: int, seed: int = 0,
              n_eval_negative: int = 0) -> dict:
    """The prompt files of one seed's split. Every prompt set is drawn from the same
    distribution as the demonstrations' prompts, the openings of *positive* reviews, in
    disjoint parts of one shuffle (``seed``): ``demos`` (SFT), ``rm_demos`` / ``rm_prompts``
    (reward models: the demonstrations of init-demo / sft-demo and the prompts that the pools
    of every reward model are sampled on, so positives and negatives share prompts),
    ``eval_prompts`` and ``norm_demos`` (the human continuations of those very prompts, the
    "demonstrations = 1" of the normalisation). ``eval_prompts_negative``: openings of
    negative reviews, evaluated apart, so that results can be split by the opening's
    sentiment. A continuation is at most ``cont_words`` words, cut back to its last sentence
    end when one lies in the second half, so that demonstrations end where a sentence does."""
    with open(SHARED_DATA / "imdb_subset.csv", newline="") as f:
        reviews = [r for r in csv.DictReader(f) if len(words(r["review"])) >= open_words + cont_words]
    rng = random.Random(seed)
    rng.shuffle(reviews)
    positive = [r for r in reviews if r["sentiment"] == "positive"]
    negative = [r for r in reviews if r["sentiment"] == "negative"]
    cuts = [n_demos, n_demos + n_rm, n_demos + n_rm + n_eval]
    if cuts[-1] > len(positive) or n_eval_negative > len(negative):
        raise SystemExit(f"imdb_subset.csv has {len(positive)} positive and {len(negative)} negative reviews long "
                         f"enough; the split asks for {cuts[-1]} and {n_eval_negative}")
    demos_src, rm_src, eval_src = positive[:cuts[0]], positive[cuts[0]:cuts[1]], positive[cuts[1]:cuts[2]]

    def prompt(r):
        return INSTRUCTION + " ".join(words(r["review"])[:open_words])

    def cont(r):
        ws = words(r["review"])[open_words:open_words + cont_words]
        ends = [i for i, w in enumerate(ws) if w.endswith((".", "!", "?")) and i + 1 >= cont_words // 2]
        return " ".join(ws[: ends[-1] + 1] if ends else ws)

    def demos(name, rows):
        return [{"id": f"{name}-{i}", "prompt": prompt(r), "completion": cont(r)} for i, r in enumerate(rows)]

    def prompts(name, rows):
        return [{"id": f"{name}-{i}", "prompt": prompt(r)} for i, r in enumerate(rows)]

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, rows in [("demos", demos("demo", demos_src)), ("rm_demos", demos("rm", rm_src)),
                       ("rm_prompts", prompts("rm", rm_src)), ("eval_prompts", prompts("eval", eval_src)),
                       ("norm_demos", demos("eval", eval_src)),
                       ("eval_prompts_negative", prompts("evalneg", negative[:n_eval_negative]))]:
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(x) + "\n" for x in rows))
        files[name] = str(path)
    return files


def tag(s: dict) -> str:
    """The suffix of the stages that ``--rm-response-tokens N`` changes (reward models and their
    evaluations, ``rm_init_sft_rtN``...): they sit beside the unmatched run's in the same
    folders, whose SFT policy and pools they reuse."""
    return f"_rt{s['rm_response_tokens']}" if s.get("rm_response_tokens") else ""


def pipeline(out: str, files: dict, s: dict, seed: int = 0) -> dict:
    policy = s.get("policy", "smollm2-135m-instruct")
    x = s.get("length_scale", 1)  # tiny-random's byte tokens: longer sequences
    t = tag(s)
    pool = {"kind": "sample", "max_new_tokens": s["new_tokens"], "max_prompt_length": 256 * x}
    rm = {"kind": "reward", "model": s.get("rm_backbone", "minilm-l6"), "epochs": 3, "lr": 5.0e-5, "batch_size": 16,
          "eval_fraction": 0.15, "max_length": 320 * x, "max_prompt_length": 128 * x, "logging_steps": 5,
          **({"response_tokens": s["rm_response_tokens"]} if s.get("rm_response_tokens") else {})}
    proxies = {"init-sft": f"@rm_init_sft{t}", "init-demo": f"@rm_init_demo{t}", "sft-demo": f"@rm_sft_demo{t}"}
    if not t:  # the density ratio sees no reward model: the unmatched run has it already
        proxies["density-ratio"] = f"density-ratio:@sft,{policy}"
    stages = {
        "sft": {"data": files["demos"], "epochs": s["sft_epochs"], "lr": 5.0e-5, "batch_size": 8,
                "eval_fraction": 0.05, "max_length": 256 * x, "max_prompt_length": 128 * x, "logging_steps": 5},
        # every reward model's pools are on the rm prompts, whose human continuations are the
        # positives of init-demo / sft-demo: positives and negatives share prompts
        "rm_pool_init": {**pool, "data": files["rm_prompts"], "num_samples": s["k_rm"]},
        "rm_pool_sft": {**pool, "model": "@sft", "data": files["rm_prompts"], "num_samples": s["k_rm"]},
        f"rm_init_sft{t}": {**rm, "variant": "init-sft", "init_pool": "@rm_pool_init", "sft_pool": "@rm_pool_sft"},
        f"rm_init_demo{t}": {**rm, "variant": "init-demo", "init_pool": "@rm_pool_init", "data": files["rm_demos"]},
        f"rm_sft_demo{t}": {**rm, "variant": "sft-demo", "sft_pool": "@rm_pool_sft", "data": files["rm_demos"]},
        "sample_init": {**pool, "data": files["eval_prompts"], "num_samples": s["k_eval"]},
        "sample_sft": {**pool, "model": "@sft", "data": files["eval_prompts"], "num_samples": s["k_eval"]},
        f"eval{t}": {"kind": "eval", "golden": "vader", "pools": {"init": "@sample_init", "sft": "@sample_sft"},
                     "proxies": proxies, "demos": files["norm_demos"]},
    }
    if s.get("n_eval_negative"):  # openings of negative reviews, evaluated apart
        stages.update({
            "sample_init_neg": {**pool, "data": files["eval_prompts_negative"], "num_samples": s["k_eval"]},
            "sample_sft_neg": {**pool, "model": "@sft", "data": files["eval_prompts_negative"],
                               "num_samples": s["k_eval"]},
            f"eval_negative{t}": {"kind": "eval", "golden": "vader", "pools": {"init": "@sample_init_neg",
                                                                              "sft": "@sample_sft_neg"},
                                  "proxies": proxies}})
    return {"out": out, "seed": seed, "model": policy, "stages": stages}


RMS = ("rm_init_sft", "rm_init_demo", "rm_sft_demo")


def eval_figures(ev: dict) -> dict:
    """The figures of one eval stage that a recipe compares across seeds."""
    return {"policies": {k: {f: v.get(f) for f in ("gold", "gold_ci95", "gap_closed", "kl_to_reference")}
                         for k, v in ev["policies"].items()},
            "bon": {k: {f: v.get(f) for f in ("n", "kl", "gold", "gap_closed", "win_rate")}
                    for k, v in ev["bon"].items()}}


def seed_figures(results: dict, s: dict, folder: Path) -> dict:
    """One seed's figures: policies and Best-of-N by the opening's sentiment (with Best-of-N by
    length as the control), reward models with their controls, and the share of each pool's
    samples cut at max_new_tokens."""
    t = tag(s)
    out = {"positive_openings": with_length_controls(eval_figures(results[f"eval{t}"]),
                                                     folder / "sample_sft" / "pool.jsonl"),
           "reward_models": {k: rm_figures(results[k + t]) for k in RMS if k + t in results},
           "cut_at_max_new_tokens": {k: 1 - v["finished_by_eos"] for k, v in results.items()
                                     if isinstance(v, dict) and "finished_by_eos" in v}}
    if f"eval_negative{t}" in results:
        out["negative_openings"] = eval_figures(results[f"eval_negative{t}"])
    return out


def policy_table(agg: dict, title: str) -> list[str]:
    pol, bon = agg["policies"], agg["bon"]
    lines = [f"**{title}**", "", "| policy | golden reward (VADER) | gap closed (pi_0 → demos) |", "|---|---|---|"]
    for name, p in pol.items():
        lines.append(f"| {name} | {ci(p['gold'])} | {ci(p.get('gap_closed'))} |")
    lines += ["", "| proxy | N | golden reward of BoN_N | win rate vs SFT samples |", "|---|---|---|---|"]
    for name, b in bon.items():
        ns = [x["mean"] if isinstance(x, dict) else x for x in b["n"]]
        for i, n in enumerate(ns):
            if n in (1, 4, ns[-1]):
                win = b["win_rate"][i] if isinstance(b.get("win_rate"), list) else None
                lines.append(f"| {name} | {int(n)} | {ci(b['gold'][i])} | {ci(win)} |")
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/imdb-positive")
    ap.add_argument("--quick", action="store_true", help="a small run of every stage (results not saved)")
    ap.add_argument("--smoke", action="store_true", help="--quick with tiny-random as policy and reward backbone "
                                                        "(seconds; checks the plumbing, not the method)")
    ap.add_argument("--seeds", type=seeds_arg, default=[0], help="e.g. 0,1,2: one run per seed (data split, "
                                                                  "sampling, training); mean and 95%% interval across")
    ap.add_argument("--rm-response-tokens", type=int, default=None,
                    help="reward models see at most N response tokens (afd reward's response_tokens): length "
                         "matched by cutting every response alike; choose N on the reward models' held-out split")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="sample cap of every pool")
    ap.add_argument("--n-demos", type=int, default=None, help="SFT demonstrations a seed (default 300)")
    ap.add_argument("--n-rm", type=int, default=None, help="reward-model prompts a seed (default 384)")
    ap.add_argument("--n-eval-negative", type=int, default=None, help="negative-review openings evaluated apart "
                                                                      "(default 16)")
    ap.add_argument("--k-eval", type=int, default=None, help="samples an evaluation prompt and policy (default 32)")
    args = ap.parse_args()
    s = dict(n_demos=32, n_rm=16, n_eval=4, n_eval_negative=4, k_eval=4, k_rm=1, sft_epochs=1, new_tokens=32) \
        if args.quick or args.smoke else dict(n_demos=300, n_rm=384, n_eval=32, n_eval_negative=16, k_eval=32, k_rm=1,
                                sft_epochs=1, new_tokens=NEW_TOKENS)
    if args.smoke:
        args.quick = True
        s.update(policy="tiny-random", rm_backbone="tiny-random", length_scale=4)
    if args.max_new_tokens:
        s["new_tokens"] = args.max_new_tokens
    if args.rm_response_tokens:
        s["rm_response_tokens"] = args.rm_response_tokens
    for key in ("n_demos", "n_rm", "k_eval", "n_eval_negative"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    per_seed = run_seeds(args.out, args.seeds,
                         lambda out, seed: make_data(Path(out) / "data", s["n_demos"], s["n_rm"], s["n_eval"], 24,
                                                     48, seed, s["n_eval_negative"]),
                         lambda out, files, seed: pipeline(out, files, s, seed),
                         lambda results, out: seed_figures(results, s, out))
    agg = aggregate(list(per_seed.values()))
    host = machine()
    policy = s.get("policy", "smollm2-135m-instruct")
    lines = [f"# imdb-positive ({policy}, golden judge VADER, seeds {args.seeds})", "",
             f"Machine: {host['cpu']}, {host['cores']} cores. Per seed (data split, sampling, training): SFT on "
             f"{s['n_demos']} positive-review continuations; reward models on MiniLM-L6 from {s['n_rm']} other "
             f"positive-review openings x {s['k_rm']} sample(s), init-demo / sft-demo against those openings' "
             f"human continuations; evaluation on {s['n_eval']} further positive-review openings (the "
             f"demonstrations' distribution; demonstrations = 1 on their own continuations) and, apart, "
             f"{s['n_eval_negative']} negative-review openings; {s['k_eval']} samples a prompt and policy, "
             f"at most {s['new_tokens']} new tokens. Figures: mean [95% t interval] over seeds.", "",
             *([f"**Length matched**: every reward model sees only the first {s['rm_response_tokens']} tokens of "
                f"each response, in training and when it scores (the density ratio, which has no reward model, "
                f"is in the unmatched run).", ""] if tag(s) else []),
             *rm_table(agg["reward_models"], len(args.seeds)), "",
             cut_shares(agg), "",
             *policy_table(agg["positive_openings"], "Openings of positive reviews (the demonstrations' prompts)")]
    if "negative_openings" in agg:
        lines += policy_table(agg["negative_openings"], "Openings of negative reviews")
    table = "\n".join(lines)
    print(table)
    if saves_result(args.seeds, args.quick):
        dest = RESULTS / ("imdb-positive-length-matched" if tag(s) else "imdb-positive")
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "results.md").write_text(table)
        (dest / "metrics.json").write_text(json.dumps(
            {"seeds": args.seeds, "setup": s, "reward_models": agg["reward_models"], "across_seeds": agg,
             "per_seed": per_seed, "machine": host}, indent=2))
        for png in (Path(args.out) / f"seed-{args.seeds[0]}" / f"eval{tag(s)}").glob("*.png"):
            shutil.copy(png, dest / png.name)
        print("saved", dest)


if __name__ == "__main__":
    main()
