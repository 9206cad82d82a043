"""Nothing lost, nothing mixed: a run killed or stopped anywhere (halfway through writing a
checkpoint, a full disk, a --force whose new inputs are wrong) is rerun with the same command and
ends where an uninterrupted run does; a stage is never reused or resumed on inputs that changed
since it was made; two identical runs train identical models."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from afd.sampling import POOL, PoolWriter, read_pool
from conftest import WORDS, killed_while_writing, prompt_rows, say_demos, user, write_jsonl
from test_cli import assert_one_sentence, run_cli


def error_line(err: str) -> str:
    """The error a stage stopped with mid-run: the last line, after its progress bars (no traceback)."""
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]

SFT = ["--lr", "3e-3", "--batch-size", "8", "--eval-fraction", "0.25", "--max-length", "64", "--max-prompt-length",
       "48", "--device", "cpu", "--max-steps", "6", "--save-steps", "2"]
# figures of the run's own clock, which no two runs share
TIMING = {"seconds", "train_runtime", "train_tokens_per_second", "tokens_per_second", "resumed", "resumed_from",
          "resumed_rows"}


def weights(folder: Path) -> dict:
    return {f"{f.name}/{k}": v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def assert_same_run(stage: Path, reference: Path, tolerance: float = 1e-6) -> dict:
    """The stage's model and metrics are the reference run's (timings and resume records aside);
    returns its metrics."""
    mine, theirs = (json.loads((s / "metrics.json").read_text()) for s in (stage, reference))
    drop = TIMING | {"model"}
    assert {k for k in mine if k not in drop} == {k for k in theirs if k not in drop}
    for k, v in theirs.items():
        if k not in drop:
            assert mine[k] == (pytest.approx(v, rel=1e-5, abs=1e-6) if isinstance(v, float) else v), k
    a, b = weights(stage / "model"), weights(reference / "model")
    assert a.keys() == b.keys() and a
    for k in b:
        torch.testing.assert_close(a[k], b[k], atol=tolerance, rtol=0)
    return mine


@pytest.fixture(scope="module")
def sft_reference(tmp_path_factory, afd_cache):
    """(demonstrations, the stage folder of an uninterrupted `afd sft` that kept its checkpoints)."""
    from afd import cli

    root = tmp_path_factory.mktemp("sft-reference")
    demos = write_jsonl(root / "demos.jsonl", say_demos())
    assert cli.main(["sft", "--data", demos, *SFT, "--out", str(root / "run"), "--keep-checkpoints"]) == 0
    return demos, root / "run" / "sft"


# ---------------------------------------------------------------------------------------------
# A checkpoint torn by a kill or a full disk


def test_sft_killed_while_writing_a_checkpoint_resumes_without_help(tmp_path, sft_reference, capsys):
    from afd.training import checkpoint_problem

    demos, reference = sft_reference
    argv = ["sft", "--data", demos, *SFT, "--out", tmp_path / "run"]
    killed_while_writing("checkpoint-4/optimizer.pt", argv, tmp_path)
    checkpoints = tmp_path / "run" / "sft" / "checkpoints"
    assert checkpoint_problem(checkpoints / "checkpoint-4") == "it has no trainer_state.json"
    assert checkpoint_problem(checkpoints / "checkpoint-2") is None

    code, _, err = run_cli(argv, capsys)  # the same command, nothing removed by hand
    assert code == 0, err
    assert "checkpoint-4 is incomplete" in err and "resuming from checkpoint-2" in err
    metrics = assert_same_run(tmp_path / "run" / "sft", reference)
    assert (metrics["resumed"], metrics["resumed_from"]) == (True, ["checkpoints/checkpoint-2"])


def cut_short(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


@pytest.mark.parametrize("damage, problem", [
    (lambda c: (c / "trainer_state.json").unlink(), "it has no trainer_state.json"),
    (lambda c: cut_short(c / "trainer_state.json"), "its trainer_state.json is cut short"),
    (lambda c: cut_short(c / "model.safetensors"), "its model.safetensors is cut short"),
    (lambda c: cut_short(c / "optimizer.pt"), "its optimizer.pt is cut short"),
    (lambda c: cut_short(c / "rng_state.pth"), "its rng_state.pth is cut short"),
    (lambda c: (c / "scheduler.pt").unlink(), "it has no scheduler.pt"),
    (lambda c: (c / "model.safetensors").unlink(), "it holds no model weights"),
], ids=["no-state", "state-cut", "weights-cut", "optimizer-cut", "rng-cut", "no-scheduler", "no-weights"])
def test_a_torn_checkpoint_is_told_from_a_whole_one(tmp_path, sft_reference, damage, problem):
    from afd.training import checkpoint_problem

    whole = sft_reference[1] / "checkpoints" / "checkpoint-6"
    assert checkpoint_problem(whole) is None
    torn = Path(shutil.copytree(whole, tmp_path / "checkpoint-6"))
    damage(torn)
    assert checkpoint_problem(torn) == problem


@pytest.mark.parametrize("how", ["python", "torch"])
def test_disk_full_while_sft_saves_is_one_sentence_and_the_rerun_resumes(tmp_path, sft_reference, capsys,
                                                                          monkeypatch, how):
    """ENOSPC as Python raises it, and as torch.save's zip writer does (a RuntimeError naming no
    cause, on a device with no space left)."""
    demos, reference = sft_reference
    argv = ["sft", "--data", demos, *SFT, "--out", tmp_path / "run"]
    real = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if str(f).endswith("checkpoint-4/optimizer.pt"):
            Path(f).write_bytes(b"PK\x03\x04")  # what was written before the disk filled up
            if how == "python":
                raise OSError(errno.ENOSPC, "No space left on device", str(f))
            monkeypatch.setattr("shutil.disk_usage", lambda path: shutil._ntuple_diskusage(10 ** 9, 10 ** 9, 0))
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        return real(obj, f, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(torch, "save", full_disk)
        code, _, err = run_cli(argv, capsys)
    assert code == 2
    assert_one_sentence(error_line(err), "no space left",
                        "checkpoint-4/optimizer.pt" if how == "python" else str(tmp_path))
    monkeypatch.undo()
    code, _, err = run_cli(argv, capsys)  # space freed: the same command resumes
    assert code == 0, err
    assert "resuming from checkpoint-2" in err
    assert_same_run(tmp_path / "run" / "sft", reference)


SAMPLE = ["--num-samples", "2", "--batch-size", "2", "--max-new-tokens", "4", "--device", "cpu"]


def test_disk_full_while_sampling_keeps_the_pool_and_the_rerun_completes_it(tmp_path, prompts_file, capsys,
                                                                            monkeypatch):
    argv = ["sample", "--data", prompts_file, *SAMPLE, "--out", tmp_path / "run"]
    real, batches = PoolWriter.write, []

    def full_disk(self, rows):
        batches.append(rows)
        if len(batches) == 3:  # a third of a line written, then no more space
            self.file.write(json.dumps(rows[0])[:30])
            self.file.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, rows)

    with monkeypatch.context() as m:
        m.setattr(PoolWriter, "write", full_disk)
        code, _, err = run_cli(argv, capsys)
    assert code == 2
    assert_one_sentence(error_line(err), "no space left", str(tmp_path / "run"))
    pool = tmp_path / "run" / "sample" / POOL
    assert len(read_pool(pool, tolerate_truncation=True)) == 4  # the two whole prompts are kept
    assert run_cli(argv, capsys)[0] == 0
    assert run_cli(["sample", "--data", prompts_file, *SAMPLE, "--out", tmp_path / "uninterrupted"], capsys)[0] == 0
    assert read_pool(pool) == read_pool(tmp_path / "uninterrupted" / "sample" / POOL)


# ---------------------------------------------------------------------------------------------
# --force keeps the old stage until the new one has finished


def finished_sample(tmp_path, data, capsys):
    args = ["sample", "--data", data, *SAMPLE, "--out", tmp_path / "run"]
    assert run_cli(args, capsys)[0] == 0
    stage = tmp_path / "run" / "sample"
    return args, stage, {p.name: p.read_bytes() for p in stage.iterdir()}


def contents(stage: Path) -> dict:
    return {p.name: p.read_bytes() for p in stage.iterdir()}


def test_force_checks_the_new_inputs_before_it_replaces_a_finished_stage(tmp_path, prompts_file, capsys):
    args, stage, before = finished_sample(tmp_path, prompts_file, capsys)
    for wrong, named in ((["--model", tmp_path / "nonexistent"], "nonexistent"),
                         (["--data", tmp_path / "missing.jsonl"], "missing.jsonl")):
        code, _, err = run_cli([*args, *wrong, "--force"], capsys)
        assert code == 2
        assert_one_sentence(err, named)
        assert contents(stage) == before  # the finished pool, metrics and config as they were
        assert [p.name for p in stage.parent.iterdir()] == ["sample"]  # nothing left aside
    # a forced run killed before it did any work: the next run puts the old stage back (and reuses it)
    os.rename(stage, stage.with_name(".sample.replaced"))
    stage.mkdir()
    (stage / "config.yaml").write_bytes(before["config.yaml"])
    assert run_cli(args, capsys)[0] == 0
    assert contents(stage) == before and [p.name for p in stage.parent.iterdir()] == ["sample"]
    # a forced run that finishes replaces the stage, and removes the old one
    assert run_cli([*args, "--temperature", "0.5", "--force"], capsys)[0] == 0
    assert b"temperature: 0.5" in (stage / "config.yaml").read_bytes()
    assert [p.name for p in stage.parent.iterdir()] == ["sample"]


def test_force_on_a_read_only_stage_is_one_sentence_and_keeps_it(tmp_path, prompts_file, capsys, monkeypatch):
    args, stage, before = finished_sample(tmp_path, prompts_file, capsys)
    if os.geteuid() == 0:  # root writes anywhere: the folder is made read-only as access() sees it
        access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != stage and access(p, mode, **kw))
    else:
        stage.chmod(0o555)
    try:
        code, _, err = run_cli([*args, "--temperature", "0.5", "--force"], capsys)
    finally:
        stage.chmod(0o755)
    assert code == 2
    assert_one_sentence(err, str(stage), "read-only", "--out")
    assert contents(stage) == before


# ---------------------------------------------------------------------------------------------
# A stage's inputs are part of it


def test_a_stage_is_never_reused_or_resumed_on_a_changed_data_file(tmp_path, make_jsonl, capsys):
    rows = prompt_rows()
    data = make_jsonl("prompts.jsonl", rows)
    args, stage, before = finished_sample(tmp_path, data, capsys)
    # rewritten with the same content (a newer time): still the stage's input, reused
    Path(data).write_text(Path(data).read_text())
    os.utime(data, ns=(Path(data).stat().st_atime_ns, Path(data).stat().st_mtime_ns + 10 ** 9))
    assert run_cli(args, capsys)[0] == 0 and contents(stage) == before
    # edited: one sentence naming the file, and the stage as it was
    rows[0]["prompt"] = "Tell me about the sea"
    write_jsonl(data, rows)
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert_one_sentence(err, "prompts.jsonl has changed", "--force")
    assert contents(stage) == before
    # an unfinished stage (killed before metrics.json) is not resumed on it either: never mixed
    (stage / "metrics.json").unlink()
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "prompts.jsonl has changed" in err
    # --force redoes it from the new file
    assert run_cli([*args, "--force"], capsys)[0] == 0
    assert {r["prompt"][0]["content"] for r in read_pool(stage / POOL) if r["prompt_id"] == "p-0"} == \
        {"Tell me about the sea"}


def test_a_stage_is_never_reused_on_a_changed_model_folder(tmp_path, prompts_file, capsys, afd_cache):
    from afd import models

    folder = shutil.copytree(models.resolve("tiny-random"), tmp_path / "policy")
    args = ["sample", "--data", prompts_file, *SAMPLE, "--model", folder, "--out", tmp_path / "run"]
    assert run_cli(args, capsys)[0] == 0
    config = Path(folder) / "generation_config.json"
    config.write_text(config.read_text().replace("}", ', "note": "retrained"}', 1))
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert_one_sentence(err, f"model {folder} has changed (generation_config.json)")


# ---------------------------------------------------------------------------------------------
# Two identical runs train identical models


def seeded_stages(tmp_path) -> dict:
    demos = write_jsonl(tmp_path / "demos.jsonl", say_demos(8))
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"Say {w}", "chosen": f"{w}!", "rejected": f"{w}?"}
                                                   for w in WORDS[:8]])
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"id": f"p-{i}", "prompt": f"Say {w}"}
                                                       for i, w in enumerate(WORDS[:4])])
    small = ["--device", "cpu", "--batch-size", "4", "--max-length", "48", "--max-prompt-length", "32"]
    return {"sft": ["sft", "--data", demos, "--max-steps", "2", "--lora-r", "2", *small],  # LoRA's random init
            "reward": ["reward", "--variant", "bt", "--data", pairs, "--max-steps", "2", *small],  # a new head
            "ava": ["ava", "--data", demos, "--max-steps", "2", *small],  # new heads
            "irft": ["irft", "--data", demos, "--max-steps", "1", "--max-new-tokens", "4", "--lora-r", "2", *small],
            "rl": ["rl", "--data", prompts, "--reward", "length", "--max-steps", "1", "--num-generations", "2",
                   "--max-new-tokens", "4", "--lora-r", "2", *small]}


@pytest.mark.parametrize("stage", ["sft", "reward", "ava", "irft", "rl"])
def test_two_identical_runs_train_identical_models(tmp_path, capsys, stage):
    argv = seeded_stages(tmp_path)[stage]
    for i, out in enumerate(("first", "second")):
        torch.manual_seed(1000 + i)  # as two processes would start: whatever is not seeded differs
        code, _, err = run_cli([*argv, "--out", tmp_path / out], capsys)
        assert code == 0, err
    folder = {"irft": "irft/stage_0/train", "rl": "rl"}.get(stage, stage)
    assert_same_run(tmp_path / "second" / folder, tmp_path / "first" / folder, tolerance=0)


# ---------------------------------------------------------------------------------------------
# The remaining kill cases: afd reward's save, afd eval, afd irl's reward stage


@pytest.mark.parametrize("torn", ["reward/checkpoints/checkpoint-4/model.safetensors", "reward/model/model.safetensors"],
                         ids=["checkpoint", "final-model"])
def test_reward_killed_while_saving_resumes_to_the_uninterrupted_model(tmp_path, capsys, torn):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"Talk about {w}", "chosen": f"The {w} is lovely.",
                                                    "rejected": f"{w} ugh"} for w in WORDS[:16]])
    argv = ["reward", "--variant", "bt", "--data", pairs, "--device", "cpu", "--batch-size", "4", "--max-steps", "6",
            "--save-steps", "2", "--eval-fraction", "0.25", "--max-length", "96", "--max-prompt-length", "64"]
    killed_while_writing(torn, [*argv, "--out", tmp_path / "run"], tmp_path)
    assert not (tmp_path / "run" / "reward" / "metrics.json").exists()
    code, _, err = run_cli([*argv, "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    assert run_cli([*argv, "--out", tmp_path / "uninterrupted"], capsys)[0] == 0
    metrics = assert_same_run(tmp_path / "run" / "reward", tmp_path / "uninterrupted" / "reward")
    assert metrics["resumed_from"] == (["checkpoints/checkpoint-2"] if torn.startswith("reward/check") else
                                       ["checkpoints/checkpoint-6"])


def test_eval_killed_while_scoring_reruns_to_the_uninterrupted_report(tmp_path, capsys, monkeypatch):
    pool = write_jsonl(tmp_path / "pool.jsonl", [
        {"prompt_id": f"p-{i}", "prompt": [user(f"Say {w}")], "sample_index": j, "response": f"{w} " * (j + 1)}
        for i, w in enumerate(WORDS[:6]) for j in range(4)])
    demos = write_jsonl(tmp_path / "demos.jsonl", say_demos(6))
    # a golden judge that kills its process the first time it scores (as a kill -9 mid-scoring would)
    (tmp_path / "judge.py").write_text(
        "import os, signal\n"
        "def gold(prompts, responses):\n"
        "    if not os.path.exists('scored-once'):\n"
        "        open('scored-once', 'w').close()\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return [float(len(r)) for r in responses]\n")
    argv = ["eval", "--pools", f"init={pool},sft={pool}", "--golden", "python:judge:gold", "--demos", demos,
            "--proxies", "length=length"]
    killed = subprocess.run([sys.executable, "-m", "afd", *argv, "--out", "run"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (tmp_path / "run" / "eval" / "metrics.json").exists()
    monkeypatch.chdir(tmp_path)
    for out in ("run", "uninterrupted"):  # the same command again, and a run never killed
        assert run_cli([*argv, "--out", out], capsys)[0] == 0
    resumed, reference = (json.loads((tmp_path / out / "eval" / "metrics.json").read_text())
                          for out in ("run", "uninterrupted"))
    assert {k: v for k, v in resumed.items() if k != "seconds"} == {k: v for k, v in reference.items() if k != "seconds"}
    assert (tmp_path / "run" / "eval" / "report.md").read_text() == \
        (tmp_path / "uninterrupted" / "eval" / "report.md").read_text()


def test_irl_killed_in_its_reward_stage_resumes_to_the_uninterrupted_run(tmp_path, capsys):
    demos = write_jsonl(tmp_path / "demos.jsonl", say_demos(8))
    argv = ["irl", "--data", demos, "--device", "cpu", "--iterations", "1", "--batch-size", "4",
            "--num-generations", "2", "--max-new-tokens", "6", "--max-length", "48", "--max-prompt-length", "32",
            "--eval-fraction", "0", "--max-steps", "2", "--reward-epochs", "2", "--save-steps", "2"]
    killed_while_writing("iter_0/reward/checkpoints/checkpoint-4/optimizer.pt", [*argv, "--out", tmp_path / "run"],
                         tmp_path)
    code, _, err = run_cli([*argv, "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    assert "checkpoint-4 is incomplete" in err
    assert run_cli([*argv, "--out", tmp_path / "uninterrupted"], capsys)[0] == 0
    irl, reference = tmp_path / "run" / "irl", tmp_path / "uninterrupted" / "irl"
    assert read_pool(irl / "iter_0" / "samples") == read_pool(reference / "iter_0" / "samples")
    rm = assert_same_run(irl / "iter_0" / "reward", reference / "iter_0" / "reward")
    assert rm["resumed_from"] == ["checkpoints/checkpoint-2"]
    assert_same_run(irl / "iter_0" / "rl", reference / "iter_0" / "rl")
