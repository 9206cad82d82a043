"""The vLLM backend of ``afd sample`` (``backend: vllm``; ``pip install afd[vllm]``).

Same contract as :class:`afd.sampling.HFEngine`: one request per (prompt, sample) with that
row's own seed, so a row does not depend on batching and a resumed run regenerates exactly
what it lost. vLLM's prefix caching computes each prompt's prefill once for its K requests.
``logprob`` is vLLM's cumulative log-probability of the sampled tokens, taken after
temperature / top-k / top-p where the vLLM version supports ``logprobs_mode``.
"""

from __future__ import annotations

from afd.models import Completion


def stop_ids(model_path: str, tokenizer) -> list[int]:
    """The tokenizer's EOS and the model's generation-config EOS ids (as HFEngine uses)."""
    from transformers import GenerationConfig

    ids = {tokenizer.eos_token_id}
    try:
        extra = GenerationConfig.from_pretrained(model_path).eos_token_id
    except OSError:
        extra = None
    ids.update(extra if isinstance(extra, (list, tuple)) else [extra])
    return sorted(i for i in ids if i is not None)


class VLLMEngine:
    def __init__(self, model_path: str, tokenizer, dtype: str = "auto", **llm_kwargs):
        from vllm import LLM

        names = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
                 "float16": "float16", "fp16": "float16"}
        kwargs = {"model": model_path, "dtype": names.get(dtype, "auto"),
                  "enable_prefix_caching": True, "seed": 0, **llm_kwargs}
        try:
            self.llm = LLM(logprobs_mode="processed_logprobs", **kwargs)
        except TypeError:  # vLLM before logprobs_mode: raw model log-probs
            self.llm = LLM(**kwargs)
        self.stop_ids = stop_ids(model_path, tokenizer)

    def generate(self, prompts: list[list[int]], seeds: list[list[int]], max_new_tokens: int,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 ignore_eos: bool = False) -> list[list[Completion]]:
        from vllm import SamplingParams

        requests, params = [], []
        for ids, row_seeds in zip(prompts, seeds):
            for s in row_seeds:
                requests.append({"prompt_token_ids": list(ids)})
                params.append(SamplingParams(
                    n=1, temperature=temperature, top_p=top_p, top_k=top_k if top_k > 0 else -1,
                    max_tokens=max_new_tokens, seed=s % (2**31), ignore_eos=ignore_eos,
                    stop_token_ids=[] if ignore_eos else self.stop_ids, logprobs=0, detokenize=False))
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        flat = []
        for out in outputs:
            o = out.outputs[0]
            tokens = list(o.token_ids)
            stopped = o.finish_reason == "stop"
            stop_id = None
            if stopped and tokens and tokens[-1] in self.stop_ids:
                stop_id = tokens.pop()  # afd's rows keep EOS out of the response tokens
            flat.append(Completion(tokens, float(o.cumulative_logprob or 0.0), "stop" if stopped else "length",
                                   stop_id))
        k = len(seeds[0]) if seeds else 0
        return [flat[i * k:(i + 1) * k] for i in range(len(prompts))]
