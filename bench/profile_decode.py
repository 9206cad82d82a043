"""Where afd's sampling time goes (issue 12, item 3): torch.profiler over one HFEngine batch.

    python bench/profile_decode.py                       # 16 prompts x K=16 x 64 tokens, fp32
    python bench/profile_decode.py --dtype bfloat16 --threads 1

The workload is bench/sampling.py's (IMDB openings, EOS ignored, temperature 1), one batch of
prompts x K sequences, after a warm-up batch on the same shapes. It prints the wall time with
and without the profiler, the operators with the most self CPU time, and that time grouped
into what a decode step does: the linear layers' matmuls, attention, the sampling step (the
softmax and the CDF walk of ``afd.sampling.draw``), cache and mask bookkeeping (copies, cat,
indexing), the element-wise rest (norms, rotary, activations), and what no operator accounts
for (Python and dispatch). Prints only; nothing is saved: its figures are a profile for
choosing a lever, not a benchmark.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampling import MODEL, imdb_prompts  # noqa: E402

from afd import models  # noqa: E402
from afd.sampling import HFEngine, row_seed  # noqa: E402

GROUPS = {
    "matmul (linear layers, lm_head)": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear",
                                        "mkldnn", "onednn"),
    "attention (SDPA)": ("scaled_dot_product", "flash_attention", "_efficient_attention", "aten::baddbmm"),
    "sampling step (softmax, CDF walk)": ("aten::softmax", "aten::_softmax", "aten::searchsorted", "aten::cumsum",
                                          "aten::sum", "aten::gather", "aten::minimum", "aten::nextafter",
                                          "aten::log", "aten::isin", "aten::constant_pad_nd"),
    "cache and mask bookkeeping (copy, cat, index)": ("aten::copy_", "aten::cat", "aten::index", "aten::slice",
                                                      "aten::select", "aten::empty", "aten::index_put",
                                                      "aten::repeat_interleave", "aten::ones", "aten::zeros",
                                                      "aten::full", "aten::where", "aten::to", "aten::clone",
                                                      "aten::contiguous", "aten::nonzero"),
}


def group_of(name: str) -> str:
    for group, keys in GROUPS.items():
        if any(name.startswith(k) or k in name for k in keys):
            return group
    return "element-wise rest (norms, rotary, activations)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--top", type=int, default=15, help="operators listed")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, tok = models.load_causal_lm(MODEL, device="cpu", dtype=args.dtype, purpose="sample")
    prompts = [models.encode_prompt(tok, m) for m in imdb_prompts(args.prompts)]
    engine = HFEngine(model, tok, models.stop_token_ids(model, tok))
    seeds = [[row_seed(0, str(i), j) for j in range(args.k)] for i in range(len(prompts))]

    def batch() -> float:
        t = time.perf_counter()
        engine.generate(prompts, seeds, args.new_tokens, ignore_eos=True)
        return time.perf_counter() - t

    batch()  # warm-up on the real shapes
    plain = batch()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        profiled = batch()
    tokens = len(prompts) * args.k * args.new_tokens
    events = prof.key_averages()
    total_self = sum(e.self_cpu_time_total for e in events) / 1e6
    groups = defaultdict(float)
    for e in events:
        groups[group_of(e.key)] += e.self_cpu_time_total / 1e6
    print(f"{MODEL} {args.dtype}, {len(prompts)} prompts x K={args.k} x {args.new_tokens} tokens, "
          f"{args.threads} threads, load {os.getloadavg()[0]:.1f}")
    print(f"wall {plain:.2f} s ({tokens / plain:.0f} tok/s) unprofiled; {profiled:.2f} s profiled, "
          f"of which operators' self time {total_self:.2f} s")
    print("\nshare of the profiled wall time:")
    for group, seconds in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {seconds / profiled:6.1%}  {group}")
    print(f"  {max(0.0, profiled - total_self) / profiled:6.1%}  no operator (Python, dispatch)")
    print(f"\ntop {args.top} operators by self CPU time:")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]:
        print(f"  {e.self_cpu_time_total / 1e6 / profiled:6.1%}  {e.count:7d} calls  {e.key}")


if __name__ == "__main__":
    main()
