"""Coming from TRL, OpenRLHF or Axolotl: their flag names and YAML keys are read as afd's options
(afd/aliases.py), options that mean nothing to afd are named once, those it cannot honour stop
the stage in one sentence; --report-to takes a list and names a missing extra; --max-length alone
gives a consistent prompt length; the parser is built without importing a stage; no raw dict
reaches stdout. The YAML files are written here in TRL's documented layout (trl/scripts and its
CLI docs: ModelConfig, ScriptArguments, SFTConfig / RewardConfig over TrainingArguments)."""

import dataclasses
import importlib.util
import json
import subprocess
import sys
import time
import typing

import pytest
import yaml

from afd import aliases, cli
from afd.config import _base_type, _declared_from_source, from_dict
from afd.errors import AfdError
from afd.pipeline import STAGES, plan, stage
from conftest import REPO, WORDS, assistant, user, write_jsonl


def run_cli(argv, capsys):
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_sentence(err, *names):
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err and line.startswith("afd ") and ": error: " in line, err
    for name in names:
        assert name in line, (name, line)
    return line


# ---------------------------------------------------------------------------------------------
# Flags


def test_trl_and_transformers_flags_set_afd_options_in_both_spellings():
    _, cfg = cli.parse(["sft", "--model_name_or_path", "tiny-random", "--dataset_name", "d.jsonl",
                        "--learning_rate", "1e-3", "--num-train-epochs", "2", "--per_device_train_batch_size", "4",
                        "--gradient-accumulation-steps", "3", "--output_dir", "runs/x", "--lr_scheduler_type",
                        "linear", "--max_length", "96", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj",
                        "--dataset_train_split", "train_sft", "--warmup_ratio", "0.1", "--use_cpu",
                        "--gradient_checkpointing", "true"])
    assert (cfg.model, cfg.data, cfg.data_split, cfg.out) == ("tiny-random", "d.jsonl", "train_sft", "runs/x")
    assert (cfg.lr, cfg.epochs, cfg.batch_size, cfg.grad_accum, cfg.lr_scheduler) == (1e-3, 2.0, 4, 3, "linear")
    assert (cfg.max_length, cfg.lora_r, cfg.lora_target_modules) == (96, 4, "q_proj,v_proj")
    assert (cfg.warmup_ratio, cfg.device, cfg.gradient_checkpointing) == (0.1, "cpu", True)


def test_use_peft_is_lora_at_trls_default_rank_unless_lora_r_says_otherwise():
    assert cli.parse(["sft", "--use_peft"])[1].lora_r == 16
    assert cli.parse(["sft", "--use-peft", "true", "--lora_r", "8"])[1].lora_r == 8
    assert cli.parse(["sft", "--use_peft", "false", "--lora_r", "8"])[1].lora_r == 0  # TRL ignores lora_r then
    assert cli.parse(["sft"])[1].lora_r == 0


def test_max_length_alone_picks_a_prompt_length_that_fits():
    cfg = cli.parse(["sft", "--max-length", "256"])[1]
    assert cfg.max_prompt_length == 128 and cfg.max_prompt_length < cfg.max_length
    assert cli.parse(["sft"])[1].max_prompt_length == 512  # the old default, from max_length 1024
    with pytest.raises(AfdError, match="'max_prompt_length' must be smaller than 'max_length'"):
        cli.parse(["sft", "--max-length", "256", "--max-prompt-length", "300"])


def test_report_to_takes_a_list(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "wandb" else real(name, *a))
    assert cli.parse(["sft", "--report-to", "tensorboard,wandb"])[1].report_to == ["tensorboard", "wandb"]
    assert cli.parse(["sft", "--report_to", "tensorboard", "wandb"])[1].report_to == ["tensorboard", "wandb"]
    assert from_dict(stage("sft")[0], {"report_to": ["wandb"]}, "x.yaml").report_to == ["wandb"]
    with pytest.raises(AfdError, match="'none' cannot go with another"):
        cli.parse(["sft", "--report-to", "none,wandb"])


@pytest.mark.parametrize("destination", ["wandb", "trackio"])
def test_a_missing_log_destination_names_its_extra(tmp_path, demos_file, capsys, monkeypatch, destination):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == destination else real(name, *a))
    code, _, err = run_cli(["sft", "--data", demos_file, "--report-to", destination, "--out", tmp_path], capsys)
    assert code == 2
    one_sentence(err, f"'report_to' names {destination}", f"pip install 'afd[{destination}]'")
    assert not (tmp_path / "sft").exists()


def test_pyproject_has_an_extra_for_each_log_destination():
    import tomllib

    from afd.training import REPORT_TO

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name in REPORT_TO[1:]:
        assert any(dep.startswith(name) for dep in extras[name]), name


def test_one_option_given_twice_under_two_names_is_one_sentence(tmp_path, capsys):
    code, _, err = run_cli(["sft", "--lr", "1e-3", "--learning_rate", "2e-3", "--out", tmp_path], capsys)
    assert code == 2
    one_sentence(err, "'learning_rate'", "'lr'", "keep one")


@pytest.mark.parametrize("flags, option, why", [
    (["--packing"], "packing", "never packs"),
    (["--completion_only_loss", "false"], "completion_only_loss", "replies only"),
    (["--load_in_4bit"], "load_in_4bit", "quantise"),
    (["--use_dora", "true"], "use_dora", "plain LoRA"),
    (["--optim", "sgd"], "optim", "AdamW"),
    (["--eos_token", "<|im_end|>"], "eos_token", "EOS"),
    (["--warmup_steps", "100"], "warmup_steps", "warmup_ratio"),
    (["--push_to_hub"], "push_to_hub", "hf upload"),
])
def test_an_option_afd_cannot_honour_stops_the_stage_in_one_sentence(tmp_path, demos_file, capsys, flags, option, why):
    code, _, err = run_cli(["sft", "--data", demos_file, "--out", tmp_path, *flags], capsys)
    assert code == 2
    one_sentence(err, f"'{option}'", why)
    assert not (tmp_path / "sft").exists()


def test_harmless_values_of_unsupported_options_are_only_named():
    for name, (fine, _) in aliases.UNSUPPORTED.items():
        for value in fine:
            assert aliases.no_effect_with(name, value), (name, value)
    assert aliases.no_effect_with("adam_epsilon", "1e-08") and aliases.no_effect_with("packing", "False")
    assert not aliases.no_effect_with("max_grad_norm", 0.3)


def test_the_groups_do_not_overlap_and_renames_point_at_real_options():
    groups = [set(aliases.RENAMED), set(aliases.CONVERTED), set(aliases.UNSUPPORTED), set(aliases.NO_EFFECT)]
    assert sum(map(len, groups)) == len(set().union(*groups))
    options = {f.name for kind in STAGES for f in dataclasses.fields(stage(kind)[0])}
    assert set(aliases.RENAMED.values()) <= options


def test_the_parser_reads_every_option_as_the_config_class_declares_it():
    """The CLI builds its flags from the config classes' source (no import); this is what the
    imported dataclasses say, field for field."""
    for kind, (module, cls_name, _) in STAGES.items():
        cls = stage(kind)[0]
        hints = typing.get_type_hints(cls)
        real = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            base, _ = _base_type(hints[f.name])
            real.append((f.name, default, f.metadata.get("help", ""), (typing.get_origin(base) or base).__name__))
        declared = [(o.name, o.default, o.help, o.kind) for o in _declared_from_source(module, cls_name)]
        assert declared == real, kind


def test_help_imports_no_stage_and_takes_well_under_a_second():
    code = ("import sys, time; t = time.perf_counter(); from afd import cli; from afd.pipeline import STAGES\n"
            "for argv in (['--help'], *([s, '--help'] for s in (*STAGES, 'run', 'study', 'demo'))):\n"
            "    try: cli.main(argv)\n"
            "    except SystemExit: pass\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'trl', 'datasets') if m in sys.modules)\n"
            "print(heavy, time.perf_counter() - t, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    heavy, seconds = out.stderr.strip().rsplit("] ", 1)
    assert heavy == "[" and "--learning_rate" in out.stdout
    best = min(_timed([sys.executable, "-m", "afd", "sft", "--help"]) for _ in range(3))
    assert best < 1.0, best


def _timed(argv):
    start = time.perf_counter()
    subprocess.run(argv, capture_output=True, cwd=REPO, check=True)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# A TRL YAML, as TRL's docs write one, run as far as its options mean something


def trl_messages(n=24):
    """TRL's conversational language-modelling layout (e.g. trl-lib/Capybara): one `messages` list."""
    return [{"messages": [user(f"Say {w}"), assistant(f"{w}!")]} for w in (WORDS * 2)[:n]]


def test_a_trl_sft_yaml_runs_and_names_the_options_it_ignores(tmp_path, capsys):
    data = write_jsonl(tmp_path / "capybara.jsonl", trl_messages())
    config = tmp_path / "trl_sft.yaml"
    config.write_text(yaml.safe_dump({
        "model_name_or_path": "tiny-random", "dataset_name": data, "dataset_train_split": "train",
        "learning_rate": 3.0e-3, "num_train_epochs": 1, "packing": False, "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 1, "gradient_checkpointing": False, "logging_steps": 1, "eval_strategy": "steps",
        "eval_steps": 2, "output_dir": str(tmp_path / "out"), "report_to": "none", "max_length": 64, "use_peft": True,
        "lora_r": 4, "lora_alpha": 8, "lora_target_modules": ["q_proj", "v_proj"], "bf16": True,
        "push_to_hub": False, "run_name": "capybara-sft", "save_total_limit": 1, "seed": 42, "use_cpu": True,
        "dataset_text_field": "text", "completion_only_loss": None, "max_steps": 2,
    }, sort_keys=False))
    code, out, err = run_cli(["sft", "--config", config], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    notes = [line for line in err.splitlines() if line.startswith("afd: note: ignoring")]
    assert len(notes) == 1
    for name in ("packing", "eval_strategy", "push_to_hub", "run_name", "save_total_limit", "dataset_text_field"):
        assert f"'{name}'" in notes[0]
    assert "'bf16'" not in notes[0]  # TRL's bf16 is afd's own option (mixed precision)
    resolved = yaml.safe_load((tmp_path / "out" / "sft" / "config.yaml").read_text())
    assert (resolved["lr"], resolved["lora_r"], resolved["lora_alpha"], resolved["lora_target_modules"]) == \
        (3e-3, 4, 8, "q_proj,v_proj")
    assert (resolved["max_length"], resolved["max_prompt_length"], resolved["seed"], resolved["device"]) == (64, 32, 42, "cpu")
    assert resolved["bf16"] is True
    assert json.loads(out.strip().splitlines()[-1].removeprefix("[sft] "))["steps"] == 2


def test_flags_override_a_trl_yaml_under_either_name(tmp_path):
    config = tmp_path / "trl.yaml"
    config.write_text(yaml.safe_dump({"learning_rate": 1e-3, "use_peft": True, "lora_r": 32}))
    cfg = cli.parse(["sft", "--config", str(config), "--lr", "5e-4"])[1]
    assert (cfg.lr, cfg.lora_r) == (5e-4, 32)  # --use_peft's rank 16 never beats the YAML's lora_r
    assert cli.parse(["sft", "--config", str(config), "--use_peft", "false"])[1].lora_r == 0


def test_a_trl_reward_yaml_sets_the_reward_stage(tmp_path):
    config = tmp_path / "trl_reward.yaml"
    config.write_text(yaml.safe_dump({
        "model_name_or_path": "tiny-random", "dataset_name": "trl-lib/ultrafeedback_binarized",
        "dataset_train_split": "train_prefs", "per_device_train_batch_size": 8, "num_train_epochs": 1,
        "learning_rate": 1.0e-5, "eval_strategy": "steps", "eval_steps": 50, "max_length": 2048,
        "output_dir": "Qwen2-0.5B-Reward", "center_rewards_coefficient": None, "disable_dropout": True}))
    cfg = cli.parse(["reward", "--config", str(config), "--variant", "bt"])[1]
    assert (cfg.data, cfg.data_split, cfg.lr, cfg.max_length, cfg.max_prompt_length) == \
        ("trl-lib/ultrafeedback_binarized", "train_prefs", 1e-5, 2048, 1024)
    config.write_text(yaml.safe_dump({"center_rewards_coefficient": 0.01}))
    with pytest.raises(AfdError, match="'center_rewards_coefficient'.*no centring term"):
        cli.parse(["reward", "--config", str(config)])


def test_a_pipelines_top_level_trl_names_are_defaults_of_its_stages(tmp_path, demos_file, prompts_file):
    stages = plan({"learning_rate": 1e-3, "max_length": 128, "stages": {
        "sft": {"data": demos_file}, "sample": {"data": prompts_file}}}, out=str(tmp_path))
    (_, _, sft_cfg), (_, _, sample_cfg) = stages
    assert (sft_cfg.lr, sft_cfg.max_length, sft_cfg.max_prompt_length) == (1e-3, 128, 64)
    assert sample_cfg.max_prompt_length == 1024  # sampling has no learning rate nor max_length


# ---------------------------------------------------------------------------------------------
# Axolotl's YAML: base_model, datasets (one), sequence_len, micro_batch_size, num_epochs


def test_an_axolotl_yaml_sets_model_data_and_its_conversation_mapping(tmp_path):
    config = tmp_path / "axolotl.yaml"
    config.write_text(yaml.safe_dump({
        "base_model": "tiny-random", "sequence_len": 256, "micro_batch_size": 2, "gradient_accumulation_steps": 4,
        "num_epochs": 3, "learning_rate": 2e-4, "lr_scheduler": "cosine", "val_set_size": 0.1, "output_dir": "out",
        "adapter": "lora", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "lora_target_linear": True,
        "sample_packing": False, "train_on_inputs": False, "flash_attention": True, "wandb_project": None,
        "datasets": [{"path": "chats.jsonl", "type": "chat_template", "field_messages": "dialog",
                      "message_property_mappings": {"role": "speaker", "content": "text"},
                      "roles": {"assistant": ["bot", "agent"], "user": ["customer"]}}]}))
    cfg = cli.parse(["sft", "--config", str(config)])[1]
    assert (cfg.model, cfg.max_length, cfg.batch_size, cfg.grad_accum, cfg.epochs) == ("tiny-random", 256, 2, 4, 3.0)
    assert (cfg.eval_fraction, cfg.lora_r, cfg.data, cfg.columns) == (0.1, 8, "chats.jsonl", {"messages": "dialog"})
    assert cfg.message_keys == {"role": "speaker", "content": "text"}
    assert cfg.roles == {"bot": "assistant", "agent": "assistant", "customer": "user"}
    assert cfg.assistant_only_loss  # Axolotl trains every assistant turn
    config.write_text(yaml.safe_dump({"sample_packing": True}))
    with pytest.raises(AfdError, match="'sample_packing'"):
        cli.parse(["sft", "--config", str(config)])


# ---------------------------------------------------------------------------------------------
# Output


def test_afd_sft_prints_only_its_summary_on_stdout(tmp_path, demos_file, capsys):
    code, out, err = run_cli(["sft", "--data", demos_file, "--out", tmp_path, "--max-steps", "2",
                              "--eval-fraction", "0.2", "--device", "cpu"], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[sft] {"), out  # no Trainer dict ({'eval_loss': ...})
    assert "{'eval_loss'" not in err


def test_a_pipelines_top_level_option_no_stage_uses_is_named(tmp_path, demos_file, capsys):
    plan({"run_name": "mine", "stages": {"sft": {"data": demos_file}}}, out=str(tmp_path))
    assert "ignoring 'run_name' (the pipeline config)" in capsys.readouterr().err
    with pytest.raises(AfdError, match="'packing'"):
        plan({"packing": True, "stages": {"sft": {"data": demos_file}}}, out=str(tmp_path))
