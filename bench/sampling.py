"""Sampling and SFT throughput on smollm2-135m-instruct (issue: the foundation benchmark).

    python bench/sampling.py                 # full run: 64 prompts x K=16 x 64 new tokens
    python bench/sampling.py --quick         # a smaller smoke run
    python bench/sampling.py --first-batch-only   # only the fresh-process first-batch figures

Rates are steady state: each engine first runs a warm-up batch on the real shapes, excluded
from the timing. The first batch of a fresh process is measured apart, in child processes
(``--first-batch cold|warm``): cold = HFEngine(warm_up=False), warm = afd's default (a short
decode on the batch's shapes before it, counted in the batch's time). The machine's load
average is recorded with every figure (the machine is shared; compare ratios, not absolutes).

afd's engine (afd.sampling.HFEngine: prompts batched together, one prefill per prompt, KV
cache repeated K times, finished rows dropped) against the naive baseline that TRL's removed
BestOfNSampler used: repeat each prompt K times and call ``model.generate`` one prompt at a
time. Both sample from the same distribution (temperature 1, no top-k/top-p) and generate
exactly ``max_new_tokens`` tokens per sample (EOS ignored), so tokens/s compare like for like.
The naive baseline is slow, so it runs on the first ``--naive-prompts`` prompts only; its
tokens/s is a rate and does not depend on how many prompts it sees (each call is the same
shape). The two are timed in alternation (an afd batch, then its share of naive prompts), so
that both see the same machine noise; the ratio is the figure to quote. The fraction of the compute ceiling counts 2 x parameters FLOPs per generated token
against the fp32 matmul rate measured in the same run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, machine, matmul_gflops, save  # noqa: E402

from afd import models  # noqa: E402
from afd.sampling import HFEngine, row_seed  # noqa: E402


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


def run_afd(engine, prompts, batch, k, new_tokens) -> tuple[int, float]:
    seeds = [[row_seed(0, str(i), j) for j in range(k)] for i in batch]
    t = time.perf_counter()
    outs = engine.generate([prompts[i] for i in batch], seeds, new_tokens, ignore_eos=True)
    return sum(len(c.token_ids) for row in outs for c in row), time.perf_counter() - t


@torch.inference_mode()
def run_naive(model, tok, prompt, k, new_tokens) -> tuple[int, float]:
    ids = torch.tensor([prompt] * k)
    t = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                         top_k=0, top_p=1.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         pad_token_id=tok.pad_token_id)
    return (out.shape[1] - ids.shape[1]) * k, time.perf_counter() - t


def interleaved(model, tok, engine, prompts, args) -> tuple[float, float]:
    """tokens/s of afd and of the naive sampler, measured in alternation (one afd batch, then
    its share of naive prompts) so that both see the same machine noise."""
    batches = afd_batches(prompts, args.k, args.batch_size)
    naive_per_round = [len(c) for c in torch.arange(args.naive_prompts).tensor_split(len(batches))]
    totals = {"afd": [0, 0.0], "naive": [0, 0.0]}
    next_naive = 0
    for batch, n_naive in zip(batches, naive_per_round):
        for name, (tokens, seconds) in [("afd", run_afd(engine, prompts, batch, args.k, args.new_tokens))] + [
                ("naive", run_naive(model, tok, prompts[next_naive + j], args.k, args.new_tokens))
                for j in range(n_naive)]:
            totals[name][0] += tokens
            totals[name][1] += seconds
        next_naive += n_naive
        print(f"  afd {totals['afd'][0] / totals['afd'][1]:.1f} tok/s, naive "
              f"{totals['naive'][0] / max(totals['naive'][1], 1e-9):.1f} tok/s so far", flush=True)
    return totals["afd"][0] / totals["afd"][1], totals["naive"][0] / totals["naive"][1]


def sft_rate(steps: int) -> dict:
    import tempfile

    from afd.sft import SFTConfig, sft

    with tempfile.TemporaryDirectory() as out:
        m = sft(SFTConfig(out=out, model="smollm2-135m-instruct", data=str(SHARED_DATA / "hh-rlhf_harmless-base_test.jsonl.gz"),
                          on_invalid="skip", max_examples=steps * 8, eval_fraction=0.0, batch_size=8,
                          max_steps=steps, max_length=256, max_prompt_length=192, device="cpu", save_steps=10_000,
                          logging_steps=1))
    return {"sft_tokens_per_second": m["train_tokens_per_second"], "sft_tokens": m["train_tokens"],
            "sft_steps": m["steps"], "sft_batch_size": 8}


def first_batch(mode: str, dtype: str, k: int, new_tokens: int, batch_size: int) -> dict:
    """In this (fresh) process: tok/s of the engine's first batch and of the next two."""
    model, tok = models.load_causal_lm("smollm2-135m-instruct", device="cpu", dtype=dtype, purpose="sample")
    prompts = [models.encode_prompt(tok, m) for m in imdb_prompts(max(1, batch_size // k))]
    engine = HFEngine(model, tok, models.stop_token_ids(model, tok), warm_up=mode == "warm")
    rates = []
    for r in range(3):
        seeds = [[row_seed(r, str(i), j) for j in range(k)] for i in range(len(prompts))]
        t = time.perf_counter()
        outs = engine.generate(prompts, seeds, new_tokens, ignore_eos=True)
        rates.append(sum(len(c.token_ids) for row in outs for c in row) / (time.perf_counter() - t))
    return {"mode": mode, "dtype": str(next(model.parameters()).dtype), "first_batch_tokens_per_second": rates[0],
            "steady_tokens_per_second": max(rates[1:]), "loadavg": os.getloadavg()}


def first_batch_figures(args) -> list[dict]:
    """Fresh child processes, cold and warm alternated (twice each), so both see the same noise."""
    out = []
    for _ in range(args.first_batch_rounds):
        for mode in ("cold", "warm"):
            cmd = [sys.executable, __file__, "--first-batch", mode, "--dtype", args.dtype, "--k", str(args.k),
                   "--new-tokens", str(args.new_tokens), "--batch-size", str(args.batch_size)]
            line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            out.append(json.loads(line))
            print(" ", out[-1], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=256, help="afd: sequences decoded together")
    ap.add_argument("--naive-prompts", type=int, default=8)
    ap.add_argument("--sft-steps", type=int, default=6)
    ap.add_argument("--quick", action="store_true", help="16 prompts, 2 naive prompts, 2 SFT steps; results not saved")
    ap.add_argument("--dtype", default="auto", help="auto: afd's sampling rule (bf16 on a CPU with native bf16)")
    ap.add_argument("--first-batch", choices=["cold", "warm"], help=argparse.SUPPRESS)
    ap.add_argument("--first-batch-rounds", type=int, default=2, help="fresh cold and warm processes, alternated")
    ap.add_argument("--first-batch-only", action="store_true", help="only the first-batch figures; saved apart")
    args = ap.parse_args()
    if args.first_batch:
        print(json.dumps(first_batch(args.first_batch, args.dtype, args.k, args.new_tokens, args.batch_size)))
        return
    if args.first_batch_only:
        figs = first_batch_figures(args)
        table = first_batch_table(figs, args)
        print(table)
        print("saved", save("first-batch-cpu", {"runs": figs, "machine": machine(), "k": args.k,
                                                 "new_tokens": args.new_tokens, "batch_size": args.batch_size,
                                                 "command": "python " + " ".join(sys.argv)}, table))
        return
    if args.quick:
        args.prompts, args.naive_prompts, args.sft_steps = 16, 2, 2

    model, tok = models.load_causal_lm("smollm2-135m-instruct", device="cpu", dtype=args.dtype, purpose="sample")
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    params = sum(p.numel() for p in model.parameters())
    prompts = [models.encode_prompt(tok, m) for m in imdb_prompts(args.prompts)]
    engine = HFEngine(model, tok, models.stop_token_ids(model, tok))
    load_start = os.getloadavg()
    run_afd(engine, prompts, afd_batches(prompts, args.k, args.batch_size)[0], args.k, args.new_tokens)  # warm-up:
    run_naive(model, tok, prompts[0], args.k, args.new_tokens)  # the real shapes, excluded from the rates

    ceiling = matmul_gflops()
    ours, naive = interleaved(model, tok, engine, prompts, args)
    ceiling = max(ceiling, matmul_gflops())  # measured before and after: keep the better
    flops_per_token = 2 * params
    result = {
        "model": "smollm2-135m-instruct", "params": params, "prompts": args.prompts, "k": args.k,
        "new_tokens": args.new_tokens, "afd_batch_size": args.batch_size, "naive_prompts": args.naive_prompts,
        "afd_tokens_per_second": ours, "naive_tokens_per_second": naive, "speedup": ours / naive,
        "matmul_gflops_fp32": ceiling,
        "ceiling_tokens_per_second": ceiling * 1e9 / flops_per_token,
        "afd_fraction_of_ceiling": ours * flops_per_token / (ceiling * 1e9),
        "naive_fraction_of_ceiling": naive * flops_per_token / (ceiling * 1e9),
        **sft_rate(args.sft_steps), "machine": machine(), "dtype": dtype,
        "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "first_batch": first_batch_figures(args),
    }
    table = (
        f"# Sampling throughput: smollm2-135m-instruct, {args.prompts} prompts x K={args.k} x "
        f"{args.new_tokens} new tokens ({dtype}; steady state, warm-up batch excluded)\n\n"
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, torch {result['machine']['torch']}; "
        f"load average {load_start[0]:.2f} at start, {result['loadavg_end'][0]:.2f} at end\n\n"
        "| engine | generated tokens/s | x naive | share of fp32 ceiling |\n|---|---|---|---|\n"
        f"| naive (`generate` per prompt, prompt repeated K times; {args.naive_prompts} prompts) | {naive:.1f} | 1.00 | "
        f"{result['naive_fraction_of_ceiling']:.1%} |\n"
        f"| afd HFEngine (batch {args.batch_size} sequences) | {ours:.1f} | {ours / naive:.2f} | "
        f"{result['afd_fraction_of_ceiling']:.1%} |\n\n"
        f"Compute ceiling: {ceiling:.1f} GFLOP/s fp32 matmul (2048^2, measured in the same run) = "
        f"{result['ceiling_tokens_per_second']:.0f} tokens/s at 2 x {params / 1e6:.1f}M FLOPs per token.\n\n"
        f"SFT (full fine-tuning, batch 8, max length 256, HH-RLHF harmless demos): "
        f"{result['sft_tokens_per_second']:.1f} tokens/s over {result['sft_steps']} steps.\n")
    table += "\n" + first_batch_table(result["first_batch"], args)
    print(table)
    if not args.quick:
        print("saved", save("sampling-cpu", result, table))


def first_batch_table(figs: list[dict], args) -> str:
    rows = "".join(f"| {f['mode']} | {f['dtype']} | {f['first_batch_tokens_per_second']:.0f} | "
                   f"{f['steady_tokens_per_second']:.0f} | "
                   f"{f['first_batch_tokens_per_second'] / f['steady_tokens_per_second']:.2f} | "
                   f"{f['loadavg'][0]:.2f} |\n" for f in figs)
    return (f"## First batch of a fresh process ({args.batch_size} sequences x {args.new_tokens} tokens)\n\n"
            "cold: no warm-up; warm: afd's default warm-up (a short decode on the batch's shapes), its time "
            "counted in the first batch.\n\n| engine start | dtype | first batch tok/s | steady tok/s | "
            f"first / steady | load |\n|---|---|---|---|---|---|\n{rows}")


if __name__ == "__main__":
    main()
