"""AVA (METHODS §3): each term of the objective against a value computed by hand on tiny-random,
the ablation switches, the reward model's API and files, direct optimisation, the CLI."""

import copy
import json
import math

import pytest
import torch

from conftest import WORDS, say_demos, write_jsonl
from afd.errors import AfdError


def _opts(**kw):
    from afd.ava import AVAOptions

    return AVAOptions(**{"ava_alpha": 2.0, "ava_beta": 3.0, "ava_gamma": 0.9, "ava_lambda": 0.7, **kw})


def _model_with_heads(tiny, opts, seed=0):
    """A copy of tiny-random with AVA heads whose outputs are far from zero (so every term matters)."""
    from afd.ava import attach

    model = copy.deepcopy(tiny[0])
    torch.manual_seed(seed)
    heads = attach(model, opts)
    with torch.no_grad():
        heads.reward.weight.normal_(0, 0.5)
        heads.reward.bias.copy_(torch.tensor([0.3, -0.2]))
    return model.eval()


def _batch(tok):
    from afd.ava import encode
    from afd.training import Collator

    class Cfg:
        template, max_length, max_prompt_length, long_prompts = "auto", 64, 32, "error"

    prompt = [{"role": "user", "content": "Say cat"}]
    rows = [encode(tok, prompt, "cat!", Cfg), encode(tok, prompt, "a moon", Cfg)]
    return rows, Collator(tok.pad_token_id)(rows)


@torch.no_grad()
def _by_hand(model, row, opts):
    """Every per-token term of one unpadded row, by explicit loops in float64. Token y_j's heads
    are read at h_(j-1) (Eq. 8-9); Eq. 5's terms stop one token before the end."""
    ids = torch.tensor([row["input_ids"]])
    weighted = opts.ava_weighting == "attention"
    out = model(input_ids=ids, output_hidden_states=True, output_attentions=weighted)
    logits, hidden = out.logits[0].double(), out.hidden_states[-1][0]
    heads = model.ava_heads
    n, start = len(row["input_ids"]), row["start"]
    positions = [j for j in range(start, n) if j > 0]
    steps = positions[:-1]

    def q_vec(j):  # Q(y_<j, .), from h_(j-1)
        if heads.q is not None:
            return heads.q(hidden[j - 1]).double()
        p = torch.softmax(logits[j - 1], -1)
        return torch.log_softmax(opts.ava_alpha * p, -1)

    terms = {k: {} for k in ("logB", "Q", "td", "mean", "std", "kl", "logN", "w")}
    for j in positions:
        qv, a = q_vec(j), row["input_ids"][j]
        terms["Q"][j] = float(qv[a])
        raw = heads.reward(hidden[j - 1]).double()
        terms["mean"][j], terms["std"][j] = float(raw[0]), math.log1p(math.exp(float(raw[1]))) + 1e-4
        if j in steps:
            terms["logB"][j] = float(torch.log_softmax(opts.ava_beta * qv, -1)[a])
    for j in steps:
        td = terms["Q"][j] - opts.ava_gamma * terms["Q"][j + 1]
        mu, s = terms["mean"][j], terms["std"][j]
        terms["td"][j] = td
        terms["kl"][j] = 0.5 * (mu ** 2 + s ** 2 - 1) - math.log(s)
        terms["logN"][j] = -0.5 * math.log(2 * math.pi) - math.log(s) - 0.5 * ((td - mu) / s) ** 2
    rows_ = [j - 1 for j in positions]  # the head positions P
    if weighted:
        a = out.attentions[opts.ava_attention_layer][0].double().mean(0)
        col = {j: sum(float(a[i, j - 1]) for i in rows_) / len(rows_) for j in positions}
    else:
        col = {j: 1.0 for j in positions}
    total = sum(col.values())
    terms["w"] = {j: c / total for j, c in col.items()}
    return terms


@pytest.mark.parametrize("kw", [{}, {"ava_weighting": "uniform"}, {"ava_q_head": "new"},
                                {"ava_attention_layer": 0}])
def test_each_token_term_matches_hand_computation(tiny, kw):
    from afd.ava import token_terms

    opts = _opts(**kw)
    model = _model_with_heads(tiny, opts)
    rows, batch = _batch(tiny[1])
    with torch.no_grad():
        got = token_terms(model, batch["input_ids"], batch["attention_mask"], batch["response"], opts)
    for b, row in enumerate(rows):  # row 1 is right-padded in the batch: padding must not matter
        want = _by_hand(model, row, opts)
        for name, values in want.items():
            for j, v in values.items():
                assert got[name][b, j].item() == pytest.approx(v, rel=1e-4, abs=1e-5), (name, b, j)
            outside = [j for j in range(batch["input_ids"].shape[1]) if j not in values]
            assert all(got[name][b, j].item() == 0 for j in outside if name != "std"), name
    if kw.get("ava_weighting") == "uniform":
        n = len(rows[0]["input_ids"]) - rows[0]["start"]
        assert got["w"][0, rows[0]["start"]:len(rows[0]["input_ids"])].tolist() == pytest.approx([1 / n] * n)


def test_the_reward_of_a_token_is_read_before_it(tiny):
    """Eq. 8-9: mu and sigma of R(y_1:t+1) come from h_t, the state that Q(y_1:t, .) reads: a
    token's own id cannot change its reward, only the rewards after it."""
    from afd.ava import token_terms

    opts = _opts()
    model = _model_with_heads(tiny, opts)
    rows, batch = _batch(tiny[1])
    other = batch["input_ids"].clone()
    last = len(rows[0]["input_ids"]) - 1
    other[0, last - 1] = (other[0, last - 1] + 7) % 200  # change the second-to-last response token
    with torch.no_grad():
        a = token_terms(model, batch["input_ids"], batch["attention_mask"], batch["response"], opts)
        b = token_terms(model, other, batch["attention_mask"], batch["response"], opts)
    assert a["mean"][0, : last].tolist() == pytest.approx(b["mean"][0, : last].tolist(), abs=1e-6)
    assert a["mean"][0, last].item() != pytest.approx(b["mean"][0, last].item(), abs=1e-6)


# A 3-token response after a 1-token prompt: position 0 is the prompt, y_1..y_3 at 1..3.
RESP = torch.tensor([[False, True, True, True]])


def test_td_sum_stops_before_the_last_token():
    """Eq. 5-7 by hand: two TD steps for three tokens, none out of the last (no terminal Q = 0)."""
    from afd.ava import step_terms

    q = torch.tensor([[0.0, 0.5, -1.0, 2.0]])
    log_b = torch.tensor([[0.0, -1.0, -2.0, -3.0]])
    mean = torch.tensor([[0.0, 1.0, -2.0, 0.5]])
    std = torch.tensor([[1.0, 0.5, 2.0, 1.0]])
    t = step_terms(q, log_b, mean, std, RESP, gamma=0.9)
    assert t["step"].tolist() == [[False, True, True, False]]
    assert t["td"][0].tolist() == pytest.approx([0.0, 0.5 - 0.9 * -1.0, -1.0 - 0.9 * 2.0, 0.0])
    assert t["logB"][0].tolist() == pytest.approx([0.0, -1.0, -2.0, 0.0])
    kl = [0.5 * (1.0 + 0.25 - 1) - math.log(0.5), 0.5 * (4.0 + 4.0 - 1) - math.log(2.0)]
    assert t["kl"][0].tolist() == pytest.approx([0.0, *kl, 0.0])
    log_n = [-0.5 * math.log(2 * math.pi) - math.log(0.5) - 0.5 * ((1.4 - 1.0) / 0.5) ** 2,
             -0.5 * math.log(2 * math.pi) - math.log(2.0) - 0.5 * ((-2.8 + 2.0) / 2.0) ** 2]
    assert t["logN"][0].tolist() == pytest.approx([0.0, *log_n, 0.0])
    assert t["mean"][0].tolist() == pytest.approx([0.0, 1.0, -2.0, 0.5])  # every token keeps its reward


def test_weights_are_the_mean_of_the_attention_rows():
    """Eq. 11 by hand: w_t = (1/|P|) sum_(i in P) A[i, t] over the head positions P (the states
    before the response tokens), so early tokens, seen by more rows, weigh more; then normalised."""
    from afd.ava import token_weights

    a = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.6, 0.4, 0.0, 0.0], [0.5, 0.2, 0.3, 0.0], [0.1, 0.2, 0.3, 0.4]])
    w = token_weights(a[None, None], RESP)  # P = {0, 1, 2}, for y_1, y_2, y_3
    assert w[0].tolist() == pytest.approx([0.0, (1 + 0.6 + 0.5) / 3, (0.4 + 0.2) / 3, 0.3 / 3])
    # a 2-token response after a 2-token prompt: P = {1, 2}; (0.4 + 0.2) / 2 and 0.3 / 2, normalised
    w = token_weights(a[None, None], torch.tensor([[False, False, True, True]]))
    assert w[0].tolist() == pytest.approx([0.0, 0.0, 2 / 3, 1 / 3])
    # heads are averaged first
    two = torch.stack([a, torch.eye(4)])[None]
    w = token_weights(two, RESP)
    assert w[0].tolist() == pytest.approx([0.0, (1 + 0.3 + 0.25) / 3, (0.7 + 0.1) / 3, 0.65 / 3])


def test_sequence_rewards_and_both_objectives_by_hand():
    """Eq. 5 (AVA-d), Eq. 17-18 (AVA-p: the contrastive term on the last step's reward) and
    Eq. 19 (the plain sum), on two 3-token responses (row 0 chosen, row 1 rejected in AVA-p)."""
    from afd.ava import ava_loss, sequence_terms

    opts = _opts(ava_contrastive=0.5)
    step = torch.tensor([[False, True, True, False]] * 2)
    t = {"w": torch.tensor([[0.0, 0.5, 0.25, 0.25], [0.0, 0.2, 0.2, 0.6]]),
         "logB": torch.tensor([[0.0, -1.0, -2.0, 0.0], [0.0, -3.0, -1.0, 0.0]]),
         "kl": torch.tensor([[0.0, 0.1, 0.3, 0.0], [0.0, 0.2, 0.0, 0.0]]),
         "logN": torch.tensor([[0.0, -1.5, -0.5, 0.0], [0.0, -1.0, -2.0, 0.0]]),
         "mean": torch.tensor([[0.0, 2.0, -1.0, 0.5], [0.0, 0.5, 1.5, -1.0]]),
         "step": step, "response": RESP.repeat(2, 1)}
    s = sequence_terms(t)
    assert s["likelihood"].tolist() == pytest.approx([-0.5 - 0.5, -0.6 - 0.2])
    assert s["kl"].tolist() == pytest.approx([0.05 + 0.075, 0.04])
    assert s["td"].tolist() == pytest.approx([-0.75 - 0.125, -0.2 - 0.4])
    assert s["last"].tolist() == pytest.approx([0.5, -1.0])        # Eq. 18: mu of the last token
    assert s["weighted"].tolist() == pytest.approx([1.0 - 0.25, 0.1 + 0.3])  # sum of w mu over the TD steps
    assert s["total"].tolist() == pytest.approx([1.5, 1.0])        # Eq. 19: the plain sum
    d = [(-1.0 - 0.125 + 0.7 * -0.875), (-0.8 - 0.04 + 0.7 * -0.6)]
    assert ava_loss(s, "ava-d", opts).item() == pytest.approx(-sum(d) / 2)
    p = (-1.0 - -0.8) - (0.125 + 0.04) + 0.7 * (-0.875 + -0.6) + 0.5 * math.log(1 / (1 + math.exp(-(0.5 - -1.0))))
    assert ava_loss(s, "ava-p", opts).item() == pytest.approx(-p)
    # the ablations drop their term
    assert ava_loss(s, "ava-p", _opts(ava_contrastive=0.0, ava_lambda=0.0)).item() == pytest.approx(
        -((-1.0 - -0.8) - (0.125 + 0.04)))


def test_the_ranking_reward_follows_the_objective():
    from afd.ava import score_key

    assert score_key("ava-p", _opts()) == "last" and score_key("ava-d", _opts()) == "weighted"
    assert score_key("ava-d", _opts(ava_score="total")) == "total"


def _pairs(n=32):
    return [{"id": f"q{i}", "prompt": f"Say {w}", "chosen": f"{w}!", "rejected": f"no {WORDS[(i + 5) % 32]} at all"}
            for i, w in enumerate(WORDS[:n])]


def test_ava_p_reward_model_ranks_pairs_and_loads_everywhere(tmp_path):
    from transformers import AutoModelForCausalLM

    from afd import rewards
    from afd.reward import RewardConfig, reward

    pairs = write_jsonl(tmp_path / "pairs.jsonl", _pairs())
    m = reward(RewardConfig(out=str(tmp_path), variant="ava-p", data=pairs, eval_pairs=pairs, epochs=6, lr=2e-3,
                            batch_size=8, eval_fraction=0.0, save_steps=1000))
    assert m["pair_accuracy"] >= 0.9, m
    folder = tmp_path / "reward" / "model"
    assert AutoModelForCausalLM.from_pretrained(folder) is not None  # a plain policy folder
    rm = rewards.load(str(folder), device="cpu")
    assert isinstance(rm, rewards.AVAReward)
    prompts = [[{"role": "user", "content": "Say cat"}]] * 2
    tokens = rm.token_rewards(prompts, ["cat!", "no bird at all"])
    assert tokens[0].tokens[-1] == rm.tokenizer.eos_token  # scored as trained: EOS last
    for t in tokens:
        assert len(t.mean) == len(t.std) == len(t.weight) == len(t.ids)
        assert sum(t.weight) == pytest.approx(1.0)
        assert all(s > 0 for s in t.std)
        assert t.reward == pytest.approx(t.mean[-1], abs=1e-6)  # AVA-p ranks by the last step's reward (Eq. 18)
    assert tokens[0].reward > tokens[1].reward
    assert rm.score(prompts, ["cat!", "no bird at all"]) == pytest.approx(
        [t.reward for t in tokens], abs=1e-5)
    # RL takes the per-token rewards, and as a sequence reward their plain sum (Eq. 19)
    assert rm.dense_rewards(prompts, ["cat!", "no bird at all"])[1] == pytest.approx(
        tokens[1].mean, abs=1e-5)
    assert rm.rl_reward(prompts, ["cat!", "no bird at all"]) == pytest.approx(
        [sum(t.mean) for t in tokens], abs=1e-4)
    # token ids are scored exactly as given
    ids = tokens[0].ids
    assert rm.token_rewards(prompts[:1], ["cat!"], token_ids=[ids])[0].mean == pytest.approx(tokens[0].mean, abs=1e-5)


def test_ava_d_reward_does_not_prefer_longer_replies(tmp_path):
    """AVA-d on replies whose length is independent of everything else ("Say cat" -> "cat cat!",
    1 to 4 words), scored on pairs whose lengths are drawn independently of which reply is
    chosen: the share of unequal-length pairs in which the longer reply gets the higher reward
    stays within 0.5 +- 0.25. There are about 53 such pairs, so a reward blind to length lands
    within 0.25 of 0.5 with probability > 0.999 (binomial sd 0.069; 0.25 is 3.6 sd), and the
    tolerance leaves room for a small length effect of training noise (0.43 here; 0.33, 0.51,
    0.43 with data seeds 1-3). The terminal TD step (Q = 0 after the last token) that this
    replaced scores 1.0 here (the hh-ava benchmark: 0.91)."""
    import random

    from afd import rewards
    from afd.reward import RewardConfig, length_bias, reward

    rng = random.Random(0)

    def reply(w):
        return " ".join([w] * rng.randint(1, 4)) + "!"

    demos = [{"id": f"d{i}", "prompt": f"Say {w}", "completion": reply(w)} for i, w in enumerate(WORDS)]
    m = reward(RewardConfig(out=str(tmp_path), variant="ava-d", data=write_jsonl(tmp_path / "d.jsonl", demos),
                            epochs=4, lr=3e-3, batch_size=8, eval_fraction=0.0, save_steps=1000, device="cpu"))
    assert m["steps"] > 0
    prompts, chosen, rejected = [], [], []
    for _ in range(2):
        for i, w in enumerate(WORDS):
            prompts.append([{"role": "user", "content": f"Say {w}"}])
            chosen.append(reply(w))
            rejected.append(reply(WORDS[(i + 7) % len(WORDS)]))
    score = rewards.load(str(tmp_path / "reward" / "model"), device="cpu").score
    c, r = score(prompts, chosen), score(prompts, rejected)
    assert max(c + r) - min(c + r) > 1e-4  # not a constant reward (which would pass trivially)
    lengths = [(len(a), len(b)) for a, b in zip(chosen, rejected)]
    longer = length_bias(c, r, lengths)["prefers_longer"]
    print({"prefers_longer": longer, "unequal_pairs": sum(a != b for a, b in lengths)})
    assert abs(longer - 0.5) <= 0.25, longer


def test_direct_optimisation_raises_the_demonstrations_likelihood(tmp_path):
    from afd import models
    from afd.ava import AVAConfig, ava
    from afd.scoring import response_logprobs

    demos = say_demos()
    path = write_jsonl(tmp_path / "demos.jsonl", demos)
    m = ava(AVAConfig(out=str(tmp_path), objective="ava-d", data=path, epochs=8, lr=3e-3, batch_size=8,
                      eval_fraction=0.0, ava_beta=50.0))
    items = [([{"role": "user", "content": d["prompt"]}], d["completion"]) for d in demos]
    before = response_logprobs(*models.load_causal_lm("tiny-random", "cpu"), items)
    after = response_logprobs(*models.load_causal_lm(m["model"], "cpu"), items)
    assert sum(after) / len(after) > sum(before) / len(before) + 2.0, (sum(before), sum(after))


def test_cli_yaml_errors_and_resume(tmp_path, capsys):
    from afd.cli import main

    demos = write_jsonl(tmp_path / "demos.jsonl", say_demos(16))
    pairs = write_jsonl(tmp_path / "pairs.jsonl", _pairs(16))
    cfg = tmp_path / "ava.yaml"
    cfg.write_text(f"out: {tmp_path}/run\nobjective: ava-p\ndata: {pairs}\nava_lambda: 0.5\nmax_steps: 2\n")
    assert main(["ava", "--config", str(cfg), "--ava-weighting", "uniform"]) == 0
    saved = json.loads((tmp_path / "run" / "ava" / "model" / "ava.json").read_text())
    assert saved["ava_lambda"] == 0.5 and saved["ava_weighting"] == "uniform" and saved["objective"] == "ava-p"
    done = tmp_path / "run" / "ava"
    before = ((done / "metrics.json").read_text(), (done / "model" / "ava_heads.safetensors").stat().st_mtime_ns)
    assert main(["ava", "--config", str(cfg), "--ava-weighting", "uniform"]) == 0  # finished: reused, not retrained
    assert ((done / "metrics.json").read_text(), (done / "model" / "ava_heads.safetensors").stat().st_mtime_ns) == before
    assert main(["reward", "--out", str(tmp_path / "run"), "--variant", "ava-d", "--data", demos,
                 "--max-steps", "2"]) == 0
    assert (tmp_path / "run" / "reward" / "model" / "ava_heads.safetensors").is_file()
    capsys.readouterr()
    assert main(["reward", "--out", str(tmp_path / "run"), "--variant", "ava-d", "--data", demos,
                 "--ava-q-head", "pretrain"]) == 2
    err = capsys.readouterr().err
    assert "ava_q_head" in err and "pretrain" in err and len(err.strip().splitlines()) == 1
    assert main(["ava", "--out", str(tmp_path / "run"), "--data", demos, "--ava-q-head", "new"]) == 2
    assert "pretrained" in capsys.readouterr().err
    # the AVA-d reward model drives dense-reward RL from flags
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say {w}"} for w in WORDS[:4]])
    assert main(["rl", "--out", str(tmp_path / "run"), "--data", prompts, "--device", "cpu", "--dense-rewards",
                 "--reward", str(tmp_path / "run" / "reward" / "model"), "--max-steps", "1", "--batch-size", "4",
                 "--num-generations", "2", "--max-new-tokens", "6"]) == 0
    rl = json.loads((tmp_path / "run" / "rl" / "metrics.json").read_text())
    assert rl["steps"] == 1 and rl["reward_first"] is not None


def test_dense_advantages_by_hand():
    from afd.rl import dense_advantages

    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # reward-to-go [3, 2, 2] and [1, 1, 0]; leave-one-out baselines 1 and 3
    adv = dense_advantages(rewards, torch.zeros(2, 3), mask, 0.0, 2, False)
    assert adv.tolist() == [[2.0, 1.0, 1.0], [-2.0, -2.0, 0.0]]
    # a KL of 1 per token on row 0 with kl_coef 0.5: rewards [0.5, -0.5, 1.5], to-go [1.5, 1, 1.5]
    kl = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    adv = dense_advantages(rewards, kl, mask, 0.5, 2, False)
    assert adv.tolist() == [[0.5, 0.0, 0.5], [-0.5, -0.5, 0.0]]
    norm = dense_advantages(rewards, kl, mask, 0.5, 2, True)
    real = norm[mask.bool()]
    assert real.mean().item() == pytest.approx(0.0, abs=1e-6) and norm[1, 2].item() == 0.0


def test_dense_rewards_need_an_ava_model(tmp_path):
    from afd.config import from_dict
    from afd.errors import AfdError
    from afd.irl import IRLConfig
    from afd.rl import RLConfig, rl

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Say cat"}] * 4)
    with pytest.raises(AfdError, match="needs an AVA reward model"):
        rl(RLConfig(out=str(tmp_path), data=prompts, reward="vader", dense_rewards=True, device="cpu"))
    with pytest.raises(AfdError, match="reward_variant 'ava-p'"):
        from_dict(IRLConfig, {"data": prompts, "dense_rewards": True}, "test")


def test_ava_rewards_in_bon_and_dense_irl_raise_gold_above_pi0(tmp_path):
    """The tiny task of test_iterated (golden reward: the share of 'a'): an AVA-d reward from
    the demonstrations serves Best-of-N, and irl with an AVA-p reward and dense per-token
    rewards raises the golden reward above pi_0."""
    from test_iterated import eval_stage, task_files

    from afd.pipeline import run

    demos, prompts = task_files(tmp_path)
    limits = {"max_length": 80, "max_prompt_length": 48}
    stages = {
        "sft": {"data": demos, "epochs": 4, "lr": 5e-3, "batch_size": 8, "eval_fraction": 0.0, **limits},
        "ava_d": {"kind": "reward", "variant": "ava-d", "data": demos, "epochs": 4, "lr": 3e-3, "batch_size": 8,
                  "eval_fraction": 0.0, **limits},
        "irl": {"model": "@sft", "data": demos, "max_new_tokens": 16, **limits, "iterations": 2, "kl_coef": 0.01,
                "num_generations": 4, "batch_size": 16, "lr": 1e-2, "epochs": 2, "reward_model": "tiny-random",
                "reward_variant": "ava-p", "dense_rewards": True, "reward_epochs": 3, "reward_lr": 3e-3,
                "eval_fraction": 0.0},
        **eval_stage(tmp_path, {"init": "tiny-random", "sft": "@sft", "irl": "@irl"}, prompts),
    }
    stages["eval"]["proxies"] = {"ava-d": "@ava_d"}
    stages["eval"]["golden"] = "python:test_iterated:gold"
    results = run({"out": str(tmp_path / "run"), "seed": 0, "device": "cpu", "model": "tiny-random",
                   "stages": stages})
    pol = results["eval"]["policies"]
    bon = results["eval"]["bon"]["ava-d"]
    print(json.dumps({"gold": {k: round(v["gold"], 3) for k, v in pol.items()},
                      "bon_ava_d": dict(zip(bon["n"], bon["gold"])),
                      "irl": [(h["rl_reward_first"], h["rl_reward_last"]) for h in results["irl"]["iterations"]]}))
    assert pol["irl"]["gold"] > pol["init"]["gold"] + 0.1
    assert pol["irl"]["kl_to_reference"] > 0.5
    assert len(bon["gold"]) > 1 and all(g is not None for g in bon["gold"])
    assert (tmp_path / "run" / "irl" / "iter_1" / "reward" / "model" / "ava_heads.safetensors").is_file()


def test_interrupted_training_resumes_with_its_heads(tmp_path):
    """A killed AVA stage (checkpoint written, model and metrics not) resumes from the
    checkpoint, heads included, instead of starting over."""
    import shutil

    from safetensors.torch import load_file

    from afd.ava import AVAConfig, ava

    demos = write_jsonl(tmp_path / "demos.jsonl", say_demos())
    # keep_checkpoints: the "kill" below comes after the stage finished, which removes them
    cfg = dict(out=str(tmp_path / "run"), data=demos, max_steps=3, save_steps=3, lr=1e-2, batch_size=8,
               eval_fraction=0.0, device="cpu", keep_checkpoints=True)
    assert ava(AVAConfig(**cfg))["resumed"] is False
    stage = tmp_path / "run" / "ava"
    first = load_file(stage / "model" / "ava_heads.safetensors")
    (stage / "metrics.json").unlink()
    shutil.rmtree(stage / "model")
    assert ava(AVAConfig(**cfg))["resumed"] is True
    again = load_file(stage / "model" / "ava_heads.safetensors")
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["reward.bias"], torch.tensor([0.0, math.log(math.e - 1)]))  # it trained


def test_heads_learn_at_their_own_rate(tmp_path):
    """ava_head_lr puts the heads in their own optimiser group: with a backbone rate of ~0 only
    the heads move."""
    from safetensors.torch import load_file

    from afd import models
    from afd.ava import AVAConfig, ava

    demos = write_jsonl(tmp_path / "demos.jsonl", say_demos())
    m = ava(AVAConfig(out=str(tmp_path / "run"), data=demos, max_steps=2, lr=1e-12, ava_head_lr=1e-2, batch_size=8,
                      eval_fraction=0.0, device="cpu"))
    before = models.load_causal_lm("tiny-random", "cpu")[0].state_dict()
    after = models.load_causal_lm(m["model"], "cpu")[0].state_dict()
    assert all(torch.allclose(before[k], after[k], atol=1e-8) for k in before)
    heads = load_file(str(tmp_path / "run" / "ava" / "model" / "ava_heads.safetensors"))
    assert (heads["reward.bias"] - torch.tensor([0.0, math.log(math.e - 1)])).abs().max() > 1e-3


def test_a_classifier_and_an_ava_model_share_one_interface(tmp_path, tiny):
    """rewards.load gives either kind; both score, only AVA has per-token rewards, and RL takes a
    classifier's score as is (Eq. 19's sum is for per-token rewards)."""
    from transformers import AutoModelForSequenceClassification

    from afd import models, rewards
    from afd.ava import save

    clf = AutoModelForSequenceClassification.from_pretrained(models.resolve("tiny-random"), num_labels=1)
    clf.config.pad_token_id = tiny[1].pad_token_id
    clf.save_pretrained(tmp_path / "clf")
    tiny[1].save_pretrained(tmp_path / "clf")
    opts = _opts()
    save(_model_with_heads(tiny, opts), tiny[1], tmp_path / "ava", opts, "ava-d")
    prompts, responses = [[{"role": "user", "content": "Say cat"}]] * 2, ["cat!", "a moon"]
    c, a = rewards.load(str(tmp_path / "clf"), "cpu"), rewards.load(str(tmp_path / "ava"), "cpu")
    assert isinstance(c, rewards.Classifier) and isinstance(a, rewards.AVAReward)
    assert not c.has_dense and a.has_dense and len(a.dense_rewards(prompts, responses)[0]) == len(
        a.token_rewards(prompts, responses)[0].ids)
    with pytest.raises(AfdError, match="no per-token rewards"):
        c.dense_rewards(prompts, responses)
    assert c.rl_reward(prompts, responses) == pytest.approx(c.score(prompts, responses), abs=1e-5)
    assert a.rl_reward(prompts, responses) == pytest.approx(
        [sum(r) for r in a.dense_rewards(prompts, responses)], abs=1e-5)
    assert a.score(prompts, responses) == pytest.approx(  # AVA-d ranks by sum_t w_t mu_t over its TD steps
        [sum(w * m for w, m in zip(t.weight[:-1], t.mean[:-1])) for t in a.token_rewards(prompts, responses)],
        abs=1e-5)


def test_ava_scores_as_trained_and_keeps_the_response_whole(tmp_path, tiny):
    """An AVA model restores its template and max_length (afd scored at max_length 4096 with the
    caller's template), and an over-long input loses prompt tokens, never the response's end
    (afd cut the joined sequence at its end, which made two replies to a long prompt tie)."""
    from afd import models, rewards
    from afd.ava import encode, save

    model, tok = tiny
    opts = _opts()

    class Cfg:
        template, max_length, max_prompt_length, long_prompts = "raw", 24, 1000, "drop"

    prompt = [{"role": "user", "content": "a long question " * 10}]
    a, b = encode(tok, prompt, "yes, sure", Cfg), encode(tok, prompt, "no, never", Cfg)
    assert len(a["input_ids"]) == 24 and a["input_ids"] != b["input_ids"]
    reply = tok(models.raw_separator(prompt) + "yes, sure", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert a["input_ids"][a["start"]:] == reply
    opts.template, opts.max_length = Cfg.template, Cfg.max_length
    save(_model_with_heads(tiny, _opts()), tok, tmp_path / "ava", opts, "ava-d")
    rm = rewards.load(str(tmp_path / "ava"), device="cpu", template="chat")
    assert (rm.settings.template, rm.settings.max_length) == ("raw", 24)
    t = rm.token_rewards([prompt], ["yes, sure"])[0]
    assert t.ids == reply
