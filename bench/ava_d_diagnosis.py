"""Why AVA-d ranks human pairs at chance (issue 11): which term sets its reward.

AVA-d (Eq. 5-7) trains the reward head through two terms only: the N(0, 1) prior (Eq. 6) and
the TD constraint ``log N(delta_t; mu_t, sigma_t^2)`` with ``delta_t = Q_t - gamma Q_t+1``. The
likelihood term trains Q, never the reward head. So the head regresses ``delta_t`` (shrunk to
0 by the prior), and its ranking score ``sum_t w_t mu_t`` can carry no more preference signal
than the TD targets it fits. This script reads, for every hh-ava seed's trained AVA-d model and
that seed's held-out human pairs (never trained on), the pair accuracy (ties half) of:

- ``weighted``: afd's AVA-d score, sum_t w_t mu_t (the reward head);
- ``total`` / ``last``: the head's plain sum (Eq. 19) and last-step reward (Eq. 18);
- ``td_weighted``: sum_t w_t delta_t, the TD target the head is fit to, with the same weights;
- ``td_sum``: sum_t delta_t, which telescopes at gamma = 1 to Q_first - Q_last;
- ``loglik_mean`` / ``loglik_sum``: the response's mean and summed log pi under the trained
  backbone (the LM the likelihood term trained);
- the same TD and likelihood scores under the base model before AVA training (``base_*``),

and the per-response correlation of ``weighted`` with ``td_weighted``. If the head follows its
target (high correlation) and the target is at chance, the responsible term is the TD target:
under the pretrained Q head (Eq. 12), delta_t is a difference of the LM's own softmaxed token
probabilities, which does not encode which reply people preferred.

    python bench/ava_d_diagnosis.py --runs runs/hh-ava --seeds 0,1,2   # forward passes only
    python bench/ava_d_diagnosis.py --runs runs/hh-ava --seeds 0 --limit 8 --no-save  # smoke

Writes bench/results/hh-ava/ava_d_diagnosis.{md,json} (with at least 3 seeds).

``--planted`` reads the planted IMDB study instead (issue 21: AVA-d's Best-of-16 fell below SFT
there). The truth is known: for each seed's AVA-d model (``ava_d``) and that seed's pi_sft pool
on held-out prompts (``sample_sft``, the pool Best-of-N picks from), it gives the within-prompt
Spearman with r* (the hidden gold) of every score above, of the response's length and of whether
it ended (EOS), and the within-prompt Spearman of the head's score with its TD target and with
length and ending:

    python bench/ava_d_diagnosis.py --planted --runs runs/study-planted-imdb --seeds 0,1,2 --prompts 12

Writes bench/results/planted-imdb/ava_d_diagnosis.{md,json} (with at least 3 seeds).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, across_seeds, ci, machine, seeds_arg  # noqa: E402

SCORES = ("weighted", "total", "last", "td_weighted", "td_sum", "loglik_mean", "loglik_sum",
          "base_td_weighted", "base_td_sum", "base_loglik_mean")


@torch.no_grad()
def response_scores(rm, prompts: list, responses: list, batch_size: int = 8) -> dict[str, list[float]]:
    """Every score above for each (prompt, response), from one forward pass a batch."""
    from afd.ava import _InputOptions, encode, sequence_terms, token_terms
    from afd.training import Collator, pad_id

    cfg = _InputOptions(rm.settings.template, rm.settings.max_length)
    rows = [encode(rm.tokenizer, p, r, cfg) for p, r in zip(prompts, responses)]
    collate = Collator(pad_id(rm.tokenizer))
    out = {k: [0.0] * len(rows) for k in ("weighted", "total", "last", "td_weighted", "td_sum", "loglik_mean",
                                          "loglik_sum")}
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        batch = collate([rows[i] for i in idx])
        t = token_terms(rm.model, batch["input_ids"], batch["attention_mask"], batch["response"], rm.opts)
        seq = sequence_terms(t)
        step, w = t["step"].float(), t["w"]
        logits = rm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        logp = logits[:, :-1].log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        resp = batch["response"][:, 1:].float()
        got = {"weighted": seq["weighted"], "total": seq["total"], "last": seq["last"],
               "td_weighted": (w * step * t["td"]).sum(-1), "td_sum": t["td"].sum(-1),
               "loglik_sum": (logp * resp).sum(-1), "loglik_mean": (logp * resp).sum(-1) / resp.sum(-1).clamp(min=1)}
        for k, v in got.items():
            for b, i in enumerate(idx):
                out[k][i] = float(v[b])
    return out


def corr(a: list[float], b: list[float]) -> float:
    x, y = torch.tensor(a), torch.tensor(b)
    return float(torch.corrcoef(torch.stack([x, y]))[0, 1])


def base_reward(rm, base: str):
    """The base LM (before AVA training) with ``rm``'s options and fresh heads: its pretrained Q
    head gives the TD targets and likelihoods before training."""
    from afd import models
    from afd.ava import attach
    from afd.rewards import AVAReward

    lm, tok = models.load_causal_lm(base, "cpu", "float32")
    attach(lm, rm.opts)
    return AVAReward(lm, tok, rm.opts, rm.settings, rm.objective)


def seed_figures(model_dir: Path, pairs_path: Path, limit: int | None, base: str) -> dict:
    from afd.data import DataConfig, load_pairs
    from afd.rewards import AVAReward
    from afd.stats import pair_accuracy

    pairs, _ = load_pairs(DataConfig(path=str(pairs_path), limit=limit))
    prompts = [p.prompt for p in pairs]
    rm = AVAReward.from_pretrained(str(model_dir), "cpu", "float32")
    chosen = response_scores(rm, prompts, [p.chosen for p in pairs])
    rejected = response_scores(rm, prompts, [p.rejected for p in pairs])
    base_rm = base_reward(rm, base)
    bc = response_scores(base_rm, prompts, [p.chosen for p in pairs])
    br = response_scores(base_rm, prompts, [p.rejected for p in pairs])
    for k in ("td_weighted", "td_sum", "loglik_mean"):
        chosen["base_" + k], rejected["base_" + k] = bc[k], br[k]
    figs = {k: pair_accuracy(chosen[k], rejected[k]) for k in SCORES}
    both = {k: chosen[k] + rejected[k] for k in chosen}
    figs["corr_weighted_td_weighted"] = corr(both["weighted"], both["td_weighted"])
    figs["corr_weighted_loglik_mean"] = corr(both["weighted"], both["loglik_mean"])
    figs["pairs"] = len(pairs)
    return figs


LABELS = {"weighted": "reward head, sum_t w_t mu_t (afd's AVA-d score)",
          "total": "reward head, sum_t mu_t (Eq. 19)", "last": "reward head, last step (Eq. 18)",
          "td_weighted": "TD target, sum_t w_t delta_t (what the head is fit to)",
          "td_sum": "TD target, sum_t delta_t (= Q_first - Q_last at gamma 1)",
          "loglik_mean": "trained backbone, mean log pi(y_t)", "loglik_sum": "trained backbone, sum log pi(y_t)",
          "base_td_weighted": "base model (before AVA), sum_t w_t delta_t",
          "base_td_sum": "base model, sum_t delta_t", "base_loglik_mean": "base model, mean log pi(y_t)"}


def report(agg: dict, seeds: list[int], host: dict, stage: str = "rm_ava_d") -> str:
    lines = [f"# AVA-d on hh-ava's held-out human pairs: which term sets the reward (`{stage}`, seeds {seeds})", "",
             f"Machine: {host['cpu']}, {host['cores']} cores. Each seed's AVA-d model `{stage}` of `hh-ava` (trained on that "
             f"seed's chosen replies only) and that seed's {agg['pairs']['mean']:.0f} held-out pairs; pair accuracy "
             "with ties half; mean [95% t interval] over seeds. Forward passes only (`python "
             "bench/ava_d_diagnosis.py`).", "", "| score | pair accuracy |", "|---|---|"]
    lines += [f"| {LABELS[k]} | {ci(agg[k])} |" for k in SCORES]
    lines += ["", f"Correlation over responses of the head's score with its TD target: "
              f"{ci(agg['corr_weighted_td_weighted'])}; with the mean log-likelihood: "
              f"{ci(agg['corr_weighted_loglik_mean'])}.", ""]
    return "\n".join(lines)


PLANTED_EXTRA = ("tokens", "ended")


def planted_seed_figures(seed_dir: Path, gold: str, prompts_limit: int | None, base: str, stage: str = "ava_d") -> dict:
    """Within-prompt Spearman with r* of every score on one planted seed's pi_sft pool."""
    from afd.bon import group_by_prompt
    from afd.rewards import AVAReward, load
    from afd.sampling import read_pool
    from afd.stats import within_group_correlation

    rows = read_pool(str(seed_dir / "sample_sft" / "pool.jsonl"))
    if prompts_limit:
        keep = set(list(group_by_prompt(rows))[:prompts_limit])
        rows = [r for r in rows if r["prompt_id"] in keep]
    prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
    folder = Path(stage.format(seed=seed_dir.name.removeprefix("seed-"))) if "/" in stage else seed_dir / stage
    rm = AVAReward.from_pretrained(str(folder / "model"), "cpu", "float32")
    scores = response_scores(rm, prompts, responses)
    base_scores = response_scores(base_reward(rm, base), prompts, responses)
    for k in ("td_weighted", "td_sum", "loglik_mean"):
        scores["base_" + k] = base_scores[k]
    scores["tokens"] = [float(r.get("num_tokens", len(r.get("token_ids", [])))) for r in rows]
    scores["ended"] = [float(r.get("finish_reason") == "stop") for r in rows]
    r_star = load(f"gold:{gold}").score(prompts, responses)
    for i, r in enumerate(rows):
        r.update({k: v[i] for k, v in scores.items()}, gold=r_star[i])
    groups = list(group_by_prompt(rows).values())

    def within(a: str, b: str) -> float | None:
        return within_group_correlation([([r[a] for r in g], [r[b] for r in g]) for g in groups], "spearman")

    figs = {k: within(k, "gold") for k in SCORES + PLANTED_EXTRA}
    figs.update({f"weighted_vs_{k}": within("weighted", k) for k in ("td_weighted", "loglik_mean") + PLANTED_EXTRA})
    figs["prompts"], figs["responses"] = len(groups), len(rows)
    return figs


PLANTED_LABELS = {**LABELS, "tokens": "length (tokens)", "ended": "ended with EOS (1) or cut at 48 tokens (0)"}


def planted_report(agg: dict, seeds: list[int], host: dict, stage: str = "ava_d") -> str:
    lines = [f"# AVA-d on the planted IMDB study: what its reward ranks by (`{stage}`, seeds {seeds})", "",
             f"Machine: {host['cpu']}, {host['cores']} cores. Each seed's AVA-d model (`{stage}`, trained on that seed's "
             f"planted demonstrations only) scores {agg['responses']['mean']:.0f} samples of pi_sft on "
             f"{agg['prompts']['mean']:.0f} held-out prompts (`sample_sft`, the pool Best-of-N picks from). Figures are "
             "the within-prompt Spearman with r* (the hidden gold), averaged over prompts; mean [95% t interval] over "
             "seeds. Forward passes only (`python bench/ava_d_diagnosis.py --planted`).", "",
             "| score | Spearman with r* within prompts |", "|---|---|"]
    lines += [f"| {PLANTED_LABELS[k]} | {ci(agg[k])} |" for k in SCORES + PLANTED_EXTRA]
    lines += ["", "Within-prompt Spearman of afd's AVA-d score (sum_t w_t mu_t) with: its TD target "
              f"{ci(agg['weighted_vs_td_weighted'])}; the trained backbone's mean log-likelihood "
              f"{ci(agg['weighted_vs_loglik_mean'])}; length {ci(agg['weighted_vs_tokens'])}; ending with EOS "
              f"{ci(agg['weighted_vs_ended'])}.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs/hh-ava", help="hh-ava's run folder (seed-N/rm_ava_d, seed-N/data)")
    ap.add_argument("--seeds", type=seeds_arg, default=[0, 1, 2])
    ap.add_argument("--limit", type=int, default=None, help="first N held-out pairs only")
    ap.add_argument("--base", default="smollm2-135m-instruct", help="the model AVA-d started from")
    ap.add_argument("--stage", default="rm_ava_d", help="the AVA-d model's stage in each seed folder (e.g. "
                                                          "rm_ava_d_head_lr, hh-ava's ablation)")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--planted", action="store_true", help="read the planted IMDB study (runs/study-planted-imdb)")
    ap.add_argument("--prompts", type=int, default=None, help="--planted: the first N held-out prompts only")
    ap.add_argument("--name", default=None, help="--planted: the results' name suffix, for a --stage given as a "
                                                 "path (e.g. runs/ava-long/seed-{seed}/reward)")
    args = ap.parse_args()
    if args.planted:
        return main_planted(args)
    def one(seed):
        d = Path(args.runs) / f"seed-{seed}"
        return seed_figures(d / args.stage / "model", d / "data" / "eval_pairs.jsonl", args.limit, args.base)

    per_seed, agg, host = over_seeds(args.seeds, one)
    text = report(agg, args.seeds, host, args.stage)
    print(text)
    if not args.no_save and len(args.seeds) >= 3 and args.limit is None:
        suffix = "" if args.stage == "rm_ava_d" else args.stage.removeprefix("rm_ava_d_")
        save(RESULTS / "hh-ava", suffix, text, {"seeds": args.seeds, "across_seeds": agg, "per_seed": per_seed,
                                                "machine": host})


def over_seeds(seeds: list[int], one) -> tuple[dict, dict, dict]:
    """Each seed's figures (printed as they come), their mean and t interval across seeds, and
    the machine."""
    per_seed = {}
    for seed in seeds:
        per_seed[str(seed)] = one(seed)
        print(seed, json.dumps(per_seed[str(seed)]), flush=True)
    agg = {k: across_seeds([s[k] for s in per_seed.values()]) for k in next(iter(per_seed.values()))}
    return per_seed, agg, machine()


def save(dest: Path, suffix: str, text: str, record: dict) -> None:
    name = "ava_d_diagnosis" + ("_" + suffix if suffix else "")
    (dest / f"{name}.md").write_text(text)
    (dest / f"{name}.json").write_text(json.dumps(record, indent=2))
    print("saved", dest / f"{name}.md")


def main_planted(args) -> None:
    runs = Path(args.runs if args.runs != "runs/hh-ava" else "runs/study-planted-imdb")
    stage = "ava_d" if args.stage == "rm_ava_d" else args.stage
    per_seed, agg, host = over_seeds(args.seeds, lambda seed: planted_seed_figures(
        runs / f"seed-{seed}", str(runs / "shared" / "gold"), args.prompts, args.base, stage))
    text = planted_report(agg, args.seeds, host, stage)
    print(text)
    if not args.no_save and len(args.seeds) >= 3:
        save(RESULTS / "planted-imdb", args.name or ("" if stage == "ava_d" else stage), text,
             {"seeds": args.seeds, "prompts_limit": args.prompts, "across_seeds": agg, "per_seed": per_seed,
              "machine": host})


if __name__ == "__main__":
    main()
