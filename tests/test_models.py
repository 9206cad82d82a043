"""afd.models: the built-in tiny model, prompt/response encoding, placement and load errors."""

import copy
from types import SimpleNamespace

import pytest
import torch

from afd import models
from afd.errors import AfdError
from conftest import assistant, system, user

CONVERSATION = [system("Be brief."), user("Hi there"), assistant("Hello!"), user("Name a colour.")]


# ---------------------------------------------------------------------------------------------
# tiny-random


def test_tiny_random_is_small_and_built_once(tiny, afd_cache):
    model, tok = tiny
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    folder = afd_cache / "models" / "tiny-random"
    assert models.resolve("tiny-random") == str(folder)
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert models.resolve("tiny-random") == str(folder)
    assert (folder / "config.json").stat().st_mtime_ns == stamp  # cached, not rebuilt
    assert model.config.vocab_size == len(tok)


@pytest.mark.parametrize("text", ["plain ascii", "héllo wörld — naïve café", "日本語 🙂 emoji",
                                  " leading space\n\ttab and newline\n", "<|im_end|> looks special"])
def test_tokenizer_round_trips_text(tiny, text):
    _, tok = tiny
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert all(0 <= i < len(tok) for i in ids)


def test_chat_template_ends_in_the_assistant_header(tiny):
    _, tok = tiny
    text = tok.apply_chat_template([user("Hi")], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    ids = models.encode_prompt(tok, [user("Hi")])
    assert tok.decode(ids) == text
    header = [tok.convert_tokens_to_ids("<|im_start|>")] + tok("assistant\n", add_special_tokens=False)["input_ids"]
    assert ids[-len(header):] == header  # the special token is one id, not its bytes


# ---------------------------------------------------------------------------------------------
# encode_prompt / encode_response / decode_response


@pytest.mark.parametrize("messages", [[user("Name a colour.")], CONVERSATION], ids=["single", "conversation"])
@pytest.mark.parametrize("response", ["Blue.", " starts with a space", "ünïcode ✓ 日本"])
def test_chat_mode_encoding_is_consistent(tiny, messages, response):
    _, tok = tiny
    prompt = models.encode_prompt(tok, messages, "chat")
    reply = models.encode_response(tok, messages, response, "chat")
    assert reply[-1] == tok.eos_token_id
    assert models.decode_response(tok, messages, reply[:-1], "chat") == response
    # Prompt + reply is exactly the template's rendering of the finished conversation (whose
    # assistant turn is followed by one newline).
    full = tok.apply_chat_template(messages + [assistant(response)], tokenize=False)
    assert tok.decode(prompt + reply) + "\n" == full
    assert models.encode_prompt(tok, messages, "auto") == prompt  # tiny-random has a template


@pytest.mark.parametrize("response", [" blue.", "-ish", "  two spaces"])
def test_raw_single_turn_is_a_verbatim_continuation(tiny, response):
    _, tok = tiny
    messages = [user("The sky is")]
    prompt = models.encode_prompt(tok, messages, "raw")
    reply = models.encode_response(tok, messages, response, "raw")
    assert tok.decode(prompt) == "The sky is"
    assert reply[-1] == tok.eos_token_id
    assert tok.decode(prompt + reply[:-1]) == "The sky is" + response
    assert models.decode_response(tok, messages, reply[:-1], "raw") == response


@pytest.mark.parametrize("response", ["Blue.", " already spaced"])
def test_raw_conversation_is_an_hh_transcript(tiny, response):
    _, tok = tiny
    prompt = models.encode_prompt(tok, CONVERSATION, "raw")
    reply = models.encode_response(tok, CONVERSATION, response, "raw")
    transcript = ("\n\nSystem: Be brief.\n\nHuman: Hi there\n\nAssistant: Hello!"
                  "\n\nHuman: Name a colour.\n\nAssistant:")
    assert tok.decode(prompt) == transcript
    assert tok.decode(reply[:-1]) == " " + response  # exactly one separating space
    assert tok.decode(prompt + reply[:-1]) == transcript + " " + response
    assert models.decode_response(tok, CONVERSATION, reply[:-1], "raw") == response


def test_template_choice(tiny):
    _, tok = tiny
    plain = copy.deepcopy(tok)
    plain.chat_template = None
    assert models.uses_chat_template(tok, "auto") and models.uses_chat_template(tok, "chat")
    assert not models.uses_chat_template(tok, "raw")
    assert not models.uses_chat_template(plain, "auto")  # auto falls back to raw rendering
    assert plain.decode(models.encode_prompt(plain, [user("abc")])) == "abc"
    with pytest.raises(AfdError, match="'template'"):
        models.encode_prompt(plain, [user("abc")], "chat")


def test_stop_token_ids(tiny):
    model, tok = tiny
    assert models.stop_token_ids(model, tok) == [tok.eos_token_id] == [2]
    many = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[7, 2, 5]))
    assert models.stop_token_ids(many, tok) == [2, 5, 7]
    assert models.stop_token_ids(SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=None)), tok) == [2]
    assert models.stop_token_ids(SimpleNamespace(), tok) == [2]


# ---------------------------------------------------------------------------------------------
# Placement


def test_pick_device():
    assert models.pick_device("cpu") == torch.device("cpu")
    assert models.pick_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(AfdError, match="option 'device'.*'gpu0'"):
        models.pick_device("gpu0")


def test_auto_dtype_rule(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    assert models.pick_dtype("auto", cpu, "sample") == torch.bfloat16  # sampling: bf16 where native
    assert models.pick_dtype("auto", cpu, "score") == torch.float32  # differenced log-probs: fp32
    assert models.pick_dtype("auto", cpu) == torch.float32
    assert models.pick_dtype("float32", cpu, "sample") == torch.float32  # an explicit dtype wins
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    assert models.pick_dtype("auto", cpu, "sample") == torch.float32
    assert models.pick_dtype("bf16", cpu, "score") == torch.bfloat16


def test_cpu_has_native_bf16_reads_the_flags(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    real = models.Path

    def fake(p, *a):
        return real(info) if str(p) == "/proc/cpuinfo" else real(p, *a)

    monkeypatch.setattr(models, "Path", fake)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    info.write_text("flags\t: fpu avx512f avx512_bf16 amx_tile\n")
    assert models.cpu_has_native_bf16()
    info.write_text("flags\t: fpu avx2 avx512f\n")
    assert not models.cpu_has_native_bf16()


def test_pick_dtype():
    cpu = torch.device("cpu")
    assert models.pick_dtype("auto", cpu) == torch.float32
    assert models.pick_dtype("bf16", cpu) == models.pick_dtype("bfloat16", cpu) == torch.bfloat16
    assert models.pick_dtype("fp16", cpu) == torch.float16
    assert models.pick_dtype("fp32", cpu) == torch.float32
    for bad in ("float64", "half", ""):
        with pytest.raises(AfdError, match=f"option 'dtype'.*{bad!r}"):
            models.pick_dtype(bad, cpu)


# ---------------------------------------------------------------------------------------------
# Load errors: one sentence naming the model, never a traceback from the hub


LOADERS = {"tokenizer": models.load_tokenizer,
           "causal_lm": lambda name: models.load_causal_lm(name, device="cpu")}


@pytest.mark.parametrize("loader", LOADERS.values(), ids=LOADERS.keys())
@pytest.mark.parametrize("name", ["no-such-org/no-such-model-xyz", "no-such-model-xyz"])
def test_unknown_model_is_one_clear_sentence(loader, name):
    with pytest.raises(AfdError) as e:
        loader(name)
    message = str(e.value)
    assert f"'{name}'" in message
    assert "\n" not in message and "Traceback" not in message
    assert e.value.__suppress_context__  # raised `from None`: no chained hub traceback


def test_unknown_hub_id_without_slash_says_hub():
    with pytest.raises(AfdError, match="not a built-in.*hub"):
        models.load_tokenizer("no-such-model-xyz")


def test_unknown_hub_id_with_org_says_hub():
    with pytest.raises(AfdError, match="hub"):
        models.load_tokenizer("no-such-org/no-such-model-xyz")


@pytest.mark.parametrize("loader", LOADERS.values(), ids=LOADERS.keys())
def test_missing_local_folder(loader):
    with pytest.raises(AfdError, match=r"model '\./nope/model' is not an existing folder"):
        loader("./nope/model")


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(AfdError, match=f"model folder {tmp_path} could not be loaded"):
        models.load_causal_lm(str(tmp_path), device="cpu")


def test_which_stages_train_in_bf16_mixed_precision(monkeypatch):
    """The rule (afd.training.mixed_precision): on a CPU with native bf16, SFT / reward / RL of a
    model wide enough train under bf16 autocast, IRFT and AVA (differenced log-probs) and narrow
    models in fp32; --bf16 / --no-bf16 and an explicit dtype override it; a CPU without native
    bf16 trains in fp32. Differenced log-probs elsewhere are asked for in fp32 explicitly."""
    from types import SimpleNamespace

    from afd.training import mixed_precision

    cpu = torch.device("cpu")
    cfg = lambda **kw: SimpleNamespace(**{"dtype": "auto", "bf16": None, **kw})  # noqa: E731
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    assert mixed_precision(cfg(), cpu, width=576)  # sft, reward, rl
    assert not mixed_precision(cfg(), cpu, differenced=True, width=576)  # irft, ava
    assert not mixed_precision(cfg(), cpu, width=64)  # tiny: autocast costs more than it saves
    assert mixed_precision(cfg(bf16=True), cpu, differenced=True, width=64)  # asked for
    assert not mixed_precision(cfg(bf16=False), cpu, width=576)
    assert not mixed_precision(cfg(dtype="float32"), cpu, width=576)
    assert models.pick_dtype("auto", cpu, "train") == torch.bfloat16
    assert models.pick_dtype("auto", cpu, "score") == torch.float32
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    assert not mixed_precision(cfg(), cpu, width=576)
    assert models.pick_dtype("auto", cpu, "sample") == torch.float32


def test_differenced_log_probs_are_fp32_on_a_bf16_cpu(monkeypatch, tmp_path):
    """On a CPU with native bf16 the density ratio, afd eval's KL reference and IRFT's opponent
    load their models in fp32 (a bf16 policy samples; the log-probs it is scored by are fp32)."""
    from afd import rewards

    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    loaded = []
    real = models.load_causal_lm
    monkeypatch.setattr(models, "load_causal_lm", lambda name, device="auto", dtype="auto", purpose="score":
                        loaded.append((name, dtype)) or real(name, device, dtype, purpose))
    rewards.load("density-ratio:tiny-random,tiny-random", device="cpu").score([[{"role": "user", "content": "x"}]], ["y"])
    assert loaded == [("tiny-random", "float32")] * 2
    assert real("tiny-random", "cpu", "auto", "sample")[0].dtype == torch.bfloat16  # sampling is bf16 there
