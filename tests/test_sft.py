"""afd.sft: the loss falls, only response tokens are trained on, the saved policy is the trained
one (LoRA merged), and a run resumed from a checkpoint ends where an uninterrupted one does."""

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

from afd import models
from afd.data import DataConfig, Demo, load_demos, split
from afd.errors import AfdError
from afd.sft import SFTConfig, sft, tokenize_demos
from afd.training import Collator
from conftest import say_demos, user, write_jsonl

# 24 train / 8 eval demonstrations, 3 steps an epoch: learnable in 15 steps at this rate.
BASE = dict(model="tiny-random", lr=3e-3, epochs=5, batch_size=8, eval_fraction=0.25, max_length=64,
            max_prompt_length=48, device="cpu", seed=0)


def sft_config(out, data, **options):
    return SFTConfig(**{**BASE, "out": str(out), "data": str(data), **options})


def eval_loss_of(folder, cfg):
    """Token-mean NLL of the saved policy on the eval split (one batch, as Trainer computes it)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = models.load_tokenizer("tiny-random")
    demos, _ = load_demos(cfg.data_config())
    _, held_out = split(demos, cfg.eval_fraction, cfg.seed)
    rows, _ = tokenize_demos(tok, held_out, cfg)
    assert len(rows) <= cfg.batch_size
    with torch.no_grad():
        return model(**Collator(tok.pad_token_id)(rows)).loss.item()


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, afd_cache):
    root = tmp_path_factory.mktemp("sft-full")
    cfg = sft_config(root / "run", write_jsonl(root / "demos.jsonl", say_demos()))
    return cfg, sft(cfg), root / "run" / "sft"


def test_sft_lowers_eval_loss_and_writes_its_artifacts(full_run):
    cfg, metrics, stage = full_run
    assert metrics["eval_loss_before"] == pytest.approx(5.56, abs=0.2)  # ~ln(259): untrained
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"] - 1.0
    assert (metrics["train_examples"], metrics["eval_examples"], metrics["steps"]) == (24, 8, 15)
    assert metrics["resumed"] is False
    assert json.loads((stage / "metrics.json").read_text()) == metrics
    assert (stage / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((stage / "log_history.json").read_text())
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    assert evals[-1] == (15, pytest.approx(metrics["eval_loss_after"]))
    assert any("loss" in h for h in history)  # the train curve of loss.png


def test_log_history_keeps_the_eval_loss_before_training(full_run):
    _, metrics, stage = full_run
    history = json.loads((stage / "log_history.json").read_text())
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    assert evals[0] == (0, pytest.approx(metrics["eval_loss_before"]))


def test_saved_policy_is_the_trained_model(full_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, metrics, stage = full_run
    folder = stage / "model"
    assert metrics["model"] == str(folder)
    assert not (folder / "adapter_config.json").exists()
    assert type(AutoModelForCausalLM.from_pretrained(folder)).__name__ == "LlamaForCausalLM"
    assert AutoTokenizer.from_pretrained(folder).chat_template  # the policy renders prompts the same way
    assert eval_loss_of(folder, cfg) == pytest.approx(metrics["eval_loss_after"], abs=1e-4)


def test_response_tokens_metric_counts_response_and_eos_only(full_run, tiny):
    cfg, metrics, _ = full_run
    _, tok = tiny
    demos, _ = load_demos(cfg.data_config())
    train, _ = split(demos, cfg.eval_fraction, cfg.seed)
    expected = sum(len(models.encode_response(tok, d.prompt, d.response)) for d in train)
    assert metrics["response_tokens"] == expected
    assert expected == sum(len(d.response) + 1 for d in train)  # ascii bytes + EOS
    assert metrics["responses_truncated"] == 0 and metrics["prompts_dropped_too_long"] == 0


@pytest.mark.parametrize("template", ["chat", "raw"])
def test_labels_are_ignored_exactly_on_prompt_tokens(tiny, make_jsonl, template):
    _, tok = tiny
    demos, _ = load_demos(DataConfig(make_jsonl("demos.jsonl", say_demos(4) + [
        {"id": "conv", "prompt": [user("a"), {"role": "assistant", "content": "b"}, user("c")], "completion": "d"}])))
    cfg = SFTConfig(template=template, max_length=200, max_prompt_length=100)
    rows, counts = tokenize_demos(tok, demos, cfg)
    assert counts == {"prompts_dropped_too_long": 0, "responses_truncated": 0, "earlier_turns_trained": 0}
    for d, row in zip(demos, rows):
        prompt = models.encode_prompt(tok, d.prompt, template)
        response = models.encode_response(tok, d.prompt, d.response, template)
        assert row["input_ids"] == prompt + response
        assert row["labels"] == [-100] * len(prompt) + response
        assert row["labels"][-1] == tok.eos_token_id


def test_pad_collator_masks_padding():
    batch = Collator(pad_id=0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
                                   {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_truncation_and_long_prompts_are_counted(tiny, make_jsonl):
    _, tok = tiny
    rows = say_demos(3) + [{"id": "long-response", "prompt": "Say it", "completion": "it " * 40},
                           {"id": "long-prompt", "prompt": "Say " + "very " * 20 + "much", "completion": "ok"}]
    demos, _ = load_demos(DataConfig(make_jsonl("demos.jsonl", rows)))
    cfg = SFTConfig(max_length=48, max_prompt_length=40)
    out, counts = tokenize_demos(tok, demos, cfg)
    assert counts == {"prompts_dropped_too_long": 1, "responses_truncated": 1, "earlier_turns_trained": 0}
    assert len(out) == 4 and all(len(r["input_ids"]) <= 48 for r in out)
    cut = out[3]
    assert len(cut["input_ids"]) == 48 and cut["labels"][-1] != tok.eos_token_id  # cut before EOS
    assert all(r["labels"][-1] == tok.eos_token_id for r in out[:3])
    with pytest.raises(AfdError, match="demonstration 'long-prompt' .* over max_prompt_length=40"):
        tokenize_demos(tok, demos, SFTConfig(max_length=48, max_prompt_length=40, long_prompts="error"))


def test_lora_trains_and_saves_a_merged_plain_model(tmp_path, demos_file, afd_cache):
    from transformers import AutoModelForCausalLM

    cfg = sft_config(tmp_path / "run", demos_file, lora_r=4, lr=5e-2)
    metrics = sft(cfg)
    # Adapters cannot touch the (tied) embeddings, so the loss falls less than in full
    # fine-tuning (about 0.35 nats); 0.2 is far beyond any noise in a deterministic eval.
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"] - 0.2
    folder = tmp_path / "run" / "sft" / "model"
    assert not (folder / "adapter_config.json").exists()
    assert not (folder / "adapter_model.safetensors").exists()
    weights = load_file(folder / "model.safetensors")
    assert not any("lora" in k or "base_layer" in k for k in weights)
    base = load_file(afd_cache / "models" / "tiny-random" / "model.safetensors")
    assert set(weights) == set(base)
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(weights[key], base[key])  # the adapter was merged in
    assert torch.equal(weights["model.embed_tokens.weight"], base["model.embed_tokens.weight"])  # not adapted
    assert type(AutoModelForCausalLM.from_pretrained(folder)).__name__ == "LlamaForCausalLM"
    assert eval_loss_of(folder, cfg) == pytest.approx(metrics["eval_loss_after"], abs=1e-4)


def test_resumed_sft_ends_where_an_uninterrupted_run_does(tmp_path, demos_file):
    cfg = sft_config(tmp_path / "run", demos_file, max_steps=6, save_steps=2, keep_checkpoints=True)
    stage = tmp_path / "run" / "sft"
    first = sft(cfg)
    assert (first["steps"], first["resumed"]) == (6, False)
    assert sorted(p.name for p in (stage / "checkpoints").iterdir()) == ["checkpoint-4", "checkpoint-6"]
    uninterrupted = load_file(stage / "model" / "model.safetensors")

    # Killed after the last checkpoint, before metrics.json: nothing left to train.
    (stage / "metrics.json").unlink()
    again = sft(cfg)
    assert (again["steps"], again["resumed"]) == (6, True)

    # Killed after checkpoint-4: steps 5 and 6 are trained again, from the checkpoint's state.
    (stage / "metrics.json").unlink()
    shutil.rmtree(stage / "checkpoints" / "checkpoint-6")
    resumed = sft(cfg)
    assert (resumed["steps"], resumed["resumed"], resumed["resumed_from"]) == (6, True, ["checkpoints/checkpoint-4"])
    assert resumed["eval_loss_after"] == pytest.approx(first["eval_loss_after"], abs=1e-5)
    # metrics.json describes the whole run, not the part after the resume
    assert resumed["eval_loss_before"] == first["eval_loss_before"]
    assert resumed["train_loss"] == pytest.approx(first["train_loss"], rel=1e-5)
    assert resumed["train_tokens"] == first["train_tokens"]
    weights = load_file(stage / "model" / "model.safetensors")
    for name, value in uninterrupted.items():
        torch.testing.assert_close(weights[name], value, atol=1e-6, rtol=0)


def test_a_finished_stage_drops_its_checkpoints_unless_asked_to_keep_them(tmp_path, demos_file, monkeypatch):
    kept = sft(sft_config(tmp_path / "kept", demos_file, max_steps=4, save_steps=2, keep_checkpoints=True))
    assert sorted(p.name for p in (tmp_path / "kept" / "sft" / "checkpoints").iterdir()) == \
        ["checkpoint-2", "checkpoint-4"]
    cfg = sft_config(tmp_path / "run", demos_file, max_steps=4, save_steps=2)
    metrics = sft(cfg)
    stage = tmp_path / "run" / "sft"
    assert not (stage / "checkpoints").exists()
    assert (stage / "model" / "model.safetensors").is_file() and metrics["steps"] == kept["steps"] == 4
    # keeping them or not changes nothing the stage makes: the finished stage is reused either way
    monkeypatch.setattr("transformers.Trainer.train", lambda *a, **k: pytest.fail("a finished stage trained again"))
    assert sft(sft_config(cfg.out, cfg.data, max_steps=4, save_steps=2, keep_checkpoints=True)) == metrics


def test_finished_sft_is_reused(full_run, monkeypatch):
    cfg, metrics, stage = full_run

    def no_training(*args, **kwargs):
        raise AssertionError("a finished stage must not train again")

    monkeypatch.setattr("transformers.Trainer.train", no_training)
    assert sft(cfg) == metrics
    with pytest.raises(AfdError, match=r"different options \(lr\)"):
        sft(sft_config(cfg.out, cfg.data, lr=1e-3))
    # a folder written before an option existed (here: without lora_dropout) is still this
    # stage while the option stays at its default, and not once it is set to something else
    config = stage / "config.yaml"
    saved = yaml.safe_load(config.read_text())
    del saved["lora_dropout"]
    config.write_text(yaml.safe_dump(saved))
    assert sft(cfg) == metrics
    with pytest.raises(AfdError, match=r"different options \(lora_dropout\)"):
        sft(sft_config(cfg.out, cfg.data, lora_dropout=0.2))


@pytest.mark.parametrize("options, option", [(dict(eval_fraction=1.0), "eval_fraction"),
                                             (dict(max_prompt_length=64), "max_prompt_length"),
                                             (dict(template="jinja"), "template"),
                                             (dict(report_to="mlflow"), "report_to")])
def test_sft_config_rejects_bad_values(options, option):
    with pytest.raises(AfdError, match=f"'{option}'"):
        SFTConfig(**{**BASE, **options}).validate()


def test_report_to_tensorboard_writes_the_train_loss_under_the_stage_logs(tmp_path, demos_file):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sft(sft_config(tmp_path / "run", demos_file, report_to="tensorboard", max_steps=4, logging_steps=1,
                   eval_fraction=0.0))
    logs = tmp_path / "run" / "sft" / "logs"
    assert list(logs.rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(logs))
    acc.Reload()
    losses = acc.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2, 3, 4] and all(e.value > 0 for e in losses)


def test_progress_bar_shows_the_loss_instead_of_printing_log_dicts(tmp_path, demos_file, capsys):
    sft(sft_config(tmp_path / "run", demos_file, max_steps=4, logging_steps=1, eval_fraction=0.0))
    out = capsys.readouterr()
    printed = out.out + out.err
    assert "{'loss'" not in printed and "'learning_rate'" not in printed
    assert "loss=" in printed and "lr=" in printed


def test_saved_policy_has_a_model_card(full_run):
    from huggingface_hub import ModelCard

    _, metrics, folder = full_run
    card = ModelCard.load(folder / "model" / "README.md")
    assert card.data.library_name == "transformers" and "afd" in card.data.tags
    text = card.text
    assert "`tiny-random`" in text and "supervised fine-tuning" in text and "2405.15624" in text
    assert f"| train_examples | {metrics['train_examples']} |" in text and "eval_loss_after" in text
    assert "AutoModelForCausalLM.from_pretrained" in text


def test_logits_only_where_labels_are_give_the_same_loss_and_log_probs(tiny):
    """The collator's logits_for_labels (no LM-head work before the earliest labelled token)
    against the whole batch: SFT's loss and IRFT's summed log-probs agree to 1e-4, prompts of
    different lengths and right padding included; and the cut really is shorter."""
    from afd.irft import sequence_logprobs

    model, tok = tiny
    demos = [Demo(f"d{i}", [{"role": "user", "content": "Say " + "word " * i}], "yes " * (3 - i % 3)) for i in range(5)]
    rows, _ = tokenize_demos(tok, demos, sft_config("x", "y", max_length=200, max_prompt_length=150))
    full, cut = Collator(tok.pad_token_id)(rows), Collator(tok.pad_token_id, logits_for_labels=True)(rows)
    assert cut["logits_to_keep"] < full["input_ids"].shape[1] and cut["labels"].shape[1] == cut["logits_to_keep"]
    assert int((cut["labels"] != -100).sum()) == int((full["labels"] != -100).sum())
    with torch.no_grad():
        assert model(**cut).loss.item() == pytest.approx(model(**full).loss.item(), abs=1e-4)
        whole = sequence_logprobs(model(input_ids=full["input_ids"], attention_mask=full["attention_mask"]).logits,
                                  full["labels"])
        kept = sequence_logprobs(model(input_ids=cut["input_ids"], attention_mask=cut["attention_mask"],
                                       logits_to_keep=cut["logits_to_keep"]).logits, cut["labels"])
    assert kept.tolist() == pytest.approx(whole.tolist(), abs=1e-4)
