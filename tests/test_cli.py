"""The ``afd`` command and ``afd run`` pipelines: flags over YAML, one-sentence errors, references."""

import json
import subprocess
import sys

import pytest
import yaml

from afd import cli, pipeline
from afd.errors import AfdError
from afd.sampling import POOL, read_pool
from conftest import REPO


def write_yaml(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def run_cli(argv, capsys):
    """(exit status, stdout, stderr) of ``afd ARGV`` run in this process."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse: --help, or a flag it cannot parse
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_sentence(err, *names):
    line = err.strip()
    assert "\n" not in line and "Traceback" not in err, err
    assert line.startswith("afd ") and ": error: " in line, line
    for name in names:
        assert str(name) in line, (name, line)


# ---------------------------------------------------------------------------------------------
# Stage commands


def test_stage_help_lists_every_option(capsys):
    code, out, _ = run_cli(["sft", "--help"], capsys)
    assert code == 0
    for flag in ("--lr", "--max-steps", "--lora-r", "--save-steps", "--data", "--out", "--force", "--config"):
        assert flag in out
    assert "peak learning rate" in out and "(default: 2e-05)" in out
    code, out, _ = run_cli(["sample", "--help"], capsys)
    assert code == 0 and "--num-samples" in out and "--ignore-eos" in out


def test_flags_override_yaml(tmp_path, prompts_file, capsys):
    config = write_yaml(tmp_path / "sample.yaml", {
        "model": "tiny-random", "data": prompts_file, "num_samples": 2, "max_new_tokens": 3,
        "device": "cpu", "out": str(tmp_path / "from-yaml"), "temperature": 0.7})
    code, out, err = run_cli(["sample", "--config", config, "--num-samples", "3",
                              "--out", tmp_path / "from-flag"], capsys)
    assert code == 0, err
    stage = tmp_path / "from-flag" / "sample"
    assert not (tmp_path / "from-yaml").exists()
    resolved = yaml.safe_load((stage / "config.yaml").read_text())
    assert (resolved["num_samples"], resolved["max_new_tokens"], resolved["temperature"]) == (3, 3, 0.7)
    rows = read_pool(stage / POOL)
    assert len(rows) == 6 * 3 and all(r["num_tokens"] <= 3 for r in rows)
    printed = json.loads(out.strip().splitlines()[-1].removeprefix("[sample] "))
    assert printed["samples"] == 18


def test_unknown_yaml_key_is_one_sentence(tmp_path, prompts_file, capsys):
    config = write_yaml(tmp_path / "typo.yaml", {"data": prompts_file, "num_sampels": 3})
    code, out, err = run_cli(["sample", "--config", config, "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert_one_sentence(err, "'num_sampels'", "typo.yaml")
    assert not (tmp_path / "run").exists()


def test_wrong_yaml_value_type_names_key_and_file(tmp_path, demos_file, capsys):
    config = write_yaml(tmp_path / "bad.yaml", {"data": demos_file, "lr": "fast"})
    code, _, err = run_cli(["sft", "--config", config], capsys)
    assert code == 2
    assert_one_sentence(err, "'lr'", "bad.yaml", "'fast'")


def test_wrong_flag_type_names_the_option(tmp_path, prompts_file, capsys):
    code, _, err = run_cli(["sample", "--data", prompts_file, "--num-samples", "abc",
                            "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert_one_sentence(err, "'num_samples'", "'abc'", "command line")


@pytest.mark.parametrize("flag, value, option", [("--template", "jinja", "template"),
                                                 ("--long-prompts", "truncate", "long_prompts"),
                                                 ("--dtype", "float64", "dtype")])
def test_bad_choice_names_the_option(tmp_path, prompts_file, capsys, flag, value, option):
    code, _, err = run_cli(["sample", "--data", prompts_file, flag, value, "--device", "cpu",
                            "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert_one_sentence(err, f"'{option}'", value)


def test_missing_data_file_names_the_file(tmp_path, capsys):
    missing = tmp_path / "missing.jsonl"
    code, _, err = run_cli(["sft", "--data", missing, "--out", tmp_path / "run", "--device", "cpu"], capsys)
    assert code == 2
    assert_one_sentence(err, str(missing))


def test_missing_config_file_names_the_file(tmp_path, capsys):
    code, _, err = run_cli(["sample", "--config", tmp_path / "nope.yaml"], capsys)
    assert code == 2
    assert_one_sentence(err, "nope.yaml")


# ---------------------------------------------------------------------------------------------
# Pipelines


def test_example_pipeline_runs_end_to_end(tmp_path):
    out = tmp_path / "tiny"
    done = subprocess.run([sys.executable, "-m", "afd", "run", "examples/tiny.yaml", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[sft] " in done.stdout and "[sample] " in done.stdout
    assert (out / "sft" / "model" / "config.json").is_file()
    assert (out / "sft" / "loss.png").is_file()
    sft_metrics = json.loads((out / "sft" / "metrics.json").read_text())
    assert sft_metrics["eval_loss_after"] < sft_metrics["eval_loss_before"]
    sample_metrics = json.loads((out / "sample" / "metrics.json").read_text())
    assert (sample_metrics["prompts"], sample_metrics["samples"]) == (16, 64)
    resolved = yaml.safe_load((out / "sample" / "config.yaml").read_text())
    assert resolved["model"] == str(out / "sft" / "model")  # "@sft" resolved
    assert resolved["seed"] == 0 and resolved["device"] == "cpu"  # top-level defaults
    rows = read_pool(out / "sample" / POOL)
    assert len(rows) == 64
    assert read_pool(out / "sample" / "pool.parquet") == rows


def two_stage_pipeline(tmp_path, demos_file, prompts_file, **top):
    return write_yaml(tmp_path / "pipe.yaml", {
        "out": str(tmp_path / "yaml-out"), "seed": 3, "device": "cpu", **top,
        "stages": {
            "sft": {"data": demos_file, "max_steps": 1, "seed": 4},
            "policy_samples": {"kind": "sample", "model": "@sft", "data": prompts_file},
            "more_samples": {"kind": "sample", "model": "@sft", "data": "@policy_samples"},
        }})


def test_pipeline_references_resolve_to_earlier_artifacts(tmp_path, demos_file, prompts_file):
    config = two_stage_pipeline(tmp_path, demos_file, prompts_file)
    out = tmp_path / "flag-out"
    stages = pipeline.plan(config, out=str(out))
    assert [(name, kind) for name, kind, _ in stages] == [
        ("sft", "sft"), ("policy_samples", "sample"), ("more_samples", "sample")]
    sft_cfg, first, second = (cfg for _, _, cfg in stages)
    assert first.model == second.model == str(out / "sft" / "model")
    assert second.data == str(out / "policy_samples" / POOL)
    assert (sft_cfg.seed, first.seed) == (4, 3)  # a stage's own option beats the top-level default
    assert all(cfg.out == str(out) for cfg in (sft_cfg, first, second))
    assert (first.stage_name, second.stage_name) == ("policy_samples", "more_samples")
    assert pipeline.plan(config)[0][2].out == str(tmp_path / "yaml-out")  # without --out, the YAML's


def test_pipeline_unknown_stage_kind(tmp_path, demos_file, capsys):
    config = write_yaml(tmp_path / "pipe.yaml", {"stages": {"sft": {"data": demos_file},
                                                            "best": {"kind": "bestofn"}}})
    code, _, err = run_cli(["run", config, "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert_one_sentence(err, "pipe.yaml", "'best'", "'bestofn'", "sft, sample")
    assert not (tmp_path / "run").exists()  # planned in full before anything runs


@pytest.mark.parametrize("ref", ["@policy", "@nowhere"])
def test_pipeline_reference_to_a_later_or_missing_stage(tmp_path, demos_file, prompts_file, capsys, ref):
    config = write_yaml(tmp_path / "pipe.yaml", {"stages": {
        "samples": {"kind": "sample", "model": ref, "data": prompts_file},
        "policy": {"kind": "sft", "data": demos_file}}})
    code, _, err = run_cli(["run", config, "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert_one_sentence(err, "'samples'", "'model'", f"'{ref[1:]}'", "not an earlier stage")


def test_a_reference_with_a_path_reads_from_the_stages_artifact_lexically(tmp_path, capsys):
    """``@NAME/PATH`` is a path from stage NAME's artifact with ".." read lexically, so
    ``@irl/../iter_0/rl/model`` names irl's first policy although OUT/irl/model links elsewhere;
    an unknown NAME with a path is refused like a bare one."""
    from afd.errors import ConfigError
    from afd.pipeline import resolve_refs

    arts = {"irl": str(tmp_path / "irl" / "model"), "split": str(tmp_path / "split")}
    got = resolve_refs({"model": "@irl/../iter_0/rl/model", "data": "@split/train.jsonl",
                        "golden": "density-ratio:@irl,tiny-random"}, arts, "here")
    assert got == {"model": str(tmp_path / "irl" / "iter_0" / "rl" / "model"),
                   "data": str(tmp_path / "split" / "train.jsonl"),
                   "golden": f"density-ratio:{arts['irl']},tiny-random"}
    with pytest.raises(ConfigError, match="refers to stage 'irk', which is not an earlier stage"):
        resolve_refs({"model": "@irk/../iter_0/rl/model"}, arts, "here")


def test_pipeline_unknown_option_in_a_stage(tmp_path, demos_file, capsys):
    config = write_yaml(tmp_path / "pipe.yaml", {"stages": {"sft": {"data": demos_file, "epoch": 2}}})
    code, _, err = run_cli(["run", config], capsys)
    assert code == 2
    assert_one_sentence(err, "'epoch'", "pipe.yaml", "stage 'sft'")


def test_pipeline_without_stages(tmp_path, capsys):
    code, _, err = run_cli(["run", write_yaml(tmp_path / "pipe.yaml", {"out": "x"})], capsys)
    assert code == 2
    assert_one_sentence(err, "pipe.yaml", "'stages:'")


def test_pipeline_top_level_key_no_stage_knows(tmp_path, demos_file, prompts_file):
    config = two_stage_pipeline(tmp_path, demos_file, prompts_file, sede=1)
    with pytest.raises(AfdError, match="'sede'"):
        pipeline.plan(config, out=str(tmp_path / "run"))


def test_pipeline_stage_section_that_is_not_a_mapping(tmp_path, capsys):
    config = write_yaml(tmp_path / "pipe.yaml", {"stages": {"sft": "demos.jsonl"}})
    code, _, err = run_cli(["run", config, "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert_one_sentence(err, "pipe.yaml", "'sft'")


# ---------------------------------------------------------------------------------------------
# Options and inputs that once ended in a traceback or a stuck run folder


@pytest.mark.parametrize("flag, value", [("--lr-scheduler", "cosinus"), ("--batch-size", "0"),
                                         ("--grad-accum", "0"), ("--max-steps", "0"), ("--max-steps", "-2"),
                                         ("--lr", "0"), ("--lr", "-1e-5"), ("--warmup-ratio", "1"),
                                         ("--weight-decay", "-0.1"), ("--save-steps", "0"),
                                         ("--logging-steps", "0"), ("--eval-steps", "-1")])
def test_sft_option_out_of_range_is_one_sentence(tmp_path, demos_file, capsys, flag, value):
    args = ["sft", "--data", demos_file, "--out", tmp_path / "run", "--device", "cpu", f"{flag}={value}"]
    code, _, err = run_cli(args + ([] if flag == "--max-steps" else ["--max-steps", "1"]), capsys)
    assert code == 2
    assert_one_sentence(err, "'" + flag[2:].replace("-", "_") + "'")
    assert not (tmp_path / "run").exists()  # stopped before any work


@pytest.mark.parametrize("epochs", ["0", "-1"])
def test_zero_epochs_is_one_sentence_not_a_run_that_trains_nothing(tmp_path, demos_file, capsys, epochs):
    code, _, err = run_cli(["sft", "--data", demos_file, "--out", tmp_path / "run", f"--epochs={epochs}"], capsys)
    assert code == 2
    assert_one_sentence(err, "'epochs'")


@pytest.mark.parametrize("command", ["sft", "sample", "reward"])
@pytest.mark.parametrize("where", ["out", "inside"])
def test_out_naming_a_file_is_one_sentence_and_the_file_is_kept(tmp_path, demos_file, prompts_file, capsys,
                                                                 command, where):
    existing = tmp_path / "notes.txt"
    existing.write_text("my notes\n")
    out = existing if where == "out" else existing / "run"
    data = {"sft": ["--data", demos_file, "--max-steps", "1"], "sample": ["--data", prompts_file],
            "reward": ["--variant", "bt", "--data", demos_file]}[command]
    code, _, err = run_cli([command, *data, "--out", out], capsys)
    assert code == 2
    assert_one_sentence(err, "'out'", "notes.txt")
    assert existing.read_text() == "my notes\n"


def test_vllm_backend_is_one_sentence_when_unavailable(tmp_path, prompts_file, capsys):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed")
    code, _, err = run_cli(["sample", "--data", prompts_file, "--backend", "vllm", "--device", "cpu",
                            "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert_one_sentence(err, "vllm")


def test_a_run_that_failed_on_its_inputs_does_not_block_the_corrected_command(tmp_path, prompts_file, capsys):
    args = ["sample", "--out", tmp_path / "run", "--max-new-tokens", "2", "--num-samples", "1", "--device", "cpu"]
    code, _, _ = run_cli([*args, "--data", tmp_path / "prompt.jsonl"], capsys)
    assert code == 2
    code, _, err = run_cli([*args, "--data", prompts_file], capsys)
    assert code == 0, err


# ---------------------------------------------------------------------------------------------
# Issue 24: the remaining tracebacks and silent inputs


@pytest.mark.parametrize("command", ["sample", "sft"])
def test_device_cuda_without_cuda_is_one_sentence_and_writes_nothing(tmp_path, demos_file, capsys, command):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run_cli([command, "--data", demos_file, "--device", "cuda", "--max-steps", "1",
                            "--out", tmp_path / "run"] if command == "sft" else
                           [command, "--data", demos_file, "--device", "cuda", "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert_one_sentence(err, "'device'", "'cuda'", "no CUDA GPU", "--device cpu")
    assert not (tmp_path / "run").exists()  # no config.yaml saying cuda


def test_a_chat_template_that_rejects_the_turns_names_the_row_and_the_model(tmp_path, demos_file, capsys, afd_cache):
    import shutil

    from afd import models

    folder = shutil.copytree(models.resolve("tiny-random"), tmp_path / "no-system")
    (folder / "chat_template.jinja").write_text(  # as Gemma's template does
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}")
    code, _, err = run_cli(["sft", "--model", folder, "--data", demos_file, "--system-prompt", "Be brief.",
                            "--device", "cpu", "--max-steps", "1", "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert_one_sentence(err, "demonstration 'd-0'", demos_file, str(folder), "system, user",
                        "System role not supported")


def test_max_examples_zero_names_the_option(tmp_path, demos_file, capsys):
    code, _, err = run_cli(["sft", "--data", demos_file, "--max-examples", "0", "--device", "cpu",
                            "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert_one_sentence(err, "'max_examples'", "not 0")
    assert "limit" not in err


def test_pairs_whose_chosen_equals_rejected_are_reported(tmp_path, make_jsonl, capsys):
    same = [{"prompt": f"Say {w}", "chosen": f"{w}!", "rejected": f"{w}!"} for w in ("cat", "dog", "sun", "sea")]
    args = ["reward", "--variant", "bt", "--device", "cpu", "--max-steps", "1", "--out", tmp_path / "run"]
    code, _, err = run_cli([*args, "--data", make_jsonl("same.jsonl", same)], capsys)
    assert code == 2
    assert_one_sentence(err, "same.jsonl", "every pair", "chosen reply equal to its rejected", "ln 2")
    some = same[:2] + [{"prompt": "Say sky", "chosen": "sky!", "rejected": "no"},
                       {"prompt": "Say moon", "chosen": "moon!", "rejected": "no"}]
    code, _, err = run_cli([*args, "--data", make_jsonl("some.jsonl", some), "--stage-name", "some"], capsys)
    assert code == 0
    assert "afd: note: 2 of 4 pairs in" in err and "teach the reward model nothing" in err


def test_duplicate_demonstration_ids_stop_the_stages_that_pair_by_id(tmp_path, make_jsonl, capsys):
    demos = make_jsonl("demos.jsonl", [{"id": "a", "prompt": "Say x", "completion": "x!"},
                                       {"id": "b", "prompt": "Say y", "completion": "y!"},
                                       {"id": "a", "prompt": "Say z", "completion": "z!"}])
    for command in ("irl", "irft"):
        code, _, err = run_cli([command, "--data", demos, "--device", "cpu", "--out", tmp_path / "run"], capsys)
        assert code == 2
        assert_one_sentence(err, "demonstration id 'a' appears twice", demos)
    # SFT keys nothing by id: it trains on each row
    assert run_cli(["sft", "--data", demos, "--device", "cpu", "--max-steps", "1", "--eval-fraction", "0",
                    "--out", tmp_path / "run"], capsys)[0] == 0
