"""``afd study``: claims measured over seeds and decided by a rule fixed before the runs.

A study asks afd "does alignment from demonstrations work here?" the way
``../shared/docs/VERIFICATION.md`` says an answer is earned: each seed is its own split of the
prompts, its own draws and its own training; a claim's figure is measured in every seed; its
interval is a bootstrap over seeds (and over prompts within a seed where the figure is measured
per prompt, paired when it is a difference of two methods on the same prompts); and the verdict
follows a rule written in the study before it runs (:func:`afd.stats.verdict`): *reproduced* when
the interval lies on the claim's side, *refuted* when on the other, *inconclusive* otherwise. The
controls that would explain a result away (length, a random reward, the oracle) sit beside it.

A study YAML::

    out: runs/study                   # the study folder
    summary: ""                       # its study.json, claims.md and plot in OUT/SUMMARY (default: OUT)
    seeds: 0-9                        # or [0, 1, 2]
    model: smollm2-135m-instruct      # any other top-level key: a default for every stage that has it
    shared:                           # stages run once, before any seed, in OUT/shared/
      gold: {kind: gold}
      candidates: {kind: sample, data: "@gold/prompts.jsonl", num_samples: 16}
    stages:                           # each seed's pipeline, in OUT/seed-S/, run with seed: S
      split: {kind: split, data: "@candidates", train: 64, eval: 32}
      plant: {kind: plant, pool: "@split/train.jsonl", scorer: "gold:@gold"}
      ...                             # "@NAME": an earlier stage of the seed, or a shared one
    claims:
      - claim: init-sft's Best-of-16 beats SFT
        figure: eval.bon.init-sft.gold@16 - eval.policies.sft.gold
        threshold: 0                  # the claim: the figure lies above it (side: below for under it)
        controls: [eval.bon.length.gold@16 - eval.policies.sft.gold]
        planned_effect: 0.3           # the effect the seeds were planned to resolve

A **figure** is a path into a seed's results (the stage's name, then keys into its metrics), or
the difference of two. ``@N`` picks a Best-of-N curve's value at N (where the entry's ``n`` list
holds N); ``[i]`` an index. Where the metrics keep the same figure per prompt (the sibling key
``NAME_per_prompt``, by N for a curve, as ``afd eval`` writes them), the bootstrap resamples
prompts within each seed too, pairing a difference's two sides on the same prompts.

Every stage is cached and resumes (``afd.runs``): a study killed anywhere redoes nothing that
finished. It writes ``claims.md`` and ``study.json`` in OUT (or OUT/SUMMARY) (every claim's per-seed figures,
mean, bootstrap 95% interval, interquartile mean, probability of improvement, verdict, and each
seed's time), and, for the eval stage named by ``plot``, ``gold_vs_sqrt_kl.png``: each
proxy's Best-of-N gold against sqrt(KL), averaged over seeds, the oracle and the floors with them,
and each policy with a KL to the eval's reference (RL policies against SFT) as a point.

``afd split`` (kind ``split``) gives a seed its prompts: it splits a prompt file or a sample pool
by prompt, ``train`` and ``eval`` prompts drawn by the seed from the sorted prompt ids, the rest
unused (so two files of the same prompts split alike under one seed), and writes each side's
prompts once (``train_prompts.jsonl``, ``eval_prompts.jsonl``) for the stages that sample them.
"""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from afd.config import opt, read_yaml
from afd.errors import AfdError, ConfigError
from afd.runs import StageDir, StageOptions, atomic_write_text, restore_on_failure, write_json, write_jsonl


# --------------------------------------------------------------------------------------------
# afd split

@dataclass
class SplitConfig(StageOptions):
    data: str = opt("", "prompts (.jsonl with an id) or a sample pool (a pool file or a sample stage folder)")
    train: int = opt(0, "prompts in train.jsonl")
    eval: int = opt(0, "prompts in eval.jsonl (taken before the train prompts, from the same shuffle)")
    seed: int = opt(0, "the split's seed")

    def validate(self) -> None:
        if not self.data:
            raise AfdError("afd split needs option 'data': a prompt file or a sample pool")
        if self.train < 0 or self.eval < 0 or self.train + self.eval == 0:
            raise AfdError("options 'train' and 'eval' must be at least 0, and not both 0")


def read_keyed_rows(path: str) -> tuple[list[dict], str]:
    """Rows of a JSONL prompt file or sample pool, and the key naming their prompt."""
    from afd.sampling import pool_file

    file = pool_file(path)
    if not file.is_file():
        raise AfdError(f"{file} does not exist")
    rows = []
    for n, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise AfdError(f"{file}, line {n}: not valid JSON") from None
    key = "prompt_id" if rows and "prompt_id" in rows[0] else "id"
    missing = next((n for n, r in enumerate(rows, 1) if key not in r), None)
    if missing is not None:
        raise AfdError(f"{file}, row {missing}: field '{key}' is missing (afd split groups rows by prompt)")
    return rows, key


@restore_on_failure
def split(cfg: SplitConfig) -> dict:
    """Run the stage: OUT/split/train.jsonl and eval.jsonl (the input's own rows), and
    train_prompts.jsonl and eval_prompts.jsonl (each prompt once, id and prompt: what a sample
    stage reads; for a pool, the prompts of its rows)."""
    stage = StageDir(cfg, "split")
    if not stage.begin():
        return stage.metrics()
    rows, key = read_keyed_rows(cfg.data)
    ids = sorted({r[key] for r in rows})
    if cfg.train + cfg.eval > len(ids):
        raise AfdError(f"{cfg.data} has {len(ids)} prompts, fewer than train + eval = {cfg.train + cfg.eval}")
    random.Random(cfg.seed).shuffle(ids)
    held, train = set(ids[:cfg.eval]), set(ids[cfg.eval:cfg.eval + cfg.train])
    write_jsonl(stage.path / "train.jsonl", [r for r in rows if r[key] in train])
    write_jsonl(stage.path / "eval.jsonl", [r for r in rows if r[key] in held])
    for name, part in (("train", train), ("eval", held)):
        first = {}
        for r in rows:
            if r[key] in part and r[key] not in first:
                first[r[key]] = r if key == "id" else {"id": r[key], "prompt": r["prompt"]}
        write_jsonl(stage.path / f"{name}_prompts.jsonl", list(first.values()))
    return stage.finish({"prompts": len(ids), "train_prompts": len(train), "eval_prompts": len(held),
                         "train_rows": sum(r[key] in train for r in rows), "eval_rows": sum(r[key] in held for r in rows)})


# --------------------------------------------------------------------------------------------
# figures

TERM = re.compile(r"^([A-Za-z0-9_.:,\-]+?)(?:@(\d+)|\[(\d+)\])?$")


@dataclass
class Value:
    """One seed's figure: its value and, where the metrics keep it per prompt, prompt -> value."""

    value: float | None
    per_prompt: dict | None = None


def lookup(results: dict, term: str) -> Value:
    """A term's value in one seed's results (see the module docstring)."""
    m = TERM.match(term.strip())
    if not m:
        raise ConfigError(f"figure term '{term}' should be stage.key.key..., with @N or [i] at its end")
    path, at, index = m.group(1), m.group(2), m.group(3)
    node, parent, last = results, None, None
    for key in split_path(path, results):
        if not isinstance(node, dict) or key not in node:
            return Value(None)
        parent, last, node = node, key, node[key]
    per = parent.get(f"{last}_per_prompt") if isinstance(parent, dict) else None
    if at is not None:
        ns = parent.get("n") if isinstance(parent, dict) else None
        if not isinstance(ns, list) or int(at) not in ns:
            return Value(None)
        i = ns.index(int(at))
        return Value(node[i] if isinstance(node, list) else None, per.get(at) if isinstance(per, dict) else None)
    if index is not None:
        return Value(node[int(index)] if isinstance(node, list) and int(index) < len(node) else None)
    return Value(node if isinstance(node, (int, float)) and not isinstance(node, bool) else None,
                 per if isinstance(per, dict) else None)


def split_path(path: str, results: dict) -> list[str]:
    """``stage.key.key`` into keys; a key may itself hold dots where the results have such a key
    (a stage or proxy named ``random:0`` or ``z-score.x``): the longest matching key is taken."""
    parts, keys, node = path.split("."), [], results
    i = 0
    while i < len(parts):
        for j in range(len(parts), i, -1):
            candidate = ".".join(parts[i:j])
            if isinstance(node, dict) and candidate in node:
                keys.append(candidate)
                node = node[candidate]
                i = j
                break
        else:
            keys.append(parts[i])
            node = None
            i += 1
    return keys


def terms(expression: str) -> list[str]:
    """The terms of a figure ``A`` or ``A - B``."""
    return [t.strip() for t in re.split(r"\s+-\s+", expression.strip())]


def stages_read(expressions, stages) -> set[str]:
    """Which of ``stages`` the figures ``expressions`` read (a term begins with a stage's name;
    a name may hold dots)."""
    names = list(stages)
    return {s for e in expressions for t in terms(e) for s in names if t == s or t.startswith(s + ".")}


def figure(results: dict, expression: str) -> Value:
    """``A`` or ``A - B`` (A and B terms) in one seed's results; per prompt where both sides have it."""
    parts = terms(expression)
    if not 1 <= len(parts) <= 2:
        raise ConfigError(f"figure '{expression}' should be a term or the difference of two")
    values = [lookup(results, t) for t in parts]
    if any(v.value is None for v in values):
        return Value(None)
    if len(values) == 1:
        return values[0]
    a, b = values
    per = None
    if a.per_prompt and b.per_prompt and set(a.per_prompt) == set(b.per_prompt):
        per = {p: a.per_prompt[p] - b.per_prompt[p] for p in a.per_prompt}  # paired on the same prompts
    return Value(a.value - b.value, per)


# --------------------------------------------------------------------------------------------
# claims

@dataclass
class Claim:
    claim: str
    figure: str
    null: float = 0.0
    side: str = "above"
    controls: tuple = ()
    planned_effect: float | None = None
    why: str = ""

    @classmethod
    def from_dict(cls, d: dict, where: str) -> Claim:
        d = dict(d)
        if None in d:  # YAML reads a bare `null:` key as None: it means the threshold
            d["threshold"] = d.pop(None)
        if "null" in d:
            d["threshold"] = d.pop("null")
        known = {"claim", "figure", "threshold", "side", "controls", "planned_effect", "why"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key '{unknown[0]}' (a claim has {', '.join(sorted(known))})")
        if not d.get("claim") or not d.get("figure"):
            raise ConfigError(f"{where}: a claim needs 'claim' (its words) and 'figure' (what decides it)")
        if d.get("side", "above") not in ("above", "below"):
            raise ConfigError(f"{where}: 'side' must be above or below; got {d['side']!r}")
        return cls(str(d["claim"]), str(d["figure"]), float(d.get("threshold", 0.0)), d.get("side", "above"),
                   tuple(d.get("controls") or ()), d.get("planned_effect"), str(d.get("why", "")))


def decide(claim: Claim, per_seed: dict[str, dict], rounds: int = 4000) -> dict:
    """A claim's figures in every seed, their bootstrap statistics, the verdict and the controls."""
    from afd.stats import bootstrap, probability_of_improvement, verdict

    def stats(expression: str) -> dict:
        values = {s: figure(r, expression) for s, r in per_seed.items()}
        entry = bootstrap([v.per_prompt or v.value for v in values.values() if v.value is not None], rounds)
        entry["figure"] = expression
        entry["paired_over_prompts"] = all(v.per_prompt for v in values.values() if v.value is not None)
        parts = terms(expression)
        if len(parts) == 2:  # rliable's probability that a seed of A beats a seed of B
            a = [lookup(r, parts[0]).value for r in per_seed.values()]
            b = [lookup(r, parts[1]).value for r in per_seed.values()]
            entry["probability_of_improvement"] = probability_of_improvement(a, b)
        else:
            xs = [v.value for v in values.values() if v.value is not None]
            entry["share_of_seeds_past_null"] = (sum(1.0 if (x > claim.null) == (claim.side == "above") and
                                                     x != claim.null else 0.5 if x == claim.null else 0.0
                                                     for x in xs) / len(xs)) if xs else None
        return entry

    main = stats(claim.figure)
    out = {"claim": claim.claim, "null": claim.null, "side": claim.side, **main,
           "verdict": verdict(main, claim.null, claim.side), "why": claim.why,
           "controls": [stats(c) for c in claim.controls]}
    if main.get("ci95") and claim.planned_effect is not None:
        out["half_width"] = (main["ci95"][1] - main["ci95"][0]) / 2
        out["planned_effect"] = claim.planned_effect
        out["resolves_planned_effect"] = out["half_width"] < abs(claim.planned_effect)
    return out


def table(decided: list[dict], seeds: list) -> str:
    def f(entry: dict, digits: int = 3) -> str:
        if entry.get("mean") is None:
            return "–"
        ci = entry.get("ci95")
        return f"{entry['mean']:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")

    lines = ["| claim | figure | mean [95% bootstrap interval] | IQM | P(improvement) | seeds | verdict | controls |",
             "|---|---|---|---|---|---|---|---|"]
    for d in decided:
        p = d.get("probability_of_improvement", d.get("share_of_seeds_past_null"))
        controls = "; ".join(f"`{c['figure']}`: {f(c)}" for c in d["controls"]) or "–"
        iqm = "–" if d.get("iqm") is None else f"{d['iqm']:.3f}"
        lines.append(f"| {d['claim']} | `{d['figure']}`{'' if d['side'] == 'above' else ' (below)'} vs {d['null']:g} | "
                     f"{f(d)} | {iqm} | {'–' if p is None else f'{p:.2f}'} | {d['seeds']} | **{d['verdict']}** | "
                     f"{controls} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# the study

def seeds_of(value: Any, where: str) -> list[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return list(value)
    if isinstance(value, str):
        text = value.replace(" ", "")
        try:
            if "-" in text and "," not in text:
                a, b = text.split("-")
                return list(range(int(a), int(b) + 1))
            return [int(x) for x in text.split(",") if x]
        except ValueError:
            pass
    raise ConfigError(f"{where}: 'seeds' should be a list of whole numbers or a range like 0-9; got {value!r}")


def load_study(path: str | dict) -> dict:
    raw = dict(path) if isinstance(path, dict) else read_yaml(path)
    where = "the study" if isinstance(path, dict) else str(path)
    if not isinstance(raw.get("stages"), dict) or not raw["stages"]:
        raise ConfigError(f"{where} needs 'stages:', each seed's pipeline")
    raw["seeds"] = seeds_of(raw.get("seeds", [0]), where)
    raw["claims"] = [Claim.from_dict(c, f"{where}, claim {i + 1}") for i, c in enumerate(raw.get("claims") or [])]
    raw["where"] = where
    return raw


# a study's own keys; any other top-level key is a default for every stage that has it
STUDY_KEYS = ("stages", "shared", "claims", "seeds", "out", "summary", "plot", "where", "bootstrap_rounds")


def stage_defaults(study: dict) -> dict:
    return {k: v for k, v in study.items() if k not in STUDY_KEYS}


def summary_folder(study: dict, out_dir: Path) -> Path:
    """Where a study writes study.json, claims.md and its plot: OUT, or OUT/SUMMARY (two studies
    sharing one run folder, and so every stage they have in common, each keep their own)."""
    return out_dir / str(study["summary"]) if study.get("summary") else out_dir


def run_study(path: str | dict, out: str | None = None, seeds: list[int] | None = None, report=None,
              overrides: dict | None = None, recorded=None) -> dict:
    """Run a study (the module docstring) and write its claims; returns the study's summary.
    ``overrides``: options for every stage (``{"force": True}`` redoes them).
    ``recorded``: seeds finished in another run folder, decided beside those run here: a function
    of this run folder, called once the shared stages are made (so it can check that its seeds
    drew on the same shared pools, and raise if not), returning ``{seed: {"results": {stage:
    metrics}, "seconds": ...}}`` for seeds not in ``seeds``."""
    from afd import dist
    from afd.pipeline import run

    study = load_study(path)
    out_dir = Path(out or study.get("out") or "runs/study")
    chosen = seeds if seeds is not None else study["seeds"]
    defaults = stage_defaults(study)
    artifacts: dict[str, str] = {}
    if study.get("shared"):
        run({**defaults, "stages": study["shared"]}, overrides, out=str(out_dir / "shared"), artifacts=artifacts,
            report=(lambda name, m: report("shared", name, m)) if report else None)
    earlier = recorded(out_dir) if recorded else {}
    clash = sorted(set(map(str, chosen)) & set(map(str, earlier)))
    if clash:
        raise ConfigError(f"seed {clash[0]} is both recorded and to be run; run it or take it from the record, not both")
    per_seed, seconds = {}, {}
    for seed in chosen:
        seed_out = out_dir / f"seed-{seed}"
        own = dict(artifacts)  # shared stages, then this seed's own
        started = time.time()
        results = run({**defaults, "seed": seed, "stages": study["stages"]}, overrides, out=str(seed_out), artifacts=own,
                      report=(lambda name, m, s=seed: report(f"seed {s}", name, m)) if report else None)
        # the seed's time: its stages' own (each as run, resumes included), and this call's wall time
        seconds[str(seed)] = {"stages": round(sum(m.get("seconds", 0) or 0 for m in results.values()), 1),
                              "this_run": round(time.time() - started, 1)}
        dist.on_main(write_json, seed_out / "seed.json", {"seed": seed, "seconds": seconds[str(seed)],
                                                          "stages": list(results)})
        per_seed[str(seed)] = results
    for seed, entry in earlier.items():
        per_seed[str(seed)], seconds[str(seed)] = entry["results"], entry.get("seconds")
    order = sorted(per_seed, key=int)
    per_seed, seconds = {s: per_seed[s] for s in order}, {s: seconds[s] for s in order}
    decided = [decide(c, per_seed, int(study.get("bootstrap_rounds", 4000))) for c in study["claims"]]
    folder = summary_folder(study, out_dir)
    summary = {"study": study["where"], "seeds": [int(s) for s in order], "seconds": seconds, "claims": decided,
               "folder": str(folder)}
    if earlier:
        summary["recorded_seeds"] = sorted(int(s) for s in earlier)

    def write() -> None:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "study.json", summary)
        atomic_write_text(folder / "claims.md", f"# {study['where']}: {len(order)} seed(s)\n\n"
                          + table(decided, summary["seeds"]))
        if study.get("plot"):
            gold_vs_sqrt_kl(folder / "gold_vs_sqrt_kl.png", per_seed, str(study["plot"]))

    dist.on_main(write)
    return summary


def gold_vs_sqrt_kl(path: Path, per_seed: dict, stage: str) -> None:
    """Each proxy's Best-of-N golden reward against sqrt(KL(BoN || its sampler)), and each policy
    with a KL to the eval's reference (an RL policy against SFT, say) as a point at
    sqrt(KL(policy || reference)), both averaged over the seeds. In the planted studies the
    Best-of-N sampler and the KL reference are both pi_sft, so curves and points share the axis."""
    import math

    from afd.plots import points_and_curves_plot

    curves: dict[str, dict[float, list]] = {}
    points: dict[str, list[tuple[float, float]]] = {}
    for results in per_seed.values():
        for proxy, b in (results.get(stage, {}).get("bon") or {}).items():
            for kl, g in zip(b["kl"], b["gold"]):
                curves.setdefault(proxy, {}).setdefault(math.sqrt(kl), []).append(g)
        for name, p in (results.get(stage, {}).get("policies") or {}).items():
            if p.get("kl_to_reference") is not None and p.get("gold") is not None:
                points.setdefault(name, []).append((math.sqrt(max(p["kl_to_reference"], 0.0)), p["gold"]))
    series = {p: (sorted(c), [sum(c[d]) / len(c[d]) for d in sorted(c)]) for p, c in curves.items()}
    means = {name: (sum(x for x, _ in v) / len(v), sum(y for _, y in v) / len(v)) for name, v in points.items()}
    if series or means:
        points_and_curves_plot(path, means, series, "sqrt(KL to pi_sft), sqrt(nats): Best-of-N's to its sampler, "
                               "a policy's to the reference", "golden reward (mean over seeds)",
                               f"gold against sqrt(KL), {len(per_seed)} seed(s)")
