"""LlamaFactory's data layouts: ShareGPT preference files load as pairs, KTO files as
demonstrations (label true) with their label-false rows as negatives, and a label-like column
afd would not read is reported, not ignored. Small files written here, in LlamaFactory's shapes
(its data/dpo_en_demo.json and data/kto_en_demo.json)."""

import json

import pytest

from afd.data import DataConfig, load_demos, load_negatives, load_pairs, load_prompts
from afd.errors import AfdError
from conftest import WORDS, assistant, user, write_jsonl


def dpo_rows(words):
    return [{"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": f"Talk about {w}"}],
             "chosen": {"from": "gpt", "value": f"Thank you, the {w} is lovely."},
             "rejected": {"from": "gpt", "value": f"{w} ugh bad"}} for w in words]


def kto_rows(words):
    rows = []
    for w in words:  # each prompt answered both ways, as in LlamaFactory's KTO demo
        rows.append({"messages": [user(f"Talk about {w}"), assistant(f"Thank you, the {w} is lovely.")], "label": True})
        rows.append({"messages": [user(f"Talk about {w}"), assistant(f"{w} ugh bad")], "label": False})
    return rows


def write_json(path, rows):
    path.write_text(json.dumps(rows, indent=1))
    return str(path)


def test_sharegpt_preference_file_loads_as_pairs_demos_and_prompts(tmp_path):
    path = write_json(tmp_path / "dpo_en_demo.json", dpo_rows(WORDS[:3]))
    pairs, stats = load_pairs(DataConfig(path=path))
    assert stats.format == "sharegpt-preference" and len(pairs) == 3
    assert pairs[0].prompt == [{"role": "system", "content": "Be kind."}, user("Talk about apple")]
    assert (pairs[0].chosen, pairs[0].rejected) == ("Thank you, the apple is lovely.", "apple ugh bad")
    demos, _ = load_demos(DataConfig(path=path))
    assert [d.response for d in demos] == [p.chosen for p in pairs]
    assert load_prompts(DataConfig(path=path))[0][1].prompt == pairs[1].prompt


@pytest.mark.parametrize("change, message", [
    (lambda r: r["chosen"].update({"from": "human"}), "field 'chosen' must be an assistant"),
    (lambda r: r["rejected"].update({"value": " "}), "field 'rejected' is empty"),
    (lambda r: r["conversations"].append({"from": "gpt", "value": "hi"}), "field 'conversations' must end with a human"),
    (lambda r: r["conversations"][1].update({"from": "robot"}), "unknown speaker 'robot'"),
])
def test_sharegpt_preference_bad_rows_name_file_row_and_field(tmp_path, change, message):
    rows = dpo_rows(WORDS[:3])
    change(rows[1])
    path = write_json(tmp_path / "dpo.json", rows)
    with pytest.raises(AfdError, match=message) as e:
        load_pairs(DataConfig(path=path))
    assert "dpo.json, row 2" in str(e.value)


def test_sharegpt_preference_file_trains_a_bt_reward_model_and_serves_as_eval_pairs(tmp_path):
    from afd.reward import RewardConfig, reward

    path = write_json(tmp_path / "dpo.json", dpo_rows(WORDS[:8]))
    m = reward(RewardConfig(out=str(tmp_path / "run"), model="tiny-random", device="cpu", variant="bt", data=path,
                            eval_pairs=path, max_steps=2, batch_size=8, eval_fraction=0.25, max_length=160,
                            max_prompt_length=96, save_steps=1000))
    assert m["train_examples"] + m["eval_examples"] == 8 and m["pairs"] == 8  # pairs, trained on and held out


def test_kto_file_gives_demonstrations_from_true_rows_and_negatives_from_false_rows(tmp_path):
    path = write_json(tmp_path / "kto_en_demo.json", kto_rows(WORDS[:4]))
    demos, stats = load_demos(DataConfig(path=path))
    assert [d.response for d in demos] == [f"Thank you, the {w} is lovely." for w in WORDS[:4]]
    assert stats.undesirable == 4 and stats.skipped == 0
    negatives, _ = load_negatives(DataConfig(path=path))
    assert [d.response for d in negatives] == [f"{w} ugh bad" for w in WORDS[:4]]
    assert len(load_prompts(DataConfig(path=path))[0]) == 8  # every row's prompt can still be sampled


def test_trl_unpaired_preference_and_csv_labels(tmp_path):
    rows = [{"prompt": "Say hi", "completion": "Hi!", "label": "True"}, {"prompt": "Say hi", "completion": "no", "label": "false"}]
    path = tmp_path / "unpaired.csv"
    path.write_text("prompt,completion,label\n" + "".join(f"{r['prompt']},{r['completion']},{r['label']}\n" for r in rows))
    demos, stats = load_demos(DataConfig(path=str(path)))
    assert [d.response for d in demos] == ["Hi!"] and stats.undesirable == 1


def test_sft_on_a_kto_file_trains_on_the_true_rows_only_and_says_so(tmp_path):
    from afd.sft import SFTConfig, sft

    path = write_json(tmp_path / "kto.json", kto_rows(WORDS[:6]))
    m = sft(SFTConfig(out=str(tmp_path / "run"), data=path, device="cpu", max_steps=1, eval_fraction=0.0,
                      save_steps=1000))
    assert m["train_examples"] == 6 and m["rows_read"] == 12 and m["rows_labelled_false"] == 6


def test_kto_reward_model_takes_the_false_rows_as_negatives(tmp_path):
    from afd.reward import RewardConfig, examples, reward

    path = write_json(tmp_path / "kto.json", kto_rows(WORDS[:8]))
    items = examples(RewardConfig(variant="kto", data=path))
    assert sorted(e.response for e in items if e.label == 1.0) == sorted(f"Thank you, the {w} is lovely." for w in WORDS[:8])
    assert sorted(e.response for e in items if e.label == 0.0) == sorted(f"{w} ugh bad" for w in WORDS[:8])
    m = reward(RewardConfig(out=str(tmp_path / "run"), model="tiny-random", device="cpu", variant="kto", data=path,
                            max_steps=2, batch_size=8, eval_fraction=0.25, max_length=96, max_prompt_length=64,
                            save_steps=1000))
    assert m["train_examples"] + m["eval_examples"] == 16  # 8 true, 8 false, on shared prompts


@pytest.mark.parametrize("label", ["yes", 1, None])
def test_a_label_that_is_not_true_or_false_is_one_sentence(tmp_path, label):
    rows = kto_rows(WORDS[:2])
    rows[1]["label"] = label
    path = write_json(tmp_path / "kto.json", rows)
    if label is None:  # no label on a row: it is a demonstration like any unlabelled row
        assert len(load_demos(DataConfig(path=path))[0]) == 3  # two labelled true, one unlabelled
        return
    with pytest.raises(AfdError, match=r"kto.json, row 2: field 'label' must be true or false"):
        load_demos(DataConfig(path=path))


@pytest.mark.parametrize("column", ["flag", "labels", "is_desirable"])
def test_an_unknown_label_column_is_reported_not_ignored(tmp_path, column):
    rows = [{"messages": [user("Say hi"), assistant("Hi!")], column: True}]
    path = write_json(tmp_path / "flagged.json", rows)
    with pytest.raises(AfdError, match=f"column '{column}' that looks like a label"):
        load_demos(DataConfig(path=path))
    # mapped onto 'label' it is read
    demos, stats = load_demos(DataConfig(path=path, columns={"label": column}))
    assert len(demos) == 1 and stats.undesirable == 0


def test_negatives_need_a_labelled_file(tmp_path):
    path = write_jsonl(tmp_path / "demos.jsonl", [{"prompt": "Say hi", "completion": "Hi!"}])
    with pytest.raises(AfdError, match="no 'label'"):
        load_negatives(DataConfig(path=path))


def test_cli_kto_reward_without_labels_is_one_sentence(tmp_path, capsys):
    from afd import cli

    path = write_jsonl(tmp_path / "demos.jsonl", [{"prompt": "Say hi", "completion": "Hi!"}])
    code = cli.main(["reward", "--variant", "kto", "--data", path, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "no 'label'" in err
