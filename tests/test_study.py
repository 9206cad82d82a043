"""afd study: the decision rule on synthetic figures (each verdict), the statistics beside it,
figures read from seeds' results, afd split, and the toy study end to end with its resume."""

import json
import math
import random
import shutil
from pathlib import Path

import pytest

from afd.errors import AfdError, ConfigError
from afd.stats import bootstrap, gao_fit, iqm, probability_of_improvement
from afd.study import Claim, decide, figure, load_study, lookup

REPO = Path(__file__).resolve().parents[1]


def seeds_with(values, key="x"):
    return {str(i): {"eval": {key: v}} for i, v in enumerate(values)}


@pytest.mark.parametrize("values, side, expected", [
    ([0.30, 0.25, 0.35, 0.28, 0.32, 0.27, 0.33, 0.31, 0.29, 0.30], "above", "reproduced"),
    ([-0.30, -0.25, -0.35, -0.28, -0.32, -0.27, -0.33, -0.31, -0.29, -0.30], "above", "refuted"),
    ([0.30, -0.25, 0.05, -0.10, 0.20, -0.30, 0.15, -0.05, 0.0, 0.02], "above", "inconclusive"),
    ([-0.30, -0.25, -0.35, -0.28, -0.32, -0.27, -0.33, -0.31, -0.29, -0.30], "below", "reproduced"),
    ([0.4], "above", "inconclusive"),  # one seed: no interval, no verdict
])
def test_the_decision_rule_gives_each_verdict(values, side, expected):
    d = decide(Claim("synthetic", "eval.x", 0.0, side), seeds_with(values), rounds=2000)
    assert d["verdict"] == expected
    assert d["mean"] == pytest.approx(sum(values) / len(values))


def test_bootstrap_intervals_cover_the_truth_at_their_level():
    """Seeds of a figure with true mean 0.2 and sd 0.1: the 95% bootstrap interval over 10 seeds
    covers 0.2 in about 95% of 200 repetitions (binomial sd 1.5%: 90% is over 3 sd below)."""
    rng = random.Random(0)
    covered = 0
    for rep in range(200):
        values = [rng.gauss(0.2, 0.1) for _ in range(10)]
        lo, hi = bootstrap(values, rounds=500, seed=rep)["ci95"]
        covered += lo <= 0.2 <= hi
    assert covered / 200 > 0.88  # the percentile bootstrap is a little narrow at 10 seeds


def test_a_paired_difference_resamples_prompts_within_seeds():
    """Two methods on the same prompts: the difference is taken per prompt (paired), and a seed's
    spread over its prompts widens the interval beyond the seeds' own spread."""
    per_seed = {}
    for s in range(6):
        prompts = {f"p{i}": 1.0 + 0.5 * math.sin(i + s) for i in range(20)}
        per_seed[str(s)] = {"eval": {"bon": {"a": {"n": [1, 4], "gold": [1.0, 1.3],
                                                    "gold_per_prompt": {"4": {p: v + 0.3 for p, v in prompts.items()}}},
                                              "b": {"n": [1, 4], "gold": [1.0, 1.0],
                                                    "gold_per_prompt": {"4": dict(prompts)}}}}}
    v = figure(per_seed["0"], "eval.bon.a.gold@4 - eval.bon.b.gold@4")
    assert v.value == pytest.approx(0.3) and all(abs(x - 0.3) < 1e-9 for x in v.per_prompt.values())
    d = decide(Claim("a beats b", "eval.bon.a.gold@4 - eval.bon.b.gold@4"), per_seed)
    assert d["paired_over_prompts"] and d["verdict"] == "reproduced" and d["probability_of_improvement"] == 1.0
    unpaired = bootstrap([{p: x for p, x in per_seed[s]["eval"]["bon"]["a"]["gold_per_prompt"]["4"].items()}
                          for s in per_seed])
    assert unpaired["ci95"][1] - unpaired["ci95"][0] > 0.05  # one method's own prompts do spread


def test_iqm_probability_of_improvement_and_gao_fit_by_hand():
    assert iqm([1, 2, 3, 4]) == pytest.approx(2.5) and iqm([0, 1, 1, 1, 1, 1, 1, 100]) == pytest.approx(1.0)
    assert probability_of_improvement([2, 3], [1, 3]) == pytest.approx((1 + 0 + 1 + 0.5) / 4)  # ties half
    d = [math.sqrt(k) for k in (0.1, 0.5, 1.0, 2.0)]
    fit = gao_fit([x * x for x in d], [x * (0.8 - 0.2 * x) for x in d])
    assert fit["alpha"] == pytest.approx(0.8) and fit["beta"] == pytest.approx(0.2)


def test_figures_read_curves_indices_and_dotted_names():
    results = {"eval": {"bon": {"random:0": {"n": [1, 2, 4], "gold": [1.0, 1.1, 1.2]}}, "policies": {"sft": {"gold": 2}}},
               "plant.x": {"k": [5, 6]}}
    assert lookup(results, "eval.bon.random:0.gold@4").value == 1.2
    assert lookup(results, "eval.bon.random:0.gold@8").value is None  # no such N
    assert lookup(results, "plant.x.k[1]").value == 6
    assert figure(results, "eval.policies.sft.gold - eval.bon.random:0.gold@2").value == pytest.approx(0.9)
    assert lookup(results, "eval.nothing.here").value is None
    with pytest.raises(ConfigError, match="term or the difference of two"):
        figure(results, "a - b - c")


def test_a_study_yaml_is_checked_before_anything_runs(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("seeds: 0-2\nstages: {sft: {}}\nclaims:\n  - claim: x\n    figure: eval.a\n    side: up\n")
    with pytest.raises(ConfigError, match="'side' must be above or below"):
        load_study(str(bad))
    bad.write_text("seeds: zero\nstages: {sft: {}}\n")
    with pytest.raises(ConfigError, match="'seeds' should be"):
        load_study(str(bad))
    bad.write_text("seeds: 0-2\nstages: {sft: {}}\nclaims:\n  - claim: x\n    null: 0\n    figure: eval.a\n")
    assert load_study(str(bad))["claims"][0].null == 0  # `null:` (YAML's None key) is the threshold


def test_split_gives_the_same_prompts_from_a_prompt_file_and_a_pool(tmp_path):
    from afd.study import SplitConfig, split

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Say {i}"}) + "\n" for i in range(20)))
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"prompt_id": f"q{i}", "prompt": [], "sample_index": j, "response": "x"}) + "\n"
                            for i in range(20) for j in range(3)))
    a = split(SplitConfig(out=str(tmp_path), stage_name="a", data=str(prompts), train=8, eval=5, seed=3))
    b = split(SplitConfig(out=str(tmp_path), stage_name="b", data=str(pool), train=8, eval=5, seed=3))
    ids = lambda f, k: {json.loads(x)[k] for x in f.read_text().splitlines()}  # noqa: E731
    for part in ("train", "eval"):
        assert ids(tmp_path / "a" / f"{part}.jsonl", "id") == ids(tmp_path / "b" / f"{part}.jsonl", "prompt_id")
    assert (a["train_prompts"], a["eval_prompts"], b["train_rows"]) == (8, 5, 24)
    assert ids(tmp_path / "a" / "train.jsonl", "id").isdisjoint(ids(tmp_path / "a" / "eval.jsonl", "id"))
    with pytest.raises(AfdError, match="has 20 prompts, fewer than train \\+ eval = 30"):
        split(SplitConfig(out=str(tmp_path), stage_name="c", data=str(prompts), train=20, eval=10))


def test_the_toy_study_decides_its_claims_and_resumes_without_redoing_anything(tmp_path, monkeypatch):
    """examples/study-toy.yaml (3 seeds on the exact toy): the density ratio recovers r* and
    init-sft's Best-of-4 gains over pi_0 and over a random reward, each reproduced; a rerun
    redoes no stage."""
    from afd.study import run_study

    monkeypatch.chdir(REPO)
    out = tmp_path / "study"
    summary = run_study("examples/study-toy.yaml", out=str(out))
    verdicts = {c["claim"][:40]: c["verdict"] for c in summary["claims"]}
    assert set(verdicts.values()) == {"reproduced"}, verdicts
    assert summary["claims"][0]["controls"][0]["ci95"][0] < 0.3  # the random floor stays near 0
    assert (out / "claims.md").is_file() and (out / "gold_vs_sqrt_kl.png").is_file()
    assert json.loads((out / "seed-1" / "seed.json").read_text())["seconds"]["stages"] > 0
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    shutil.rmtree(out / "seed-2" / "eval")  # as if killed before its last stage
    again = run_study("examples/study-toy.yaml", out=str(out))
    assert again["claims"] == summary["claims"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json") if p.exists()
            and "seed-2/eval" not in str(p)} == {p: t for p, t in stamps.items() if "seed-2/eval" not in str(p)}
    # a second study in the same folder (as the planted iterated study shares the main one's):
    # the stages both have are found finished, its own summary goes to OUT/SUMMARY, the first's stays
    from afd.config import read_yaml

    first = (out / "study.json").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    second = {**read_yaml(str(REPO / "examples/study-toy.yaml")), "summary": "second", "seeds": [0, 1]}
    second["claims"] = second["claims"][:1]
    other = run_study(second, out=str(out))
    assert other["folder"] == str(out / "second")
    assert other["claims"][0]["per_seed"] == summary["claims"][0]["per_seed"][:2]  # seeds 0 and 1 of 0-2
    assert json.loads((out / "second" / "study.json").read_text())["seeds"] == [0, 1]
    assert (out / "study.json").read_text() == first
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")} == stamps


@pytest.mark.parametrize("which", ["examples/study-planted-imdb.yaml", "examples/study-planted-imdb-variants.yaml",
                                   "examples/study-planted-imdb-iterated.yaml",
                                   "examples/study-toy.yaml", "demo"])
def test_every_recorded_study_plans_every_stage_before_a_run(which, tmp_path):
    """Each stage of each committed study (and the demo's) has options its stage accepts, and
    every @reference names a stage before it: a typo stops before hours of earlier stages."""
    from afd.demo import demo_study
    from afd.pipeline import plan
    from afd.study import stage_defaults

    study = load_study(demo_study(str(tmp_path)) if which == "demo" else which)
    defaults = stage_defaults(study)
    artifacts: dict = {}
    if study.get("shared"):
        plan({**defaults, "stages": study["shared"]}, None, str(tmp_path / "shared"), artifacts)
    planned = plan({**defaults, "seed": 0, "stages": study["stages"]}, None, str(tmp_path / "seed-0"), artifacts)
    assert [name for name, _, _ in planned] == list(study["stages"])
    assert not any("@" in str(v) for _, _, cfg in planned for v in vars(cfg).values())
    from afd.study import stages_read, terms

    # every term of every figure begins with one of the study's stages (the rule save_study reads by)
    unread = {t for c in study["claims"] for f in (c.figure, *c.controls) for t in terms(f)
              if not stages_read([t], study["stages"])}
    assert not unread, unread


def test_the_study_plot_puts_each_policy_at_its_mean_sqrt_kl_and_gold(tmp_path, monkeypatch):
    """RL policies' gold against their KL to SFT (the issue's figure): each policy with a KL is a
    point at the seeds' mean sqrt(KL) and mean gold, beside the Best-of-N curves; none: no plot."""
    import afd.plots
    from afd.study import gold_vs_sqrt_kl

    drawn = {}
    monkeypatch.setattr(afd.plots, "points_and_curves_plot",
                        lambda path, points, curves, *a: drawn.update(points=points, curves=curves))
    seed = lambda kl, gold: {"e": {"policies": {"init": {"gold": 0.0, "kl_to_reference": None},  # noqa: E731
                                                "irl_1": {"gold": gold, "kl_to_reference": kl}},
                                   "bon": {"r": {"kl": [0.0, 1.0], "gold": [gold, gold + 1]}}}}
    gold_vs_sqrt_kl(tmp_path / "p.png", {"0": seed(1.0, 0.2), "1": seed(4.0, 0.4)}, "e")
    assert drawn["points"] == {"irl_1": (pytest.approx(1.5), pytest.approx(0.3))}
    assert drawn["curves"] == {"r": ([0.0, 1.0], [pytest.approx(0.3), pytest.approx(1.3)])}
    drawn.clear()
    gold_vs_sqrt_kl(tmp_path / "q.png", {"0": {"e": {"policies": {"init": {"gold": 0.0}}}}}, "e")
    assert drawn == {}
