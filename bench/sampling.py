"""Sampling and SFT throughput on smollm2-135m-instruct, afd against its peers (issue 12, item 5).

    python bench/sampling.py                 # full run: 64 prompts x K=16 x 64 new tokens, 3 rounds
    python bench/sampling.py --quick         # a smaller smoke run; saves nothing
    python bench/sampling.py --first-batch-only   # only the fresh-process first-batch figures

The workload: P prompts (openings of IMDB reviews) x K samples x T new tokens, EOS ignored
(every sample gets exactly T tokens), temperature 1, no top-k / top-p, at most
``--batch-size`` sequences decoded together. The prompts are encoded once, here, and every
engine gets the same token ids. Engines:

- afd's HFEngine in fp32 and in bf16 (prompts batched together, one prefill per prompt, KV
  cache repeated K times);
- the naive baseline TRL's removed BestOfNSampler used, in fp32: each prompt repeated K times,
  ``model.generate`` one prompt at a time; it is slow, so it runs on the first
  ``--naive-prompts`` prompts only (its tokens/s is a rate: each call is the same shape);
- peers, when installed (never a dependency of afd; bench/README.md, "Peers", says how to
  install each): vLLM's CPU build in fp32 and bf16, and llama.cpp with F32 and BF16 GGUF
  files of the same weights, driven through llama-cpp-python's bindings to llama.cpp's C API
  (one prefill per prompt, its KV cells copied to the K sequences, all decoded together, each
  sampled by llama.cpp's own sampler). These two run in persistent worker processes
  (bench/peer_worker.py, which says exactly what each is asked), started once (start-up is
  recorded, not timed) and warmed up on the real shapes; an idle worker blocks on its stdin.
  llama.cpp's ``llama-batched-bench`` binary, when built, gives one more, forward-only figure
  (random tokens, no sampling, one shared prompt): an upper bound for llama.cpp, not a
  like-for-like rate, so no ratio is taken against it.

Every engine runs with ``--threads`` threads. Rates are steady state: each engine first runs
a warm-up batch on the real shapes. Then ``--rounds`` rounds, each running every engine once
over the whole workload (the order rotated each round), so that all see the same machine
noise; an engine's figure is its median over rounds, and the ratios ``afd_vs_<peer>_<dtype>``
(afd's tokens/s over the peer's, same dtype) are the figures to quote. Each engine's share of
the compute ceiling counts 2 x parameters FLOPs per generated token against the matmul rate
of its dtype (fp32 or bf16, 2048^2, measured in the same run, before and after the rounds:
the better is kept).

Golden reward: afd's fp32 and bf16 pools of the first round (the same seeds) are scored by
VADER, each sample cut at its first stop token, which is exactly the pool afd samples without
``ignore_eos`` (a row's tokens depend only on its seed). ``afd_bf16_vs_fp32_gold_delta`` is
the mean paired difference bf16 - fp32; its standard error is over prompts (the samples of a
prompt are not independent).

The first batch of a fresh process is measured apart, in child processes (``--first-batch
cold|warm``): cold = HFEngine(warm_up=False), warm = afd's default (a short decode on the
batch's shapes before it, counted in the batch's time). The machine's load average is
recorded with every figure.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, machine, matmul_gflops, save  # noqa: E402
from peer_worker import batched_bench  # noqa: E402

from afd import models  # noqa: E402
from afd.sampling import HFEngine, row_seed  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PEERS_DIR = REPO / ".peers"  # what `make peers` builds (git-ignored)
MODEL = "smollm2-135m-instruct"
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
PEERS = ("vllm", "llamacpp", "llamacpp-bench")
LABELS = {"afd": "afd HFEngine", "naive": "naive (`generate` per prompt, prompt repeated K times)",
          "vllm": "vLLM CPU (`LLM.generate`, n=K)", "llamacpp": "llama.cpp (C API via llama-cpp-python)",
          "llamacpp-bench": "llama.cpp `llama-batched-bench` (forward only, no sampling)"}
WORKER_START_TIMEOUT = 900  # seconds: vLLM's CPU build takes a minute or more to start


def imdb_prompts(n: int) -> list[list[dict]]:
    """Prompts: continue the opening of an IMDB review (../shared/data/imdb_subset.csv)."""
    with open(SHARED_DATA / "imdb_subset.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    return [[{"role": "user", "content": "Continue this movie review: "
              + " ".join(r["review"].replace("<br />", " ").split()[:24])}] for r in rows]


def afd_batches(prompts, k, batch_size) -> list[list[int]]:
    per_batch = max(1, batch_size // k)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    return [order[s:s + per_batch] for s in range(0, len(order), per_batch)]


def run_afd(engine, prompts, batches, k, new_tokens) -> tuple[int, float, dict]:
    """The whole workload through afd's engine: (tokens, seconds, prompt index -> completions)."""
    tokens, seconds, outs = 0, 0.0, {}
    for batch in batches:
        seeds = [[row_seed(0, str(i), j) for j in range(k)] for i in batch]
        t = time.perf_counter()
        rows = engine.generate([prompts[i] for i in batch], seeds, new_tokens, ignore_eos=True)
        seconds += time.perf_counter() - t
        tokens += sum(len(c.token_ids) for row in rows for c in row)
        outs.update(zip(batch, rows))
    return tokens, seconds, outs


@torch.inference_mode()
def run_naive(model, tok, prompts, k, new_tokens) -> tuple[int, float]:
    tokens, seconds = 0, 0.0
    for prompt in prompts:
        ids = torch.tensor([prompt] * k)
        t = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                             top_k=0, top_p=1.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             pad_token_id=tok.pad_token_id)
        seconds += time.perf_counter() - t
        tokens += (out.shape[1] - ids.shape[1]) * k
    return tokens, seconds


# --------------------------------------------------------------------------- peers

class Worker:
    """A bench/peer_worker.py process: started once, then one request line -> one reply line."""

    def __init__(self, python: str, argv: list[str], env: dict, log: Path):
        self.log = log
        t = time.perf_counter()
        with open(log, "w") as err:
            self.proc = subprocess.Popen([python, str(Path(__file__).with_name("peer_worker.py")), *argv],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                         env={**os.environ, **env})
        hello = self._reply(WORKER_START_TIMEOUT)
        if "error" in hello:
            self.close()
            raise RuntimeError(hello["error"])
        self.version = hello["version"]
        self.info = hello.get("info")
        self.startup_seconds = time.perf_counter() - t  # what a user waits: interpreter, imports, load

    def _reply(self, timeout: float | None = None) -> dict:
        if timeout is not None and not select.select([self.proc.stdout], [], [], timeout)[0]:
            self.close()
            raise RuntimeError(f"no answer in {timeout:.0f} s (log: {self.log})")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            tail = " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-3:])
            raise RuntimeError(f"the worker exited with {self.proc.returncode}: {tail} (log: {self.log})")
        return json.loads(line)

    def run(self, prompts: list[list[int]], k: int, new_tokens: int, seed: int = 0) -> tuple[int, float]:
        self.proc.stdin.write(json.dumps({"prompts": prompts, "k": k, "new_tokens": new_tokens, "seed": seed}) + "\n")
        self.proc.stdin.flush()
        r = self._reply()
        return r["tokens"], r["seconds"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=120)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def vllm_python(arg: str | None) -> str | None:
    if arg:
        return arg
    default = REPO / ".venv-vllm" / "bin" / "python"  # what `make test-vllm` builds
    return str(default) if default.exists() else None


def vllm_preload(python: str) -> str:
    """What vLLM's CPU install guide asks to preload ("set LD_PRELOAD"): tcmalloc and, on x86,
    Intel's OpenMP, where they are found (tcmalloc from the system, ``apt install
    libtcmalloc-minimal4``; libiomp5 from the vLLM venv's ``lib``, which its install brings).
    Without them vLLM warns "... is not found in LD_PRELOAD" and preloads torch's libgomp."""
    candidates = [*sorted(Path("/usr/lib/x86_64-linux-gnu").glob("libtcmalloc_minimal.so.*"))[:1],
                  *sorted(Path("/usr/lib").glob("libtcmalloc_minimal.so.*"))[:1],
                  # not resolved: a venv's bin/python is a link out of the venv
                  Path(python).absolute().parent.parent / "lib" / "libiomp5.so"]
    found = {}
    for lib in candidates:
        name = "tcmalloc" if "tcmalloc" in lib.name else "iomp"
        if lib.exists() and name not in found:
            found[name] = str(lib)
    return ":".join(found.values())


def llamacpp_python(arg: str | None) -> str:
    if arg:
        return arg
    default = PEERS_DIR / "venv" / "bin" / "python"  # what `make peers` builds
    return str(default) if default.exists() else sys.executable


def llamacpp_bin(arg: str | None) -> Path | None:
    folder = Path(arg) if arg else PEERS_DIR / "llama.cpp-build" / "bin"
    return folder if (folder / "llama-batched-bench").exists() or arg else None


def kv_gib(config, seqs: int, seq_len: int, dtype: str) -> int:
    """GiB for vLLM's KV cache (VLLM_CPU_KVCACHE_SPACE): what ``seqs`` sequences of ``seq_len``
    tokens need, each in whole 128-token blocks (vLLM's CPU block size), plus a quarter, at
    least 1: enough that vLLM never waits for KV space, no more (every worker is alive at once)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_token = config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim * (4 if dtype == "float32" else 2)
    return max(1, math.ceil(1.25 * seqs * -(-seq_len // 128) * 128 * per_token / 2 ** 30))


def start_peers(args, config, ordered: list[list[int]], max_seq_len: int, logs: Path) -> tuple[dict, dict]:
    """The peers' arms that start, and the reason for each that does not: (arms, absent)."""
    arms, absent = {}, {}
    wanted = set(PEERS) if args.peers == "all" else set() if args.peers == "none" else set(args.peers.split(","))
    common = ["--threads", str(args.threads), "--batch-size", str(args.batch_size), "--max-seq-len", str(max_seq_len)]
    threads_env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    gguf = {d: Path(args.gguf_dir) / f"{MODEL}-{d}.gguf" for d in DTYPES}
    binary_dir = llamacpp_bin(args.llamacpp_bin)
    for short in DTYPES:
        absent.update({f"{peer}_{short}": "not asked for (--peers)" for peer in PEERS if peer not in wanted})
    for short, dtype in DTYPES.items():
        if "vllm" in wanted:
            py = vllm_python(args.vllm_python)
            if py is None:
                absent[f"vllm_{short}"] = f"not installed (no {REPO / '.venv-vllm'}; --vllm-python)"
            else:
                env = {**threads_env, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "HF_HUB_OFFLINE": "1",
                       "VLLM_CPU_OMP_THREADS_BIND": f"0-{args.threads - 1}",
                       "VLLM_CPU_KVCACHE_SPACE": str(kv_gib(config, args.batch_size, max_seq_len, dtype))}
                preload = vllm_preload(py) if args.vllm_preload == "auto" else ""
                if preload:
                    env["LD_PRELOAD"] = preload
                arm = start_worker(py, ["--engine", "vllm", "--model", models.resolve(MODEL), "--dtype", dtype,
                                        *common], env, logs / f"vllm-{short}.log", "vllm", absent, f"vllm_{short}")
                if arm is not None:
                    arm["env"] = {"LD_PRELOAD": preload or None}  # recorded with its figures
                arms[f"vllm_{short}"] = arm
        if "llamacpp" in wanted:
            if not gguf[short].exists():
                absent[f"llamacpp_{short}"] = f"no GGUF file {gguf[short]} (make peers; --gguf-dir)"
            else:
                env = dict(threads_env)
                if binary_dir is not None and "LLAMA_CPP_LIB_PATH" not in os.environ:
                    env["LLAMA_CPP_LIB_PATH"] = str(binary_dir)  # bindings over the llama.cpp built there
                arms[f"llamacpp_{short}"] = start_worker(llamacpp_python(args.llamacpp_python),
                                                         ["--engine", "llamacpp", "--model", str(gguf[short]),
                                                          "--dtype", dtype, *common], env,
                                                         logs / f"llamacpp-{short}.log", "llamacpp", absent,
                                                         f"llamacpp_{short}")
        if "llamacpp-bench" in wanted:
            key = f"llamacpp-bench_{short}"
            if binary_dir is None or not (binary_dir / "llama-batched-bench").exists():
                absent[key] = "not built (make peers; --llamacpp-bin)"
            elif not gguf[short].exists():
                absent[key] = f"no GGUF file {gguf[short]} (make peers; --gguf-dir)"
            else:
                arms[key] = bench_arm(binary_dir / "llama-batched-bench", str(gguf[short]), dtype, args, ordered)
    return {k: v for k, v in arms.items() if v is not None}, absent


def start_worker(python, argv, env, log, engine, absent, key):
    print(f"  starting {key} ...", flush=True)
    try:
        w = Worker(python, argv, env, log)
    except (RuntimeError, OSError) as e:
        absent[key] = str(e)
        print(f"  {key}: not run: {e}", flush=True)
        return None
    print(f"  {key}: {w.version}, started in {w.startup_seconds:.1f} s", flush=True)
    return {"engine": engine, "version": w.version, "startup_seconds": w.startup_seconds, "worker": w,
            "info": w.info}


def bench_arm(binary: Path, gguf: str, dtype: str, args, ordered) -> dict:
    prompt_tokens = round(sum(map(len, ordered)) / len(ordered))
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    text = (version.stdout + version.stderr).strip().splitlines()  # "version: 0.5.0-dev (build 1, commit 0c1e570)"
    number = text[0].removeprefix("version:").strip() if text else "?"
    return {"engine": "llamacpp-bench", "version": f"llama.cpp {number}", "startup_seconds": None,
            "bench": (binary, gguf, dtype, args.threads, args.batch_size, prompt_tokens, args.new_tokens)}


def run_arm(arm: dict, ordered, k, new_tokens) -> tuple[int, float]:
    if "worker" in arm:
        return arm["worker"].run(ordered, k, new_tokens)
    fig = batched_bench(*arm["bench"])
    if arm["startup_seconds"] is None:
        arm["startup_seconds"] = fig["wall_seconds"] - fig["t_pp"] - fig["t_tg"]
    return fig["pl"] * fig["tg"], fig["t_tg"]


# --------------------------------------------------------------------------- the figures

def median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def summarise(rates: dict[str, list[float]], meta: dict[str, dict], absent: dict[str, str],
              ceilings: dict[str, float], flops_per_token: float) -> dict:
    """Per engine (``ENGINE_DTYPE``): its median tokens/s over rounds, each round's rate, its
    share of its dtype's matmul ceiling, start-up seconds and version; an engine that did not
    run has ``tokens_per_second`` None and its reason. Then the ratios afd / peer, same dtype
    (None when either is missing)."""
    engines = {}
    for key, per_round in rates.items():
        tps = median(per_round)
        dtype = key.rsplit("_", 1)[1]
        engines[key] = {"tokens_per_second": tps, "per_round": per_round,
                        "share_of_ceiling": tps * flops_per_token / (ceilings[dtype] * 1e9) if tps else None,
                        "startup_seconds": meta.get(key, {}).get("startup_seconds"),
                        "version": meta.get(key, {}).get("version"), "reason": None,
                        **({"env": meta[key]["env"]} if "env" in meta.get(key, {}) else {})}
    for key, reason in absent.items():
        engines[key] = {"tokens_per_second": None, "per_round": [], "share_of_ceiling": None,
                        "startup_seconds": None, "version": None, "reason": reason}
    out = {"engines": engines}
    for peer in ("vllm", "llamacpp"):
        for dtype in DTYPES:
            ours = engines.get(f"afd_{dtype}", {}).get("tokens_per_second")
            theirs = engines.get(f"{peer}_{dtype}", {}).get("tokens_per_second")
            out[f"afd_vs_{peer}_{dtype}"] = ours / theirs if ours and theirs else None
    return out


def first_stop(ids: list[int], stop_ids: set[int]) -> list[int]:
    """A response sampled with EOS ignored, cut before its first stop token."""
    for n, t in enumerate(ids):
        if t in stop_ids:
            return ids[:n]
    return ids


def paired_delta(a: list[list[float]], b: list[list[float]]) -> dict:
    """Mean of b - a over paired samples (``a[i][j]`` and ``b[i][j]``: prompt i, sample j), with
    its standard error over prompts (each prompt's mean difference is one observation)."""
    per_prompt = [sum(y - x for x, y in zip(ra, rb)) / len(ra) for ra, rb in zip(a, b)]
    n = len(per_prompt)
    mean = sum(per_prompt) / n
    se = (sum((d - mean) ** 2 for d in per_prompt) / (n - 1)) ** 0.5 / n ** 0.5 if n > 1 else None
    return {"mean": mean, "se": se, "prompts": n}


def gold(pools: dict[str, dict], tok, messages, stop_ids) -> dict:
    """VADER of afd's fp32 and bf16 pools (same seeds), each sample cut at its first stop token."""
    from afd import rewards

    vader = rewards.load("vader").score
    order = sorted(pools["fp32"])
    scores, cut = {}, {}
    for dtype, pool in pools.items():
        cut[dtype] = [[first_stop(c.token_ids, stop_ids) for c in pool[i]] for i in order]
        texts = [tok.decode(ids, skip_special_tokens=True) for row in cut[dtype] for ids in row]
        flat = vader([messages[i] for i in order for _ in pool[i]], texts)
        k = len(pool[order[0]])
        scores[dtype] = [flat[r * k:(r + 1) * k] for r in range(len(order))]
    delta = paired_delta(scores["fp32"], scores["bf16"])
    mean = {d: sum(map(sum, s)) / sum(map(len, s)) for d, s in scores.items()}
    same = sum(x == y for ra, rb in zip(cut["fp32"], cut["bf16"]) for x, y in zip(ra, rb))
    return {"afd_bf16_vs_fp32_gold_delta": delta["mean"], "afd_bf16_vs_fp32_gold_delta_se": delta["se"],
            "gold": {"judge": "vader", "fp32_mean": mean["fp32"], "bf16_mean": mean["bf16"],
                     "prompts": delta["prompts"],
                     "samples": sum(map(len, scores["fp32"])), "identical_samples": same}}


def ceilings_now() -> dict[str, float]:
    return {"fp32": matmul_gflops(dtype=torch.float32), "bf16": matmul_gflops(dtype=torch.bfloat16)}


# --------------------------------------------------------------------------- SFT, first batch

def sft_rate(steps: int) -> dict:
    from afd.sft import SFTConfig, sft

    with tempfile.TemporaryDirectory() as out:
        m = sft(SFTConfig(out=out, model=MODEL, data=str(SHARED_DATA / "hh-rlhf_harmless-base_test.jsonl.gz"),
                          on_invalid="skip", max_examples=steps * 8, eval_fraction=0.0, batch_size=8,
                          max_steps=steps, max_length=256, max_prompt_length=192, device="cpu", save_steps=10_000,
                          logging_steps=1))
    return {"sft_tokens_per_second": m["train_tokens_per_second"], "sft_tokens": m["train_tokens"],
            "sft_steps": m["steps"], "sft_batch_size": 8}


def first_batch(mode: str, dtype: str, k: int, new_tokens: int, batch_size: int) -> dict:
    """In this (fresh) process: tok/s of the engine's first batch and of the next two."""
    model, tok = models.load_causal_lm(MODEL, device="cpu", dtype=dtype, purpose="sample")
    prompts = [models.encode_prompt(tok, m) for m in imdb_prompts(max(1, batch_size // k))]
    engine = HFEngine(model, tok, models.stop_token_ids(model, tok), warm_up=mode != "cold")
    if mode.startswith("warm:"):  # another warm-up length than afd's default, to compare
        engine.WARM_UP_TOKENS = int(mode.split(":")[1])
    warm_up_tokens = 0 if mode == "cold" else min(engine.WARM_UP_TOKENS, new_tokens)
    rates = []
    for r in range(3):
        seeds = [[row_seed(r, str(i), j) for j in range(k)] for i in range(len(prompts))]
        t = time.perf_counter()
        outs = engine.generate(prompts, seeds, new_tokens, ignore_eos=True)
        rates.append(sum(len(c.token_ids) for row in outs for c in row) / (time.perf_counter() - t))
    return {"mode": mode, "warm_up_tokens": warm_up_tokens, "dtype": str(next(model.parameters()).dtype),
            "first_batch_tokens_per_second": rates[0],
            "steady_tokens_per_second": max(rates[1:]), "loadavg": os.getloadavg()}


def first_batch_figures(args) -> list[dict]:
    """Fresh child processes, cold and warm alternated, so both see the same noise."""
    out = []
    for _ in range(args.first_batch_rounds):
        for mode in args.first_batch_modes.split(","):
            cmd = [sys.executable, __file__, "--first-batch", mode, "--dtype", args.dtype, "--k", str(args.k),
                   "--new-tokens", str(args.new_tokens), "--batch-size", str(args.batch_size),
                   "--threads", str(args.threads)]
            line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            out.append(json.loads(line))
            print(" ", out[-1], flush=True)
    return out


# --------------------------------------------------------------------------- the run

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=256, help="sequences decoded together, every engine")
    ap.add_argument("--naive-prompts", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="each engine once over the workload per round; median kept")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of every engine")
    ap.add_argument("--sft-steps", type=int, default=6, help="0: no SFT figure")
    ap.add_argument("--quick", action="store_true",
                    help="16 prompts, 2 naive prompts, 1 round, 2 SFT steps, 1 first-batch round; saves nothing")
    ap.add_argument("--no-save", action="store_true", help="print the table only; write nothing to bench/results")
    ap.add_argument("--peers", default="all", help=f"all, none, or a comma list of {', '.join(PEERS)}")
    ap.add_argument("--vllm-python", help="a python with vLLM (default: .venv-vllm/bin/python, if there)")
    ap.add_argument("--vllm-preload", choices=["auto", "none"], default="auto",
                    help="auto: LD_PRELOAD tcmalloc and libiomp5 for vLLM where found, as its CPU guide asks")
    ap.add_argument("--llamacpp-python", help="a python with llama-cpp-python (default: .peers/venv/bin/python, "
                                              "if there, else this one)")
    ap.add_argument("--llamacpp-bin", help="folder of a llama.cpp build: llama-batched-bench and libllama.so "
                                           "(default: .peers/llama.cpp-build/bin, if there)")
    ap.add_argument("--gguf-dir", default=str(PEERS_DIR / "models"),
                    help=f"folder with {MODEL}-fp32.gguf and {MODEL}-bf16.gguf")
    ap.add_argument("--dtype", default="auto", help="the first-batch figures' dtype (auto: afd's sampling rule)")
    ap.add_argument("--first-batch", help=argparse.SUPPRESS)
    ap.add_argument("--first-batch-modes", default="cold,warm",
                    help="the first-batch processes, each round: cold (no warm-up), warm (afd's default warm-up), "
                         "warm:N (a warm-up of N tokens)")
    ap.add_argument("--first-batch-rounds", type=int, default=2, help="fresh cold and warm processes, alternated")
    ap.add_argument("--first-batch-only", action="store_true", help="only the first-batch figures; saved apart")
    args = ap.parse_args()
    unknown = set(args.peers.split(",")) - set(PEERS) - {"all", "none"}
    if unknown:
        ap.error(f"option --peers: unknown peer(s) {', '.join(sorted(unknown))}; use all, none, or {', '.join(PEERS)}")
    torch.set_num_threads(args.threads)
    if args.first_batch:
        print(json.dumps(first_batch(args.first_batch, args.dtype, args.k, args.new_tokens, args.batch_size)))
        return
    if args.first_batch_only:
        figs = first_batch_figures(args)
        table = first_batch_table(figs, args)
        print(table)
        if not args.no_save:
            print("saved", save("first-batch-cpu", {"runs": figs, "machine": machine(), "k": args.k,
                                                     "new_tokens": args.new_tokens, "batch_size": args.batch_size,
                                                     "command": "python " + " ".join(sys.argv)}, table))
        return
    if args.quick:
        args.prompts, args.naive_prompts, args.sft_steps, args.rounds, args.first_batch_rounds = 16, 2, 2, 1, 1
        args.no_save = True
    load_start = os.getloadavg()
    t = time.perf_counter()
    fp32, tok = models.load_causal_lm(MODEL, device="cpu", dtype="float32")
    bf16, _ = models.load_causal_lm(MODEL, device="cpu", dtype="bfloat16")
    afd_startup = time.perf_counter() - t
    params = sum(p.numel() for p in fp32.parameters())
    messages = imdb_prompts(args.prompts)
    prompts = [models.encode_prompt(tok, m) for m in messages]
    batches = afd_batches(prompts, args.k, args.batch_size)
    ordered = [prompts[i] for b in batches for i in b]  # the peers get afd's batches, in afd's order
    max_seq_len = max(map(len, prompts)) + args.new_tokens
    stop_ids = set(models.stop_token_ids(fp32, tok))
    engines = {"fp32": HFEngine(fp32, tok, sorted(stop_ids)), "bf16": HFEngine(bf16, tok, sorted(stop_ids))}
    afd_version = f"afd (torch {torch.__version__})"
    meta = {f"afd_{d}": {"startup_seconds": afd_startup, "version": afd_version} for d in DTYPES}
    meta["naive_fp32"] = {"startup_seconds": afd_startup, "version": afd_version}

    logs = Path(tempfile.mkdtemp(prefix="afd-peers-"))
    arms, absent = start_peers(args, fp32.config, ordered, max_seq_len, logs)
    meta.update(arms)
    try:
        print("warm-up (the real shapes, excluded from the rates)", flush=True)
        for e in engines.values():
            run_afd(e, prompts, batches[:1], args.k, args.new_tokens)
        run_naive(fp32, tok, prompts[:1], args.k, args.new_tokens)
        first = [prompts[i] for i in batches[0]]
        for key, arm in list(arms.items()):
            try:
                if "worker" in arm:
                    arm["worker"].run(first, args.k, args.new_tokens)
                else:  # a fresh process each time: this checks that it runs
                    run_arm(arm, ordered, args.k, args.new_tokens)
            except (RuntimeError, OSError, ValueError) as e:
                print(f"  {key}: not run: its warm-up failed: {e}", flush=True)
                absent[key] = f"its warm-up failed: {e}"
                if "worker" in arm:
                    arm["worker"].close()
                del arms[key], meta[key]

        ceilings = ceilings_now()
        steps = {f"afd_{d}": (lambda d=d: run_afd(engines[d], prompts, batches, args.k, args.new_tokens))
                 for d in DTYPES}
        steps["naive_fp32"] = lambda: run_naive(fp32, tok, prompts[:args.naive_prompts], args.k, args.new_tokens)
        for key, arm in arms.items():
            steps[key] = lambda arm=arm: run_arm(arm, ordered, args.k, args.new_tokens)
        rates = {key: [] for key in steps}
        pools = {}
        order = list(steps)
        for r in range(args.rounds):
            for key in order[r % len(order):] + order[:r % len(order)]:
                tokens, seconds, *outs = steps[key]()
                rates[key].append(tokens / seconds)
                if outs and key.startswith("afd_") and key[4:] not in pools:
                    pools[key[4:]] = outs[0]
            print(f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items())
                  + f" tok/s; load {os.getloadavg()[0]:.2f}", flush=True)
        ceilings = {d: max(c, again) for (d, c), again in zip(ceilings.items(), ceilings_now().values())}
    finally:
        for arm in arms.values():
            if "worker" in arm:
                arm["worker"].close()

    flops_per_token = 2 * params
    summary = summarise(rates, meta, absent, ceilings, flops_per_token)
    e = summary["engines"]
    ours, naive = e["afd_fp32"]["tokens_per_second"], e["naive_fp32"]["tokens_per_second"]
    result = {
        "model": MODEL, "params": params, "prompts": args.prompts, "k": args.k, "new_tokens": args.new_tokens,
        "batch_size": args.batch_size, "afd_batch_size": args.batch_size, "naive_prompts": args.naive_prompts,
        "rounds": args.rounds, "threads": args.threads,
        **{k: v for k, v in summary.items() if k != "engines"},
        **gold(pools, tok, messages, stop_ids),
        "engines": e,
        # the figures of earlier versions of this file (afd and naive in fp32)
        "afd_tokens_per_second": ours, "naive_tokens_per_second": naive, "speedup": ours / naive,
        "matmul_gflops_fp32": ceilings["fp32"], "matmul_gflops_bf16": ceilings["bf16"],
        "ceiling_tokens_per_second": ceilings["fp32"] * 1e9 / flops_per_token,
        "ceiling_tokens_per_second_bf16": ceilings["bf16"] * 1e9 / flops_per_token,
        "afd_fraction_of_ceiling": e["afd_fp32"]["share_of_ceiling"],
        "naive_fraction_of_ceiling": e["naive_fp32"]["share_of_ceiling"],
        **(sft_rate(args.sft_steps) if args.sft_steps else {}), "machine": machine(),
        "peer_info": {k: a.get("info") for k, a in arms.items() if a.get("info")},
        "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "first_batch": first_batch_figures(args),
        "command": "python " + " ".join(sys.argv),
    }
    table = results_table(result, args) + "\n" + first_batch_table(result["first_batch"], args)
    print(table)
    print(f"peer logs: {logs}")
    if not args.no_save:
        print("saved", save("sampling-cpu", result, table))


def fmt(x, spec: str, none: str = "–") -> str:
    return none if x is None else format(x, spec)


def results_table(result: dict, args) -> str:
    e, m = result["engines"], result["machine"]
    naive = e["naive_fp32"]["tokens_per_second"]
    rows = []
    rank = {name: i for i, name in enumerate(LABELS)}
    for key, f in sorted(e.items(), key=lambda kv: (rank[kv[0].rsplit("_", 1)[0]], list(DTYPES).index(kv[0][-4:]))):
        if f["tokens_per_second"] is None:
            continue
        name, dtype = key.rsplit("_", 1)
        label = LABELS[name] + (f"; {args.naive_prompts} prompts" if name == "naive" else "") + \
            (f" (batch {args.batch_size} sequences)" if name in ("afd", "vllm", "llamacpp") else "")
        afd = e.get(f"afd_{dtype}", {}).get("tokens_per_second")
        vs = afd / f["tokens_per_second"] if afd and name not in ("afd", "llamacpp-bench") else None
        rows.append(f"| {label} | {dtype} | {f['tokens_per_second']:.1f} | {f['tokens_per_second'] / naive:.2f} | "
                    f"{fmt(vs, '.2f')} | "
                    f"{f['share_of_ceiling']:.1%} | {fmt(f['startup_seconds'], '.1f')} | {f['version']} |")
    missing = "; ".join(f"{k}: {f['reason']}" for k, f in e.items() if f["tokens_per_second"] is None)
    g = result["gold"]
    ratios = ", ".join(f"{k} {fmt(result[k], '.2f')}" for k in result if k.startswith("afd_vs_"))
    load0, load1 = result["loadavg_start"], result["loadavg_end"]
    text = (
        f"# Sampling throughput: {MODEL}, {args.prompts} prompts x K={args.k} x {args.new_tokens} new tokens "
        f"(EOS ignored; steady state, warm-up batch excluded; median of {args.rounds} alternated rounds)\n\n"
        f"Machine: {m['cpu']}, {m['cores']} cores, {args.threads} threads per engine, torch {m['torch']}; "
        f"load average {load0[0]:.2f} at start, {load1[0]:.2f} at end\n\n"
        "| engine | dtype | generated tokens/s | x naive | afd / engine (same dtype) | share of its dtype's ceiling "
        "| start-up s | version |\n|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        + (f"Not run: {missing}.\n\n" if missing else "")
        + f"Ratios: {ratios}.\n\n"
        f"Compute ceiling (2048^2 matmul, measured in the same run): {result['matmul_gflops_fp32']:.1f} GFLOP/s fp32 = "
        f"{result['ceiling_tokens_per_second']:.0f} tokens/s, {result['matmul_gflops_bf16']:.1f} GFLOP/s bf16 = "
        f"{result['ceiling_tokens_per_second_bf16']:.0f} tokens/s, at 2 x {result['params'] / 1e6:.1f}M FLOPs "
        "per token.\n\n"
        f"Golden reward (VADER) of afd's pools, same seeds, each sample cut at its first stop token: fp32 "
        f"{g['fp32_mean']:.3f}, bf16 {g['bf16_mean']:.3f}; bf16 - fp32 = {result['afd_bf16_vs_fp32_gold_delta']:+.3f} "
        f"+- {fmt(result['afd_bf16_vs_fp32_gold_delta_se'], '.3f')} (s.e. over {g['prompts']} prompts; "
        f"{g['identical_samples']} of {g['samples']} samples identical).\n")
    if "sft_tokens_per_second" in result:
        text += (f"\nSFT (full fine-tuning, batch 8, max length 256, HH-RLHF harmless demos): "
                 f"{result['sft_tokens_per_second']:.1f} tokens/s over {result['sft_steps']} steps.\n")
    return text


def first_batch_table(figs: list[dict], args) -> str:
    if not figs:
        return ""
    rows = "".join(f"| {f['mode']} | {f.get('warm_up_tokens', '–')} | {f['dtype']} | {f['first_batch_tokens_per_second']:.0f} | "
                   f"{f['steady_tokens_per_second']:.0f} | "
                   f"{f['first_batch_tokens_per_second'] / f['steady_tokens_per_second']:.2f} | "
                   f"{f['loadavg'][0]:.2f} |\n" for f in figs)
    return (f"## First batch of a fresh process ({args.batch_size} sequences x {args.new_tokens} tokens)\n\n"
            "cold: no warm-up; warm: afd's default warm-up (a short decode on the batch's shapes), its time "
            "counted in the first batch.\n\n| engine start | warm-up tokens | dtype | first batch tok/s | steady tok/s | "
            f"first / steady | load |\n|---|---|---|---|---|---|---|\n{rows}")


if __name__ == "__main__":
    main()
