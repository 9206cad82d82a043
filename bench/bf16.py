"""What bf16 costs on CPU (issue 12 item 1): smollm2-135m-instruct in bfloat16 vs float32.

    python bench/bf16.py            # 16 IMDB prompts x 4 samples x 48 new tokens, a few minutes on 2 cores

Measured, all in one process:
- sampling speed of afd's HFEngine in each dtype (steady state: a warm-up batch first, then
  the two dtypes alternated);
- samples' quality: VADER (golden reward) of a pool sampled in bf16 and in fp32 with the same seeds;
- log-probability error of bf16 against fp32 on the same tokens (the fp32 pool), per token and
  per sequence sum;
- differenced quantities: the density-ratio reward log pi(with a system prompt) - log pi(without)
  (the two "models" of a density ratio), its mean over samples (the Monte-Carlo KL estimate
  of ``afd eval --kl-reference``, samples from the system-prompted policy), and RL's
  importance ratios exp(new - old) of the same model on the same tokens, scored once in a batch
  of 16 and once in a batch of 4 (what changes between TRL's generation-time and training-time
  passes: batch composition and padding). In fp32 these should be 1 to ~1e-6.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, machine, save  # noqa: E402

from afd import models  # noqa: E402
from afd.sampling import HFEngine, row_seed  # noqa: E402
from afd import rewards  # noqa: E402

SYSTEM = {"role": "system", "content": "You are a cheerful assistant who loves every film."}


def imdb_prompts(n: int) -> list[list[dict]]:
    data = SHARED_DATA if (SHARED_DATA / "imdb_subset.csv").exists() else Path("/work/shared/data")
    with open(data / "imdb_subset.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    return [[{"role": "user", "content": "Continue this movie review: "
              + " ".join(r["review"].replace("<br />", " ").split()[:24])}] for r in rows]


@torch.inference_mode()
def token_logprobs(model, prompts: list[list[int]], responses: list[list[int]], batch: int) -> list[torch.Tensor]:
    """Per-token log-probs (float64) of each response given its prompt, right-padded batches."""
    out = []
    for s in range(0, len(prompts), batch):
        seqs = [p + r for p, r in zip(prompts[s:s + batch], responses[s:s + batch])]
        width = max(map(len, seqs))
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, q in enumerate(seqs):
            ids[i, :len(q)] = torch.tensor(q)
            mask[i, :len(q)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        lp = torch.log_softmax(logits, -1)
        for i, (p, r) in enumerate(zip(prompts[s:s + batch], responses[s:s + batch])):
            pos = torch.arange(len(p) - 1, len(p) + len(r) - 1)
            out.append(lp[i, pos, torch.tensor(r)].double())
    return out


def stats(x: torch.Tensor) -> dict:
    x = x.abs().double()
    return {"mean_abs": float(x.mean()), "p99_abs": float(x.quantile(0.99)), "max_abs": float(x.max())}


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2, help="timed sampling rounds per dtype (alternated)")
    args = ap.parse_args()
    n_prompts, k, new_tokens = args.prompts, args.k, args.new_tokens
    t0 = time.perf_counter()
    say = lambda what: print(f"[{time.perf_counter() - t0:.0f}s load {os.getloadavg()[0]:.2f}] {what}", flush=True)  # noqa: E731
    torch.manual_seed(0)
    load0 = os.getloadavg()
    fp32, tok = models.load_causal_lm("smollm2-135m-instruct", device="cpu", dtype="float32")
    bf16, _ = models.load_causal_lm("smollm2-135m-instruct", device="cpu", dtype="bfloat16")
    msgs = imdb_prompts(n_prompts)
    plain = [models.encode_prompt(tok, m) for m in msgs]
    system = [models.encode_prompt(tok, [SYSTEM] + m) for m in msgs]
    stop = models.stop_token_ids(fp32, tok)
    engines = {"fp32": HFEngine(fp32, tok, stop), "bf16": HFEngine(bf16, tok, stop)}
    seeds = [[row_seed(0, str(i), j) for j in range(k)] for i in range(n_prompts)]

    # sampling: warm both, then alternate; the pools of the last round are kept
    for name, e in engines.items():
        e.generate(system, seeds, new_tokens, ignore_eos=True)
        say(f"warmed {name}")
    speed = {"fp32": [0, 0.0], "bf16": [0, 0.0]}
    pools = {}
    for _ in range(args.rounds):
        for name, e in engines.items():
            t = time.perf_counter()
            outs = e.generate(system, seeds, new_tokens)
            speed[name][1] += time.perf_counter() - t
            speed[name][0] += sum(len(c.token_ids) for row in outs for c in row)
            pools[name] = outs
            say(f"sampled {name}")
    tok_s = {n: v[0] / v[1] for n, v in speed.items()}

    vader = rewards.load("vader").score
    quality = {}
    for name, outs in pools.items():
        texts = [tok.decode(c.token_ids, skip_special_tokens=True) for row in outs for c in row]
        scores = torch.tensor(vader([m for m in msgs for _ in range(k)], texts), dtype=torch.float64)
        quality[name] = {"vader_mean": float(scores.mean()),
                         "vader_sem": float(scores.std() / math.sqrt(len(scores))),
                         "mean_length": sum(len(c.token_ids) for row in outs for c in row) / len(texts)}
    same = sum(a.token_ids == b.token_ids for ra, rb in zip(pools["fp32"], pools["bf16"]) for a, b in zip(ra, rb))

    # log-probs of the fp32 pool's tokens under each dtype, with and without the system prompt
    resp = [c.token_ids for row in pools["fp32"] for c in row]
    sys_p = [p for p in system for _ in range(k)]
    plain_p = [p for p in plain for _ in range(k)]
    lp = {}
    for name, model in (("fp32", fp32), ("bf16", bf16)):
        lp[name] = {"sys16": token_logprobs(model, sys_p, resp, 16), "sys4": token_logprobs(model, sys_p, resp, 4),
                    "plain16": token_logprobs(model, plain_p, resp, 16)}
        say(f"scored {name}")
    cat = {n: {kk: torch.cat(v) for kk, v in d.items()} for n, d in lp.items()}
    seq = {n: {kk: torch.stack([x.sum() for x in v]) for kk, v in d.items()} for n, d in lp.items()}

    per_token = stats(cat["bf16"]["sys16"] - cat["fp32"]["sys16"])
    per_seq = stats(seq["bf16"]["sys16"] - seq["fp32"]["sys16"])
    ratio = {n: seq[n]["sys16"] - seq[n]["plain16"] for n in seq}  # density-ratio reward per sample
    density = {**stats(ratio["bf16"] - ratio["fp32"]), "fp32_reward_std": float(ratio["fp32"].std()),
               "rank_corr_bf16_vs_fp32": float(torch.corrcoef(torch.stack([
                   ratio["bf16"].argsort().argsort().double(), ratio["fp32"].argsort().argsort().double()]))[0, 1])}
    kl = {n: float(ratio[n].mean()) for n in ratio}
    importance = {}
    for n in cat:
        d = cat[n]["sys16"] - cat[n]["sys4"]
        importance[n] = {"token_ratio_max_abs_dev": float((d.exp() - 1).abs().max()),
                         "token_ratio_mean_abs_dev": float((d.exp() - 1).abs().mean()),
                         "seq_ratio_max_abs_dev": float(((seq[n]["sys16"] - seq[n]["sys4"]).exp() - 1).abs().max())}
    load1 = os.getloadavg()
    result = {"model": "smollm2-135m-instruct", "prompts": n_prompts, "k": k, "new_tokens": new_tokens,
              "sampling_tokens_per_second": tok_s, "quality": quality, "identical_samples": same,
              "samples": n_prompts * k, "logprob_error_per_token": per_token, "logprob_error_per_sequence": per_seq,
              "mean_tokens_per_sequence": cat["fp32"]["sys16"].numel() / len(resp),
              "density_ratio_error": density, "kl_estimate": kl, "importance_ratio": importance,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": models.cpu_has_native_bf16(),
              "loadavg_start": load0, "loadavg_end": load1, "machine": machine(), "command": "python " + " ".join(sys.argv)}
    f = lambda d: f"mean {d['mean_abs']:.4f}, p99 {d['p99_abs']:.4f}, max {d['max_abs']:.4f}"  # noqa: E731
    table = (
        f"# bf16 vs fp32 on CPU: smollm2-135m-instruct, {n_prompts} IMDB prompts x {k} samples x {new_tokens} tokens\n\n"
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, torch {result['machine']['torch']}, "
        f"capability {result['cpu_capability']}, native bf16 {result['native_bf16']}; "
        f"load average {load0[0]:.2f} at start, {load1[0]:.2f} at end. Command: `{result['command']}`.\n\n"
        f"| quantity | fp32 | bf16 |\n|---|---|---|\n"
        f"| sampling tokens/s (steady state, alternated) | {tok_s['fp32']:.0f} | {tok_s['bf16']:.0f} |\n"
        f"| VADER of the pool (same seeds), mean +- s.e. | {quality['fp32']['vader_mean']:.3f} +- "
        f"{quality['fp32']['vader_sem']:.3f} | {quality['bf16']['vader_mean']:.3f} +- {quality['bf16']['vader_sem']:.3f} |\n"
        f"| mean sample length | {quality['fp32']['mean_length']:.1f} | {quality['bf16']['mean_length']:.1f} |\n"
        f"| MC KL estimate (with vs without system prompt) | {kl['fp32']:.3f} | {kl['bf16']:.3f} |\n"
        f"| RL importance ratio, max abs(ratio - 1) per token (batch 16 vs 4) | "
        f"{importance['fp32']['token_ratio_max_abs_dev']:.2e} | {importance['bf16']['token_ratio_max_abs_dev']:.2e} |\n"
        f"| RL importance ratio, max abs(ratio - 1) per sequence | "
        f"{importance['fp32']['seq_ratio_max_abs_dev']:.2e} | {importance['bf16']['seq_ratio_max_abs_dev']:.2e} |\n\n"
        f"Identical samples (same seed, same tokens): {same} of {n_prompts * k}.\n\n"
        f"bf16 log-prob error against fp32 on the fp32 pool's tokens (nats): per token {f(per_token)}; "
        f"per sequence sum ({result['mean_tokens_per_sequence']:.1f} tokens) {f(per_seq)}.\n\n"
        f"Density-ratio reward (log pi_system - log pi_plain per sample) error of bf16: {f(density)}; "
        f"the reward's spread (fp32 std) is {density['fp32_reward_std']:.3f}; rank correlation bf16 vs fp32 "
        f"{density['rank_corr_bf16_vs_fp32']:.3f}.\n")
    print(table)
    print("saved", save("bf16-cpu", result, table))


if __name__ == "__main__":
    main()
