"""afd demo: its study config holds together (every stage's options, every claim's figure), and
its plain-words report and verdict on synthetic figures."""

import json

from afd import demo


def eval_metrics(sft_gold, bon_gold):
    entry = lambda g, rho: {"n": [1, 4, 16], "gold": [sft_gold, (sft_gold + g) / 2, g], "spearman_within_prompts": rho,  # noqa: E731
                            "fraction_of_oracle_gain": [None, 0.5, 0.4], "mean_tokens": [40.0, 40.0, 39.0]}
    return {"policies": {"init": {"gold": 0.1}, "sft": {"gold": sft_gold}, "demonstrations": {"gold": 0.7}},
            "bon": {"init-sft": entry(bon_gold, 0.2), "density-ratio": entry(sft_gold - 0.1, -0.05)}}


def test_the_demo_study_config_plans(tmp_path):
    """Every stage of the demo's study resolves its options and references (no stage runs)."""
    from afd.pipeline import plan
    from afd.study import load_study

    config = demo.demo_study(str(tmp_path / "demo"))
    study = load_study(config)
    artifacts = {}
    plan({"model": config["model"], "stages": study["shared"]}, out=str(tmp_path / "shared"), artifacts=artifacts)
    stages = plan({"model": config["model"], "seed": 0, "stages": study["stages"]}, out=str(tmp_path / "s0"),
                  artifacts=dict(artifacts))
    names = [name for name, _, _ in stages]
    assert names[:2] == ["split", "plant"] and names[-1] == "eval"
    ev = stages[-1][2]
    assert ev.golden.startswith("z:") and ":gold:" in ev.golden and set(ev.proxies) >= {"init-sft", "density-ratio",
                                                                                           "bt-gold", "oracle", "length"}
    assert all(c.figure.split(".")[0] == "eval" for c in study["claims"])


def test_this_run_and_the_verdict_in_plain_words(tmp_path, monkeypatch):
    ev = eval_metrics(0.25, 0.60)
    table = demo.this_run(ev)
    assert "| init-sft | 0.200 | +0.600 | +0.350 | 0.40 | 39.0 |" in table
    study = tmp_path / "demo_study.json"
    study.write_text(json.dumps({"seeds": list(range(10)), "claims": [
        {"claim": "Best-of-16 with init-sft beats SFT", "mean": 0.12, "ci95": [0.05, 0.2], "verdict": "reproduced"}]}))
    monkeypatch.setattr(demo, "STUDY", study)
    text = demo.verdict(ev)
    assert "Best-of-16 with the init-sft reward scored +0.600 (r*) against SFT's +0.250: it beat SFT." in text
    assert "density-ratio reward scored +0.150 (r*) against SFT's +0.250: it did not beat SFT." in text
    assert "(10 seeds" in text and "- Best-of-16 with init-sft beats SFT: +0.120 [+0.050, +0.200], reproduced." in text
    monkeypatch.setattr(demo, "STUDY", tmp_path / "absent.json")
    assert "Across" not in demo.verdict(ev)
