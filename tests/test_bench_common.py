"""The recipes' across-seed figures (bench/common.py): mean and 95% t interval by hand."""

import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from common import across_seeds, aggregate, seeds_arg  # noqa: E402


def test_across_seeds_by_hand():
    got = across_seeds([1.0, 2.0, 3.0])
    # sd 1, t(0.975, 2 df) = 4.303: half-width 4.303 / sqrt(3)
    assert got["mean"] == 2.0 and got["ci95"] == pytest.approx([2 - 4.303 / 3 ** 0.5, 2 + 4.303 / 3 ** 0.5])
    assert across_seeds([0.5]) == {"mean": 0.5, "ci95": None, "per_seed": [0.5]}
    assert across_seeds([None, 1.0, 3.0])["mean"] == 2.0


def test_aggregate_keeps_the_shape():
    agg = aggregate([{"a": {"x": 1.0, "n": [1, 2]}, "s": "v"}, {"a": {"x": 3.0, "n": [1, 2]}, "s": "v"}])
    assert agg["a"]["x"]["mean"] == 2.0 and [e["mean"] for e in agg["a"]["n"]] == [1, 2] and agg["s"] == "v"
    assert seeds_arg("0-2") == [0, 1, 2] and seeds_arg("3,5") == [3, 5]


def test_claims_verdicts_from_per_seed_differences(tmp_path, monkeypatch):
    import json

    import claims

    assert claims.verdict({"mean": 0.1, "ci95": [0.02, 0.18]}) == "reproduced"
    assert claims.verdict({"mean": -0.1, "ci95": [-0.18, -0.02]}) == "refuted"
    assert claims.verdict({"mean": 0.6, "ci95": [0.45, 0.75]}, 0.5) == "inconclusive"
    assert claims.verdict({"mean": 0.6, "ci95": None}) == "inconclusive"

    def seed(sft, bon):
        return {"policies": {"sft": {"gold": sft}}, "bon": {p: {"n": [1, 8], "gold": [sft, b]} for p, b in bon.items()}}

    # BoN beats SFT by 0.19, 0.2, 0.21 over three seeds: the interval of the per-seed difference,
    # 0.2 +- 4.303 x 0.01 / sqrt(3), lies above 0 (0.1, 0.2, 0.3 would not: +- 0.248)
    demo = {"seeds": [0, 1, 2], "per_seed": {str(i): seed(0.2, {"init-sft": 0.39 + 0.01 * i, "density-ratio": 0.2 - 0.1 * i})
                                             for i in range(3)}}
    (tmp_path / "demo-vader").mkdir()
    (tmp_path / "demo-vader" / "metrics.json").write_text(json.dumps(demo))
    (tmp_path / "imdb-positive").mkdir()  # two seeds only: not evidence
    (tmp_path / "imdb-positive" / "metrics.json").write_text(json.dumps({**demo, "seeds": [0, 1]}))
    monkeypatch.setattr(claims, "RESULTS", tmp_path)
    rows = {r["claim"]: r for r in claims.afd_claims()}
    bon = rows["AfD: Best-of-N with the init-sft reward beats SFT (demo-vader)"]
    assert bon["verdict"] == "reproduced" and bon["seeds"] == 3 and "BoN-8 minus SFT: 0.200 [" in bon["afd"]
    ratio = [r for name, r in rows.items() if "density ratio" in name and "(demo-vader)" in name][0]
    assert ratio["verdict"] == "inconclusive"  # 0, -0.1, -0.2: the interval covers 0
    assert rows["AfD: Best-of-N with the init-sft reward beats SFT (imdb-positive)"]["verdict"] == "not rerun"
    assert not any("length-matched" in name for name in rows)  # an extra control: no row before it has run

    # the length-matched control, once run, gets its own rows: Best-of-N and the heterogeneous comparison
    het = {"seeds": [0, 1, 2], "per_seed": {str(i): {"positive_openings": seed(
        0.2, {"init-sft": 0.3 + 0.01 * i, "init-demo": 0.1, "sft-demo": 0.12 - 0.01 * i})} for i in range(3)}}
    (tmp_path / "imdb-positive-length-matched").mkdir()
    (tmp_path / "imdb-positive-length-matched" / "metrics.json").write_text(json.dumps(het))
    rows = {r["claim"]: r for r in claims.afd_claims()}
    matched = "imdb-positive, reward models length-matched"
    assert rows[f"AfD: Best-of-N with the init-sft reward beats SFT ({matched})"]["verdict"] == "reproduced"
    hacking = rows[f"AfD: heterogeneous reward models (init-demo, sft-demo) reward-hack while init-sft does not "
                   f"({matched})"]
    assert hacking["verdict"] == "reproduced" and "init-sft minus init-demo at BoN-8: 0.210 [" in hacking["afd"]


def test_a_result_needs_three_seeds_and_real_settings(capsys):
    from common import saves_result

    assert saves_result([0, 1, 2], quick=False)
    assert not saves_result([0, 1, 2], quick=True)
    assert not saves_result([2], quick=False) and "1 seed(s)" in capsys.readouterr().out


def test_claims_iteration_rows_difference_last_minus_first(tmp_path, monkeypatch):
    import json

    import claims
    from common import aggregate

    def seed(a1, a3):
        return {"iterations": {str(t): {"pair_accuracy": a, "prefers_longer": 0.5, "longer_chosen_accuracy": 0.45}
                               for t, a in ((1, a1), (2, (a1 + a3) / 2), (3, a3))}}

    # iteration 3 beats iteration 1 by 0.09, 0.10, 0.11: reproduced; its level 0.60 +- 0.05 > 0.5
    per = {str(i): seed(0.50 + 0.01 * i, 0.59 + 0.02 * i) for i in range(3)}
    it = {"seeds": [0, 1, 2], "per_seed": per, "across_seeds": aggregate(list(per.values()))}
    (tmp_path / "hh-iterated").mkdir()
    (tmp_path / "hh-iterated" / "metrics.json").write_text(json.dumps(it))
    monkeypatch.setattr(claims, "RESULTS", tmp_path)
    rows = claims.zeng_claims()
    gain = [r for r in rows if r["claim"].startswith("Iterating")][0]
    assert gain["verdict"] == "reproduced" and "iteration 3 minus iteration 1: 0.100 [" in gain["afd"]
    level = [r for r in rows if r["claim"].startswith("The irl reward")][0]
    assert level["verdict"] == "reproduced" and level["seeds"] == 3
    # the same gain with one seed going the other way: the interval covers 0
    per["2"] = seed(0.60, 0.50)
    it.update(per_seed=per, across_seeds=aggregate(list(per.values())))
    (tmp_path / "hh-iterated" / "metrics.json").write_text(json.dumps(it))
    gain = [r for r in claims.zeng_claims() if r["claim"].startswith("Iterating")][0]
    assert gain["verdict"] == "inconclusive"


def test_planted_rows_read_a_study_and_say_when_it_holds_fewer_seeds_than_planned(tmp_path, monkeypatch):
    import json

    import claims

    monkeypatch.setattr(claims, "RESULTS", tmp_path)
    rows = claims.planted_rows()
    assert all(r["verdict"] == "not run" for r in rows)  # nothing recorded yet
    claim = {"claim": "BoN beats SFT", "figure": "eval.x - eval.y", "mean": 0.3, "ci95": [0.1, 0.5], "seeds": 4,
             "verdict": "reproduced", "null": 0, "side": "above", "controls": [], "probability_of_improvement": 0.9}
    (tmp_path / "planted-imdb").mkdir()
    (tmp_path / "planted-imdb" / "study.json").write_text(json.dumps(
        {"seeds": [0, 1, 2, 3], "planned_seeds": list(range(10)), "complete": False, "claims": [claim]}))
    row = next(r for r in claims.planted_rows() if r["claim"].startswith("BoN beats SFT"))
    assert row["seeds"] == "4 of 10 planned" and row["verdict"] == "reproduced"
    assert "0.300 [0.100, 0.500]" in row["afd"] and "P(improvement) 0.90" in row["afd"]


def test_a_study_goes_on_from_its_record_on_a_new_machine_only_with_the_same_pools(tmp_path, monkeypatch):
    """Seeds recorded in bench/results (each seed's stage metrics and the shared files' hashes)
    are decided beside seeds run in a fresh run folder exactly as if all had run in one; a fresh
    folder whose shared pool differs is refused, not mixed."""
    import json
    import shutil

    import common
    from afd.study import run_study

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(common, "machine", lambda: {})
    whole = run_study("examples/study-toy.yaml", out=str(tmp_path / "whole"))
    first = run_study(str(REPO / "examples" / "study-toy.yaml"), out=str(tmp_path / "first"), seeds=[0, 1])
    common.save_study(first, str(tmp_path / "first"), "toy")
    record = json.loads((tmp_path / "results" / "toy" / "study.json").read_text())
    # the record names the study as the repository does, not by this machine's path
    assert record["study"] == "examples/study-toy.yaml"
    assert (tmp_path / "results" / "toy" / "claims.md").read_text().startswith("# examples/study-toy.yaml: 2 seed(s)")
    assert set(record["shared_files"]) >= {"candidates/pool.jsonl", "pi0/pool.jsonl"}
    assert common.seeds_on_record("toy") == [0, 1]

    fresh = tmp_path / "fresh"  # another machine: the shared stages drawn again, seeds 0 and 1 absent
    went_on = run_study("examples/study-toy.yaml", out=str(fresh), seeds=[2],
                        recorded=common.recorded_seeds("toy", skip=[2]))
    assert went_on["seeds"] == [0, 1, 2] and went_on["recorded_seeds"] == [0, 1]
    assert not (fresh / "seed-0").exists()
    for a, b in zip(went_on["claims"], whole["claims"]):
        assert a["per_seed"] == pytest.approx(b["per_seed"]) and a["ci95"] == pytest.approx(b["ci95"])
    common.save_study(went_on, str(fresh), "toy")  # the record now holds all three; seeds 0, 1 kept
    assert common.seeds_on_record("toy") == [0, 1, 2]
    assert (tmp_path / "results" / "toy" / "seeds" / "seed-0").is_dir()

    other = tmp_path / "other"
    shutil.copytree(fresh / "shared", other / "shared")
    with (other / "shared" / "pi0" / "pool.jsonl").open("a") as f:
        f.write("\n")
    with pytest.raises(SystemExit, match="pi0/pool.jsonl"):
        common.recorded_seeds("toy", skip=[])(other)
    # --other-pools: another machine's draw is taken, and the record says which seed drew on which
    mixed = run_study("examples/study-toy.yaml", out=str(other), seeds=[3],
                      recorded=common.recorded_seeds("toy", skip=[3], other_pools=True))
    assert mixed["seeds"] == [0, 1, 2, 3]
    common.save_study(mixed, str(other), "toy")
    pools = json.loads((tmp_path / "results" / "toy" / "study.json").read_text())["pools"]
    assert pools["0"] == pools["1"] == pools["2"] != pools["3"]
    assert "2 draws of the shared pools" in (tmp_path / "results" / "toy" / "claims.md").read_text()
