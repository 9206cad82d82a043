"""Is bf16 mixed precision harmless for training? fp32 against bf16 autocast (fp32 weights and
optimiser state), same seeds, on SmolLM2-135M-Instruct (issue 22):

- ``sft-demo``: SFT with afd demo's settings (its planted demonstrations, 2 epochs, lr 1e-4),
  the policy's samples on the demo's held-out prompts scored by its hidden reward (the IMDB gold
  in pi_0 standard deviations);
- ``sft-planted``: SFT with the planted-reward example's data (examples/plant-imdb.yaml's
  demonstrations at beta 1), the same settings, scored alike on prompts neither saw;
- ``init-sft``: the demo's init-sft reward model (MiniLM-L6 backbone, its pools): held-out
  accuracy, AUC and pair accuracy;
- ``rl``: one RLOO step (afd rl, 2 prompts x 4 samples): how far TRL's importance ratios
  exp(log pi - log pi_old) sit from 1 at the first step, and its KL estimate.

For each: the held-out loss before and after (fp32 either way, afd.training.heldout_loss), the
gold of the resulting policy, the loss curves side by side (``bf16-training-loss.png``), per
seed and across. A difference counts as harmless when it is within the seeds' own spread: the
bf16 - fp32 difference of a figure is compared with the standard deviation of the fp32 figure
over seeds. Writes bench/results/bf16-training.json / .md; ``eval_loss_delta_bf16`` (planted
SFT's final held-out loss, bf16 minus fp32, mean over seeds) is copied into train-cpu.json by
bench/train_step.py.

    python bench/bf16_training.py --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, machine, save, seeds_arg  # noqa: E402

REPO = HERE.parent
ARMS = {"fp32": False, "bf16": True}


def demo_inputs(work: Path) -> dict:
    """The demo's planted demonstrations, init-sft pools, held-out prompts and hidden reward
    (afd demo's own stages, seed 0, run once)."""
    from afd.demo import demo_study
    from afd.study import run_study

    config = demo_study(str(work / "demo"))
    keep = ("split", "plant", "sft", "rm_sft")
    config["stages"] = {k: v for k, v in config["stages"].items() if k in keep}
    config["claims"] = []
    run_study(config)
    seed = work / "demo" / "seed-0"
    shared = work / "demo" / "shared"
    return {"demos": str(seed / "plant" / "demos.jsonl"), "init_pool": str(seed / "split" / "train.jsonl"),
            "sft_pool": str(seed / "rm_sft" / "pool.jsonl"), "held_out": str(seed / "split" / "eval_prompts.jsonl"),
            "gold": f"z:{shared / 'candidates' / 'pool.jsonl'}:gold:{shared / 'gold'}"}


def planted_inputs(work: Path) -> dict:
    from afd.pipeline import run

    run(str(REPO / "examples" / "plant-imdb.yaml"), out=str(work / "plant-imdb"))
    base = work / "plant-imdb"
    return {"demos": str(base / "plant_beta1" / "demos.jsonl"), "gold": str(base / "gold"),
            "candidates": str(base / "candidates" / "pool.jsonl"), "prompts": str(base / "gold" / "prompts.jsonl")}


def sft_run(out: Path, demos: str, seed: int, bf16: bool, epochs: float, max_length: int, max_prompt: int) -> dict:
    from afd.sft import SFTConfig, sft

    m = sft(SFTConfig(out=str(out), model="smollm2-135m-instruct", data=demos, epochs=epochs, lr=1e-4, batch_size=8,
                      eval_fraction=0.1, max_length=max_length, max_prompt_length=max_prompt, logging_steps=1,
                      save_steps=10_000, seed=seed, device="cpu", bf16=bf16))
    history = json.loads((out / "sft" / "log_history.json").read_text())
    return {"eval_loss_before": m["eval_loss_before"], "eval_loss_after": m["eval_loss_after"],
            "train_loss": m["train_loss"], "seconds": m["seconds"], "model": m["model"],
            "curve": [(h["step"], h["loss"]) for h in history if "loss" in h]}


def policy_gold(out: Path, model: str, prompts: str, scorer: str, seed: int, k: int, tokens: int, limit: int) -> dict:
    """The policy's samples (bf16 sampling, as afd samples by default) scored by the gold."""
    from afd import rewards
    from afd.sampling import SampleConfig, read_pool, sample

    sample(SampleConfig(out=str(out), stage_name="gold_pool", model=model, data=prompts, num_samples=k,
                        max_new_tokens=tokens, seed=1000 + seed, max_examples=limit, max_prompt_length=256,
                        device="cpu"))
    rows = read_pool(out / "gold_pool")
    scores = rewards.load(scorer).score([r["prompt"] for r in rows], [r["response"] for r in rows],
                                        [r["token_ids"] for r in rows])
    return {"gold": sum(scores) / len(scores), "mean_tokens": sum(r["num_tokens"] for r in rows) / len(rows)}


def reward_run(out: Path, pools: dict, seed: int, bf16: bool) -> dict:
    from afd.reward import RewardConfig, reward

    m = reward(RewardConfig(out=str(out), model="minilm-l6", variant="init-sft", init_pool=pools["init_pool"],
                            sft_pool=pools["sft_pool"], epochs=3, lr=5e-5, batch_size=16, eval_fraction=0.15,
                            max_length=256, max_prompt_length=128, logging_steps=2, save_steps=10_000, seed=seed,
                            device="cpu", bf16=bf16))
    history = json.loads((out / "reward" / "log_history.json").read_text())
    return {k: m.get(k) for k in ("eval_accuracy", "eval_auc", "eval_pair_accuracy", "train_loss", "seconds")} | {
        "curve": [(h["step"], h["loss"]) for h in history if "loss" in h]}


def rl_ratios(out: Path, prompts: str, bf16: bool) -> dict:
    """One afd rl step: TRL's sequence importance ratios exp(log pi - log pi_old) at the first
    step (1 where the two passes agree) and its KL estimate to the reference."""
    import torch
    import trl

    seen = []
    real = trl.RLOOTrainer._compute_loss

    def spy(self, model, inputs):
        with torch.no_grad():
            ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
            mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
            logps, _, _ = self._get_per_token_logps_and_entropies(model, ids, mask, inputs["completion_ids"].shape[1])
            seen.append(((logps * inputs["completion_mask"]).sum(1) - inputs["old_logps"]).exp().tolist())
        return real(self, model, inputs)

    trl.RLOOTrainer._compute_loss = spy
    try:
        from afd.rl import RLConfig, rl

        m = rl(RLConfig(out=str(out), model="smollm2-135m-instruct", reward="vader", data=prompts, max_steps=1,
                        batch_size=8, num_generations=4, max_new_tokens=48, lr=3e-5, kl_coef=0.05, logging_steps=1,
                        save_steps=10_000, device="cpu", bf16=bf16))
    finally:
        trl.RLOOTrainer._compute_loss = real
    ratios = [r for batch in seen[:1] for r in batch]  # the first step's
    return {"ratio_max_deviation": max(abs(r - 1) for r in ratios), "ratio_mean": sum(ratios) / len(ratios),
            "kl_first_step": m.get("kl_last"), "seconds": m["seconds"]}


def spread(per_seed: list[dict], key: str) -> dict:
    fp = [s["fp32"][key] for s in per_seed if s["fp32"].get(key) is not None]
    bf = [s["bf16"][key] for s in per_seed if s["bf16"].get(key) is not None]
    deltas = [b - f for b, f in zip(bf, fp)]
    sd = statistics.stdev(fp) if len(fp) > 1 else None
    mean_delta = sum(deltas) / len(deltas) if deltas else None
    return {"fp32": fp, "bf16": bf, "delta_mean": mean_delta, "delta_per_seed": deltas, "fp32_sd_over_seeds": sd,
            "within_seed_spread": (abs(mean_delta) <= sd) if sd is not None and mean_delta is not None else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=seeds_arg, default=[0, 1, 2])
    ap.add_argument("--work", default="runs/bf16-training", help="run folders (resumable)")
    ap.add_argument("--parts", default="sft-demo,sft-planted,init-sft,rl")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    work = Path(args.work)
    parts = args.parts.split(",")
    result = {"machine": machine(), "seeds": args.seeds, "note": args.note, "parts": {}}
    demo = demo_inputs(work) if {"sft-demo", "init-sft", "rl"} & set(parts) else None
    planted = planted_inputs(work) if "sft-planted" in parts else None
    for part in parts:
        per_seed = []
        for seed in args.seeds:
            entry = {}
            for arm, bf16 in ARMS.items():
                out = work / part / f"seed-{seed}" / arm
                if part == "sft-demo":
                    e = sft_run(out, demo["demos"], seed, bf16, 2, 128, 64)
                    e.update(policy_gold(out, e["model"], demo["held_out"], demo["gold"], seed, 8, 40, 24))
                elif part == "sft-planted":
                    e = sft_run(out, planted["demos"], seed, bf16, 2, 128, 64)
                    gold = f"z:{planted['candidates']}:gold:{planted['gold']}"
                    # held-out prompts: past the 64 the candidates (and so the demonstrations) used
                    held = write_held_out(work / "planted_held_out.jsonl", planted["prompts"], 64, 32)
                    e.update(policy_gold(out, e["model"], held, gold, seed, 4, 48, 32))
                elif part == "init-sft":
                    e = reward_run(out, demo, seed, bf16)
                else:
                    if seed != args.seeds[0]:
                        continue  # one seed: a first step's ratios
                    e = rl_ratios(out, demo["held_out"], bf16)
                e.pop("model", None)
                entry[arm] = e
                print(f"{part} seed {seed} {arm}: " + json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                                                  for k, v in e.items() if k != "curve"}), flush=True)
            if entry:
                per_seed.append(entry)
        keys = {"sft-demo": ("eval_loss_after", "gold", "mean_tokens"),
                "sft-planted": ("eval_loss_after", "gold", "mean_tokens"),
                "init-sft": ("eval_accuracy", "eval_auc", "eval_pair_accuracy"),
                "rl": ("ratio_max_deviation", "kl_first_step")}[part]
        result["parts"][part] = {"per_seed": per_seed, **{k: spread(per_seed, k) for k in keys}}
    if "sft-planted" in result["parts"]:
        result["eval_loss_delta_bf16"] = result["parts"]["sft-planted"]["eval_loss_after"]["delta_mean"]
    plot(result, RESULTS / "bf16-training-loss.png")
    save("bf16-training", result, report(result))
    print(report(result))


def write_held_out(path: Path, prompts: str, skip: int, n: int) -> str:
    rows = Path(prompts).read_text().splitlines()[skip:skip + n]
    path.write_text("".join(r + "\n" for r in rows))
    return str(path)


def plot(result: dict, path: Path) -> None:
    from afd.plots import line_plot

    series = {}
    for part, r in result["parts"].items():
        for s in r["per_seed"][:1]:  # the first seed's curves, both arms, side by side
            for arm in ARMS:
                if "curve" in s.get(arm, {}):
                    steps, losses = zip(*s[arm]["curve"]) if s[arm]["curve"] else ((), ())
                    series[f"{part} {arm}"] = (list(steps), list(losses))
    if series:
        line_plot(path, series, "optimiser step", "training loss", "fp32 against bf16 mixed precision (seed "
                  f"{result['seeds'][0]})")


def report(result: dict) -> str:
    m = result["machine"]
    lines = ["# bf16 mixed precision against fp32: same seeds, same data", "",
             f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}; seeds {result['seeds']}. Held-out losses are "
             "measured in fp32 for both arms. 'within spread': |mean bf16 - fp32 difference| <= the fp32 "
             f"figure's standard deviation over seeds. {result.get('note', '')}", "",
             "| part | figure | fp32 (per seed) | bf16 (per seed) | mean difference | fp32 sd over seeds | within spread |",
             "|---|---|---|---|---|---|---|"]
    for part, r in result["parts"].items():
        for key, s in r.items():
            if key == "per_seed":
                continue
            f = lambda xs: ", ".join(f"{x:.4f}" for x in xs)  # noqa: E731
            sd = "–" if s["fp32_sd_over_seeds"] is None else f"{s['fp32_sd_over_seeds']:.4f}"
            delta = "–" if s["delta_mean"] is None else f"{s['delta_mean']:+.4f}"
            lines.append(f"| {part} | {key} | {f(s['fp32'])} | {f(s['bf16'])} | {delta} | {sd} | "
                         f"{'–' if s['within_seed_spread'] is None else s['within_seed_spread']} |")
    lines += ["", "![loss curves](bf16-training-loss.png)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
