"""Iterated IRL (afd irl, afd gail), IRFT / SPIN (afd irft), the RL step and the KL estimate.

Losses are checked against values computed by hand; the methods against the tiny learnable
task of test_afd_end_to_end (golden reward: the share of 'a'), each starting from pi_0 and
having to raise the golden reward above it from demonstrations alone.
"""

import json
import math
import random

import pytest
import torch

from conftest import WORDS, write_jsonl


def gold(prompts, responses):
    return [r.count("a") / max(len(r), 1) for r in responses]


def test_irft_loss_by_hand():
    from afd.irft import irft_loss

    # beta * ((pc - oc) - (pr - or)) = 0.5 * ((-3 + 4) - (-5 + 2)) = 0.5 * 4 = 2
    loss = irft_loss(torch.tensor([-3.0]), torch.tensor([-5.0]), torch.tensor([-4.0]), torch.tensor([-2.0]), 0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2.0)))
    # two pairs: margins 0 and -1 (beta 1) -> mean of log 2 and log(1 + e)
    loss = irft_loss(torch.tensor([0.0, -1.0]), torch.tensor([0.0, 0.0]), torch.zeros(2), torch.zeros(2), 1.0)
    assert loss.item() == pytest.approx((math.log(2) + math.log(1 + math.e)) / 2)


def test_sequence_logprobs_match_teacher_forcing(tiny):
    from afd import models
    from afd.irft import encode_side, sequence_logprobs
    from afd.scoring import response_logprobs

    model, tok = tiny

    class Cfg:
        template = "auto"

    prompt = [{"role": "user", "content": "Say hi"}]
    side = encode_side(tok, prompt, "hi there", Cfg)
    ids = torch.tensor([side["input_ids"]])
    with torch.no_grad():
        got = sequence_logprobs(model(input_ids=ids).logits, torch.tensor([side["labels"]]))
    want = response_logprobs(model, tok, [(prompt, "hi there")])[0]
    assert got.item() == pytest.approx(want, abs=1e-4)
    assert side["labels"][: len(models.encode_prompt(tok, prompt))] == [-100] * len(models.encode_prompt(tok, prompt))


def test_reward_function_passes_messages_and_text():
    from afd.rewards import Function
    from afd.rl import reward_function

    seen = {}

    def scorer(prompts, responses):
        seen["prompts"], seen["responses"] = prompts, responses
        return [len(r) for r in responses]

    fn = reward_function(Function(scorer), batch_size=2)
    msgs = [{"role": "user", "content": "x"}]
    out = fn(prompts=[msgs] * 3, completions=[[{"role": "assistant", "content": c}] for c in ("a", "bb", "ccc")],
             afd_prompt=[json.dumps(msgs)] * 3)
    assert out == [1.0, 2.0, 3.0] and seen["prompts"] == [msgs] and seen["responses"] == ["ccc"]


def test_reward_function_can_standardise_the_raw_reward_and_records_its_scale():
    from afd.rewards import Function
    from afd.rl import reward_function

    msgs = [{"role": "user", "content": "x"}]
    kw = dict(prompts=[msgs] * 3, completions=["a", "bbb", "ccccc"], afd_prompt=[json.dumps(msgs)] * 3)
    store = {}
    out = reward_function(Function(lambda p, r: [10.0 * len(x) for x in r]), 2, "standardize", store)(**kw)
    assert out == pytest.approx([-1.0, 0.0, 1.0])  # raw 10, 30, 50: mean 30, std 20
    assert store == {"mean": [30.0], "std": [pytest.approx(20.0)]}
    assert reward_function(Function(lambda p, r: [10.0 * len(x) for x in r]), 2)(**kw) == [10.0, 30.0, 50.0]
    # a reward that takes token ids (the density ratio) gets the sampled ones
    seen = []

    def by_ids(p, r, token_ids=None):
        seen.extend(token_ids)
        return [float(len(t)) for t in token_ids]

    assert reward_function(Function(by_ids), 2)(**kw, completion_ids=[[1], [2, 3], [4, 5, 6]]) == [1.0, 2.0, 3.0]
    assert seen == [[1], [2, 3], [4, 5, 6]]
    with pytest.raises(Exception, match="reward_scaling"):
        from afd.config import from_dict
        from afd.rl import RLConfig

        from_dict(RLConfig, {"reward": "vader", "reward_scaling": "log"}, "test")


def test_write_pairs_accumulates_iterations(tmp_path):
    from afd.data import Demo
    from afd.irl import write_pairs

    demos = {"a": Demo("a", [{"role": "user", "content": "p"}], "good")}
    pools = []
    for t in range(2):
        pools.append(write_jsonl(tmp_path / f"pool{t}.jsonl", [
            {"prompt_id": "a", "prompt": [{"role": "user", "content": "p"}], "sample_index": 0,
             "response": f"bad{t}", "num_tokens": 1, "finish_reason": "stop", "seed": 0, "logprob": -1.0}]))
    assert write_pairs(tmp_path / "pairs.jsonl", demos, pools) == 2
    rows = [json.loads(x) for x in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert [r["rejected"] for r in rows] == ["bad0", "bad1"] and all(r["chosen"] == "good" for r in rows)


def test_rl_options_are_checked():
    from afd.config import from_dict
    from afd.errors import AfdError
    from afd.rl import RLConfig

    with pytest.raises(AfdError, match="multiple of num_generations"):
        from_dict(RLConfig, {"reward": "vader", "batch_size": 6, "num_generations": 4}, "test")
    with pytest.raises(AfdError, match="'reward' is required"):
        from_dict(RLConfig, {}, "test")


def task_files(tmp_path, n_demos=32, n_prompts=12):
    rng = random.Random(0)
    demos = [{"id": f"d{i}", "prompt": f"Write {i}", "completion": " ".join("a" * rng.randint(2, 6) for _ in range(3))}
             for i in range(n_demos)]
    prompts = [{"id": f"p{i}", "prompt": f"Write {i}"} for i in range(100, 100 + n_prompts)]
    return write_jsonl(tmp_path / "demos.jsonl", demos), write_jsonl(tmp_path / "prompts.jsonl", prompts)


def eval_stage(tmp_path, policies: dict, prompts: str):
    stages = {}
    for name, model in policies.items():
        stages[f"sample_{name}"] = {"kind": "sample", "model": model, "data": prompts, "num_samples": 4,
                                    "max_new_tokens": 16}
    stages["eval"] = {"golden": "python:test_iterated:gold", "kl_reference": "@sft",
                      "pools": {name: f"@sample_{name}" for name in policies}, "baseline": "init"}
    return stages


def test_each_method_raises_gold_above_pi0(tmp_path):
    """irl, gail and irft (T = 1 and T = 2), from pi_0 and demonstrations only."""
    from afd.pipeline import run

    demos, prompts = task_files(tmp_path)
    common = {"model": "@sft", "data": demos, "max_new_tokens": 16, "max_length": 80, "max_prompt_length": 48}
    rl = {"iterations": 2, "kl_coef": 0.01, "num_generations": 4, "batch_size": 16, "lr": 1e-2, "epochs": 2,
          "reward_model": "tiny-random", "reward_epochs": 3, "reward_lr": 3e-3, "eval_fraction": 0.0}
    config = {
        "out": str(tmp_path / "run"), "seed": 0, "device": "cpu", "model": "tiny-random",
        "stages": {
            "sft": {"data": demos, "epochs": 4, "lr": 5e-3, "batch_size": 8, "eval_fraction": 0.0,
                    "max_length": 80, "max_prompt_length": 48},
            "irl": {**common, **rl},
            "gail": {**common, **rl},
            "spin": {"kind": "irft", **common, "stages": 1, "epochs": 3, "lr": 3e-3, "batch_size": 8, "beta": 0.1},
            "irft": {**common, "stages": 2, "epochs": 3, "lr": 3e-3, "batch_size": 8, "beta": 0.1},
            **eval_stage(tmp_path, {"init": "tiny-random", "sft": "@sft", "irl": "@irl", "gail": "@gail", "spin": "@spin",
                                    "irft": "@irft"}, prompts),
        },
    }
    results = run(config)
    pol = results["eval"]["policies"]
    print(json.dumps({k: (round(v["gold"], 3), v["kl_to_reference"]) for k, v in pol.items()}))
    init, sft = pol["init"]["gold"], pol["sft"]["gold"]
    for method in ("irl", "gail", "spin", "irft"):
        assert pol[method]["gold"] > init + 0.1, method
        assert pol[method]["kl_to_reference"] > 0.5, method  # it moved away from the SFT policy
    for method in ("irl", "spin", "irft"):  # and these beat the SFT policy they started from
        assert pol[method]["gold"] > sft + 0.1, method
    assert pol["sft"]["kl_to_reference"] == 0.0  # the reference against itself: zero by its short cut (tested below)
    assert len(results["irl"]["iterations"]) == 2 and len(results["irft"]["stages"]) == 2
    assert (tmp_path / "run" / "eval" / "gold_vs_kl.png").is_file()
    # iteration 1's pairs hold both iterations' samples
    pairs = (tmp_path / "run" / "irl" / "iter_1" / "pairs.jsonl").read_text().splitlines()
    assert 32 < len(pairs) <= 2 * 32  # empty samples are left out


def test_cli_flags_yaml_and_resume_at_last_finished_iteration(tmp_path, capsys):
    """afd irl from flags, afd irft from YAML; a run killed inside iteration 1 reuses
    iteration 0 as it was and finishes iteration 1."""
    import yaml

    from afd.cli import main

    demos, _ = task_files(tmp_path, n_demos=8)
    out = str(tmp_path / "run")
    flags = ["irl", "--data", demos, "--out", out, "--device", "cpu", "--iterations", "2", "--batch-size", "8",
             "--num-generations", "4", "--max-new-tokens", "8", "--max-length", "64", "--max-prompt-length", "48",
             "--reward-model", "tiny-random", "--eval-fraction", "0", "--max-steps", "2"]
    assert main(flags) == 0
    irl = tmp_path / "run" / "irl"
    first = json.loads((irl / "iter_0" / "rl" / "metrics.json").read_text())
    assert first["reward_scaling"] == "none" and first["raw_reward_std_first"] is not None
    # "kill" the run inside iteration 1's RL step: its metrics and the stage's are gone
    (irl / "iter_1" / "rl" / "metrics.json").unlink()
    (irl / "metrics.json").unlink()
    assert main(flags) == 0
    assert json.loads((irl / "iter_0" / "rl" / "metrics.json").read_text()) == first  # reused, not redone
    done = json.loads((irl / "metrics.json").read_text())
    assert len(done["iterations"]) == 2 and (irl / "model" / "config.json").is_file()

    (tmp_path / "irft.yaml").write_text(yaml.safe_dump({
        "data": demos, "out": out, "device": "cpu", "stages": 2, "max_new_tokens": 8, "max_length": 64,
        "max_prompt_length": 48, "batch_size": 4, "max_steps": 1, "eval_fraction": 0.0}))
    assert main(["irft", "--config", str(tmp_path / "irft.yaml"), "--beta", "0.2"]) == 0
    metrics = json.loads((tmp_path / "run" / "irft" / "metrics.json").read_text())
    assert [s["demonstrations"] for s in metrics["stages"]] == [4, 4]
    assert main(["irft", "--config", str(tmp_path / "irft.yaml"), "--beta", "-1"]) == 2
    assert "'beta' must be positive" in capsys.readouterr().err


def test_irft_negatives_are_the_sampled_tokens(tiny, tmp_path):
    """A negative cut at max_new_tokens is trained on as drawn, without an EOS it never had."""
    from afd import models
    from afd.irft import StepConfig, train_step
    from afd.scoring import response_logprobs

    model, tok = tiny
    prompt = [{"role": "user", "content": "Say cat"}]
    ids = models.encode_response(tok, prompt, "cat cat cat cat")[:-1]
    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({"prompt_id": "d-0", "prompt": prompt, "sample_index": 0, "finish_reason": "length",
                                "response": models.decode_response(tok, prompt, ids), "token_ids": ids}) + "\n")
    demos = tmp_path / "demos.jsonl"
    demos.write_text(json.dumps({"id": "d-0", "prompt": "Say cat", "completion": "cat!"}) + "\n")
    m = train_step(StepConfig(out=str(tmp_path), stage_name="step", model="tiny-random", data=str(demos),
                              pool=str(pool), max_steps=1, batch_size=1, device="cpu", save_steps=1000))
    assert m["opponent_logp_rejected"] == pytest.approx(response_logprobs(model, tok, [(prompt, ids)])[0], abs=1e-4)


def test_irft_drops_a_demonstration_whose_prompt_is_too_long_as_sft_does(tmp_path):
    """The one rule for over-long prompts (long_prompts, default drop) holds in IRFT's negatives
    too: such a demonstration gets no negative and no pair, and is counted; "error" stops there,
    naming it (the planted iterated study's SPIN stopped on one prompt of 65 tokens over 64)."""
    from afd.errors import AfdError
    from afd.irft import IRFTConfig, irft

    demos = write_jsonl(tmp_path / "demos.jsonl", [{"id": "d0", "prompt": "Write " + "a " * 100, "completion": "b"},
                                                   *({"id": f"d{i}", "prompt": f"Write {i}", "completion": "a a"}
                                                     for i in range(1, 5))])
    opts = dict(data=demos, stages=1, max_new_tokens=4, max_length=80, max_prompt_length=48, batch_size=2,
                max_steps=1, eval_fraction=0.0, save_steps=1000, device="cpu")
    m = irft(IRFTConfig(out=str(tmp_path / "drop"), **opts))
    assert m["stages"][0]["prompts_dropped_too_long"] == 1 and m["stages"][0]["pairs"] == 4
    with pytest.raises(AfdError, match="prompt 'd0' in .* over max_prompt_length=48"):
        irft(IRFTConfig(out=str(tmp_path / "error"), long_prompts="error", **opts))


def test_rl_with_standardised_rewards_logs_the_raw_scale(tmp_path):
    from afd.cli import main

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Write {i}"} for i in range(4)])
    assert main(["rl", "--out", str(tmp_path / "run"), "--data", prompts, "--device", "cpu", "--reward",
                 "python:test_iterated:gold", "--reward-scaling", "standardize", "--max-steps", "2",
                 "--batch-size", "4", "--num-generations", "2", "--max-new-tokens", "8", "--logging-steps", "1"]) == 0
    history = json.loads((tmp_path / "run" / "rl" / "log_history.json").read_text())
    steps = [h for h in history if "reward" in h]
    assert steps and all(abs(h["reward"]) < 1e-5 and "raw_reward_mean" in h for h in steps)
    m = json.loads((tmp_path / "run" / "rl" / "metrics.json").read_text())
    assert m["reward_scaling"] == "standardize" and 0 <= m["raw_reward_mean_first"] <= 1


def test_rl_samples_with_afds_engine_one_prefill_per_prompt_and_reproducibly(tmp_path, monkeypatch):
    """RL's completions come from afd's sampler: each prompt's num_generations copies are one
    prompt with K samples, and a rerun with the same seed draws the same samples (the same
    rewards); generation: trl still runs TRL's path."""
    from afd.cli import main
    from afd.sampling import HFEngine

    calls = []
    real = HFEngine.generate

    def spy(self, prompts, seeds, *args, **kw):
        out = real(self, prompts, seeds, *args, **kw)
        calls.append((len(prompts), len(seeds[0]), out))
        return out

    monkeypatch.setattr(HFEngine, "generate", spy)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Write {i}"} for i in range(4)])
    base = ["rl", "--data", prompts, "--device", "cpu", "--reward", "python:test_iterated:gold", "--max-steps", "2",
            "--batch-size", "4", "--num-generations", "2", "--max-new-tokens", "8", "--logging-steps", "1"]

    def rewards(name, *extra):
        assert main([*base, "--out", str(tmp_path / name), *extra]) == 0
        history = json.loads((tmp_path / name / "rl" / "log_history.json").read_text())
        return [h["reward"] for h in history if "reward" in h]

    first = rewards("a")
    assert calls and all(n_prompts == 2 and k == 2 for n_prompts, k, _ in calls)  # 4 rows = 2 prompts x K=2
    assert rewards("b") == first  # same seed, same samples
    n = len(calls)
    assert len(rewards("c", "--generation", "trl")) == len(first) and len(calls) == n  # TRL's generate, not afd's


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_rl_samples_from_a_copy_in_the_generation_dtype_that_follows_the_policy(tmp_path, monkeypatch, dtype):
    """generation_dtype bfloat16: afd's sampler draws RL's completions from one bf16 copy of
    the policy, refreshed to the policy's current weights before every generation (the policy
    moves between steps, so does the copy); float32: from the fp32 policy itself."""
    import torch

    from afd.cli import main
    from afd.sampling import HFEngine

    seen = []
    real = HFEngine.generate

    def spy(self, prompts, seeds, *args, **kw):
        first = next(self.model.parameters())
        seen.append((self.model, first.dtype, first.detach().float().clone()))
        return real(self, prompts, seeds, *args, **kw)

    monkeypatch.setattr(HFEngine, "generate", spy)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Write {i}"} for i in range(4)])
    assert main(["rl", "--data", prompts, "--device", "cpu", "--reward", "python:test_iterated:gold",
                 "--max-steps", "3", "--batch-size", "4", "--num-generations", "2", "--max-new-tokens", "8",
                 "--lr", "1e-2", "--generation-dtype", dtype, "--out", str(tmp_path / "run")]) == 0
    assert len(seen) == 3 and {d for _, d, _ in seen} == {getattr(torch, dtype)}
    assert len({id(m) for m, _, _ in seen}) == 1  # one copy (or the policy), not a new one a step
    assert not torch.equal(seen[0][2], seen[-1][2])  # it follows the policy's updates


def test_generation_dtype_is_checked(tmp_path, capsys):
    from afd.cli import main

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Write"}])
    assert main(["rl", "--data", prompts, "--reward", "vader", "--generation-dtype", "int8",
                 "--out", str(tmp_path / "run")]) == 2
    assert "generation_dtype" in capsys.readouterr().err


def test_kl_of_a_pool_to_the_model_it_was_sampled_from_is_zero_without_a_forward_pass(tmp_path, monkeypatch):
    """eval's KL(pi || reference) of a pool sampled from the reference itself (imdb-iterated's
    SFT pool against the SFT policy) is 0 exactly: no teacher-forced pass over its samples."""
    from types import SimpleNamespace

    from afd.eval import _same_model, kl_to_reference

    policy = tmp_path / "sft" / "model"
    policy.mkdir(parents=True)
    pool = tmp_path / "sample_sft"
    pool.mkdir()
    (pool / "pool.meta.json").write_text(json.dumps({"model": str(policy), "temperature": 1.0}))  # the pool's own record
    rows = [{"prompt": [{"role": "user", "content": "p"}], "token_ids": [5, 6], "logprob": -3.0, "prompt_id": "a"}]

    def no_forward(*args, **kwargs):
        raise AssertionError("a forward pass for KL(pi || pi)")

    monkeypatch.setattr("afd.scoring.response_logprobs", no_forward)
    cfg = SimpleNamespace(kl_reference=str(tmp_path / "sft" / "." / "model"), template="auto", batch_size=4,
                          device="cpu")  # the same folder, spelt differently
    assert kl_to_reference(rows, str(pool / "pool.jsonl"), (None, None), cfg) == \
        {"kl_to_reference": 0.0, "kl_to_reference_ci95": 0.0}
    assert rows[0]["log_ratio"] == 0.0
    other = tmp_path / "init"
    other.mkdir()
    assert not _same_model(str(policy), str(other)) and not _same_model("tiny-random", str(policy))


def test_kl_of_a_pool_to_its_own_policy_is_zero_by_teacher_forcing_too(tmp_path, monkeypatch):
    """The estimator itself, without the short cut: a pool sampled from tiny-random (fp32), its
    recorded log-probs against teacher forcing under the same model, gives KL 0 to 1e-4 per
    prompt; a reference whose weights differ gives a KL well above it."""
    import torch

    from afd import models
    from afd.eval import EvalConfig, kl_to_reference
    from afd.sampling import SampleConfig, read_pool, sample

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": f"p{i}", "prompt": f"Say {w}"} for i, w in enumerate(WORDS[:4])])
    sample(SampleConfig(out=str(tmp_path), model="tiny-random", data=prompts, num_samples=3, max_new_tokens=8,
                        device="cpu", dtype="float32"))
    rows = read_pool(tmp_path / "sample")
    monkeypatch.setattr("afd.eval._same_model", lambda a, b: False)  # no short cut
    cfg = EvalConfig(pools={"x": str(tmp_path / "sample")}, kl_reference="tiny-random", device="cpu")
    got = kl_to_reference(rows, str(tmp_path / "sample" / "pool.jsonl"),
                          models.load_causal_lm("tiny-random", "cpu", "float32"), cfg)
    assert abs(got["kl_to_reference"]) < 1e-4 and all(abs(r["log_ratio"]) < 1e-3 for r in rows)
    model, tok = models.load_causal_lm("tiny-random", "cpu", "float32")
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    far = kl_to_reference(rows, str(tmp_path / "sample" / "pool.jsonl"), (model, tok), cfg)
    assert far["kl_to_reference"] > 0.05


def test_iterated_stages_check_every_option_before_the_first_sample(tmp_path):
    """An option only an inner stage checks (RL's num_generations, the sampler's temperature,
    gail given irl's AVA reward) stops the loop before any sampling or training: no folder holds
    work."""
    from afd.errors import AfdError
    from afd.irft import IRFTConfig, irft
    from afd.irl import IRLConfig, gail, irl

    demos, _ = task_files(tmp_path)
    base = dict(out=str(tmp_path / "run"), data=demos, device="cpu", iterations=1)
    with pytest.raises(AfdError, match="num_generations"):
        irl(IRLConfig(**base, num_generations=3, batch_size=8))  # batch not a multiple: RL's own rule
    with pytest.raises(AfdError, match="gail's reward is its discriminator"):
        gail(IRLConfig(**base, reward_variant="ava-p", dense_rewards=True))
    with pytest.raises(AfdError, match="temperature"):
        irft(IRFTConfig(out=str(tmp_path / "run"), data=demos, device="cpu", temperature=-1.0))
    assert not any(p.name not in ("config.yaml",) for p in (tmp_path / "run").rglob("*") if p.is_file())
