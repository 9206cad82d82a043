"""``afd eval``: golden evaluation of policies and of Best-of-N (METHODS §1, "Evaluation").

A golden scorer (VADER, the gold, a reward model, or a Python function; see ``afd.rewards``) scores
sample pools. For each policy pool it reports the mean golden reward with a 95% interval
(over prompts), the reward normalised so that the demonstrations score 1.0 (as in the paper),
and the fraction of the gap from the initial policy to the demonstrations that is closed.
For each proxy reward (a trained reward model, the density ratio, ...) it applies Best-of-N
to one pool (``bon_policy``, default the SFT pool) and reports, for N = 1, 2, 4, ... up to the
pool size and from that one pool with the unbiased estimator of ``afd.bon``:

- the golden reward of BoN_N, against N and against KL = log N - (N-1)/N;
- its win rate against a plain sample of the baseline policy under the golden reward (ties
  count half): E_prompts E_{b ~ baseline} P(gold(BoN_N) > gold(b)); when the baseline is the
  Best-of-N pool itself, b ranges over the pool's *other* samples of the prompt (a sample is
  never compared with itself), so BoN_1's win rate is exactly 0.5;
- the proxy reward of BoN_N next to its golden reward, both in units of the pool's standard
  deviation above the pool mean, and the rank correlation of proxy and gold: when the proxy
  keeps climbing while the gold stalls or falls, the proxy is being hacked.

Normalisation: ``normalised = gold / gold(demos)`` as in the paper, which assumes the golden
reward is positive; ``gap_closed = (gold - gold(init)) / (gold(demos) - gold(init))`` does
not, and is the figure to read with a signed judge such as VADER. Both mean most when the
demonstrations answer the evaluation prompts themselves; ``share_on_pool_prompts`` (of the
demonstrations entry) says what share of them do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from afd import dist
from afd.bon import bon_curve, bon_expectation, bon_kl, group_by_prompt, load_reward, powers_of_two, score_pool
from afd.config import opt
from afd.errors import AfdError
from afd.runs import ScoringOptions, StageDir, StageOptions, restore_on_failure
from afd.data import prompt_key
from afd.stats import gao_fit, mean_ci, spearman, within_group_correlation


@dataclass
class EvalConfig(StageOptions, ScoringOptions):
    golden: str = opt("vader", "golden scorer: vader, a reward-model folder, rm:ID, or python:MODULE:FN")
    pools: dict = opt({}, "policy name -> sample pool, e.g. init=runs/x/sample_init,sft=runs/x/sample_sft")
    proxies: dict = opt({}, "proxy reward name -> scorer for Best-of-N, e.g. init-sft=runs/x/reward/model")
    bon_policy: str = opt("sft", "the policy (one of pools) whose pool Best-of-N draws from")
    baseline: str = opt("sft", "policy that win rates are measured against")
    init_policy: str = opt("init", "policy whose golden reward is the 0 of gap_closed")
    demos: str = opt("", "demonstrations (any demo format: file, dataset folder or hub id): golden reward 1.0 of "
                         "the normalisation")
    demos_split: str = opt("train", "split of demos when it is a hub dataset or dataset folder")
    demos_format: str = opt("auto", "format of demos (as data_format)")
    demos_columns: dict = opt({}, "column mapping of demos, e.g. prompt=question,response=answer")
    max_demos: int | None = opt(None, "use only the first N demonstrations")
    kl_reference: str = opt("", "policy (e.g. the SFT model) to estimate each pool's KL(policy || it) against")
    oracle: str = opt("", "the proxy that is the golden scorer itself (Best-of-N's ceiling): every other proxy's "
                          "Best-of-N gain is also given as a fraction of its gain")
    length_control: bool = opt(True, "also report every golden figure length-controlled: the golden reward minus "
                                     "its least-squares slope on response length over the init pool's samples")

    def validate(self) -> None:
        self.validate_model_options()
        if not self.pools:
            raise AfdError("afd eval needs option 'pools': name=pool for each policy")
        if self.proxies and self.bon_policy not in self.pools:
            raise AfdError(f"option 'bon_policy' is '{self.bon_policy}', which is not one of the pools "
                           f"({', '.join(self.pools)})")


def per_prompt_means(rows: list[dict], key: str) -> list[float]:
    return [sum(r[key] for r in g) / len(g) for g in group_by_prompt(rows).values()]


def prompt_means(rows: list[dict], key: str = "gold") -> dict[str, float]:
    """prompt id -> the mean of ``key`` over its samples (what a bootstrap over prompts resamples)."""
    return {pid: sum(r[key] for r in g) / len(g) for pid, g in group_by_prompt(rows).items()}


def tokens(row: dict) -> int:
    """A pool row's response length in tokens (its sampled tokens, EOS not counted)."""
    return row.get("num_tokens", len(row.get("token_ids", [])))


def length_slope(rows: list[dict]) -> dict | None:
    """The least-squares fit gold = a + b * length over a pool's samples (the init pool: pi_0's),
    the control that takes out of a golden figure what length alone would explain."""
    xs, ys = [float(tokens(r)) for r in rows], [r["gold"] for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return {"slope": b, "mean_tokens": mx, "spearman_gold_length": spearman(ys, xs)}


def adjust(rows: list[dict], fit: dict) -> None:
    """row["gold_lc"]: the golden reward less what its length explains (at the init pool's mean length)."""
    for r in rows:
        r["gold_lc"] = r["gold"] - fit["slope"] * (tokens(r) - fit["mean_tokens"])


def within_prompt_pair_accuracy(groups: list) -> float | None:
    """Over every pair of one prompt's samples whose golden rewards differ, the share the proxy
    orders as the gold does (proxy ties half): the accuracy on gold-ranked pairs, within prompts."""
    right = total = 0.0
    for _, g in groups:
        for i in range(len(g)):
            for j in range(i + 1, len(g)):
                a, b = g[i], g[j]
                if a["gold"] == b["gold"]:
                    continue
                total += 1
                same = (a["proxy"] - b["proxy"]) * (a["gold"] - b["gold"])
                right += 1.0 if same > 0 else 0.5 if a["proxy"] == b["proxy"] else 0.0
    return right / total if total else None


def win_values(rows: list[dict], baseline_rows: list[dict], key: str = "gold", same_pool: bool = False) -> None:
    """row["win"] = P(row's gold beats a random baseline sample of the same prompt), ties half.
    With ``same_pool`` (the baseline pool is the pool ``rows`` come from) a sample is compared
    with the *other* samples of its prompt only: ``win_i = mean_(j != i) [g_i > g_j] + [g_i = g_j] / 2``,
    so that Best-of-N's win rate is P(BoN_N beats an independent baseline sample) rather than
    being pulled toward 0.5 by its comparison with itself."""
    base = {pid: [(r["sample_index"], r[key]) for r in g] for pid, g in group_by_prompt(baseline_rows).items()}
    for r in rows:
        b = [v for i, v in base.get(r["prompt_id"], []) if not (same_pool and i == r["sample_index"])]
        if not b:
            raise AfdError(f"prompt '{r['prompt_id']}' has no {'other ' if same_pool else ''}sample in the "
                           f"baseline pool")
        r["win"] = sum(1.0 if r[key] > v else 0.5 if r[key] == v else 0.0 for v in b) / len(b)


def standardise(values: dict[int, float], pool: list[float]) -> dict[int, float]:
    mean = sum(pool) / len(pool)
    sd = math.sqrt(sum((v - mean) ** 2 for v in pool) / max(len(pool) - 1, 1)) or 1.0
    return {n: (v - mean) / sd for n, v in values.items()}


@dist.main_process_stage
@restore_on_failure
def evaluate(cfg: EvalConfig) -> dict:
    """Run the stage: metrics.json, report.md and PNG plots in OUT/eval."""
    from afd.sampling import read_pool

    stage = StageDir(cfg, "eval")
    if not stage.begin():
        return stage.metrics()
    demos = None
    if cfg.demos:  # read before any scoring, so a mistake in them costs none
        from afd.data import DataConfig, load_demos

        demos, _ = load_demos(DataConfig(path=cfg.demos, split=cfg.demos_split, format=cfg.demos_format,
                                         columns=dict(cfg.demos_columns), limit=cfg.max_demos, on_invalid="skip",
                                         option="demos"))
    golden = load_reward(cfg.golden, cfg)  # loaded once for every pool
    pools = {}
    for name, path in cfg.pools.items():
        rows = read_pool(path)
        if not rows:
            raise AfdError(f"pool '{name}' ({path}) is empty")
        score_pool(rows, golden, "gold")
        pools[name] = rows

    length_fit = length_slope(pools[cfg.init_policy]) if cfg.length_control and cfg.init_policy in pools else None
    policies = {}
    for name, rows in pools.items():
        mean, ci = mean_ci(per_prompt_means(rows, "gold"))
        for r in rows:
            r["tokens"] = float(tokens(r))
        policies[name] = {"gold": mean, "gold_ci95": ci, "samples": len(rows), "gold_per_prompt": prompt_means(rows),
                          "mean_tokens": sum(r["tokens"] for r in rows) / len(rows)}
        if length_fit:
            adjust(rows, length_fit)
            policies[name]["gold_length_controlled"] = sum(per_prompt_means(rows, "gold_lc")) / len(group_by_prompt(rows))
            policies[name]["gold_length_controlled_per_prompt"] = prompt_means(rows, "gold_lc")
    demo_gold = None
    if demos is not None:
        rows = [{"prompt_id": d.id, "prompt": d.prompt, "response": d.response, "sample_index": 0} for d in demos]
        score_pool(rows, golden, "gold")
        demo_gold, ci = mean_ci([r["gold"] for r in rows])
        # the normalisation is meant on the evaluation prompts: say how many demonstrations are
        pool_prompts = {prompt_key(r["prompt"]) for rows_ in pools.values() for r in rows_}
        on_pools = sum(prompt_key(d.prompt) in pool_prompts for d in demos) / max(len(demos), 1)
        policies["demonstrations"] = {"gold": demo_gold, "gold_ci95": ci, "samples": len(rows),
                                      "share_on_pool_prompts": on_pools}
    if cfg.kl_reference:
        from afd import models

        reference = models.load_causal_lm(cfg.kl_reference, cfg.device, "float32")  # differenced: fp32
        for name, rows in pools.items():
            policies[name].update(kl_to_reference(rows, cfg.pools[name], reference, cfg))
        del reference
    init_gold = policies.get(cfg.init_policy, {}).get("gold")
    for p in policies.values():
        normalise(p, demo_gold, init_gold)

    bon_results = {}
    if cfg.proxies:
        rows = pools[cfg.bon_policy]
        baseline = pools.get(cfg.baseline)
        if baseline is not None:
            same = cfg.baseline == cfg.bon_policy or Path(cfg.pools[cfg.baseline]).resolve() == \
                Path(cfg.pools[cfg.bon_policy]).resolve()
            win_values(rows, baseline, same_pool=same)
        m = min(len(g) for g in group_by_prompt(rows).values())
        ns = powers_of_two(m)
        memo: dict = {}  # an ensemble's or a z: reward's members score each row once
        for name, spec in cfg.proxies.items():
            score_pool(rows, load_reward(spec, cfg, memo), "proxy")
            gold = bon_curve(rows, "proxy", "gold", ns)
            proxy = bon_curve(rows, "proxy", "proxy", ns)
            entry = {
                "n": ns, "kl": [bon_kl(n) for n in ns], "gold": [gold[n] for n in ns],
                "proxy": [proxy[n] for n in ns],
                "gold_z": list(standardise(gold, [r["gold"] for r in rows]).values()),
                "proxy_z": list(standardise(proxy, [r["proxy"] for r in rows]).values()),
                "spearman_proxy_gold": spearman([r["proxy"] for r in rows], [r["gold"] for r in rows]),
                # within each prompt (what Best-of-N uses: it ranks one prompt's samples), mean over prompts
                **{f"{m}_within_prompts": within_group_correlation(
                    [([r["proxy"] for r in g], [r["gold"] for r in g]) for g in group_by_prompt(rows).values()], m)
                   for m in ("spearman", "pearson")},
            }
            if baseline is not None:
                win = bon_curve(rows, "proxy", "win", ns)
                entry["win_rate"] = [win[n] for n in ns]
            entry["normalised"] = [x / demo_gold if demo_gold else None for x in entry["gold"]]
            entry["gap_closed"] = [gap(x, demo_gold, init_gold) for x in entry["gold"]]
            groups = list(group_by_prompt(rows).items())
            # per prompt (for a bootstrap paired over prompts), and Gao et al.'s d (alpha - beta d)
            entry["gold_per_prompt"] = {str(n): {pid: bon_expectation([r["proxy"] for r in g], [r["gold"] for r in g], n)
                                                 for pid, g in groups} for n in ns}
            entry["pair_accuracy_within_prompts"] = within_prompt_pair_accuracy(groups)
            entry["gao_fit"] = gao_fit(entry["kl"], [g - entry["gold"][0] for g in entry["gold"]])
            length = bon_curve(rows, "proxy", "tokens", ns)  # Best-of-N's mean response length, beside its gold
            entry["mean_tokens"] = [length[n] for n in ns]
            if length_fit:
                lc = bon_curve(rows, "proxy", "gold_lc", ns)
                entry["gold_length_controlled"] = [lc[n] for n in ns]
                entry["gold_length_controlled_per_prompt"] = {
                    str(n): {pid: bon_expectation([r["proxy"] for r in g], [r["gold_lc"] for r in g], n)
                             for pid, g in groups} for n in ns}
            bon_results[name] = entry
        if cfg.oracle in bon_results:
            top = bon_results[cfg.oracle]
            for entry in bon_results.values():
                entry["fraction_of_oracle_gain"] = [
                    (g - entry["gold"][0]) / (o - top["gold"][0]) if o != top["gold"][0] else None
                    for g, o in zip(entry["gold"], top["gold"])]
        plots(stage.path, bon_results, policies, cfg)
    if cfg.kl_reference:
        policy_plot(stage.path / "gold_vs_kl.png", policies, bon_results, cfg)
    metrics = {"golden": cfg.golden, "kl_reference": cfg.kl_reference or None, "policies": policies,
               "bon_policy": cfg.bon_policy, "baseline": cfg.baseline, "bon": bon_results,
               "length_fit_on_init": length_fit}
    (stage.path / "report.md").write_text(report(metrics))
    return stage.finish(metrics)


def kl_to_reference(rows: list[dict], pool_path: str, reference: tuple, cfg: EvalConfig) -> dict:
    """Monte Carlo KL(pi || pi_ref) = E_(y ~ pi)[log pi(y|x) - log pi_ref(y|x)] over the pool's
    samples (per prompt, then averaged). ``log pi`` is the log-prob the sampler recorded and
    ``log pi_ref`` is teacher-forced on the very tokens sampled (the pool's ``token_ids``), so
    the estimate is exact per sample. It holds for pools drawn from pi itself at temperature 1
    without top-k or top-p (afd's defaults) and a reference with the policy's vocabulary;
    otherwise (per the pool's own record of its sampling, ``afd.sampling.read_pool_meta``) the
    policy gets None rather than a wrong figure. ``reference`` is the (model, tokenizer) of
    ``cfg.kl_reference``."""
    from afd import models
    from afd.sampling import read_pool_meta
    from afd.scoring import response_logprobs

    sampled = read_pool_meta(pool_path)
    none = {"kl_to_reference": None, "kl_to_reference_ci95": None}
    if (not sampled.get("model") or sampled.get("temperature", 1.0) != 1.0 or sampled.get("top_p", 1.0) != 1.0
            or sampled.get("top_k", 0) or sampled.get("system_prompt") or any("token_ids" not in r for r in rows)):
        return none
    if _same_model(sampled["model"], cfg.kl_reference):  # KL(pi || pi) = 0: no forward pass needed
        for r in rows:
            r["log_ratio"] = 0.0
        return {"kl_to_reference": 0.0, "kl_to_reference_ci95": 0.0}
    model, tok = reference
    if tok.get_vocab() != models.load_tokenizer(sampled["model"]).get_vocab():
        return none
    template = sampled.get("template", cfg.template)
    ref = response_logprobs(model, tok, [(r["prompt"], r["token_ids"]) for r in rows], template, cfg.batch_size,
                            progress=f"log-probs under {Path(cfg.kl_reference).name}")
    # log pi and log pi_ref in the same dtype: a pool sampled in bf16 (dtype=auto on a CPU with
    # native bf16) has bf16 log-probs, off by ~1 nat a sequence (bench/results/bf16-cpu.md), the
    # size of the KL itself; then log pi is teacher-forced again in the reference's dtype
    if sampled.get("dtype") != str(next(model.parameters()).dtype).replace("torch.", ""):
        policy, ptok = models.load_causal_lm(sampled["model"], cfg.device, "float32")
        own = response_logprobs(policy, ptok, [(r["prompt"], r["token_ids"]) for r in rows], template,
                                cfg.batch_size)
        del policy
    else:
        own = [r["logprob"] for r in rows]
    for r, lp, mine in zip(rows, ref, own):
        r["log_ratio"] = mine - lp
    mean, ci = mean_ci(per_prompt_means(rows, "log_ratio"))
    return {"kl_to_reference": mean, "kl_to_reference_ci95": ci}


def _same_model(a: str, b: str) -> bool:
    """Whether two model names are the same model: the same name, or the same local folder."""
    from afd import models

    a, b = models.resolve(a), models.resolve(b)
    return a == b or Path(a).is_dir() and Path(b).is_dir() and Path(a).resolve() == Path(b).resolve()


def gap(x: float, demo: float | None, init: float | None) -> float | None:
    if demo is None or init is None or demo == init:
        return None
    return (x - init) / (demo - init)


def normalise(entry: dict, demo: float | None, init: float | None) -> None:
    entry["normalised"] = entry["gold"] / demo if demo else None
    entry["gap_closed"] = gap(entry["gold"], demo, init)


def plots(folder, bon_results: dict, policies: dict, cfg: EvalConfig) -> None:
    from afd.plots import line_plot

    line_plot(folder / "bon_gold_vs_n.png", {k: (v["n"], v["gold"]) for k, v in bon_results.items()},
              "N (Best-of-N)", f"golden reward ({cfg.golden})", f"Best-of-N from the {cfg.bon_policy} pool",
              logx=True)
    line_plot(folder / "bon_gold_vs_kl.png", {k: (v["kl"], v["gold"]) for k, v in bon_results.items()},
              "KL(BoN || sampler), nats", f"golden reward ({cfg.golden})", "golden reward against KL")
    if any("win_rate" in v for v in bon_results.values()):
        line_plot(folder / "bon_win_rate.png", {k: (v["n"], v["win_rate"]) for k, v in bon_results.items()
                                                 if "win_rate" in v},
                  "N (Best-of-N)", f"win rate against {cfg.baseline}", "Best-of-N win rate", logx=True)
    series = {}
    for k, v in bon_results.items():
        series[f"{k}: proxy"] = (v["n"], v["proxy_z"])
        series[f"{k}: gold"] = (v["n"], v["gold_z"])
    line_plot(folder / "proxy_vs_gold.png", series, "N (Best-of-N)", "pool standard deviations above the pool mean",
              "proxy and golden reward of BoN", logx=True)


def policy_plot(path, policies: dict, bon_results: dict, cfg: EvalConfig) -> None:
    """Golden reward against KL to the reference: each policy a point, Best-of-N a curve
    (its KL is from the BoN sampler, which is the reference when bon_policy is it)."""
    from afd.plots import points_and_curves_plot

    points = {name: (p["kl_to_reference"], p["gold"]) for name, p in policies.items()
              if p.get("kl_to_reference") is not None}
    curves = {f"BoN: {name}": (b["kl"], b["gold"]) for name, b in bon_results.items()}
    reference = "/".join(Path(cfg.kl_reference).parts[-2:])  # runs/x/sft/model -> sft/model
    points_and_curves_plot(path, points, curves, f"KL to {reference} (nats)", f"golden reward ({cfg.golden})",
                           "golden reward against KL")


def _f(x, digits=3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def report(m: dict) -> str:
    lines = [f"# afd eval (golden scorer: {m['golden']})", "", "## Policies", "",
             "| policy | golden reward | 95% CI | normalised (demos = 1) | gap closed | KL to reference (nats) "
             "| samples |", "|---|---|---|---|---|---|---|"]
    for name, p in m["policies"].items():
        lines.append(f"| {name} | {_f(p['gold'])} | ±{_f(p['gold_ci95'])} | {_f(p['normalised'])} | "
                     f"{_f(p['gap_closed'])} | {_f(p.get('kl_to_reference'))} | {p['samples']} |")
    if m["bon"]:
        lines += ["", f"## Best-of-N from the {m['bon_policy']} pool (one-pool unbiased estimates)", ""]
        for name, b in m["bon"].items():
            lines += [f"### proxy: {name} (Spearman proxy/gold over the pool: {_f(b['spearman_proxy_gold'])}; "
                      f"within prompts: {_f(b.get('spearman_within_prompts'))})", "",
                      "| N | KL (nats) | golden reward | gap closed | win rate vs " + m["baseline"] +
                      " | proxy (sd) | gold (sd) |", "|---|---|---|---|---|---|---|"]
            for i, n in enumerate(b["n"]):
                win = b["win_rate"][i] if "win_rate" in b else None
                lines.append(f"| {n} | {_f(b['kl'][i], 2)} | {_f(b['gold'][i])} | {_f(b['gap_closed'][i])} | "
                             f"{_f(win)} | {_f(b['proxy_z'][i], 2)} | {_f(b['gold_z'][i], 2)} |")
            lines.append("")
        lines += ["Plots: `bon_gold_vs_n.png`, `bon_gold_vs_kl.png`, `bon_win_rate.png`, `proxy_vs_gold.png`."]
    return "\n".join(lines) + "\n"
