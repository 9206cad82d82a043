"""Model cards: base_model, license, datasets and model_name as the hub reads them, and, for a
reward model, the exact text it scores, with a snippet that scores a conversation the way afd
trained it (run here against afd's own scoring), and TRL's trailing-newline rendering."""

import re

import pytest
from huggingface_hub import ModelCard

from afd import cards, models
from afd.reward import RewardConfig, reward
from afd.rewards import Classifier
from afd.sft import SFTConfig, sft
from conftest import WORDS, assistant, say_demos, user, write_jsonl


def pair_rows(words):
    return [{"prompt": f"Say {w}", "chosen": f"{w}!", "rejected": f"not {w}"} for w in words]


def test_lineage_of_built_ins_local_folders_and_hub_ids(tmp_path):
    assert cards.lineage("smollm2-135m-instruct") == ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")
    assert cards.lineage("minilm-l6") == ("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0")
    assert cards.lineage("tiny-random") == (None, None)  # built in code: nothing on the hub
    folder = tmp_path / "my-sft"
    folder.mkdir()
    (folder / "README.md").write_text("---\nbase_model: Qwen/Qwen2.5-0.5B\nlicense: apache-2.0\n---\n# mine\n")
    assert cards.lineage(str(folder)) == ("Qwen/Qwen2.5-0.5B", "apache-2.0")
    (folder / "README.md").unlink()
    assert cards.lineage(str(folder)) == (None, None)
    assert cards.lineage("someone/some-model") == ("someone/some-model", None)  # not cached, offline
    assert cards.lineage("gpt2") == ("gpt2", None)  # a hub id without an organisation


def test_model_names_and_datasets():
    assert cards.model_name("HuggingFaceTB/SmolLM2-135M-Instruct", "x", "reward", "init-sft") == \
        "SmolLM2-135M-Instruct-afd-reward-init-sft"
    assert cards.model_name(None, "runs/x/sft/model", "rl", "") == "sft-afd-rl"
    assert cards.model_name(None, "tiny-random", "train", "") == "tiny-random-afd-irft"
    assert cards.dataset_names(SFTConfig(data="trl-lib/Capybara")) == ["trl-lib/Capybara"]
    assert cards.dataset_names(SFTConfig(data="/data/demos.jsonl")) == ["demos.jsonl"]


@pytest.fixture(scope="module")
def chained(tmp_path_factory, afd_cache):
    """An SFT policy whose folder records a hub base (as a model afd trained from smollm2 does),
    and a bt reward model trained from that folder."""
    root = tmp_path_factory.mktemp("cards")
    sft(SFTConfig(out=str(root / "run"), data=write_jsonl(root / "demos.jsonl", say_demos(8)), max_steps=1,
                  eval_fraction=0.0, device="cpu"))
    policy = root / "run" / "sft" / "model"
    card = ModelCard.load(policy / "README.md")
    card.data.base_model, card.data.license = "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"
    card.save(policy / "README.md")
    cfg = RewardConfig(out=str(root / "run"), model=str(policy), variant="bt", data=write_jsonl(
        root / "pairs.jsonl", pair_rows(WORDS[:8])), max_steps=1, device="cpu", batch_size=4)
    reward(cfg)
    return root / "run" / "reward" / "model", policy


def test_cards_carry_base_model_license_datasets_and_a_meaningful_name(chained):
    rm, policy = chained
    data = ModelCard.load(rm / "README.md").data
    assert (data.base_model, data.license, data.datasets) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0",
                                                              ["pairs.jsonl"])
    assert data.model_name == "SmolLM2-135M-Instruct-afd-reward-bt" and data.pipeline_tag == "text-classification"


def snippet(folder):
    text = (folder / "README.md").read_text()
    return re.search(r"```python\n(import torch\n.*?)```", text, re.S).group(1)


def scores_like_afd(folder, template, prompt, reply):
    """The card's snippet, run, against afd's own scoring of the saved model."""
    namespace = {}
    exec(compile(snippet(folder), "card", "exec"), namespace)
    theirs = namespace["reward"](prompt + [assistant(reply)])
    ours = Classifier.from_pretrained(str(folder), device="cpu", template=template).score([prompt], [reply])[0]
    return theirs, ours


def test_a_reward_cards_snippet_scores_a_conversation_as_afd_does(chained, capsys):
    rm, _ = chained
    theirs, ours = scores_like_afd(rm, "auto", [user("Say cat")], "cat!")
    assert theirs == pytest.approx(ours, abs=1e-5)
    theirs, ours = scores_like_afd(rm, "auto", [user("Say a"), assistant("a!"), user("Say b")], "b!")
    assert theirs == pytest.approx(ours, abs=1e-5)
    text = (rm / "README.md").read_text()
    assert "'<|im_start|>user\\nWhat is the capital of France?<|im_end|>\\n<|im_start|>assistant\\nParis.<|im_end|>'" \
        in text


def test_trls_trailing_newline_is_documented_and_removing_it_gives_afds_score(chained):
    """TRL renders a whole conversation with the chat template, which ends ChatML's turn with a
    newline after the EOS: the card says so, and without that newline the score is afd's."""
    from transformers import pipeline

    rm, _ = chained
    assert "followed by `'\\n'`" in (rm / "README.md").read_text()
    tok = models.load_tokenizer(str(rm))
    messages = [user("Say sun"), assistant("sun!")]
    trl_text = tok.apply_chat_template(messages, tokenize=False)
    assert trl_text.endswith("<|im_end|>\n")
    ours = Classifier.from_pretrained(str(rm), device="cpu").score([messages[:1]], ["sun!"])[0]
    score = pipeline("text-classification", model=str(rm), function_to_apply="none", device="cpu")
    assert score(trl_text.removesuffix("\n"))[0]["score"] == pytest.approx(ours, abs=1e-5)
    assert score(trl_text)[0]["score"] != pytest.approx(ours, abs=1e-5)


@pytest.mark.parametrize("template", ["raw", "User: {}\nAssistant: "])
def test_the_snippet_follows_the_template_the_model_was_trained_with(tmp_path, template, afd_cache):
    cfg = RewardConfig(out=str(tmp_path), model="tiny-random", variant="bt", template=template, response_tokens=3,
                       data=write_jsonl(tmp_path / "p.jsonl", pair_rows(WORDS[:8])), max_steps=1, device="cpu")
    reward(cfg)
    folder = tmp_path / "reward" / "model"
    theirs, ours = scores_like_afd(folder, template, [user("Say moon")], "moon, of course!")
    assert theirs == pytest.approx(ours, abs=1e-5)
    assert "first 3 tokens" in (folder / "README.md").read_text()
