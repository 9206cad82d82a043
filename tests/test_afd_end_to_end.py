"""AfD end to end on a task tiny-random learns in seconds (issue: the CI test of the real effect).

Task: the golden reward is the share of the letter "a" in a response. Demonstrations answer
every prompt with runs of "a". pi_0 is tiny-random (random bytes); SFT for a few steps gives a
policy that writes more "a" than pi_0 but not always. The init-sft reward model is trained
only on samples of pi_sft (positives) and pi_0 (negatives): no golden reward, no preference.
Best-of-N with it must raise the golden reward above both pi_0 and SFT.
"""

import json
import random

import pytest
import yaml

from conftest import write_jsonl


def gold(prompts, responses):
    """Golden reward: the share of 'a' among the response's characters."""
    return [r.count("a") / max(len(r), 1) for r in responses]


def test_bon_with_init_sft_reward_beats_init_and_sft(tmp_path):
    rng = random.Random(0)
    demos = [{"id": f"d{i}", "prompt": f"Write {i}", "completion": " ".join("a" * rng.randint(2, 6) for _ in range(4))}
             for i in range(48)]
    prompts = [{"id": f"p{i}", "prompt": f"Write {i}"} for i in range(100, 124)]
    config = {
        "out": str(tmp_path / "run"), "seed": 0, "device": "cpu", "model": "tiny-random",
        "stages": {
            "sft": {"data": write_jsonl(tmp_path / "demos.jsonl", demos), "epochs": 8, "lr": 5e-3,
                    "batch_size": 16, "eval_fraction": 0.1, "max_length": 64, "max_prompt_length": 32},
            "sample_init": {"kind": "sample", "data": write_jsonl(tmp_path / "prompts.jsonl", prompts),
                            "num_samples": 8, "max_new_tokens": 24},
            "sample_sft": {"kind": "sample", "model": "@sft", "data": str(tmp_path / "prompts.jsonl"),
                           "num_samples": 8, "max_new_tokens": 24},
            "reward": {"variant": "init-sft", "init_pool": "@sample_init", "sft_pool": "@sample_sft",
                       "epochs": 4, "lr": 3e-3, "batch_size": 16, "eval_fraction": 0.2, "max_length": 64,
                       "max_prompt_length": 32},
            "eval": {"golden": "python:test_afd_end_to_end:gold",
                     "pools": {"init": "@sample_init", "sft": "@sample_sft"},
                     "proxies": {"init-sft": "@reward", "density-ratio": "density-ratio:@sft,tiny-random"},
                     "demos": str(tmp_path / "demos.jsonl")},
        },
    }
    (tmp_path / "afd.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    from afd.pipeline import run

    results = run(str(tmp_path / "afd.yaml"))
    ev = results["eval"]
    init, sft = ev["policies"]["init"]["gold"], ev["policies"]["sft"]["gold"]
    bon = ev["bon"]["init-sft"]
    print(json.dumps({"init": init, "sft": sft, "bon": dict(zip(bon["n"], bon["gold"])),
                      "reward": {k: results["reward"][k] for k in ("eval_accuracy", "eval_auc")}}))
    assert sft > init + 0.05, "SFT should write more 'a' than the random initial policy"
    assert bon["n"][-1] == 8 and abs(bon["gold"][0] - sft) < 1e-9  # N = 1 is the plain SFT sample
    assert bon["gold"][-1] > sft + 0.03 and bon["gold"][-1] > init
    assert bon["win_rate"][-1] > 0.55 and abs(bon["win_rate"][0] - 0.5) < 1e-9
    demo_gold = sum(gold(None, [d["completion"] for d in demos])) / len(demos)  # by hand, from the file
    assert ev["policies"]["demonstrations"]["gold"] == pytest.approx(demo_gold)
    assert ev["policies"]["sft"]["normalised"] == pytest.approx(sft / demo_gold)  # the paper's normalisation
    assert ev["policies"]["sft"]["gap_closed"] == pytest.approx((sft - init) / (demo_gold - init))
    assert ev["policies"]["demonstrations"]["share_on_pool_prompts"] == 0.0  # demos on other prompts: said so
    assert results["reward"]["length_only_accuracy"] is not None  # the control beside the reward's accuracy
    for plot in ("bon_gold_vs_n.png", "bon_gold_vs_kl.png", "bon_win_rate.png", "proxy_vs_gold.png", "report.md"):
        assert (tmp_path / "run" / "eval" / plot).is_file()
