"""Training speed on this machine: fp32 against bf16 mixed precision, and afd's RL step against
TRL's default path, in one run with the arms alternating (issue 22).

Arms, each timed per optimiser step by a Trainer callback (the first steps of a run are
warm-up and reported apart), SmolLM2-135M-Instruct unless said:

- ``sft``: afd sft on IMDB-continuation demonstrations (a ~40-token prompt, a ~120-token
  response, 8 a step), ``--no-bf16`` (fp32) against the default (bf16 autocast, fp32 weights);
- ``reward``: afd reward, ``init-sft`` (BCE) on smollm2 as backbone, the same shapes, both ways;
  ``reward-minilm``: the same on MiniLM-L6, the demo's backbone;
- ``rl``: one RLOO step, 2 prompts x 4 samples, up to ``--max-new-tokens`` new tokens, reward
  VADER: ``afd rl`` as it runs by default (afd's sampler on a bf16 copy, bf16 mixed precision)
  against TRL's default path, a plain ``trl.RLOOTrainer`` with its own defaults (``model.generate``
  and, as RLOOConfig defaults, bf16 mixed precision on CPU too), and ``afd rl --no-bf16`` (fp32).

Figures: seconds per step (median), tokens a second, and the share of the matmul ceiling that
the arm reaches (6 x parameters x tokens FLOPs a training step; the ceilings, fp32 and bf16, are
measured in the same run). Keys: ``sft_bf16_vs_fp32``, ``reward_bf16_vs_fp32``,
``rl_step_vs_trl``; ``eval_loss_delta_bf16`` comes from ``bench/bf16_training.py``'s result
(the harmlessness study), copied here when it exists.

    python bench/train_step.py --rounds 3            # -> bench/results/train-cpu.json / .md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, SHARED_DATA, machine, matmul_gflops, save  # noqa: E402

PROMPT_WORDS, RESPONSE_WORDS = 24, 90  # ~40 and ~120 smollm2 tokens


def imdb_rows(n: int) -> list[tuple[str, str]]:
    import csv

    with open(SHARED_DATA / "imdb_subset.csv", newline="") as f:
        texts = [r["review"].replace("<br />", " ").split() for r in csv.DictReader(f)]
    texts = [t for t in texts if len(t) >= PROMPT_WORDS + RESPONSE_WORDS][:n]
    return [("Continue this movie review: " + " ".join(t[:PROMPT_WORDS]),
             " ".join(t[PROMPT_WORDS:PROMPT_WORDS + RESPONSE_WORDS])) for t in texts]


def step_timer():
    """A Trainer callback recording each optimiser step's seconds and the tokens it saw."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self.tokens = [], []

        def on_step_begin(self, args, state, control, **kw):
            self.start, self.seen = time.perf_counter(), state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **kw):
            self.seconds.append(time.perf_counter() - self.start)
            self.tokens.append(state.num_input_tokens_seen - self.seen)

    return StepTimer()


def with_timer(fn):
    """Run ``fn()`` (a stage) with a StepTimer on every Trainer it makes; returns the timer."""
    import transformers

    timer, init = step_timer(), transformers.Trainer.__init__

    def patched(self, *a, **kw):
        kw["callbacks"] = list(kw.get("callbacks") or []) + [timer]
        init(self, *a, **kw)

    transformers.Trainer.__init__ = patched
    try:
        fn()
    finally:
        transformers.Trainer.__init__ = init
    return timer


def run_sft(folder: Path, demos: str, bf16: bool, steps: int, model: str):
    from afd.sft import SFTConfig, sft

    return with_timer(lambda: sft(SFTConfig(out=str(folder), model=model, data=demos, max_steps=steps, batch_size=8,
                                            lr=1e-5, eval_fraction=0.0, max_length=256, max_prompt_length=96,
                                            save_steps=10_000, logging_steps=1, device="cpu", bf16=bf16)))


def run_reward(folder: Path, pools: tuple[str, str], bf16: bool, steps: int, model: str):
    from afd.reward import RewardConfig, reward

    return with_timer(lambda: reward(RewardConfig(
        out=str(folder), model=model, variant="init-sft", init_pool=pools[0], sft_pool=pools[1], max_steps=steps,
        batch_size=8, lr=1e-5, eval_fraction=0.0, max_length=256, max_prompt_length=96, save_steps=10_000,
        logging_steps=1, device="cpu", bf16=bf16)))


def run_rl(folder: Path, prompts: str, arm: str, steps: int, new_tokens: int, batch: int = 8):
    """One RLOO run of ``steps`` steps; returns (step timer, generation seconds a step)."""
    import torch

    from afd.sampling import HFEngine

    gen, real = [], {}

    def timed(owner, name):
        fn = getattr(owner, name)
        real[(owner, name)] = fn

        def wrapped(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                gen.append(time.perf_counter() - t)
        setattr(owner, name, wrapped)

    import trl

    timed(HFEngine, "generate")
    timed(trl.RLOOTrainer, "_generate_single_turn")  # afd's subclass overrides it and calls HFEngine
    try:
        if arm == "trl":
            timer = with_timer(lambda: trl_default(folder, prompts, steps, new_tokens, batch))
        else:
            from afd.rl import RLConfig, rl

            timer = with_timer(lambda: rl(RLConfig(
                out=str(folder), model="smollm2-135m-instruct", reward="vader", data=prompts, max_steps=steps,
                batch_size=batch, num_generations=4, max_new_tokens=new_tokens, lr=3e-5, kl_coef=0.05, logging_steps=1,
                save_steps=10_000, device="cpu", bf16=arm != "afd-fp32")))
    finally:
        for (owner, name), fn in real.items():
            setattr(owner, name, fn)
    per_step = [0.0] * len(timer.seconds)
    # one generation a step: TRL's _generate_single_turn, or (afd's subclass overrides it) HFEngine's
    for i, g in enumerate(gen):
        if i < len(per_step):
            per_step[i] += g
    del torch
    return timer, per_step


def trl_default(folder: Path, prompts: str, steps: int, new_tokens: int, batch: int = 8) -> None:
    """A plain trl.RLOOTrainer with its defaults, the settings of afd's arm where they are the
    step's shape (batch, generations, tokens, lr, beta), VADER as its reward function."""
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer

    from afd import models, rewards

    vader = rewards.load("vader")
    rows = [json.loads(line) for line in Path(prompts).read_text().splitlines()]
    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": r["prompt"]}] for r in rows]})
    reward = lambda prompts, completions, **_: vader.score(  # noqa: E731
        prompts, [c[-1]["content"] if isinstance(c, list) else c for c in completions])
    args = RLOOConfig(output_dir=str(folder), max_steps=steps, per_device_train_batch_size=batch, num_generations=4,
                      max_completion_length=new_tokens, learning_rate=3e-5, beta=0.05, logging_steps=1,
                      save_strategy="no", use_cpu=True, report_to="none", log_completions=False)
    RLOOTrainer(model=models.resolve("smollm2-135m-instruct"), reward_funcs=reward, args=args,
                train_dataset=data).train()


def flops_share(seconds: float, tokens: int, params: int, ceiling: float) -> float:
    return 6 * params * tokens / seconds / 1e9 / ceiling


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of all arms, alternating")
    ap.add_argument("--steps", type=int, default=6, help="optimiser steps an arm a round (SFT, reward)")
    ap.add_argument("--warmup", type=int, default=2, help="first steps of a run left out (warm-up)")
    ap.add_argument("--rl-steps", type=int, default=3, help="RL steps an arm a round (the first is warm-up)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--rl-batch", type=int, default=8, help="sequences an RL step (num_generations 4 a prompt)")
    ap.add_argument("--name", default="train-cpu", help="results file name in bench/results")
    ap.add_argument("--parts", default="sft,reward,reward-minilm,rl")
    ap.add_argument("--note", default="", help="recorded with the figures (e.g. the machine's load)")
    args = ap.parse_args()
    import torch

    from afd import models
    from afd.runs import write_jsonl

    parts = args.parts.split(",")
    info = machine()
    ceilings = {"fp32": matmul_gflops(dtype=torch.float32), "bf16": matmul_gflops(dtype=torch.bfloat16)}
    params = {name: sum(p.numel() for p in models.load_causal_lm(name, "cpu", "float32")[0].parameters())
              for name in ("smollm2-135m-instruct",)}
    per: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = imdb_rows(64)
        demos = write_jsonl(tmp / "demos.jsonl", [{"id": f"d{i}", "prompt": p, "completion": c}
                                                   for i, (p, c) in enumerate(rows)])
        pool = lambda name, shift: write_jsonl(tmp / name, [  # noqa: E731
            {"prompt_id": f"d{i}", "prompt": [{"role": "user", "content": p}], "sample_index": 0,
             "response": " ".join(c.split()[shift:] + c.split()[:shift])} for i, (p, c) in enumerate(rows)])
        pools = (pool("init.jsonl", 7), pool("sft.jsonl", 0))
        prompts = write_jsonl(tmp / "prompts.jsonl", [{"id": f"p{i}", "prompt": p} for i, (p, _) in enumerate(rows)])
        for r in range(args.rounds):
            arms = []
            for part in parts:
                if part == "rl":
                    arms += [("rl", "afd"), ("rl", "trl"), ("rl", "afd-fp32")]
                else:
                    arms += [(part, "bf16"), (part, "fp32")]
            if r % 2:
                arms.reverse()  # the order alternates between rounds
            for part, arm in arms:
                out = tmp / f"{part}-{arm}-{r}"
                t0 = time.time()
                if part == "sft":
                    timer = run_sft(out, demos, arm == "bf16", args.steps, "smollm2-135m-instruct")
                    gen = [0.0] * len(timer.seconds)
                elif part.startswith("reward"):
                    backbone = "minilm-l6" if part == "reward-minilm" else "smollm2-135m-instruct"
                    timer = run_reward(out, pools, arm == "bf16", args.steps, backbone)
                    gen = [0.0] * len(timer.seconds)
                else:
                    timer, gen = run_rl(out, prompts, arm, args.rl_steps, args.max_new_tokens, args.rl_batch)
                skip = 1 if part == "rl" else args.warmup
                per.setdefault(f"{part}/{arm}", []).append(
                    {"seconds": timer.seconds[skip:], "tokens": timer.tokens[skip:], "generation": gen[skip:],
                     "first": timer.seconds[:skip]})
                print(f"round {r} {part}/{arm}: steps {[round(s, 2) for s in timer.seconds]} s "
                      f"({time.time() - t0:.0f} s with loading)", flush=True)
    summary = {}
    for key, runs in per.items():
        secs = [s for run in runs for s in run["seconds"]]
        toks = [t for run in runs for t in run["tokens"]]
        gen = [g for run in runs for g in run["generation"]]
        step = statistics.median(secs)
        tok = statistics.median(toks) if toks else 0
        part, arm = key.split("/")
        ceiling = ceilings["fp32" if arm.endswith("fp32") else "bf16"]
        summary[key] = {"step_seconds": step, "tokens_per_step": tok, "tokens_per_second": tok / step if tok else None,
                        "sequences_per_second": args.rl_batch / step if part == "rl" else None,
                        "generation_seconds": statistics.median(gen) if gen else None, "steps": len(secs),
                        "ceiling_share": flops_share(step, tok, params["smollm2-135m-instruct"], ceiling)
                        if tok and part in ("sft", "reward") else None}
    ratio = lambda slow, fast: summary[slow]["step_seconds"] / summary[fast]["step_seconds"] \
        if slow in summary and fast in summary else None  # noqa: E731
    result = {"machine": info, "note": args.note, "settings": vars(args), "ceilings_gflops": ceilings,
              "params": params, "runs": per, "summary": summary,
              "sft_bf16_vs_fp32": ratio("sft/fp32", "sft/bf16"),
              "reward_bf16_vs_fp32": ratio("reward/fp32", "reward/bf16"),
              "reward_minilm_bf16_vs_fp32": ratio("reward-minilm/fp32", "reward-minilm/bf16"),
              "rl_step_vs_trl": ratio("rl/trl", "rl/afd"), "rl_step_vs_afd_fp32": ratio("rl/afd-fp32", "rl/afd")}
    quality = RESULTS / "bf16-training.json"
    if quality.exists():
        result["eval_loss_delta_bf16"] = json.loads(quality.read_text()).get("eval_loss_delta_bf16")
    lines = ["# Training speed: fp32 against bf16 mixed precision, and afd's RL step against TRL's", "",
             f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['torch_threads']} threads. "
             f"Matmul ceilings measured in this run: {ceilings['fp32']:.0f} GFLOP/s fp32, {ceilings['bf16']:.0f} "
             f"GFLOP/s bf16. Medians over {args.rounds} rounds, arms alternating; SFT and reward models "
             f"{args.steps - args.warmup} steps a run after {args.warmup} warm-up steps, RL {args.rl_steps - 1} after 1. "
             f"{args.note}", "",
             "| arm | s / step | tokens / step | tokens / s | generation (s) | share of the ceiling |",
             "|---|---|---|---|---|---|"]
    for key, s in summary.items():
        share = "" if s["ceiling_share"] is None else f"{100 * s['ceiling_share']:.1f}%"
        gen = "" if not s["generation_seconds"] else f"{s['generation_seconds']:.2f}"
        lines.append(f"| {key} | {s['step_seconds']:.2f} | {s['tokens_per_step']:.0f} | "
                     f"{s['tokens_per_second'] or 0:.0f} | {gen} | {share} |")
    lines += ["", *(f"- `{k}`: {result[k]:.2f}" if isinstance(result.get(k), float) else f"- `{k}`: {result.get(k)}"
                    for k in ("sft_bf16_vs_fp32", "reward_bf16_vs_fp32", "reward_minilm_bf16_vs_fp32", "rl_step_vs_trl",
                              "rl_step_vs_afd_fp32", "eval_loss_delta_bf16"))]
    table = "\n".join(lines) + "\n"
    print(table)
    print("saved", save(args.name, result, table))


if __name__ == "__main__":
    main()
