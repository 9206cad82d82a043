"""afd demo's plain-words verdict, and the demo study's seeded prompt split."""

import json
import sys

from conftest import REPO

from afd import demo

sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "bench" / "recipes"))


def eval_metrics(sft_gold, bon_gold):
    return {"policies": {"init": {"gold": 0.1}, "sft": {"gold": sft_gold}},
            "bon": {"init-sft": {"n": [1, 2, 4, 8], "gold": [sft_gold, 0.2, 0.3, bon_gold]}}}


def test_verdict_says_whether_bon_beat_sft_and_how_often_across_the_study(tmp_path, monkeypatch):
    study = tmp_path / "demo_study.json"
    study.write_text(json.dumps({"seeds": [0, 1, 2], "n": 8, "bon_beats_sft_seeds": {"init-sft": 2},
                                 "bon_minus_sft": {"init-sft": {"mean": 0.05, "ci95": [-0.01, 0.11]}}}))
    monkeypatch.setattr(demo, "STUDY", study)
    text = demo.verdict(eval_metrics(0.25, 0.40))
    assert "Best-of-8 with the init-sft reward scored 0.400 (VADER) against SFT's 0.250: it beat SFT." in text
    assert "beat SFT in 2 of 3 seeds; mean gain +0.050 [-0.010, +0.110]" in text
    assert "did not beat SFT" in demo.verdict(eval_metrics(0.25, 0.20))
    monkeypatch.setattr(demo, "STUDY", tmp_path / "absent.json")
    assert "Across" not in demo.verdict(eval_metrics(0.25, 0.20))


def test_verdict_prints_the_length_control_of_the_study_as_a_control(tmp_path, monkeypatch):
    study = tmp_path / "demo_study.json"
    study.write_text(json.dumps({"seeds": [0, 1, 2], "n": 8,
                                 "bon_beats_sft_seeds": {"init-sft": 1, "length (longest)": 3},
                                 "bon_minus_sft": {"init-sft": {"mean": 0.0, "ci95": [-0.2, 0.2]},
                                                   "length (longest)": {"mean": 0.07, "ci95": [0.01, 0.13]}}}))
    monkeypatch.setattr(demo, "STUDY", study)
    text = demo.verdict(eval_metrics(0.25, 0.40))
    assert ("Control in the same study: taking the longest of 8 samples (no reward model) beat SFT in 3 of 3 "
            "seeds; mean gain +0.070 [+0.010, +0.130].") in text
    assert "with length (longest)" not in text


def test_study_split_is_seeded_disjoint_and_the_demo_size(tmp_path):
    from demo_study import split

    def ids(files, name):
        return [json.loads(line)["id"] for line in open(files[name])]

    a, b, again = split(tmp_path / "a", 0), split(tmp_path / "b", 1), split(tmp_path / "c", 0)
    assert len(ids(a, "train")) == 48 and len(ids(a, "eval")) == 32
    assert not set(ids(a, "train")) & set(ids(a, "eval"))
    assert ids(a, "eval") == ids(again, "eval") and ids(a, "eval") != ids(b, "eval")
