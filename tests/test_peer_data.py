"""Other libraries' data layouts, in small files written here from their documentation (no data
copied): UltraFeedback-binarized (TRL's reward and DPO examples), OpenRLHF's preference files with
an input_template and key options, Axolotl's chat_template conversations (role/content in
`conversations`, human/gpt inside `messages`, per-turn `train` flags). Nothing is dropped without
a word: images, tools, tool calls and unread columns are named; the turns SFT trains are said.
Every secondary data option (eval pairs, eval's demos) takes the options of `data` and is read
before any training."""

import json

import pytest
import torch
import yaml

from afd import cli, models
from afd.data import DataConfig, load_demos, load_pairs, load_prompts
from afd.errors import AfdError, DataError
from afd.sft import SFTConfig, tokenize_demos
from conftest import WORDS, assistant, system, user, write_jsonl


def ultrafeedback_rows(words, start=0):
    """UltraFeedback-binarized's layout: prompt, prompt_id, chosen / rejected as whole
    conversations (user turn included), messages (= chosen), score_chosen / score_rejected."""
    rows = []
    for i, w in enumerate(words, start):
        prompt = f"Say {w}"
        chosen = [user(prompt), assistant(f"{w}!")]
        rows.append({"prompt": prompt, "prompt_id": f"{i:064x}", "chosen": chosen,
                     "rejected": [user(prompt), assistant(f"not {w} at all")], "messages": chosen,
                     "score_chosen": 8.0, "score_rejected": 3.5})
    return rows


def write_hub_folder(folder, splits):
    """A dataset folder as the hub lays one out (`hf download --repo-type dataset`): one parquet
    file a split, data/{split}-00000-of-00001.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "data").mkdir(parents=True)
    for name, rows in splits.items():
        pq.write_table(pa.Table.from_pylist(rows), folder / "data" / f"{name}-00000-of-00001.parquet")
    return str(folder)


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """datasets writes what it reads from a dataset folder into its cache: keep it in tmp_path."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))


def notes(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("afd: note:")]


# ---------------------------------------------------------------------------------------------
# UltraFeedback-binarized


def test_ultrafeedback_loads_as_pairs_demonstrations_and_prompts(tmp_path, capsys):
    path = write_jsonl(tmp_path / "uf.jsonl", ultrafeedback_rows(WORDS[:3]))
    pairs, stats = load_pairs(DataConfig(path))
    assert stats.format == "preference" and len(pairs) == 3
    assert (pairs[0].prompt, pairs[0].chosen, pairs[0].rejected) == ([user("Say apple")], "apple!", "not apple at all")
    assert [d.response for d in load_demos(DataConfig(path))[0]] == ["apple!", "river!", "cat!"]
    assert [p.prompt for p in load_prompts(DataConfig(path))[0]] == [[user(f"Say {w}")] for w in WORDS[:3]]
    said = notes(capsys)
    assert len(said) == 1  # once, however many times the file is read
    for column in ("messages", "prompt_id", "score_chosen", "score_rejected"):
        assert f"'{column}'" in said[0]
    assert stats.unread == ["messages", "prompt_id", "score_chosen", "score_rejected"]


def test_ultrafeedback_with_a_system_turn_keeps_it_in_the_prompt(tmp_path):
    row = ultrafeedback_rows(["sun"])[0]
    row["chosen"] = [system("Be brief."), *row["chosen"]]
    row["rejected"] = [system("Be brief."), *row["rejected"]]
    pair = load_pairs(DataConfig(write_jsonl(tmp_path / "uf.jsonl", [row])))[0][0]
    assert pair.prompt == [system("Be brief."), user("Say sun")]


@pytest.mark.parametrize("change, field", [
    (lambda r: r.update(prompt="Say something else"), "chosen"),
    (lambda r: r["rejected"].__setitem__(0, user("Another question")), "rejected"),
])
def test_ultrafeedback_rows_whose_turns_disagree_name_the_field(tmp_path, change, field):
    rows = ultrafeedback_rows(WORDS[:2])
    change(rows[1])
    path = write_jsonl(tmp_path / "uf.jsonl", rows)
    with pytest.raises(DataError, match=f"uf.jsonl, row 2: field '{field}'"):
        load_pairs(DataConfig(path))


def test_a_dataset_folder_without_the_split_names_its_splits_and_the_flag(tmp_path):
    folder = write_hub_folder(tmp_path / "ultrafeedback_binarized", {
        "train_prefs": ultrafeedback_rows(WORDS[:4]), "test_prefs": ultrafeedback_rows(WORDS[4:6])})
    with pytest.raises(DataError) as e:
        load_pairs(DataConfig(folder))
    assert str(e.value) == (f"dataset {folder} has no split 'train'; its splits are 'test_prefs', 'train_prefs': "
                            f"choose one with --data-split")
    with pytest.raises(DataError, match="choose one with --eval-pairs-split"):
        load_pairs(DataConfig(folder, option="eval_pairs"))
    pairs, _ = load_pairs(DataConfig(folder, split="test_prefs"))
    assert [p.chosen for p in pairs] == ["song!", "tree!"]
    assert pairs[0].id == "ultrafeedback_binarized[test_prefs]:1"


def test_a_hub_id_without_the_split_names_its_splits(monkeypatch):
    """The same check for a hub id: the split names come from datasets (here a stand-in)."""
    import datasets

    monkeypatch.setattr(datasets, "get_dataset_split_names", lambda name: ["train_prefs", "test_prefs"])
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("loaded a split that is not there"))
    with pytest.raises(DataError, match="'train_prefs', 'test_prefs': choose one with --data-split"):
        load_pairs(DataConfig("HuggingFaceH4/ultrafeedback_binarized"))


def test_ultrafeedback_trains_a_bt_reward_model_with_eval_pairs_from_another_split(tmp_path, capsys):
    """`afd reward --variant bt` on UltraFeedback-binarized's layout, eval pairs from its test split."""
    folder = write_hub_folder(tmp_path / "uf", {"train_prefs": ultrafeedback_rows(WORDS[:16]),
                                                "test_prefs": ultrafeedback_rows(WORDS[16:24], start=16)})
    code = cli.main(["reward", "--variant", "bt", "--model", "tiny-random", "--data", folder, "--data-split",
                     "train_prefs", "--eval-pairs", folder, "--eval-pairs-split", "test_prefs", "--out",
                     str(tmp_path / "run"), "--max-steps", "2", "--device", "cpu", "--batch-size", "4"])
    out, err = capsys.readouterr()
    assert code == 0, err
    metrics = json.loads(out.strip().splitlines()[-1].removeprefix("[reward] "))
    assert metrics["pairs"] == 8 and metrics["train_examples"] > 0 and 0 <= metrics["pair_accuracy"] <= 1


def test_eval_pairs_take_the_options_of_data(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"question": f"Say {w}", "good": f"{w}!", "bad": "no"}
                                                for w in WORDS[:3]])
    _, cfg = cli.parse(["reward", "--variant", "bt", "--data", "x.jsonl", "--eval-pairs", path,
                        "--eval-pairs-columns", "prompt=question,chosen=good,rejected=bad",
                        "--eval-pairs-format", "preference", "--eval-pairs-split", "unused"])
    pairs, _ = load_pairs(cfg.eval_pairs_config())
    assert (pairs[2].prompt, pairs[2].chosen, pairs[2].rejected) == ([user("Say cat")], "cat!", "no")


def test_bad_eval_pairs_stop_the_reward_stage_before_training(tmp_path, monkeypatch, capsys):
    from transformers import Trainer

    monkeypatch.setattr(Trainer, "train", lambda *a, **k: pytest.fail("trained before reading the eval pairs"))
    data = write_jsonl(tmp_path / "uf.jsonl", ultrafeedback_rows(WORDS[:8]))
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    code = cli.main(["reward", "--variant", "bt", "--data", data, "--eval-pairs", odd, "--out", str(tmp_path / "r"),
                     "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot tell the format of" in err and "--eval-pairs-format" in err
    assert "--eval-pairs-columns" in err


def test_bad_eval_pairs_stop_irl_before_it_samples(tmp_path, monkeypatch, demos_file):
    from afd import sampling
    from afd.irl import IRLConfig, irl

    monkeypatch.setattr(sampling, "sample", lambda *a, **k: pytest.fail("sampled before reading the eval pairs"))
    missing = str(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match=f"file not found: {missing}"):
        irl(IRLConfig(data=demos_file, eval_pairs=missing, out=str(tmp_path / "run"), device="cpu"))


def test_bad_eval_pairs_stop_gail_before_it_samples(tmp_path, monkeypatch, demos_file):
    from afd import sampling
    from afd.irl import IRLConfig, gail

    monkeypatch.setattr(sampling, "sample", lambda *a, **k: pytest.fail("sampled before reading the eval pairs"))
    folder = write_hub_folder(tmp_path / "pairs", {"test_prefs": [{"q": "x", "good": "y", "bad": "z"}]})
    with pytest.raises(DataError, match="--eval-pairs-split"):
        gail(IRLConfig(data=demos_file, eval_pairs=folder, out=str(tmp_path / "run"), device="cpu"))


def test_evals_demonstrations_take_the_options_of_data_and_are_read_before_scoring(tmp_path, monkeypatch):
    from afd import eval as afd_eval

    monkeypatch.setattr(afd_eval, "score_pool", lambda *a, **k: pytest.fail("scored before reading the demos"))
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"prompt_id": "a", "prompt": [user("x")], "sample_index": 0,
                                                 "response": "y"}])
    folder = write_hub_folder(tmp_path / "demos", {"test": [{"q": "x", "a": "y"}]})
    base = ["eval", "--pools", f"sft={pool}", "--demos", folder, "--out", str(tmp_path / "run")]
    with pytest.raises(DataError, match="choose one with --demos-split"):
        afd_eval.evaluate(cli.parse(base)[1])
    with pytest.raises(DataError, match="--demos-format.*--demos-columns"):
        afd_eval.evaluate(cli.parse(base + ["--demos-split", "test"])[1])
    cfg = cli.parse(base + ["--demos-split", "test", "--demos-columns", "prompt=q,response=a"])[1]
    monkeypatch.setattr(afd_eval, "score_pool", lambda rows, *a, **k: [r.update(gold=1.0) for r in rows])
    assert afd_eval.evaluate(cfg)["policies"]["demonstrations"]["samples"] == 1


# ---------------------------------------------------------------------------------------------
# Nothing dropped without a word


@pytest.mark.parametrize("column, kind", [("images", "images"), ("audio", "audio"), ("videos", "video")])
def test_a_column_of_images_audio_or_video_is_refused_naming_it(tmp_path, column, kind):
    rows = [{"messages": [user("What is in it?"), assistant("A cat.")], column: ["file.bin"]}]
    with pytest.raises(DataError) as e:
        load_demos(DataConfig(write_jsonl(tmp_path / "vlm.jsonl", rows), on_invalid="skip"))
    assert f"has a column '{column}' that holds {kind}, which afd cannot use" in str(e.value)


def test_typed_content_parts_are_read_when_text_and_refused_naming_an_image(tmp_path):
    text_parts = [{"role": "user", "content": [{"type": "text", "text": "Say "}, {"type": "text", "text": "hi"}]},
                  assistant("hi!")]
    demo = load_demos(DataConfig(write_jsonl(tmp_path / "t.jsonl", [{"messages": text_parts}])))[0][0]
    assert demo.prompt == [user("Say hi")]
    image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}, assistant("A cat.")]
    with pytest.raises(DataError, match="message 1 has a content part of type 'image', which afd cannot use"):
        load_demos(DataConfig(write_jsonl(tmp_path / "i.jsonl", [{"messages": image}])))


def test_trls_tools_column_is_refused_in_one_sentence(tmp_path):
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    rows = [{"messages": [user("Weather in Paris?"), assistant("Sunny.")], "tools": [tool]}]
    with pytest.raises(DataError, match="has a column 'tools' that holds tool definitions"):
        load_demos(DataConfig(write_jsonl(tmp_path / "tools.jsonl", rows)))


def test_tool_calls_and_tool_turns_are_refused_unless_mapped(tmp_path):
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    rows = [{"messages": [user("Weather?"), call, {"role": "tool", "content": "sunny"}, assistant("Sunny.")]}]
    path = write_jsonl(tmp_path / "calls.jsonl", rows)
    with pytest.raises(DataError, match="message 2 is a tool call \\('tool_calls'\\)"):
        load_demos(DataConfig(path))
    rows = [{"messages": [user("Weather?"), {"role": "tool", "content": "sunny"}, assistant("Sunny.")]}]
    path = write_jsonl(tmp_path / "tool.jsonl", rows)
    with pytest.raises(DataError, match="message 2 has role 'tool' .* --roles tool=user"):
        load_demos(DataConfig(path))
    demo = load_demos(DataConfig(path, roles={"tool": "user"}))[0][0]
    assert demo.prompt == [user("Weather?"), user("sunny")]


def test_a_margin_column_is_named_with_why_it_is_not_used(tmp_path, capsys):
    rows = [{"prompt": f"Say {w}", "chosen": f"{w}!", "rejected": "no", "margin": 2.0} for w in WORDS[:2]]
    load_pairs(DataConfig(write_jsonl(tmp_path / "margin.jsonl", rows)))
    said = notes(capsys)
    assert len(said) == 1 and "'margin' (a reward margin: afd's Bradley-Terry loss has no margin term)" in said[0]


def test_a_system_column_is_the_prompts_system_message(tmp_path, capsys):
    rows = [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}], "system": "Be kind."}]
    demo = load_demos(DataConfig(write_jsonl(tmp_path / "lf.jsonl", rows)))[0][0]
    assert demo.prompt == [system("Be kind."), user("hi")]
    assert notes(capsys) == []  # every column read


# ---------------------------------------------------------------------------------------------
# Multi-turn SFT: every assistant turn, Axolotl's per-turn flags


def conversation(*turns, **extra):
    return {"messages": [(user if i % 2 == 0 else assistant)(t) for i, t in enumerate(turns)], **extra}


def trained_text(tok, row):
    """The text of the tokens a row trains on, one span per run of trained tokens."""
    spans, current = [], []
    for token, label in zip(row["input_ids"], row["labels"]):
        if label != -100:
            current.append(token)
        elif current:
            spans.append(tok.decode(current))
            current = []
    return spans + ([tok.decode(current)] if current else [])


@pytest.mark.parametrize("template", ["chat", "raw"])
def test_assistant_only_loss_trains_every_assistant_turn(tiny, tmp_path, capsys, template):
    _, tok = tiny
    path = write_jsonl(tmp_path / "chat.jsonl", [conversation("Say a", "a!", "Say b", "b!", "Say c", "c!")])
    demos, _ = load_demos(DataConfig(path))
    rows, counts = tokenize_demos(tok, demos, SFTConfig(template=template, assistant_only_loss=True))
    end = "<|im_end|>" if template == "chat" else ""
    expected = [f"a!{end}", f"b!{end}", "c!<|im_end|>"] if template == "chat" else ["a!", "b!", " c!<|im_end|>"]
    assert trained_text(tok, rows[0]) == expected and counts["earlier_turns_trained"] == 2
    # the input is the same as without the option: only the labels differ
    plain, _ = tokenize_demos(tok, demos, SFTConfig(template=template))
    assert plain[0]["input_ids"] == rows[0]["input_ids"]
    assert trained_text(tok, plain[0]) == [expected[-1]]


def test_sft_says_which_turns_it_trains_when_conversations_have_several(tmp_path, capsys):
    from afd.sft import sft

    path = write_jsonl(tmp_path / "chat.jsonl", [conversation(f"Say {w}", f"{w}!", "Again", f"{w}!") for w in WORDS[:8]]
                       + [conversation("Say x", "x!")])
    base = dict(data=path, device="cpu", max_steps=1, eval_fraction=0.0, max_length=256)
    metrics = sft(SFTConfig(out=str(tmp_path / "default"), **base))
    assert metrics["prompts_dropped_too_long"] == 0
    said = " ".join(notes(capsys))
    assert "8 of 9 demonstrations are conversations with several assistant turns: only the last" in said
    assert "--assistant-only-loss" in said and metrics["earlier_turns_trained"] == 0
    metrics = sft(SFTConfig(out=str(tmp_path / "every"), assistant_only_loss=True, **base))
    assert "every assistant turn is trained" in " ".join(notes(capsys)) and metrics["earlier_turns_trained"] == 8


def test_axolotl_per_turn_train_flags_choose_the_turns(tiny, tmp_path):
    """Axolotl's chat_template layout with message_field_training: `train` on each message."""
    _, tok = tiny
    row = {"conversations": [
        {"from": "system", "value": "You are helpful.", "train": False},
        {"from": "human", "value": "Say a", "train": False},
        {"from": "assistant", "value": "a!", "train": True},
        {"from": "human", "value": "Say b"},
        {"from": "assistant", "value": "b!", "train": False},
        {"from": "human", "value": "Say c"},
        {"from": "assistant", "value": "c!"},
        {"from": "human", "value": "Say d"},
        {"from": "assistant", "value": "d!", "train": False}]}
    demo = load_demos(DataConfig(write_jsonl(tmp_path / "ax.jsonl", [row])))[0][0]
    assert demo.response == "c!" and len(demo.prompt) == 6  # the untrained last turn is not the reply
    assert demo.train_flags == (False, False, True, None, False, None)
    rows, _ = tokenize_demos(tok, [demo], SFTConfig(template="chat"))
    assert trained_text(tok, rows[0]) == ["a!<|im_end|>", "c!<|im_end|>"]
    prompt = load_prompts(DataConfig(write_jsonl(tmp_path / "open.jsonl", [
        {"conversations": row["conversations"][:-1]}])))[0][0].prompt  # ends with a user turn: all of it
    assert len(prompt) == 8 and prompt[-1] == user("Say d")
    rows, _ = tokenize_demos(tok, [demo], SFTConfig(template="chat", assistant_only_loss=True))
    assert trained_text(tok, rows[0]) == ["a!<|im_end|>", "c!<|im_end|>"]  # b! is flagged false


@pytest.mark.parametrize("turn, message", [
    ({"from": "human", "value": "Say b", "train": True}, "flags turn 3 \\(user\\) train: true; afd trains assistant"),
    ({"from": "gpt", "value": "b!", "train_detail": [{"begin_offset": 0, "end_offset": 1, "train": True}]},
     "'train_detail'"),
    ({"from": "gpt", "value": "b!", "train": "yes"}, "flag of 'yes'"),
])
def test_per_turn_flags_afd_cannot_honour_name_the_row(tmp_path, turn, message):
    row = {"conversations": [{"from": "human", "value": "Say a"}, {"from": "gpt", "value": "a!"}, turn,
                             {"from": "gpt", "value": "b!"}]}
    if turn["from"] == "gpt":
        row["conversations"].insert(2, {"from": "human", "value": "Say b"})
        row["conversations"].pop()
    with pytest.raises(DataError, match="ax.jsonl, row 1: field 'conversations' .*" + message):
        load_demos(DataConfig(write_jsonl(tmp_path / "ax.jsonl", [row])))


def test_axolotl_conversations_with_role_and_content_and_human_gpt_messages(tmp_path):
    rows = [{"conversations": [{"role": "user", "content": "Say a"}, {"role": "assistant", "content": "a!"}]},
            {"messages": [{"role": "human", "content": "Say b"}, {"role": "gpt", "content": "b!"}]},
            {"messages": [{"from": "human", "value": "Say c"}, {"from": "gpt", "value": "c!"}]}]
    for i, row in enumerate(rows):
        demo = load_demos(DataConfig(write_jsonl(tmp_path / f"{i}.jsonl", [row])))[0][0]
        assert (demo.prompt, demo.response) == ([user(f"Say {'abc'[i]}")], f"{'abc'[i]}!")


def test_role_and_key_mappings(tmp_path):
    rows = [{"dialog": [{"speaker": "customer", "text": "Say a"}, {"speaker": "agent", "text": "a!"}]}]
    path = write_jsonl(tmp_path / "support.jsonl", rows)
    with pytest.raises(DataError, match="--data-format"):
        load_demos(DataConfig(path))
    _, cfg = cli.parse(["sft", "--data", path, "--columns", "messages=dialog", "--message-keys",
                        "role=speaker,content=text", "--roles", "customer=user,agent=assistant"])
    demo = load_demos(cfg.data_config())[0][0]
    assert (demo.prompt, demo.response) == ([user("Say a")], "a!")
    with pytest.raises(DataError, match="unknown role 'customer' .*--roles NAME=ROLE"):
        load_demos(DataConfig(path, columns={"messages": "dialog"}, message_keys={"role": "speaker", "content": "text"}))
    with pytest.raises(DataError, match="'roles' maps 'agent' to 'bot'"):
        DataConfig(path, roles={"agent": "bot"})


# ---------------------------------------------------------------------------------------------
# OpenRLHF: input_template and key options


OPENRLHF_TEMPLATE = "User: {}\nAssistant: "


def test_input_template_renders_the_prompt_and_the_reply_follows_it(tiny):
    _, tok = tiny
    prompt = [user("Say cat")]
    ids = models.encode_prompt(tok, prompt, OPENRLHF_TEMPLATE) + models.encode_response(tok, prompt, "cat!",
                                                                                         OPENRLHF_TEMPLATE)
    assert tok.decode(ids) == "User: Say cat\nAssistant: cat!<|im_end|>"
    with pytest.raises(AfdError, match="formats a prompt of one user message"):
        models.encode_prompt(tok, [system("s"), user("x")], OPENRLHF_TEMPLATE)
    with pytest.raises(AfdError, match="option 'template' must be auto, chat, raw, or a prompt template"):
        models.check_template("User: {} {}")


def test_an_openrlhf_preference_file_trains_a_reward_model_with_its_input_template(tmp_path, capsys):
    """OpenRLHF's train_rm flags: --prompt_key / --chosen_key / --rejected_key, --input_template."""
    rows = [{"context": f"Say {w}", "good": f"{w}!", "bad": f"not {w}"} for w in WORDS[:16]]
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    code = cli.main(["reward", "--variant", "bt", "--pretrain", "tiny-random", "--dataset", data, "--prompt_key",
                     "context", "--chosen_key", "good", "--rejected_key", "bad", "--input_template", OPENRLHF_TEMPLATE,
                     "--save_path", str(tmp_path / "run"), "--max_epochs", "1", "--micro_train_batch_size", "4",
                     "--max_len", "64", "--use_cpu", "--max-steps", "2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    resolved = yaml.safe_load((tmp_path / "run" / "reward" / "config.yaml").read_text())
    assert resolved["template"] == OPENRLHF_TEMPLATE and resolved["columns"] == {
        "prompt": "context", "chosen": "good", "rejected": "bad"}
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tmp_path / "run" / "reward" / "model").afd["template"] == OPENRLHF_TEMPLATE
    from afd.rewards import Classifier, InputSettings

    rm = Classifier.from_pretrained(str(tmp_path / "run" / "reward" / "model"), device="cpu")  # its saved template
    by_hand = rm.tokenizer("User: Say cat\nAssistant: cat!")["input_ids"] + [rm.tokenizer.eos_token_id]
    with torch.no_grad():
        expected = rm.model(torch.tensor([by_hand])).logits[0, 0].item()
    assert rm.score([[user("Say cat")]], ["cat!"])[0] == pytest.approx(expected, abs=1e-5)
    assert Classifier(rm.model, rm.tokenizer, InputSettings("raw")).score([[user("Say cat")]], ["cat!"])[0] != \
        pytest.approx(expected)


def test_openrlhf_sft_keys_and_apply_chat_template():
    _, cfg = cli.parse(["sft", "--input_key", "question", "--output_key", "answer", "--apply_chat_template"])
    assert (cfg.columns, cfg.template) == ({"prompt": "question", "response": "answer"}, "chat")
    assert cli.parse(["sft"] + ["--input_key", "q", "--columns", "response=a"])[1].columns == {"prompt": "q",
                                                                                              "response": "a"}
    assert cli.parse(["sft", "--train_batch_size", "16", "--micro_train_batch_size", "4"])[1].grad_accum == 4


# ---------------------------------------------------------------------------------------------
# The README's commands for each peer's layout, on the example files (as from a fresh clone)


@pytest.mark.parametrize("argv", [
    ["sft", "--config", "examples/trl_sft.yaml"],
    ["reward", "--config", "examples/trl_reward.yaml", "--variant", "bt"],
    ["reward", "--variant", "bt", "--model", "tiny-random", "--data", "examples/data/tiny_ultrafeedback",
     "--data-split", "train_prefs", "--eval-pairs", "examples/data/tiny_ultrafeedback", "--eval-pairs-split",
     "test_prefs"],
    ["reward", "--variant", "bt", "--pretrain", "tiny-random", "--dataset", "examples/data/tiny_openrlhf_prefs.jsonl",
     "--prompt_key", "context", "--input_template", OPENRLHF_TEMPLATE, "--max_len", "128"],
], ids=["trl-sft-yaml", "trl-reward-yaml-ultrafeedback", "ultrafeedback-eval-pairs", "openrlhf-input-template"])
def test_the_readmes_peer_examples_run(tmp_path, monkeypatch, capsys, argv):
    from conftest import REPO

    monkeypatch.chdir(REPO)
    code = cli.main(argv + ["--output_dir", str(tmp_path), "--max-steps", "2", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err, err
    metrics = json.loads(out.strip().splitlines()[-1].split("] ", 1)[1])
    assert metrics["steps"] == 2
    if "--eval-pairs" in argv or "trl_reward" in argv[2]:
        assert metrics["pairs"] == 16
