"""``afd demonstrate``: demonstrations from a demonstrator policy.

Demonstrations need not be written by people: a stronger model, or the same model given an
expert instruction, can write them (the AfD setting, METHODS §1). This stage samples the
demonstrator with ``instruction`` as the system message of every prompt that has none, and
writes ``demos.jsonl`` (prompt-completion format) whose prompts are the prompts *without*
the instruction: the student imitates the behaviour without ever seeing what caused it.
Only responses that ended with EOS are kept (a cut-off reply would teach stopping mid-way)
unless ``keep_truncated`` is set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from afd import dist
from afd.config import opt
from afd.errors import AfdError
from afd.runs import METRICS, StageDir, restore_on_failure, write_json
from afd.sampling import POOL, SampleConfig, read_pool, sample

DEMOS = "demos.jsonl"


@dataclass
class DemonstrateConfig(SampleConfig):
    instruction: str = opt("", "the demonstrator's system message, hidden from the demonstrations")
    keep_truncated: bool = opt(False, "also keep responses cut at max_new_tokens")

    def validate(self) -> None:
        super().validate()
        if not self.instruction:
            raise AfdError("afd demonstrate needs option 'instruction'")
        if self.system_prompt:
            raise AfdError("afd demonstrate takes 'instruction' in place of 'system_prompt'")


@restore_on_failure
def demonstrate(cfg: DemonstrateConfig) -> dict:
    """Run the stage: the demonstrator's pool, then OUT/demonstrate/demos.jsonl."""
    folder_cfg = replace(cfg, system_prompt=cfg.instruction)
    metrics = sample(folder_cfg, kind="demonstrate")  # sharded across ranks under a launcher
    return dist.on_main(_write_demos, cfg, StageDir(folder_cfg, "demonstrate").path, metrics)


def _write_demos(cfg: DemonstrateConfig, folder, metrics: dict) -> dict:
    demos_file = folder / DEMOS
    if not demos_file.is_file():  # written after metrics.json: a rerun completes it
        rows = read_pool(folder / POOL)
        kept = [r for r in rows if r["finish_reason"] == "stop" or cfg.keep_truncated]
        kept = [r for r in kept if r["response"].strip()]
        if not kept:
            raise AfdError(f"the demonstrator finished no response within max_new_tokens={cfg.max_new_tokens}; "
                           f"raise it or set keep_truncated")
        tmp = folder / f".{DEMOS}.tmp"
        with tmp.open("w") as f:
            for r in kept:
                prompt = [m for m in r["prompt"] if not (m["role"] == "system" and m["content"] == cfg.instruction)]
                suffix = "" if cfg.num_samples == 1 else f"#{r['sample_index']}"
                f.write(json.dumps({"id": f"{r['prompt_id']}{suffix}", "prompt": prompt,
                                    "completion": r["response"]}, ensure_ascii=False) + "\n")
        tmp.replace(demos_file)
    n = sum(1 for _ in demos_file.open())
    metrics = {**metrics, "demonstrations": n, "demonstrations_dropped": metrics["samples"] - n}
    write_json(folder / METRICS, metrics)
    return metrics
