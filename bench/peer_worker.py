"""A peer sampling engine in a process of its own, for bench/sampling.py (issue 12, item 5).

    PYTHON bench/peer_worker.py --engine vllm|llamacpp --model PATH --dtype float32|bfloat16 \\
        --threads N --batch-size 256 --max-seq-len L

Runnable by any python that has the engine installed (vLLM's CPU build in its own venv,
llama-cpp-python anywhere): it imports nothing of afd and nothing but the standard library at
the top. It loads its engine once and prints one JSON line, ``{"ready": true, "version": ...,
"startup_seconds": ...}`` (or ``{"error": ...}``); then it answers each request line on stdin,
``{"prompts": [[token ids], ...], "k": K, "new_tokens": T, "seed": S}``, with one reply line,
``{"tokens": N, "seconds": S}``, timed around the engine's generate alone. It blocks on stdin
between requests, so an idle worker does not compete with the engine being timed. The
engines' own log lines go to stderr (vLLM logs to stdout otherwise).

Both engines get the workload afd's HFEngine gets: K samples per prompt, exactly T new tokens
(EOS ignored), temperature 1, no top-k / top-p, at most ``--batch-size`` sequences decoded
together, the prompts' token ids as given (the parent encodes them once for every engine).

- ``vllm``: ``LLM.generate`` on token-id prompts with ``SamplingParams(n=K, ...)`` (one
  request per prompt: vLLM prefills it once, prefix caching shares its blocks among the K
  samples), ``max_num_seqs = batch_size``, KV cache in the model's dtype.
- ``llamacpp``: llama.cpp's C API through llama-cpp-python's low-level bindings, in the way
  llama.cpp's ``batched`` example decodes: each prompt prefilled once into one sequence, its KV
  cells copied to the K sequences of its samples (``llama_memory_seq_cp``), then the
  ``batch_size // K`` prompts' K x (that many) sequences decoded together one token a step, each
  sampled by its own ``dist`` sampler (llama.cpp's own sampler, on the CPU, from the full
  vocabulary). KV cache in the model's dtype, one KV stream per sequence (``kv_unified``
  off: each sequence attends over its own cells only, as in afd and vLLM).

:func:`batched_bench` runs llama.cpp's ``llama-batched-bench`` binary instead (a fresh process
each time) and parses its JSONL line: a forward-only figure (random tokens, no sampling), the
decode rate of ``batch_size`` sequences after one shared prompt.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


# --------------------------------------------------------------------------- vLLM

class VLLM:
    def __init__(self, model: str, dtype: str, threads: int, batch_size: int, max_seq_len: int):
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")  # else one core is kept for the front end
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{threads - 1}")  # "auto": 1 CPU per SMT core
        import vllm
        from vllm import LLM

        self.version = f"vllm {vllm.__version__}"
        self.llm = LLM(model=model, dtype=dtype, seed=0, enable_prefix_caching=True, max_num_seqs=batch_size,
                       max_model_len=max_seq_len)

    def generate(self, prompts: list[list[int]], k: int, new_tokens: int, seed: int) -> int:
        from vllm import SamplingParams

        params = SamplingParams(n=k, temperature=1.0, top_p=1.0, top_k=-1, max_tokens=new_tokens,
                                min_tokens=new_tokens, ignore_eos=True, detokenize=False)
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        return sum(len(o.token_ids) for out in outs for o in out.outputs)


# --------------------------------------------------------------------------- llama.cpp

GGML_TYPE = {"float32": 0, "bfloat16": 30}  # ggml.h: GGML_TYPE_F32, GGML_TYPE_BF16


class LlamaCpp:
    def __init__(self, model: str, dtype: str, threads: int, batch_size: int, max_seq_len: int):
        import llama_cpp as L

        self.L = L
        lib = os.environ.get("LLAMA_CPP_LIB_PATH")
        self.version = f"llama-cpp-python {L.__version__}" + (f" (libllama from {lib})" if lib else "")
        L.llama_backend_init()
        self.model = L.llama_model_load_from_file(model.encode(), L.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {model}")
        self.batch_size = batch_size
        cp = L.llama_context_default_params()
        cp.n_seq_max = batch_size
        cp.kv_unified = False
        cp.n_ctx = batch_size * max_seq_len  # per sequence: max_seq_len cells (llama.cpp pads to 256)
        cp.n_batch = batch_size * max_seq_len  # a whole batch's prompts prefilled in one call
        cp.n_ubatch = max(batch_size, 512)  # a decode step of batch_size tokens is one ubatch
        cp.n_threads = cp.n_threads_batch = threads
        cp.type_k = cp.type_v = GGML_TYPE[dtype]
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create its context")
        self.mem = L.llama_get_memory(self.ctx)
        self.n_batch = cp.n_batch
        self.batch = L.llama_batch_init(self.n_batch, 0, 1)
        self.info = L.llama_print_system_info().decode(errors="replace").strip()

    def _decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        """items: (token, position, sequence, wants logits), at most n_batch of them."""
        b = self.batch
        for i, (tok, pos, seq, logits) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, logits
            b.seq_id[i][0] = seq
        b.n_tokens = len(items)
        rc = self.L.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def generate(self, prompts: list[list[int]], k: int, new_tokens: int, seed: int) -> int:
        L = self.L
        per_batch = max(1, self.batch_size // k)
        made = 0
        for s in range(0, len(prompts), per_batch):
            chunk = prompts[s:s + per_batch]
            L.llama_memory_clear(self.mem, True)
            # prefill: prompt i into sequence i*k, all in one llama_decode (llama.cpp splits it into
            # ubatches and keeps every output); the logits of each prompt's last token are kept
            items = [(t, pos, i * k, pos == len(p) - 1) for i, p in enumerate(chunk) for pos, t in enumerate(p)]
            if len(items) > self.n_batch:
                raise RuntimeError(f"{len(items)} prompt tokens in one batch exceed n_batch={self.n_batch}")
            self._decode(items)
            ends = [j for j, item in enumerate(items) if item[3]]  # batch index of prompt i's last token
            for i in range(len(chunk)):
                for j in range(1, k):
                    L.llama_memory_seq_cp(self.mem, i * k, i * k + j, -1, -1)
            samplers = []
            for r in range(len(chunk) * k):
                chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
                L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist((seed * 1_000_003 + s * k + r) & 0xFFFFFFFF))
                samplers.append(chain)
            rows = len(chunk) * k
            logit_index = [ends[r // k] for r in range(rows)]
            for t in range(new_tokens):
                toks = [L.llama_sampler_sample(samplers[r], self.ctx, logit_index[r]) for r in range(rows)]
                made += rows
                if t == new_tokens - 1:
                    break
                self._decode([(tok, len(chunk[r // k]) + t, r, True) for r, tok in enumerate(toks)])
                logit_index = list(range(rows))
            for chain in samplers:
                L.llama_sampler_free(chain)
        return made


ENGINES = {"vllm": VLLM, "llamacpp": LlamaCpp}


# --------------------------------------------------------------------------- the protocol

def serve(engine, requests, reply) -> None:
    """Answer each JSON request line from ``requests`` with one JSON line to ``reply``."""
    for line in requests:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("quit"):
            break
        t = time.perf_counter()
        tokens = engine.generate(req["prompts"], req["k"], req["new_tokens"], req.get("seed", 0))
        reply.write(json.dumps({"tokens": tokens, "seconds": time.perf_counter() - t,
                                "loadavg": os.getloadavg()}) + "\n")
        reply.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=sorted(ENGINES), required=True)
    ap.add_argument("--model", required=True, help="vllm: a transformers folder; llamacpp: a GGUF file")
    ap.add_argument("--dtype", choices=sorted(GGML_TYPE), required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch-size", type=int, default=256, help="sequences decoded together")
    ap.add_argument("--max-seq-len", type=int, required=True, help="longest prompt + new tokens")
    args = ap.parse_args()
    protocol = os.fdopen(os.dup(1), "w")  # the replies; everything else printed goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    t = time.perf_counter()
    try:
        engine = ENGINES[args.engine](args.model, args.dtype, args.threads, args.batch_size, args.max_seq_len)
    except ImportError as e:
        protocol.write(json.dumps({"error": f"not installed ({e})"}) + "\n")
        return
    except Exception as e:  # noqa: BLE001 -- reported to the parent as the peer's reason
        protocol.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
        return
    protocol.write(json.dumps({"ready": True, "version": engine.version, "startup_seconds": time.perf_counter() - t,
                               "info": getattr(engine, "info", None)}) + "\n")
    protocol.flush()
    serve(engine, sys.stdin, protocol)


# --------------------------------------------------------------------------- llama-batched-bench

def parse_batched_bench(text: str) -> dict:
    """The figures of the last JSONL line ``llama-batched-bench --output-format jsonl`` printed
    (its log lines around it are skipped); ValueError when there is none."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and '"speed_tg"' in line:
            return json.loads(line)
    raise ValueError("no llama-batched-bench result line in its output")


def batched_bench(binary: Path, gguf: str, dtype: str, threads: int, batch_size: int, prompt_tokens: int,
                  new_tokens: int) -> dict:
    """One run of ``llama-batched-bench``: one shared prompt of ``prompt_tokens`` random tokens
    (``-pps``), copied to ``batch_size`` sequences that then decode ``new_tokens`` random tokens
    together, KV cache in the model's dtype, one stream per sequence. Its figures exclude model
    loading (and its own 16-token warm-up); ``wall_seconds`` includes them."""
    ctk = {"float32": "f32", "bfloat16": "bf16"}[dtype]
    per_seq = -(-(prompt_tokens + new_tokens) // 256) * 256  # llama.cpp pads each sequence's cells to 256
    cmd = [str(binary), "-m", gguf, "-c", str(batch_size * per_seq), "-b", str(max(batch_size, 512)),
           "-ub", str(max(batch_size, 512)), "-npp", str(prompt_tokens), "-ntg", str(new_tokens),
           "-npl", str(batch_size), "-pps", "-t", str(threads), "-tb", str(threads), "-ctk", ctk, "-ctv", ctk,
           "--output-format", "jsonl"]
    t = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if run.returncode != 0:
        tail = (run.stderr or run.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{binary.name} exited with {run.returncode}: {' | '.join(tail)}")
    figures = parse_batched_bench(run.stdout + "\n" + run.stderr)
    return {**figures, "wall_seconds": wall, "command": " ".join(cmd)}


if __name__ == "__main__":
    main()
