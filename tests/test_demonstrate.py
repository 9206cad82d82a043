"""afd demonstrate: the demonstrator sees the instruction, the demonstrations do not."""

import json

import pytest

from afd.demonstrate import DemonstrateConfig, demonstrate
from afd.errors import AfdError
from afd.sampling import read_pool


def test_demonstrations_hide_the_instruction(tmp_path, prompts_file):
    cfg = DemonstrateConfig(out=str(tmp_path / "run"), model="tiny-random", device="cpu", data=prompts_file,
                            instruction="Be kind.", num_samples=2, max_new_tokens=8, keep_truncated=True)
    m = demonstrate(cfg)
    folder = tmp_path / "run" / "demonstrate"
    pool = read_pool(folder / "pool.jsonl")
    assert all(r["prompt"][0] == {"role": "system", "content": "Be kind."} for r in pool)
    demos = [json.loads(line) for line in (folder / "demos.jsonl").read_text().splitlines()]
    assert len(demos) == len(pool) == m["demonstrations"]
    assert all(all(msg["role"] != "system" for msg in d["prompt"]) for d in demos)
    assert len({d["id"] for d in demos}) == len(demos)  # K > 1: one id per sample
    assert json.loads((folder / "metrics.json").read_text())["demonstrations"] == len(demos)


def test_truncated_responses_are_dropped_by_default(tmp_path, prompts_file):
    cfg = DemonstrateConfig(out=str(tmp_path / "run"), model="tiny-random", device="cpu", data=prompts_file,
                            instruction="Be kind.", max_new_tokens=1, ignore_eos=True)
    with pytest.raises(AfdError, match="finished no response"):
        demonstrate(cfg)


def test_instruction_is_required():
    with pytest.raises(AfdError, match="instruction"):
        DemonstrateConfig(data="x.jsonl").validate()
