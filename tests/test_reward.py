"""Reward models: the losses by hand, the metrics, and the stage on tiny-random."""

import math

import pytest
import torch

from conftest import WORDS, user, write_jsonl
from afd.errors import AfdError
from afd.models import fit
from afd.reward import (Example, RewardConfig, bt_pairs, controls, encode, examples, preference_metrics, reward,
                        reward_loss, split_groups)
from afd.stats import auc, pair_accuracy


def test_bce_loss_by_hand():
    r = torch.tensor([2.0, -1.0])
    y = torch.tensor([1.0, 0.0])
    expected = -(math.log(1 / (1 + math.exp(-2.0))) + math.log(1 - 1 / (1 + math.exp(1.0)))) / 2
    assert reward_loss(r, y).item() == pytest.approx(expected, rel=1e-6)


def test_bt_loss_by_hand():
    # rows: [chosen_1, chosen_2, rejected_1, rejected_2]
    r = torch.tensor([1.0, 0.0, -1.0, 0.5])
    expected = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(0.5))) / 2
    assert reward_loss(r, None).item() == pytest.approx(expected, rel=1e-6)


def test_auc_against_pair_counting():
    scores = [0.1, 0.4, 0.35, 0.8, 0.4, 0.2]
    labels = [0, 0, 1, 1, 1, 0]
    pos = [s for s, l in zip(scores, labels) if l]
    neg = [s for s, l in zip(scores, labels) if not l]
    brute = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg) / (len(pos) * len(neg))
    assert auc(scores, labels) == pytest.approx(brute)
    assert auc([1.0, 2.0], [1, 1]) is None
    assert pair_accuracy([1.0, 2.0, 3.0], [0.0, 2.0, 4.0]) == pytest.approx(0.5)


def test_split_keeps_prompts_whole_and_pairs_stay_within_prompts():
    items = [Example([user(w)], f"r{i}", float(i % 2), w) for w in WORDS[:10] for i in range(4)]
    train, held = split_groups(items, 0.3, seed=0)
    assert {e.group for e in train}.isdisjoint({e.group for e in held}) and len(held) == 12
    pairs = bt_pairs(items, seed=0)
    assert len(pairs) == 20 and all(c.group == r.group and c.label == 1 and r.label == 0 for c, r in pairs)


def pool_rows(words, response):
    return [{"prompt_id": w, "prompt": [user(f"Talk about {w}")], "sample_index": i, "response": response(w, i)}
            for w in words for i in range(2)]


@pytest.fixture
def pools(tmp_path):
    """An SFT pool that always answers politely and an initial pool that does not."""
    words = WORDS[:16]
    sft = write_jsonl(tmp_path / "sft.jsonl", pool_rows(words, lambda w, i: f"Thank you, the {w} is lovely."))
    init = write_jsonl(tmp_path / "init.jsonl", pool_rows(words, lambda w, i: f"{w} {w} ugh bad {i}"))
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": f"Talk about {w}", "chosen": f"Thank you, the {w} is lovely.", "rejected": f"{w} ugh bad"}
        for w in WORDS[16:24]])
    return sft, init, pairs


def train(tmp_path, **kw):
    cfg = dict(out=str(tmp_path / "run"), model="tiny-random", device="cpu", epochs=6, lr=3e-3, batch_size=8,
               eval_fraction=0.25, max_length=96, max_prompt_length=64, logging_steps=1, save_steps=1000)
    cfg.update(kw)
    return reward(RewardConfig(**cfg))


def test_init_sft_reward_model_separates_and_loads_as_a_classifier(tmp_path, pools):
    sft, init, pairs = pools
    m = train(tmp_path, variant="init-sft", sft_pool=sft, init_pool=init, eval_pairs=pairs)
    assert m["eval_accuracy"] >= 0.9 and m["eval_auc"] >= 0.95 and m["eval_pair_accuracy"] == 1.0
    assert m["pair_accuracy"] >= 0.9 and m["pairs"] == 8
    assert m["eval_mean_reward_positive"] > 0 > m["eval_mean_reward_negative"]

    from transformers import AutoModelForSequenceClassification, pipeline

    folder = tmp_path / "run" / "reward" / "model"
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert model.config.num_labels == 1 and model.config.afd["variant"] == "init-sft"
    clf = pipeline("text-classification", model=str(folder), function_to_apply="none")
    good, bad = clf(["Thank you, the moon is lovely.", "moon moon ugh bad"])
    assert good["score"] > bad["score"]

    from huggingface_hub import ModelCard

    card = ModelCard.load(folder / "README.md")  # the model card
    assert card.data.pipeline_tag == "text-classification" and "init-sft" in card.data.tags
    assert "`tiny-random`" in card.text and "reward model learned from demonstrations" in card.text
    assert f"| eval_auc | {m['eval_auc']:.4g} |" in card.text and "sft_pool: `" in card.text
    assert 'pipeline("text-classification"' in card.text and "AutoModelForSequenceClassification" in card.text


def test_bt_variant_and_pairwise_loss(tmp_path, pools):
    sft, init, pairs = pools
    m = train(tmp_path, variant="bt", data=pairs, eval_fraction=0.25)
    assert m["loss"] == "bt" and m["eval_pair_accuracy"] == 1.0
    m2 = train(tmp_path, variant="init-sft", loss="bt", sft_pool=sft, init_pool=init, stage_name="pairwise")
    assert m2["loss"] == "bt" and m2["eval_pair_accuracy"] == 1.0


def test_demo_variants_read_demonstrations(tmp_path, pools):
    sft, init, _ = pools
    demos = write_jsonl(tmp_path / "demos.jsonl", [
        {"prompt": f"Talk about {w}", "completion": f"The {w}, thank you kindly."} for w in WORDS[:16]])
    m = train(tmp_path, variant="init-demo", data=demos, init_pool=init)
    assert m["train_examples"] + m["eval_examples"] == 16 + 32 and m["eval_auc"] >= 0.9
    with pytest.raises(Exception, match="needs option 'data'"):
        RewardConfig(variant="sft-demo", sft_pool=sft).validate()


def test_density_ratio_scorer_is_a_difference_of_log_probs(tiny, tmp_path):
    from afd import rewards
    from afd.scoring import response_logprobs
    from afd.sampling import HFEngine, row_seed
    from afd import models

    model, tok = tiny
    prompts = [[user("hello there")], [user("a much longer prompt to force padding")]]
    responses = ["general kenobi", "ok"]
    lp = response_logprobs(model, tok, list(zip(prompts, responses)))
    # teacher forcing one at a time, no padding
    for (p, r), value in zip(zip(prompts, responses), lp):
        ids = models.encode_prompt(tok, p) + models.encode_response(tok, p, r)
        n = len(models.encode_response(tok, p, r))
        with torch.no_grad():
            logp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
        manual = sum(logp[len(ids) - n - 1 + j, ids[len(ids) - n + j]].item() for j in range(n))
        assert value == pytest.approx(manual, abs=1e-4)
    # a policy against itself has density ratio 0
    same = rewards.load("density-ratio:tiny-random,tiny-random", device="cpu").score(prompts, responses)
    assert same == pytest.approx([0.0, 0.0], abs=1e-6)
    # and the sampler's recorded log-prob is what scoring computes for the same tokens
    engine = HFEngine(model, tok, models.stop_token_ids(model, tok))
    c = engine.generate([models.encode_prompt(tok, prompts[0])], [[row_seed(0, "x", 0)]], 12)[0][0]
    if c.finish_reason == "stop":
        text = models.decode_response(tok, prompts[0], c.token_ids)
        assert response_logprobs(model, tok, [(prompts[0], text)])[0] == pytest.approx(c.logprob, abs=1e-3)


def test_unknown_scorer_is_one_sentence():
    from afd import rewards

    with pytest.raises(AfdError, match="unknown scorer 'nonsense'"):
        rewards.load("nonsense")


def test_vader_scorer_ranks_sentiment():
    from afd import rewards

    good, bad = rewards.load("vader").score([[user("q")]] * 2, ["What a wonderful, joyful film!", "Awful, boring and sad."])
    assert good > 0.5 and bad < -0.5


def test_length_bias_by_hand():
    from afd.reward import length_bias

    # pair 0: chosen longer, reward prefers chosen; pair 1: rejected longer, reward prefers
    # rejected; pair 2: equal lengths (left out of prefers_longer, a tie for the length rule)
    got = length_bias([2.0, 0.0, 1.0], [1.0, 3.0, 1.0], [(10, 5), (4, 8), (6, 6)])
    assert got == {"longer_chosen_accuracy": pytest.approx((1 + 0 + 0.5) / 3), "prefers_longer": 1.0}
    assert length_bias([0.0], [1.0], [(10, 5)])["prefers_longer"] == 0.0


def test_pair_data_is_held_out_by_prompt_not_by_pair(tmp_path):
    # as in afd irl: one demonstration per prompt is the chosen side of several pairs
    rows = [{"id": f"{w}/{t}", "prompt": f"Talk about {w}", "chosen": f"The {w} is fine.", "rejected": f"{w} {t}"}
            for w in WORDS[:8] for t in range(3)]
    cfg = RewardConfig(variant="bt", data=write_jsonl(tmp_path / "pairs.jsonl", rows))
    items = examples(cfg)
    train, held = split_groups(items, 0.25, seed=0)
    assert {e.group for e in train}.isdisjoint({e.group for e in held})
    assert {e.response for e in train if e.label == 1}.isdisjoint({e.response for e in held if e.label == 1})
    pairs = bt_pairs(held, seed=0)
    assert len(pairs) == len(held) // 2 and all(c.pair == r.pair for c, r in pairs)


def test_demo_variants_use_only_prompts_with_both_classes(tmp_path):
    demos = write_jsonl(tmp_path / "demos.jsonl", [{"prompt": f"Talk about {w}", "completion": f"The {w}."}
                                                   for w in WORDS[:16]])
    init = write_jsonl(tmp_path / "init.jsonl", pool_rows(WORDS[8:24], lambda w, i: f"{w} ugh {i}"))
    items = examples(RewardConfig(variant="init-demo", data=demos, init_pool=init))
    pos = {e.group for e in items if e.label == 1}
    assert pos == {e.group for e in items if e.label == 0} and len(pos) == 8
    assert len(examples(RewardConfig(variant="init-demo", data=demos, init_pool=init, same_prompts=False))) == 48
    far = write_jsonl(tmp_path / "far.jsonl", pool_rows(WORDS[20:24], lambda w, i: w))
    with pytest.raises(AfdError, match="no prompt has both"):
        examples(RewardConfig(variant="init-demo", data=demos, init_pool=far))


def test_fit_cuts_the_prompt_from_the_left_so_replies_stay_apart(tiny):
    from afd import models

    _, tok = tiny
    prompt = [user("a long question " * 20)]
    cfg = RewardConfig(max_length=40, max_prompt_length=1000)
    a, b = encode(tok, prompt, "yes, sure", cfg), encode(tok, prompt, "no, never", cfg)
    assert len(a) == 40 and a != b  # cut at the end, both were the prompt's first 40 tokens
    reply = models.encode_response(tok, prompt, "yes, sure")
    assert a[-len(reply):] == reply
    assert fit([1, 2, 3], [4, 5], 4) == [2, 3, 4, 5] and fit([1, 2], [3, 4, 5, 6], 3) == [3, 4, 5]
    assert fit([1, 2], [3], None) == [1, 2, 3]


def test_controls_by_hand():
    def ex(label, n, ended=True, group="g"):
        return Example([user(group)], "x" * n, label, group, ended=ended)

    # positives are long and end with EOS; negatives short and cut
    train = [ex(1, 10), ex(1, 12), ex(0, 3, False), ex(0, 5, False)]
    held = [ex(1, 11, group="h"), ex(1, 4, group="h"), ex(0, 2, False, "h"), ex(0, 6, True, "h")]
    c = controls(train, held, lambda e: len(e.response))
    # threshold between 5 and 10 (7.5): held 11 -> +, 4 -> -, 2 -> -, 6 -> -
    assert c["length_only_accuracy"] == 0.75 and c["length_only_auc"] == pytest.approx(0.75)
    # eos rule: ended -> positive: held right on 11, 4, 2; wrong on 6
    assert c["eos_only_accuracy"] == 0.75
    assert c["eval_truncated_share_positive"] == 0.0 and c["eval_truncated_share_negative"] == 0.5
    assert "eos_only_accuracy" not in controls([ex(1, 3), ex(0, 2)], [ex(1, 3), ex(0, 2)], lambda e: len(e.response))
    assert controls(train, [], len) == {}
    # positives end with EOS, negatives are cut: the whole-response EOS rule is perfect, but a
    # model shown only the first 4 characters of these (all longer) sees no response end at all
    train, held = [ex(1, 8), ex(1, 9), ex(0, 8, False), ex(0, 9, False)], [ex(1, 10, group="h"), ex(0, 7, False, "h")]
    assert controls(train, held, lambda e: 4)["eos_only_accuracy"] == 1.0
    assert "eos_only_accuracy" not in controls(train, held, lambda e: 4, ended=lambda e: e.ended and len(e.response) <= 4)


def test_preference_metrics_count_ties(tmp_path):
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": c, "rejected": r}
                                               for c, r in (("aa", "b"), ("c", "d"), ("e", "ff"))])
    cfg = RewardConfig(eval_pairs=pairs)
    from types import SimpleNamespace

    m = preference_metrics(SimpleNamespace(score=lambda p, r: [float(len(x)) for x in r]), cfg)
    assert m["pairs_tied"] == 1 and m["pair_accuracy"] == pytest.approx(1.5 / 3)
    assert m["pair_accuracy_untied"] == 0.5


def truncated_row(tok, prompt, text="the cat sat on the mat"):
    """A pool row as the sampler writes it for a sample cut at max_new_tokens: no stop token."""
    from afd import models

    ids = models.encode_response(tok, prompt, text)[:-1]  # the text's tokens, no EOS
    return {"prompt_id": "p", "prompt": prompt, "sample_index": 0, "response": models.decode_response(tok, prompt, ids),
            "finish_reason": "length", "token_ids": ids}


def test_density_ratio_scores_the_sampled_tokens_without_an_eos_they_lack(tiny, tmp_path):
    from afd.bon import score_pool
    from afd.scoring import response_logprobs

    model, tok = tiny
    other = type(model)(model.config)  # a second policy: same architecture, fresh weights
    torch.manual_seed(1)
    other.load_state_dict({k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()})
    other.save_pretrained(tmp_path / "other")
    tok.save_pretrained(tmp_path / "other")
    prompt = [user("hello there")]
    row = truncated_row(tok, prompt)
    rows = [dict(row)]
    score_pool(rows, f"density-ratio:{tmp_path / 'other'},tiny-random", "dr", device="cpu")
    want = (response_logprobs(other.eval(), tok, [(prompt, row["token_ids"])])[0]
            - response_logprobs(model, tok, [(prompt, row["token_ids"])])[0])
    with_eos = (response_logprobs(other.eval(), tok, [(prompt, row["response"])])[0]
                - response_logprobs(model, tok, [(prompt, row["response"])])[0])
    assert rows[0]["dr"] == pytest.approx(want, abs=1e-4) and abs(want - with_eos) > 1e-3
    # without token ids (or with another tokenizer's), the text is scored as before
    rows = [{k: v for k, v in row.items() if k != "token_ids"}]
    score_pool(rows, f"density-ratio:{tmp_path / 'other'},tiny-random", "dr", device="cpu")
    assert rows[0]["dr"] == pytest.approx(with_eos, abs=1e-4)


def test_response_tokens_cut_every_input_alike_in_training_and_scoring(tmp_path, pools):
    from afd import models, rewards

    sft, init, _ = pools
    m = train(tmp_path, variant="init-sft", sft_pool=sft, init_pool=init, epochs=1, response_tokens=6)
    # length past 6 tokens is invisible: two responses that share their first 6 tokens score alike
    score = rewards.load(str(tmp_path / "run" / "reward" / "model"), device="cpu").score
    a, b, c = score([[user("Talk about cat")]] * 3, ["Thank you so much", "Thank you, the cat", "Thank"])
    assert a == b and a != c
    assert m["length_only_accuracy"] is not None
    _, tok = models.load_causal_lm("tiny-random", device="cpu")
    cfg = RewardConfig(response_tokens=6, max_prompt_length=100, max_length=None)
    p = models.encode_prompt(tok, [user("q")])
    assert encode(tok, [user("q")], "a long reply", cfg) == p + models.encode_response(tok, [user("q")], "a long")[:6]
    assert encode(tok, [user("q")], "ok", cfg) == p + models.encode_response(tok, [user("q")], "ok")  # EOS kept


@pytest.mark.parametrize("batch_size", [1, 2])  # 1: several chunks of prompts; 2: a chunk's prefill split
def test_shared_prompts_score_as_each_item_whole(tiny, batch_size):
    """Items sharing a prompt (a pool's K samples) run the prompt once and copy its KV cache:
    every sum and per-token log-prob equals scoring each item whole, one at a time, with
    groups of unequal size, a group split across batches, an empty response and ids or text."""
    from afd import models
    from afd.scoring import response_logprobs

    model, tok = tiny
    short, long_ = [user("hi")], [user("a much longer prompt, so that prompts need padding")]
    items = ([(short, r) for r in ("general kenobi", "ok", "a longer answer than the others, much longer")]
             + [(long_, r) for r in ("yes", "no thanks", "maybe")] + [(long_, [])]
             + [([user("alone")], "one item alone")] + [(short, models.encode_response(tok, short, "ids")[:-1])])
    sums, per = response_logprobs(model, tok, items, batch_size=batch_size, per_token=True)
    for (p, r), value, toks in zip(items, sums, per):
        ids = models.encode_prompt(tok, p)
        resp = list(r) if isinstance(r, list) else models.encode_response(tok, p, r)
        with torch.no_grad():
            logp = model(torch.tensor([ids + resp])).logits[0].float().log_softmax(-1)
        manual = [logp[len(ids) - 1 + j, resp[j]].item() for j in range(len(resp))]
        assert toks == pytest.approx(manual, abs=1e-4) and value == pytest.approx(sum(manual), abs=1e-4)
    plain = response_logprobs(model, tok, items, batch_size=batch_size, share_prompts=False)
    assert sums == pytest.approx(plain, abs=1e-4)
    assert sums[6] == 0.0  # the empty response


def test_a_reward_model_is_scored_with_the_settings_it_was_trained_with(tmp_path, pools):
    """A classifier trained with --template raw and max_length 40 reads its input that way when
    loaded, whatever template the caller passes: its scores equal its logits on raw-rendered,
    fitted inputs (afd used to score it with the caller's chat template)."""
    from afd import models, rewards

    sft, init, _ = pools
    train(tmp_path, variant="init-sft", sft_pool=sft, init_pool=init, epochs=1, template="raw", max_length=40,
          max_prompt_length=30)
    rm = rewards.load(str(tmp_path / "run" / "reward" / "model"), device="cpu", template="chat")
    assert (rm.settings.template, rm.settings.max_length) == ("raw", 40)
    prompt, reply = [user("Talk about the cat " * 8)], "Thank you, the cat is lovely."
    tok = rm.tokenizer
    raw = models.fit(models.encode_prompt(tok, prompt, "raw"), models.encode_response(tok, prompt, reply, "raw"), 40)
    chat = models.encode_prompt(tok, prompt, "chat") + models.encode_response(tok, prompt, reply, "chat")
    with torch.no_grad():
        want, other = (rm.model(torch.tensor([ids])).logits.item() for ids in (raw, chat))
    assert rm.score([prompt], [reply]) == pytest.approx([want], abs=1e-5) and abs(want - other) > 1e-4


def test_the_density_ratio_loads_its_two_models_once(monkeypatch):
    from afd import models, rewards

    calls = []
    real = models.load_causal_lm
    monkeypatch.setattr(models, "load_causal_lm", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    rm = rewards.load("density-ratio:tiny-random,tiny-random", device="cpu")
    for _ in range(3):  # as RL calls it, once per batch
        assert rm.score([[user("hi")]], ["there"]) == pytest.approx([0.0], abs=1e-6)
    assert calls == ["tiny-random", "tiny-random"]


def test_scores_are_checked_one_sentence_each(tmp_path, monkeypatch):
    """A Python scorer that returns the wrong count, a string, None or a non-finite number, or
    that raises, is reported in one sentence naming it (never a traceback, never a null figure)."""
    from afd import rewards

    (tmp_path / "golds.py").write_text(
        "def count(p, r): return [1.0]\n"
        "def text(p, r): return ['good' for _ in r]\n"
        "def none(p, r): return None\n"
        "def nan(p, r): return [float('nan') if 'b' in x else 1.0 for x in r]\n"
        "def inf(p, r): return [float('inf') for x in r]\n"
        "def boom(p, r): raise KeyError('label')\n"
        "def fine(p, r): return [len(x) for x in r]\n")
    monkeypatch.chdir(tmp_path)  # the current folder is importable, as the README says
    prompts, responses = [[user("q")]] * 2, ["a", "b"]
    for fn, message in (("count", "returned 1 scores for 2 responses"), ("text", "returned 'good' .* must be a number"),
                        ("none", "returned NoneType"), ("nan", "returned nan for response 2 .* finite"),
                        ("inf", "returned inf for response 1 .* finite"),
                        ("boom", "raised KeyError")):
        with pytest.raises(AfdError, match=f"scorer 'python:golds:{fn}' {message}"):
            rewards.load(f"python:golds:{fn}").score(prompts, responses)
    assert rewards.load("python:golds:fine").score(prompts, responses) == [1.0, 1.0]
    with pytest.raises(AfdError, match="should be python:MODULE:FUNCTION"):
        rewards.load("python:golds")
    with pytest.raises(AfdError, match="has no function 'missing'"):
        rewards.load("python:golds:missing")


def test_floors_random_and_length():
    from afd import rewards

    prompts, responses = [[user("q")]] * 4, ["a b c", "a", "a b", "a b c d"]
    r = rewards.load("random:3").score(prompts, responses)
    assert r == rewards.load("random:3").score(prompts, responses) != rewards.load("random:4").score(prompts, responses)
    assert all(0 <= x < 1 for x in r)
    assert rewards.load("length").score(prompts, responses) == [3.0, 1.0, 2.0, 4.0]
    assert rewards.load("length").score(prompts, responses, token_ids=[[1], [1, 2], [1], [1, 2, 3]]) == [1, 2, 1, 3]
