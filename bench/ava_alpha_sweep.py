"""AVA's alpha and beta (issue 11, item 4): how strong the likelihood term is, and a sweep of
alpha on a validation split.

Two parts:

- ``--scales`` (forward passes only, about a minute on CPU): on HH-RLHF harmless chosen replies
  (the hh-ava training pairs), for each alpha of ``--alphas`` and beta = ``--beta``, with the
  pretrained Q head (Eq. 12) of ``--model``: the mean of B(y_t+1) = softmax(beta Q)[y_t+1] over
  the replies' tokens next to its ceiling e^(alpha beta) / (e^(alpha beta) + V - 1), the mean
  log B, and the TD targets delta_t = Q_t - gamma Q_t+1 (mean |delta|, sd) against the N(0, 1)
  prior's scale. No training.
- the sweep (default): for each alpha and seed, ``afd reward --variant ava-p`` (or
  ``--variant ava-d``, on the chosen replies) on the hh-ava training pairs minus a validation
  part, scored on that validation part (never on hh-ava's held-out evaluation pairs): pair
  accuracy and ``prefers_longer``, per seed and as a mean with a 95% t-interval over seeds.

    python bench/ava_alpha_sweep.py --scales
    python bench/ava_alpha_sweep.py --alphas 0.5,1,2,4 --seeds 0,1,2          # smollm2, slow on CPU
    python bench/ava_alpha_sweep.py --model tiny-random --n-train 24 --n-val 16 --max-steps 2 --seeds 0  # smoke

Prints a table and writes ``OUT/sweep.json``; nothing goes to bench/results (a sweep with
fewer than 3 seeds is not a result).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "recipes"))
from hh_harmless import make_data  # noqa: E402


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval (the interval is the mean itself for one value)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, m, m
    t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}.get(len(values), 2.0)
    h = t * statistics.stdev(values) / math.sqrt(len(values))
    return m, m - h, m + h


def scales(model_name: str, alphas: list[float], beta: float, gamma: float, n: int) -> list[dict]:
    import torch

    from afd import models
    from afd.data import DataConfig, load_pairs

    files = make_data(Path("runs/ava-alpha-sweep/data"), 160, 400)
    pairs, _ = load_pairs(DataConfig(path=files["train_pairs"]))
    model, tok = models.load_causal_lm(model_name, "cpu")
    vocab = model.get_output_embeddings().weight.shape[0]
    probs = []  # per reply: (pi(. | y_<j) at the response tokens, the token ids)
    with torch.no_grad():
        for p in pairs[:n]:
            prompt = models.encode_prompt(tok, p.prompt, "auto")
            resp = models.encode_response(tok, p.prompt, p.chosen, "auto")[:64]
            ids = torch.tensor([prompt + resp])
            logits = model(input_ids=ids).logits[0, len(prompt) - 1: -1].float()
            probs.append((logits.softmax(-1), torch.tensor(resp)))
    rows = []
    for alpha in alphas:
        b, log_b, td = [], [], []
        for pi, y in probs:
            q = (alpha * pi).log_softmax(-1)
            qa = q.gather(-1, y[:, None]).squeeze(-1)
            lb = (beta * q).log_softmax(-1).gather(-1, y[:, None]).squeeze(-1)[:-1]  # Eq. 5's steps
            b += lb.exp().tolist()
            log_b += lb.tolist()
            td += (qa[:-1] - gamma * qa[1:]).tolist()
        ceiling = math.exp(alpha * beta) / (math.exp(alpha * beta) + vocab - 1)
        rows.append({"alpha": alpha, "beta": beta, "B_mean": statistics.fmean(b), "B_ceiling": ceiling,
                     "logB_mean": statistics.fmean(log_b), "td_abs_mean": statistics.fmean(abs(x) for x in td),
                     "td_sd": statistics.pstdev(td), "tokens": len(td)})
    lm = [float(pi[range(len(y) - 1), y[:-1]].clamp(min=1e-30).log().mean()) for pi, y in probs]
    pi_y = [float(pi[range(len(y) - 1), y[:-1]].mean()) for pi, y in probs]
    print(f"{model_name}, {len(probs)} HH chosen replies (first 64 tokens), beta {beta}, gamma {gamma}, V {vocab}; "
          f"the LM itself: mean pi(y) {statistics.fmean(pi_y):.4f}, mean log pi(y) {statistics.fmean(lm):.3f}")
    print("| alpha | mean B(y) | ceiling of B | mean log B | mean abs delta | sd delta |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['alpha']:g} | {r['B_mean']:.4f} | {r['B_ceiling']:.4f} | {r['logB_mean']:.3f} | "
              f"{r['td_abs_mean']:.3f} | {r['td_sd']:.3f} |")
    return rows


def sweep(args) -> dict:
    from afd.data import DataConfig, load_pairs
    from afd.pipeline import run

    files = make_data(Path(args.out) / "data", args.n_train + args.n_val, 400)
    pairs, _ = load_pairs(DataConfig(path=files["train_pairs"]))
    fit, val = pairs[: args.n_train], pairs[args.n_train: args.n_train + args.n_val]

    def write(name, rows):
        path = Path(args.out) / "data" / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)

    fit_pairs = write("fit_pairs", [{"id": p.id, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
                                    for p in fit])
    fit_demos = write("fit_demos", [{"id": p.id, "prompt": p.prompt, "completion": p.chosen} for p in fit])
    val_pairs = write("val_pairs", [{"id": p.id, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
                                    for p in val])
    limits = {"max_length": 320, "max_prompt_length": 256} if args.model != "tiny-random" else \
        {"max_length": 1200, "max_prompt_length": 1000}
    out = {}
    for alpha in args.alphas:
        per_seed = []
        for seed in args.seeds:
            name = f"a{alpha:g}_s{seed}"
            stage = {"kind": "reward", "model": args.model, "variant": args.variant, "ava_alpha": alpha,
                     "ava_beta": args.beta, "data": fit_pairs if args.variant == "ava-p" else fit_demos,
                     "eval_pairs": val_pairs, "lr": 5.0e-5, "batch_size": 4, "grad_accum": 2, "epochs": 1,
                     "max_steps": args.max_steps, "eval_fraction": 0.0, "save_steps": 1000, **limits}
            m = run({"out": args.out, "seed": seed, "stages": {name: stage}})[name]
            per_seed.append({"seed": seed, "pair_accuracy": m["pair_accuracy"], "prefers_longer": m["prefers_longer"]})
            print(f"[alpha {alpha:g} seed {seed}] pair accuracy {m['pair_accuracy']:.3f}, prefers longer "
                  f"{m['prefers_longer']}", flush=True)
        acc = t_interval([s["pair_accuracy"] for s in per_seed])
        out[f"{alpha:g}"] = {"seeds": per_seed, "pair_accuracy": acc[0], "interval": acc[1:],
                             "prefers_longer": statistics.fmean(s["prefers_longer"] for s in per_seed
                                                                if s["prefers_longer"] is not None)}
    print(f"| alpha | {args.variant} validation pair accuracy (mean, 95% t-interval over seeds {args.seeds}) | "
          "prefers longer |\n|---|---|---|")
    for alpha, r in out.items():
        print(f"| {alpha} | {r['pair_accuracy']:.3f} [{r['interval'][0]:.3f}, {r['interval'][1]:.3f}] | "
              f"{r['prefers_longer']:.3f} |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "sweep.json").write_text(json.dumps({"args": vars(args), "alphas": out}, indent=1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", action="store_true", help="forward passes only: B and TD scales per alpha")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--variant", default="ava-p", choices=("ava-p", "ava-d"))
    ap.add_argument("--alphas", default="0.5,1,2,4", type=lambda s: [float(x) for x in s.split(",")])
    ap.add_argument("--beta", type=float, default=20.0)
    ap.add_argument("--seeds", default="0,1,2", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--n-train", type=int, default=96, help="training pairs fitted on")
    ap.add_argument("--n-val", type=int, default=64, help="training pairs held out for validation")
    ap.add_argument("--max-steps", type=int, default=-1, help="optimiser steps (-1: one epoch)")
    ap.add_argument("--n-replies", type=int, default=24, help="--scales: replies to measure on")
    ap.add_argument("--out", default="runs/ava-alpha-sweep")
    args = ap.parse_args()
    if args.scales:
        scales(args.model, args.alphas, args.beta, 1.0, args.n_replies)
    else:
        sweep(args)


if __name__ == "__main__":
    main()
