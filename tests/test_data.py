"""afd.data: every format, every file type, and every bad-input rule."""

import gzip
import json
import re
from pathlib import Path

import pytest

from conftest import assistant, system, user, write_jsonl
from afd.data import (DataConfig, Demo, Pair, load_demos, load_pairs, load_prompts,
                      parse_hh_transcript, split)
from afd.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HH_FILE = SHARED_DATA / "hh-rlhf_harmless-base_test.jsonl.gz"
IMDB_FILE = SHARED_DATA / "imdb_subset.csv"




def load_error(loader, path, **options):
    with pytest.raises(DataError) as e:
        loader(DataConfig(path, **options))
    return str(e.value)


# ---------------------------------------------------------------------------------------------
# Formats


DEMO_FORMATS = {
    "prompt-completion": (
        {"prompt": "2+2?", "completion": "4"},
        [user("2+2?")], "4"),
    "prompt-completion, response alias": (
        {"prompt": "2+2?", "response": "4"},
        [user("2+2?")], "4"),
    "prompt-completion, conversational": (
        {"prompt": [system("Be brief."), user("2+2?")], "completion": [assistant("4")]},
        [system("Be brief."), user("2+2?")], "4"),
    "messages": (
        {"messages": [system("s"), user("a"), assistant("b"), user("c"), assistant("d")]},
        [system("s"), user("a"), assistant("b"), user("c")], "d"),
    "preference, explicit prompt (chosen)": (
        {"prompt": "q", "chosen": "good", "rejected": "bad"},
        [user("q")], "good"),
    "preference, implicit prompt (chosen)": (
        {"chosen": [user("q"), assistant("good")], "rejected": [user("q"), assistant("bad")]},
        [user("q")], "good"),
    "hh (chosen)": (
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello",
         "rejected": "\n\nHuman: hi\n\nAssistant: go"},
        [user("hi")], "hello"),
    "alpaca, no input": (
        {"instruction": "Add.", "input": "", "output": "ok"},
        [user("Add.")], "ok"),
    "alpaca, with input": (
        {"instruction": "Add.", "input": "2 and 2", "output": "4"},
        [user("Add.\n\n2 and 2")], "4"),
    "sharegpt": (
        {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "a"},
                           {"from": "gpt", "value": "b"}]},
        [system("s"), user("a")], "b"),
}


@pytest.mark.parametrize("case", DEMO_FORMATS)
def test_each_format_loads_as_demonstrations(tmp_path, case):
    row, prompt, response = DEMO_FORMATS[case]
    demos, stats = load_demos(DataConfig(write_jsonl(tmp_path / "d.jsonl", [row])))
    assert demos == [Demo("d.jsonl:1", prompt, response)]
    assert (stats.rows, stats.kept, stats.skipped) == (1, 1, 0)


@pytest.mark.parametrize("case", DEMO_FORMATS)
def test_each_format_loads_as_prompts(tmp_path, case):
    row, prompt, _ = DEMO_FORMATS[case]
    prompts, _ = load_prompts(DataConfig(write_jsonl(tmp_path / "d.jsonl", [row])))
    assert [p.prompt for p in prompts] == [prompt]


def test_detected_format_is_reported(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "i", "output": "o"}])
    assert load_demos(DataConfig(path))[1].format == "alpaca"


def test_explicit_format_skips_detection(tmp_path):
    # "instruction" would be detected as alpaca; the explicit format reads the prompt instead
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "instruction": "i"}])
    prompts, stats = load_prompts(DataConfig(path, format="prompt"))
    assert prompts[0].prompt == [user("p")] and stats.format == "prompt"


def test_prompt_format_loads_prompts_but_not_demos(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "a"}])
    prompts, _ = load_prompts(DataConfig(path))
    assert [p.prompt[0]["content"] for p in prompts] == ["a", "b", "a"]  # no de-duplication
    assert "format 'prompt'" in load_error(load_demos, path)


def test_messages_ending_with_user_turn_is_a_prompt(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"messages": [user("a"), assistant("b"), user("c")]}])
    prompts, _ = load_prompts(DataConfig(path))
    assert prompts[0].prompt == [user("a"), assistant("b"), user("c")]
    assert "must end with an assistant message" in load_error(load_demos, path)


def test_explicit_preference_pairs(tmp_path):
    rows = [{"prompt": [user("q")], "chosen": [assistant("good")], "rejected": [assistant("bad")]}]
    pairs, _ = load_pairs(DataConfig(write_jsonl(tmp_path / "p.jsonl", rows)))
    assert pairs == [Pair("p.jsonl:1", [user("q")], "good", "bad")]


def test_implicit_prompt_is_the_shared_prefix(tmp_path):
    convo = [system("s"), user("a"), assistant("b"), user("c")]
    rows = [{"chosen": convo + [assistant("yes")], "rejected": convo + [assistant("no")]}]
    pairs, _ = load_pairs(DataConfig(write_jsonl(tmp_path / "p.jsonl", rows)))
    assert pairs == [Pair("p.jsonl:1", convo, "yes", "no")]


def test_implicit_prompt_must_be_shared(tmp_path):
    rows = [{"chosen": [user("a"), assistant("x")], "rejected": [user("b"), assistant("y")]}]
    message = load_error(load_pairs, write_jsonl(tmp_path / "p.jsonl", rows))
    assert "p.jsonl, row 1: field 'rejected' differs from 'chosen'" in message


def test_hh_pairs_multi_turn(tmp_path):
    shared = "\n\nHuman: Hi there \n\nAssistant: Hello!\n\nHuman: Tell me a joke."
    rows = [{"chosen": shared + "\n\nAssistant: A pun.  ",
             "rejected": shared + "\n\nAssistant: No."}]
    pairs, stats = load_pairs(DataConfig(write_jsonl(tmp_path / "hh.jsonl", rows)))
    prompt = [user("Hi there"), assistant("Hello!"), user("Tell me a joke.")]
    assert pairs == [Pair("hh.jsonl:1", prompt, "A pun.", "No.")]
    assert stats.format == "hh"


def test_pairs_need_a_preference_format(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "completion": "c"}])
    message = load_error(load_pairs, path)
    assert "format 'prompt-completion', which has no chosen/rejected" in message


def test_column_mapping(tmp_path):
    rows = [{"question": "q", "answer": "a", "uid": 17}]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    cfg = DataConfig(path, columns={"prompt": "question", "response": "answer", "id": "uid"})
    assert load_demos(cfg)[0] == [Demo("17", [user("q")], "a")]


def test_column_mapping_errors_name_the_file_column(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}, {"question": "q"}])
    message = load_error(load_demos, path, columns={"prompt": "question", "response": "answer"})
    assert message.endswith("qa.jsonl, row 2: field 'answer' is missing")


# ---------------------------------------------------------------------------------------------
# File types


ROWS = [{"prompt": "p1", "completion": "c1"}, {"prompt": "p2", "completion": "c2"}]
EXPECTED = [([user("p1")], "c1"), ([user("p2")], "c2")]


def write_json_list(path):
    path.write_text(json.dumps(ROWS))


def write_json_object(path):
    path.write_text(json.dumps({"version": 1, "data": ROWS}))


def write_gz(path):
    with gzip.open(path, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in ROWS))


def write_csv(path):
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["prompt", "completion"])
        writer.writeheader()
        writer.writerows(ROWS)


def write_parquet(path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), path)


@pytest.mark.parametrize("name, write", [
    ("d.jsonl", lambda p: write_jsonl(p, ROWS)),
    ("d.jsonl.gz", write_gz),
    ("d.json", write_json_list),
    ("wrapped.json", write_json_object),
    ("d.csv", write_csv),
    ("d.parquet", write_parquet),
])
def test_file_types(tmp_path, name, write):
    write(tmp_path / name)
    demos, stats = load_demos(DataConfig(str(tmp_path / name)))
    assert [(d.prompt, d.response) for d in demos] == EXPECTED
    assert [d.id for d in demos] == [f"{name}:1", f"{name}:2"]
    assert stats.rows == 2


def test_conversational_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"messages": [user("a"), assistant("b")]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    demos, _ = load_demos(DataConfig(str(tmp_path / "m.parquet")))
    assert demos == [Demo("m.parquet:1", [user("a")], "b")]


def test_rows_are_numbered_by_jsonl_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "c"}\n')
    with pytest.raises(DataError, match=r"d.jsonl, row 3: field 'completion' is missing"):
        load_demos(DataConfig(str(path), format="prompt-completion"))

def test_imdb_csv_loads_as_prompts():
    if not IMDB_FILE.exists():
        pytest.skip(f"{IMDB_FILE} is not here")
    prompts, stats = load_prompts(DataConfig(str(IMDB_FILE), columns={"prompt": "review"}))
    assert (stats.rows, stats.kept, len(prompts)) == (2500, 2500, 2500)
    assert prompts[0].prompt[0]["content"].startswith("One of the other reviewers")
    assert prompts[0].id == "imdb_subset.csv:1"


# ---------------------------------------------------------------------------------------------
# Bad input


HH_OPEN = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c"
MALFORMED = [  # (row, field, problem): the error is "<file>, row 1: field '<field>' <problem>"
    ({"prompt": "p", "completion": None}, "completion", "is missing"),
    ({"prompt": "p", "completion": 7}, "completion", "must be text or a list of messages, not int"),
    ({"prompt": 3.5, "completion": "c"}, "prompt", "must be text or a list of messages, not float"),
    ({"prompt": "p", "completion": "   \n"}, "completion", "is empty"),
    ({"prompt": "", "completion": "c"}, "prompt", "is empty"),
    ({"prompt": [{"content": "p"}], "completion": "c"}, "prompt",
     "message 1 needs 'role' and 'content'"),
    ({"prompt": [{"role": "robot", "content": "p"}], "completion": "c"}, "prompt",
     "message 1 has unknown role 'robot'"),
    ({"prompt": [user("p"), assistant("x")], "completion": "c"}, "prompt",
     "must end with a user message, not 'assistant'"),
    ({"prompt": "p", "completion": [user("c")]}, "completion",
     "must hold exactly one assistant message"),
    ({"messages": [user("a"), {"role": "assistant"}]}, "messages",
     "message 2 needs 'role' and 'content'"),
    ({"messages": [user("a"), {"role": "tool", "content": "x"}]}, "messages",
     "message 2 has role 'tool' (a tool's output), which afd does not train on; read it as a user turn with "
     "--roles tool=user"),
    ({"messages": [user("a"), assistant("b"), user("c")]}, "messages",
     "must end with an assistant message, not 'user'"),
    ({"messages": [user("a"), assistant("")]}, "messages", "is empty"),
    ({"messages": "hello"}, "messages", "must be a non-empty list of messages, not str"),
    ({"conversations": [{"from": "human", "value": "a"}, {"from": "alien", "value": "b"}]},
     "conversations", "turn 2 has unknown speaker 'alien'"),
    ({"instruction": "i", "output": 5}, "output", "must be text, not int"),
    ({"chosen": "plain", "rejected": "text"}, "prompt", "is missing"),
    ({"chosen": HH_OPEN, "rejected": HH_OPEN + "\n\nAssistant: x"}, "chosen",
     "is not a well-formed HH transcript: it does not end with an Assistant turn"),
]


@pytest.mark.parametrize("row, field, problem", MALFORMED)
def test_malformed_row_names_file_row_and_field(tmp_path, row, field, problem):
    path = write_jsonl(tmp_path / "data.jsonl", [row])
    message = load_error(load_demos, path)
    assert message.startswith(f"{path}, row 1: field '{field}' {problem}")


def test_missing_field(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "ok", "completion": "ok"},
                                                 {"prompt": "p"}])
    assert load_error(load_demos, path) == f"{path}, row 2: field 'completion' is missing"


def test_empty_rejected_is_malformed_for_pairs(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": " "}])
    assert load_error(load_pairs, path) == f"{path}, row 1: field 'rejected' is empty"
    assert load_demos(DataConfig(path))[0][0].response == "a"  # demos need only chosen


def test_bad_json_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "p", "completion": "c"}\n\n{"prompt": oops\n')
    message = load_error(load_demos, str(path))
    assert message.startswith(f"{path}, row 3: is not valid JSON")


def test_line_that_is_not_an_object(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "p", "completion": "c"}, ["a", "b"]])
    assert load_error(load_demos, path) == f"{path}, row 2: holds a list, not a JSON object"


def test_csv_names_the_data_row(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,completion\np,c\n\"multi\nline\",\n")
    assert load_error(load_demos, str(path)) == f"{path}, data row 2: field 'completion' is empty"


def test_skip_counts_and_records_reasons(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([
        json.dumps({"prompt": "p1", "completion": "c1"}),
        "not json",
        json.dumps({"prompt": "p3", "completion": ""}),
        json.dumps({"prompt": "p4"}),
        json.dumps({"prompt": "p5", "completion": "c5"}),
    ]))
    demos, stats = load_demos(DataConfig(str(path), on_invalid="skip"))
    assert [d.id for d in demos] == ["mixed.jsonl:1", "mixed.jsonl:5"]
    assert (stats.rows, stats.kept, stats.skipped, stats.empty) == (5, 2, 3, 1)
    assert stats.reasons[0].startswith(f"{path}, row 2: is not valid JSON")
    assert stats.reasons[1:] == [f"{path}, row 3: field 'completion' is empty",
                                 f"{path}, row 4: field 'completion' is missing"]


def test_no_valid_rows(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "completion": " "}] * 3)
    message = load_error(load_demos, path, on_invalid="skip")
    assert message.startswith(f"no valid rows in {path} (3 rows read, 3 skipped: first reason: ")
    assert "row 1: field 'completion' is empty" in message


def test_empty_file_has_no_valid_rows(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    message = load_error(load_demos, str(tmp_path / "empty.jsonl"))
    assert message == f"no valid rows in {tmp_path / 'empty.jsonl'} (0 rows read, 0 skipped)"


def test_undetectable_format(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    message = load_error(load_demos, path)
    assert f"cannot tell the format of {path} from its columns (answer, question)" in message
    assert "prompt-completion" in message and "sharegpt" in message
    assert "--data-format" in message and "--columns prompt=question,response=answer" in message


@pytest.mark.parametrize("options, option", [
    ({"on_invalid": "ignore"}, "on_invalid"),
    ({"format": "chatml"}, "format"),
    ({"limit": 0}, "max_examples"),  # the option a stage reads it from (--max-examples)
    ({"columns": {"question": "prompt"}}, "columns"),
])
def test_bad_option_names_the_option(options, option):
    with pytest.raises(DataError, match=f"'{option}'"):
        DataConfig("x.jsonl", **options)


def test_from_dict():
    cfg = DataConfig.from_dict({"path": "x.jsonl", "on_invalid": "skip", "limit": 3})
    assert (cfg.path, cfg.on_invalid, cfg.limit, cfg.format) == ("x.jsonl", "skip", 3, "auto")
    with pytest.raises(DataError, match="unknown data option 'prompt_column'"):
        DataConfig.from_dict({"path": "x.jsonl", "prompt_column": "q"})


def test_missing_local_file(tmp_path):
    path = str(tmp_path / "nope.jsonl")
    assert load_error(load_demos, path) == f"file not found: {path}"
    assert load_error(load_demos, "data/train.jsonl") == "file not found: data/train.jsonl"


def test_unsupported_extension(tmp_path):
    (tmp_path / "d.txt").write_text("hello\n")
    message = load_error(load_demos, str(tmp_path / "d.txt"))
    assert str(tmp_path / "d.txt") in message
    assert ".jsonl, .jsonl.gz, .json, .csv, .parquet" in message


def test_unknown_hub_id_is_a_data_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    import huggingface_hub

    # the libraries read the variables when first imported: set the flags they copied too
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    message = load_error(load_demos, "no-such-user/no-such-dataset", split="test")
    assert message.startswith("'no-such-user/no-such-dataset' is not a local file and could not "
                              "be loaded from the Hugging Face hub (split 'test'): ")
    assert "\n" not in message


def test_a_data_error_reaches_the_user_as_one_sentence(tmp_path, capsys):
    from afd.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "completion": "c"}\n{"prompt": "p", "completion": 3}\n')
    assert main(["sft", "--data", str(bad), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("afd sft: error: ") and "bad.jsonl, row 2" in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# Ids, system prompt, limit, split


def test_own_id_column_wins(tmp_path):
    rows = [{"id": "a", "prompt": "p", "completion": "c"}, {"prompt": "p", "completion": "c"},
            {"id": 42, "prompt": "p", "completion": "c"}]
    demos, _ = load_demos(DataConfig(write_jsonl(tmp_path / "ids.jsonl", rows)))
    assert [d.id for d in demos] == ["a", "ids.jsonl:2", "42"]


def test_system_prompt_is_added_where_missing(tmp_path):
    rows = [{"prompt": "p", "completion": "c"},
            {"prompt": [system("own"), user("p")], "completion": "c"}]
    cfg = DataConfig(write_jsonl(tmp_path / "s.jsonl", rows), system_prompt="Be kind.")
    demos, _ = load_demos(cfg)
    assert demos[0].prompt == [system("Be kind."), user("p")]
    assert demos[1].prompt == [system("own"), user("p")]


def test_limit_keeps_first_valid_examples(tmp_path):
    rows = [{"prompt": "p", "completion": ""}]
    rows += [{"prompt": f"p{i}", "completion": "c"} for i in range(5)]
    cfg = DataConfig(write_jsonl(tmp_path / "l.jsonl", rows), limit=2, on_invalid="skip")
    demos, stats = load_demos(cfg)
    assert [d.prompt[0]["content"] for d in demos] == ["p0", "p1"]
    assert (stats.rows, stats.kept, stats.skipped) == (3, 2, 1)


def test_split_is_deterministic_disjoint_and_covering():
    items = list(range(100))
    train, held_out = split(items, 0.2, seed=1)
    assert len(held_out) == 20 and len(train) == 80
    assert sorted(train + held_out) == items
    assert train == sorted(train) and held_out == sorted(held_out)  # input order kept
    assert split(items, 0.2, seed=1) == (train, held_out)
    assert split(items, 0.2, seed=2)[1] != held_out


def test_split_by_key_holds_out_whole_keys():
    items = [(k, i) for k in range(10) for i in range(3)]  # 10 prompts, 3 pairs each
    train, held = split(items, 0.2, seed=0, key=lambda x: x[0])
    assert len(held) == 6 and {k for k, _ in train}.isdisjoint({k for k, _ in held})
    assert sorted(train + held) == items


def test_split_sizes():
    assert split([1, 2], 0.01, seed=0)[1] != []  # at least one eval item
    assert split([1], 0.5, seed=0) == ([1], [])
    assert split(list(range(10)), 0.0, seed=0) == (list(range(10)), [])
    assert len(split(list(range(10)), 0.25, seed=0)[1]) == round(2.5)
    with pytest.raises(DataError, match="eval_fraction"):
        split([1, 2], 1.5, seed=0)


# ---------------------------------------------------------------------------------------------
# HH transcripts


def test_parse_hh_transcript_multi_turn():
    text = "\n\nHuman: a\n\nAssistant: b \n\nHuman: c\nstill c\n\nAssistant:  d\n"
    assert parse_hh_transcript(text) == ([user("a"), assistant("b"), user("c\nstill c")], "d")


@pytest.mark.parametrize("text, problem", [
    ("\n\nHuman: a", "does not end with an Assistant turn"),
    ("Hello\n\nHuman: a\n\nAssistant: b", "does not start with 'Human:'"),
    ("\n\nAssistant: b", "does not start with 'Human:'"),
    ("\n\nHuman: a\n\nAssistant: b\n\nAssistant: c", "turns 2 and 3 are both Assistant turns"),
    ("\n\nHuman: a\n\nAssistant: Human: b", "turn 2 (Assistant) has a stray 'Human:'"),
    ("\n\nHuman: a\n\nAssistant: b.  Human: c\n\nAssistant: d", "stray 'Human:'"),
    ("\n\nHuman:  \n\nAssistant: b", "turn 1 (Human) is empty"),
])
def test_parse_hh_transcript_rejects_broken_structure(text, problem):
    with pytest.raises(DataError, match=re.escape(problem)):
        parse_hh_transcript(text)


def test_real_hh_file():
    if not HH_FILE.exists():
        pytest.skip(f"{HH_FILE} is not here")
    path = str(HH_FILE)
    pairs, stats = load_pairs(DataConfig(path, on_invalid="skip"))
    assert (stats.rows, stats.kept, stats.skipped, stats.empty) == (2312, 2255, 57, 4)
    assert stats.format == "hh"
    assert all(p.prompt[-1]["role"] == "user" and p.chosen and p.rejected for p in pairs)
    assert all(p.prompt[0]["role"] == "user" for p in pairs)
    assert pairs[0].id == "hh-rlhf_harmless-base_test.jsonl.gz:1"
    assert pairs[0].prompt[0] == user("what are some pranks with a pen i can do?")
    assert len(pairs[0].prompt) == 5
    assert len(load_demos(DataConfig(path, on_invalid="skip"))[0]) == 2264
    assert len(load_prompts(DataConfig(path, on_invalid="skip"))[0]) == 2268
    # by default the first broken transcript stops the load, naming its row and turn
    assert load_error(load_pairs, path) == (
        f"{path}, row 30: field 'chosen' is not a well-formed HH transcript: "
        "turn 6 (Assistant) has a stray 'Human:' in its text")


@pytest.mark.parametrize("row, problem", [
    ({"messages": [user("a"), user("b"), assistant("c")]}, "has two user turns in a row (messages 1 and 2)"),
    ({"prompt": [user("a"), assistant("b"), assistant("c"), user("d")], "completion": "e"},
     "has two assistant turns in a row (messages 2 and 3)"),
    ({"conversations": [{"from": "human", "value": "a"}, {"from": "user", "value": "b"},
                        {"from": "gpt", "value": "c"}]}, "has two user turns in a row (turns 1 and 2)"),
])
def test_two_turns_of_one_role_in_a_row_name_the_row(tmp_path, row, problem):
    path = write_jsonl(tmp_path / "data.jsonl", [{"messages": [user("q"), assistant("r")]}, row]
                       if "messages" in row else [row])
    with pytest.raises(DataError) as e:
        load_demos(DataConfig(path))
    assert problem in str(e.value) and "data.jsonl, row" in str(e.value)
