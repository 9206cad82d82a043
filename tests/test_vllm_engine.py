"""The vLLM adapter's bookkeeping, against a stand-in ``vllm`` module.

vLLM is not installed in CI; these tests check only afd's side of the contract (one request
per row with the row's seed, rows regrouped per prompt, EOS kept out of the response tokens but
in the log-prob, finish reasons mapped). The real engine (vLLM's CPU build) is tested by
``make test-vllm`` (tests/test_vllm_real.py).
"""

import sys
import types

import pytest


class _Out:
    def __init__(self, token_ids, cumulative_logprob, finish_reason):
        self.token_ids, self.cumulative_logprob, self.finish_reason = token_ids, cumulative_logprob, finish_reason


@pytest.fixture
def fake_vllm(monkeypatch):
    calls = {}

    class SamplingParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class LLM:
        def __init__(self, **kw):
            calls["llm"] = kw

        def generate(self, requests, params, use_tqdm=False):
            calls["requests"], calls["params"] = requests, params
            outs = []
            for req, p in zip(requests, params):
                # deterministic fake: response = [seed % 50, 7] then EOS (id 2) for even seeds
                stop = p.seed % 2 == 0
                toks = [p.seed % 50, 7] + ([2] if stop else [])
                outs.append(types.SimpleNamespace(outputs=[_Out(toks, -1.5, "stop" if stop else "length")]))
            return outs

    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams = LLM, SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", mod)
    return calls


def test_vllm_engine_maps_rows_and_seeds(fake_vllm):
    from afd.vllm_engine import VLLMEngine

    tok = types.SimpleNamespace(eos_token_id=2)
    engine = VLLMEngine("/nonexistent-model-folder", tok, dtype="bfloat16")
    assert fake_vllm["llm"]["enable_prefix_caching"] is True
    assert fake_vllm["llm"]["dtype"] == "bfloat16"
    out = engine.generate([[5, 6], [9]], [[10, 11], [12, 13]], max_new_tokens=4, top_k=0)
    assert [r["prompt_token_ids"] for r in fake_vllm["requests"]] == [[5, 6], [5, 6], [9], [9]]
    assert [p.seed for p in fake_vllm["params"]] == [10, 11, 12, 13]
    assert all(p.top_k == -1 and p.max_tokens == 4 and p.stop_token_ids == [2] for p in fake_vllm["params"])
    assert [len(row) for row in out] == [2, 2]
    assert out[0][0].token_ids == [10, 7] and out[0][0].finish_reason == "stop"   # EOS stripped
    assert out[0][1].token_ids == [11, 7] and out[0][1].finish_reason == "length"
    assert out[1][0].logprob == -1.5
