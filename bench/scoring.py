"""Teacher-forced scoring of a pool: each distinct prompt run once (afd's default) against
every item scored whole (``share_prompts=False``), side by side in one process.

The pool is drawn here with afd's sampler: smollm2-135m-instruct, ``--prompts`` IMDB review
openings x ``--k`` samples, at most ``--new-tokens`` new tokens, stopping at EOS (so response
lengths vary as in the recipes' pools). Both paths score the sampled token ids in fp32 (the
dtype every differenced log-prob uses on CPU), ``--rounds`` times each, alternating; the
fastest of each is kept, with the largest difference of their sequence log-probs.

    python bench/scoring.py            # writes bench/results/scoring-cpu.json and .md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine, save  # noqa: E402
from sampling import MODEL, imdb_prompts  # noqa: E402

import torch  # noqa: E402

from afd import models  # noqa: E402
from afd.sampling import HFEngine, row_seed  # noqa: E402
from afd.scoring import response_logprobs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=16, help="the scoring batch size (afd's default)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    model, tok = models.load_causal_lm(MODEL, device="cpu", dtype="float32")
    messages = imdb_prompts(args.prompts)
    prompts = [models.encode_prompt(tok, m) for m in messages]
    engine = HFEngine(model, tok, models.stop_token_ids(model, tok))
    outs = engine.generate(prompts, [[row_seed(0, str(i), j) for j in range(args.k)] for i in range(len(prompts))],
                           args.new_tokens)
    items = [(m, c.token_ids) for m, row in zip(messages, outs) for c in row]
    times, values = {True: [], False: []}, {}
    for r in range(args.rounds):
        for share in (False, True) if r % 2 == 0 else (True, False):
            t = time.perf_counter()
            values[share] = response_logprobs(model, tok, items, batch_size=args.batch_size, share_prompts=share)
            times[share].append(time.perf_counter() - t)
            print(f"  round {r + 1}: share_prompts={share} {times[share][-1]:.1f} s", flush=True)
    diff = max(abs(a - b) for a, b in zip(values[True], values[False]))
    prompt_tokens = sum(map(len, prompts)) / len(prompts)
    response_tokens = sum(len(ids) for _, ids in items) / len(items)
    result = {"model": MODEL, "prompts": args.prompts, "k": args.k, "new_tokens": args.new_tokens,
              "batch_size": args.batch_size, "rounds": args.rounds, "mean_prompt_tokens": prompt_tokens,
              "mean_response_tokens": response_tokens, "seconds_whole": min(times[False]),
              "seconds_shared": min(times[True]), "speedup": min(times[False]) / min(times[True]),
              "max_abs_logprob_difference": diff, "machine": machine(), "command": "python " + " ".join(sys.argv)}
    m = result["machine"]
    table = (f"# Teacher-forced scoring of a pool: {MODEL}, fp32, {args.prompts} IMDB prompts x {args.k} samples\n\n"
             f"Machine: {m['cpu']}, {m['cores']} cores, {torch.get_num_threads()} threads, torch {m['torch']}. "
             f"Mean prompt {prompt_tokens:.0f} tokens, mean response {response_tokens:.0f} tokens (at most "
             f"{args.new_tokens}, stopping at EOS); scoring batch {args.batch_size}; fastest of {args.rounds} "
             "alternated rounds.\n\n| path | seconds |\n|---|---|\n"
             f"| every item whole (`share_prompts=False`) | {result['seconds_whole']:.1f} |\n"
             f"| each distinct prompt once (default) | {result['seconds_shared']:.1f} |\n\n"
             f"Speed-up {result['speedup']:.2f}x; largest difference of a sequence's log-prob between the two "
             f"paths {diff:.1e} nats.\n\nCommand: `{result['command']}`\n")
    print(table)
    if not args.no_save:
        print("saved", save("scoring-cpu", result, table))


if __name__ == "__main__":
    main()
