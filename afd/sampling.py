"""``afd sample``: K responses per prompt from a policy, into a sample pool.

Every method in afd spends most of its time here (Best-of-N, reward-model data, the iterated
methods), so the transformers engine is written for throughput on a plain HF model:

- prompts are batched together and each prompt's prefill runs once; its KV cache is then
  repeated K times (``DynamicCache.batch_repeat_interleave``), where ``generate(...,
  num_return_sequences=K)`` would prefill every prompt K times;
- only the last position's logits are computed at prefill (``logits_to_keep=1``);
- rows that have finished are dropped from the batch (``batch_select_indices``), so a batch
  costs what its live rows cost;
- each row draws its randomness from its own seed, ``hash(seed, prompt_id, sample_index)``,
  via inverse-CDF sampling with pre-drawn uniforms. A row's response does not depend on how
  the prompts were batched with others, and a resumed run reproduces the rows it lost.

The pool is written as prompts finish, one JSON line per sample. A killed run, rerun with the
same options, keeps every complete prompt, drops the partial ones and carries on; the result
equals an uninterrupted run's. With ``backend: vllm`` (when vLLM is installed) generation is
handed to vLLM, which users scale to; the pool format is the same.

Pool row: ``prompt_id, prompt, sample_index, response, num_tokens, finish_reason ("stop" or
"length"), seed, logprob, token_ids`` where ``num_tokens`` counts the response tokens without
EOS, ``logprob`` is the summed log-probability of the response tokens (EOS included when it
was sampled) under the distribution they were sampled from (the model's, after temperature /
top-k / top-p), and ``token_ids`` are the sampled tokens themselves, the stop token last when
one was sampled (decoding and re-encoding text need not give them back exactly).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from afd import dist, models
from afd.models import Completion
from afd.config import check_choice, opt
from afd.errors import AfdError
from afd.runs import DataOptions, ModelOptions, PromptOptions, StageDir, StageOptions, restore_on_failure, write_json

POOL = "pool.jsonl"
POOL_META = "pool.meta.json"  # beside the pool: how it was sampled (see sampling_meta)
POOL_KEYS = ("prompt_id", "prompt", "sample_index", "response")  # what every consumer of a pool reads


@dataclass
class SampleConfig(StageOptions, DataOptions, ModelOptions, PromptOptions):
    model: str = opt("tiny-random", "policy: built-in name, local folder or hub id")
    num_samples: int = opt(4, "K, samples per prompt")
    max_new_tokens: int = opt(128, "longest response, in tokens")
    temperature: float = opt(1.0, "sampling temperature (0 = greedy)")
    top_p: float = opt(1.0, "nucleus sampling mass (1 = off)")
    top_k: int = opt(0, "sample among the k likeliest tokens only (0 = off)")
    seed: int = opt(0, "base seed; each row's seed is derived from it, the prompt id and the sample index")
    batch_size: int = opt(256, "sequences decoded together (prompts per batch = batch_size // K, at least 1)")
    ignore_eos: bool = opt(False, "keep generating past EOS (benchmarks: every response gets max_new_tokens)")
    backend: str = opt("auto", "auto (vllm if installed and on CUDA), hf, or vllm")
    output_format: str = opt("jsonl", "pool file: jsonl (always written) and, with parquet, also pool.parquet")

    def validate(self) -> None:
        self.validate_model_options()
        self.validate_prompt_options()
        check_choice("backend", self.backend, ("auto", "hf", "vllm"))
        check_choice("output_format", self.output_format, ("jsonl", "parquet"))
        for name in ("num_samples", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise AfdError(f"option '{name}' must be at least 1; got {getattr(self, name)}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise AfdError("options need temperature >= 0, 0 < top_p <= 1 and top_k >= 0")


def derive_seed(seed: int, *parts) -> int:
    """A seed derived from ``seed`` and ``parts`` by hashing: distinct parts give unrelated seeds,
    and no derived seed equals another run's base seed plus an offset."""
    digest = hashlib.blake2b("\x00".join(map(str, (seed, *parts))).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def row_seed(seed: int, prompt_id: str, sample_index: int) -> int:
    """The seed of one sample: each row's randomness is its own (see the module docstring)."""
    return derive_seed(seed, prompt_id, sample_index)


# --------------------------------------------------------------------------- the HF engine

def warp_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Logits of the distribution actually sampled from."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # keep the smallest prefix with mass >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


BLOCK = 256  # vocabulary block for two-level inverse-CDF sampling


def draw(logits: torch.Tensor, uniforms: torch.Tensor, greedy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row by inverse-CDF sampling with the row's own uniform; and its log-prob.

    The CDF is walked in two levels (sums of 256-token blocks, then within one block), so the
    only full-vocabulary work is one fused softmax and a block sum: no full-vocabulary
    ``cumsum`` or ``log_softmax``, each of which costs as much as the softmax on a CPU.
    """
    if greedy:
        token = logits.argmax(-1)
        return token, torch.zeros_like(token, dtype=torch.float32)
    probs = logits.softmax(-1)  # one fused pass; fresh large temporaries cost more than the math
    rows, vocab = probs.shape
    pad = -vocab % BLOCK
    blocks = (torch.nn.functional.pad(probs, (0, pad)) if pad else probs).view(rows, -1, BLOCK)
    cdf = blocks.sum(-1).cumsum(-1)
    total = cdf[:, -1]
    target = torch.minimum(uniforms * total, torch.nextafter(total, torch.zeros_like(total)))
    b = torch.searchsorted(cdf, target[:, None], right=True).clamp_(max=cdf.shape[1] - 1)
    before = torch.where(b > 0, cdf.gather(1, (b - 1).clamp(min=0)), torch.zeros_like(b, dtype=cdf.dtype))
    inner = blocks[torch.arange(rows, device=probs.device), b.squeeze(-1)].cumsum(-1)
    rest = torch.minimum(target[:, None] - before, torch.nextafter(inner[:, -1:], torch.zeros_like(inner[:, -1:])))
    t = torch.searchsorted(inner, rest, right=True).clamp_(max=BLOCK - 1)
    token = (b * BLOCK + t).squeeze(-1)
    return token, (probs.gather(1, token[:, None]).squeeze(-1) / total).log()


class HFEngine:
    """Batched sampling from a transformers causal LM, one prefill per prompt."""

    # decode steps after the first share one shape (the batch's rows), so 2 steps create every
    # kernel the batch needs; more only add time (bench/results/first-batch-cpu.md)
    WARM_UP_TOKENS = 2

    def __init__(self, model, tokenizer, stop_ids: list[int], warm_up: bool = True):
        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
        self.stop_ids = torch.tensor(stop_ids, device=self.device)
        self.warm_up = warm_up  # before the first batch, a short decode on its shapes

    def generate(self, prompts: list[list[int]], seeds: list[list[int]], max_new_tokens: int,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 ignore_eos: bool = False) -> list[list[Completion]]:
        """``seeds[i]`` holds one seed per sample of prompt i; returns completions likewise.

        The first call of an engine with ``warm_up`` first decodes WARM_UP_TOKENS tokens on the
        same batch shapes (its result thrown away; no random state is touched, so samples are
        the same as without it), so that oneDNN creates its kernels for the batch's shapes before
        the timed work. Measured on a quiet 2-core machine at 256 sequences x 64 tokens (bf16),
        a fresh process's first batch ran at 0.79-0.94 of steady state without it and 0.87-0.91
        with a 2-token warm-up (0.81-0.90 with 8; bench/results/first-batch-cpu.md): the cost it
        removes is small here."""
        if self.warm_up:
            self.warm_up = False
            self._generate(prompts, seeds, min(max_new_tokens, self.WARM_UP_TOKENS), temperature, top_k, top_p,
                           ignore_eos=True)
        return self._generate(prompts, seeds, max_new_tokens, temperature, top_k, top_p, ignore_eos)

    @torch.inference_mode()
    def _generate(self, prompts, seeds, max_new_tokens, temperature, top_k, top_p, ignore_eos):
        k = len(seeds[0])
        assert all(len(s) == k for s in seeds), "every prompt needs the same number of samples"
        dev = self.device
        ids, mask, pos = models.left_padded(prompts, self.pad_id, dev)  # every prompt ends at the last column
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                         **models.kv_cache(self.model, models.preallocated_cache(max_new_tokens)), logits_to_keep=1)
        cache = models.returned_cache(out)
        if k > 1:
            cache.batch_repeat_interleave(k)
        logits = out.logits[:, -1].repeat_interleave(k, 0)
        mask = mask.repeat_interleave(k, 0)
        next_pos = pos[:, -1].repeat_interleave(k, 0) + 1

        n = len(prompts) * k
        uniforms = torch.stack([
            torch.rand(max_new_tokens, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
            for row in seeds for s in row]).to(dev)
        tokens = torch.full((n, max_new_tokens), -1, dtype=torch.long, device=dev)
        logprob = torch.zeros(n, dtype=torch.float64, device=dev)
        length = torch.full((n,), max_new_tokens, dtype=torch.long, device=dev)
        stopped = torch.zeros(n, dtype=torch.bool, device=dev)
        live = torch.arange(n, device=dev)  # original row of each batch row
        greedy = temperature == 0
        for t in range(max_new_tokens):
            warped = warp_logits(logits, 1.0 if greedy else temperature, top_k, top_p)
            tok, lp = draw(warped, uniforms[live, t].float(), greedy)
            tokens[live, t] = tok
            logprob[live] += lp.double()
            ended = torch.zeros_like(tok, dtype=torch.bool) if ignore_eos else torch.isin(tok, self.stop_ids)
            if ended.any():
                length[live[ended]] = t
                stopped[live[ended]] = True
                keep = (~ended).nonzero().squeeze(-1)
                if keep.numel() == 0:
                    break
                live, tok, mask, next_pos = live[keep], tok[keep], mask[keep], next_pos[keep]
                cache.batch_select_indices(keep)
            if t == max_new_tokens - 1:
                break
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
            out = self.model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                             **models.kv_cache(self.model, cache), use_cache=True)
            logits = out.logits[:, -1]
            next_pos = next_pos + 1

        tokens, logprob, length, stopped = tokens.cpu(), logprob.cpu(), length.cpu(), stopped.cpu()
        result = []
        for i in range(len(prompts)):
            row = []
            for j in range(k):
                r = i * k + j
                row.append(Completion(tokens[r, : length[r]].tolist(), float(logprob[r]),
                                      "stop" if stopped[r] else "length",
                                      int(tokens[r, length[r]]) if stopped[r] else None))
            result.append(row)
        return result


# --------------------------------------------------------------------------- the pool file

class PoolWriter:
    """Appends finished prompts' rows to ``pool.jsonl``; on open, keeps only complete prompts."""

    def __init__(self, path: Path, num_samples: int):
        self.path = path
        self.k = num_samples
        rows = read_pool(path, tolerate_truncation=True) if path.exists() else []
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["prompt_id"]] = counts.get(r["prompt_id"], 0) + 1
        self.complete = {pid for pid, c in counts.items() if c == num_samples}
        kept = [r for r in rows if r["prompt_id"] in self.complete]
        self.resumed_rows = len(kept)
        if path.exists() and len(kept) != len(rows) or (path.exists() and not _ends_cleanly(path)):
            tmp = path.with_name(f".{path.name}.tmp")
            with tmp.open("w") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
            os.replace(tmp, path)
        self.file = path.open("a")

    def write(self, rows: list[dict]) -> None:
        self.file.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        self.file.flush()
        os.fsync(self.file.fileno())
        self.complete.update(r["prompt_id"] for r in rows)

    def close(self) -> None:
        self.file.close()


def _ends_cleanly(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def read_pool(path: str | Path, tolerate_truncation: bool = False) -> list[dict]:
    """Rows of a sample pool (``.jsonl`` or ``.parquet``, or a sample stage folder); a row
    without one of :data:`POOL_KEYS` is named in one sentence."""
    path = pool_file(path)
    if not path.is_file():
        raise AfdError(f"sample pool {path} does not exist")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        rows = []
        lines = path.read_text().split("\n")
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if tolerate_truncation and n == len(lines):  # the last line of a killed run
                    break
                raise AfdError(f"sample pool {path}, line {n}: not valid JSON") from None
    for n, row in enumerate(rows, 1):
        missing = [k for k in POOL_KEYS if not isinstance(row, dict) or k not in row]
        if missing:
            raise AfdError(f"sample pool {path}, row {n}: field '{missing[0]}' is missing (a pool row has "
                           f"{', '.join(POOL_KEYS)})")
    return rows


def pool_file(path: str | Path) -> Path:
    path = Path(path)
    return path / POOL if path.is_dir() else path


def read_pool_meta(path: str | Path) -> dict:
    """How a pool was sampled (:func:`sampling_meta`, written beside it by ``afd sample``), or
    {} for a pool that has no such record (written by hand, or by an older afd)."""
    meta = pool_file(path).parent / POOL_META
    return json.loads(meta.read_text()) if meta.is_file() else {}


def sampling_meta(cfg: SampleConfig, engine) -> dict:
    """A pool's own record of its sampling: the policy, the prompt rendering and the sampling
    distribution, and the dtype the weights actually sampled in, so a consumer (the KL estimate
    of ``afd eval``) need not guess from options."""
    dtype = getattr(engine, "dtype", None)
    return {"model": cfg.model, "template": cfg.template, "system_prompt": cfg.system_prompt,
            "temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k,
            "max_new_tokens": cfg.max_new_tokens, "ignore_eos": cfg.ignore_eos, "seed": cfg.seed,
            "num_samples": cfg.num_samples, "backend": type(engine).__name__,
            "dtype": str(dtype).replace("torch.", "") if dtype is not None else cfg.dtype}


# --------------------------------------------------------------------------- the stage

def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def make_engine(cfg: SampleConfig):
    """(engine, tokenizer) for the configured backend."""
    backend = cfg.backend
    if backend == "auto":  # under a launcher each rank runs its own HF engine on its own GPU
        backend = "vllm" if vllm_available() and models.pick_device(cfg.device).type == "cuda" \
            and dist.world() == 1 else "hf"
    if backend == "vllm":
        if not vllm_available():
            raise AfdError("option 'backend' is 'vllm' but vLLM is not installed: pip install afd[vllm]")
        from afd.vllm_engine import VLLMEngine

        tok = models.load_tokenizer(cfg.model)
        return VLLMEngine(models.resolve(cfg.model), tok, cfg.dtype), tok
    model, tok = models.load_causal_lm(cfg.model, cfg.device, cfg.dtype, purpose="sample")
    return HFEngine(model, tok, models.stop_token_ids(model, tok)), tok


@restore_on_failure
def sample(cfg: SampleConfig, kind: str = "sample") -> dict:
    """Run the stage; returns its metrics."""
    from tqdm.auto import tqdm

    from afd.data import check_unique_ids, load_prompts

    stage = StageDir(cfg, kind)
    if not stage.begin():
        return stage.metrics()
    prompts, stats = load_prompts(cfg.data_config())
    check_unique_ids(prompts, cfg.data, "prompt", "a sample pool names each sample's prompt by its id")

    engine, tok = make_engine(cfg)
    encoded, dropped = models.prompts_within(tok, prompts, cfg, cfg.data)

    # Several processes: the main process alone holds the pool file. Batches go round-robin
    # to the ranks, a round at a time; the main process gathers each round's rows and writes
    # them in batch order, so the pool is the one-process pool row for row (a row's batch is
    # the same, and its randomness its own), and a kill leaves what a one-process kill would.
    pool = None

    def open_pool() -> tuple[set, int]:
        nonlocal pool
        pool = PoolWriter(stage.path / POOL, cfg.num_samples)
        return pool.complete, pool.resumed_rows

    complete, resumed_rows = dist.on_main(open_pool)
    dist.on_main(write_json, stage.path / POOL_META, sampling_meta(cfg, engine))
    # Batches are fixed by the options alone (prompts sorted by length, then cut), so a
    # resumed run rebuilds exactly the batches of an uninterrupted one.
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i][1]), i))
    per_batch = max(1, cfg.batch_size // cfg.num_samples)
    batches = [order[i:i + per_batch] for i in range(0, len(order), per_batch)]
    todo = [b for b in batches if any(encoded[i][0].id not in complete for i in b)]

    new_tokens, started = 0, time.time()
    bar = tqdm(total=len(encoded) * cfg.num_samples, initial=resumed_rows, unit="sample",
               desc=f"sample {cfg.model}", disable=not dist.is_main())
    for first in range(0, len(todo), dist.world()):
        mine = todo[first + dist.rank()] if first + dist.rank() < len(todo) else []
        rows = []
        if mine:
            seeds = [[row_seed(cfg.seed, encoded[i][0].id, j) for j in range(cfg.num_samples)] for i in mine]
            outs = engine.generate([encoded[i][1] for i in mine], seeds, cfg.max_new_tokens,
                                   cfg.temperature, cfg.top_k, cfg.top_p, cfg.ignore_eos)
            for i, row_seeds, completions in zip(mine, seeds, outs):
                p = encoded[i][0]
                if p.id in complete:
                    continue
                for j, (s, c) in enumerate(zip(row_seeds, completions)):
                    rows.append({"prompt_id": p.id, "prompt": p.prompt, "sample_index": j,
                                 "response": models.decode_response(tok, p.prompt, c.token_ids, cfg.template),
                                 "num_tokens": len(c.token_ids), "finish_reason": c.finish_reason,
                                 "seed": s, "logprob": c.logprob,
                                 "token_ids": c.token_ids + ([c.stop_id] if c.stop_id is not None else [])})
                    new_tokens += len(c.token_ids)
        for shard in dist.gather(rows) or ():  # rank order = batch order
            pool.write(shard)
            bar.update(len(shard))
        bar.set_postfix(tok_s=f"{new_tokens * dist.world() / max(time.time() - started, 1e-9):.0f}")
    bar.close()
    new_tokens = dist.reduce_sum(new_tokens)
    elapsed = time.time() - started

    def summary() -> dict:
        pool.close()
        rows = read_pool(stage.path / POOL)
        if cfg.output_format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), stage.path / "pool.parquet")
        n = len(rows)
        return {
            "prompts": len(encoded), "samples": n, "num_samples": cfg.num_samples,
            "prompts_dropped_too_long": dropped, "rows_read": stats.rows, "rows_skipped": stats.skipped,
            "resumed_rows": resumed_rows, "processes": dist.world(),
            "new_tokens": new_tokens, "tokens_per_second": new_tokens / elapsed if elapsed > 0 else None,
            "mean_num_tokens": sum(r["num_tokens"] for r in rows) / n,
            "finished_by_eos": sum(r["finish_reason"] == "stop" for r in rows) / n,
            "mean_logprob": sum(r["logprob"] for r in rows) / n,
        }

    return stage.finish(dist.on_main(summary))

