"""Time one RL step of ``afd rl`` (TRL's RLOO under afd) and say where its time goes.

The recipes' RLOO settings: SmolLM2-135M-Instruct, 2 prompts x 4 samples a step, up to 160
new tokens, a MiniLM-free reward (VADER, so the reward's own cost is ~0). Arms, alternating in
one run so that the machine's load falls on all alike:

- ``trl``: TRL's ``model.generate`` in fp32 (what afd did before issue 12);
- ``afd-fp32``: afd's sampler on the fp32 policy;
- ``afd-bf16``: afd's sampler on a bf16 copy of the policy (``generation_dtype`` auto on a
  CPU with native bf16); log-probabilities, ratios and the KL stay fp32.

Each arm runs ``--steps`` steps (the first is reported apart: warm-up); per step: the whole
step, generation, and the no-grad log-probability passes (old policy and reference).

    python bench/rl_step.py --rounds 2 --steps 3
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
from common import SHARED_DATA, machine, save  # noqa: E402

ARMS = {"trl": {"generation": "trl"}, "afd-fp32": {"generation": "afd", "generation_dtype": "float32"},
        "afd-bf16": {"generation": "afd", "generation_dtype": "bfloat16"}}


def prompts_file(folder: Path, n: int) -> str:
    import csv

    with open(SHARED_DATA / "imdb_subset.csv", newline="") as f:
        rows = [r["review"].replace("<br />", " ").split() for r in csv.DictReader(f)][:n]
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": "Continue this movie review:\n\n" + " ".join(r[:24])})
                            + "\n" for i, r in enumerate(rows)))
    return str(path)


def timed_arm(options: dict, data: str, steps: int, new_tokens: int, out: str) -> dict:
    import torch
    import trl

    from afd.rl import RLConfig, rl
    from afd.sampling import HFEngine

    spans = {"step": [], "generate": [], "logprob_no_grad": []}
    step_cls = trl.RLOOTrainer

    def timer(name, fn):
        def wrapped(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                if name == "logprob_no_grad":  # kept by the step it falls in (the steps so far)
                    if not torch.is_grad_enabled():
                        spans[name].append((len(spans["step"]), time.perf_counter() - t))
                else:
                    spans[name].append(time.perf_counter() - t)
        return wrapped

    saved = {"training_step": step_cls.training_step, "_get_per_token_logps_and_entropies":
             step_cls._get_per_token_logps_and_entropies, "hf_generate": HFEngine.generate}
    step_cls.training_step = timer("step", saved["training_step"])
    step_cls._get_per_token_logps_and_entropies = timer("logprob_no_grad",
                                                        saved["_get_per_token_logps_and_entropies"])
    gen_trl = step_cls._generate_single_turn  # TRL's path (afd's overrides it and calls HFEngine)
    step_cls._generate_single_turn = timer("generate", gen_trl)
    HFEngine.generate = timer("generate", saved["hf_generate"])
    try:
        rl(RLConfig(out=out, model="smollm2-135m-instruct", reward="vader", data=data, max_steps=steps,
                    batch_size=8, num_generations=4, max_new_tokens=new_tokens, lr=3e-5, kl_coef=0.05,
                    logging_steps=1, save_steps=1000, device="cpu", **options))
    finally:
        step_cls.training_step = saved["training_step"]
        step_cls._get_per_token_logps_and_entropies = saved["_get_per_token_logps_and_entropies"]
        step_cls._generate_single_turn = gen_trl
        HFEngine.generate = saved["hf_generate"]
    return spans


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="rounds of all arms, alternating")
    ap.add_argument("--steps", type=int, default=3, help="RL steps an arm a round (the first is warm-up)")
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--note", default="", help="recorded with the figures (e.g. the machine's load)")
    args = ap.parse_args()
    arms = args.arms.split(",")
    per_arm = {a: {"step": [], "generate": [], "logprob_no_grad": [], "first_step": []} for a in arms}
    with tempfile.TemporaryDirectory() as tmp:
        data = prompts_file(Path(tmp), 16)
        for r in range(args.rounds):
            for a in arms:
                spans = timed_arm(ARMS[a], data, args.steps, args.max_new_tokens, f"{tmp}/{a}-{r}")
                per_arm[a]["first_step"].append(spans["step"][0])
                for k in ("step", "generate"):
                    per_arm[a][k] += spans[k][1:]
                for k in range(1, args.steps):  # the no-grad passes of each step (old policy, reference)
                    per_arm[a]["logprob_no_grad"].append(sum(t for i, t in spans["logprob_no_grad"] if i == k))
                print(f"round {r} {a}: steps {[round(x, 1) for x in spans['step']]} s", flush=True)
    med = {a: {k: statistics.median(v) for k, v in d.items() if v} for a, d in per_arm.items()}
    base = med.get("trl", {}).get("step")
    lines = ["# One RL step of afd rl (TRL RLOO), SmolLM2-135M-Instruct", "",
             f"2 prompts x 4 samples a step, up to {args.max_new_tokens} new tokens, reward VADER; medians over "
             f"{args.rounds} rounds x {args.steps - 1} steps after a warm-up step, arms alternating. {args.note}", "",
             "| arm | step (s) | × vs trl | generation (s) | no-grad log-prob passes (s) | rest (s) | first step (s) |",
             "|---|---|---|---|---|---|---|"]
    for a, m in med.items():
        rest = m["step"] - m["generate"] - m["logprob_no_grad"]
        lines.append(f"| {a} | {m['step']:.1f} | {base / m['step'] if base else float('nan'):.2f} | "
                     f"{m['generate']:.1f} | {m['logprob_no_grad']:.1f} | {rest:.1f} | {m['first_step']:.1f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    path = save("rl-step-cpu", {"arms": per_arm, "medians": med, "machine": machine(), "note": args.note,
                                "settings": vars(args)}, table)
    print("saved", path)


if __name__ == "__main__":
    main()
