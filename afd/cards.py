"""Model cards: every saved policy and reward model gets a ``README.md`` (base model, method
and paper, data and counts, options, the stage's metrics, how to load it), written with
``huggingface_hub``'s ``ModelCard`` API so that a folder uploaded to the hub reads well.

Its metadata name the model's lineage as the hub reads it: ``base_model`` (a built-in's hub id,
a hub id as given, or, for a local folder, the base its own card records), ``license`` (the
base's, where it is known), ``datasets`` (hub ids, or the names of the data files) and a
``model_name`` built from the base and the method. A reward model's card says exactly what text
it scores, with an example rendered by its own tokenizer and a snippet that scores a
conversation the way afd trained it.

``StageDir.finish`` calls :func:`card_for_stage` on the main process just before it writes
``metrics.json`` (the metrics are known only then); stages whose ``model`` is a link to an
inner stage's model (irl, gail, irft) keep that stage's card.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

AFD = "Sun & van der Schaar 2024 (alignment from demonstrations), [arXiv:2405.15624](https://arxiv.org/abs/2405.15624)"
PAPERS = {
    "sft": [AFD],
    "reward": [AFD],
    "rl": [AFD],
    "train": ["Li et al. 2024 (IRFT / SPIN-style reward learning), [arXiv:2405.17888](https://arxiv.org/abs/2405.17888)",
              "Zeng et al. 2025 (iterated reward learning), [arXiv:2503.13538](https://arxiv.org/abs/2503.13538)",
              AFD],
    "ava": ["Cai et al. 2024 (AVA), [arXiv:2411.09341](https://arxiv.org/abs/2411.09341)", AFD],
}
METHODS = {
    "sft": "supervised fine-tuning on demonstrations (alignment from demonstrations)",
    "reward": "a reward model learned from demonstrations (inverse RL, AfD)",
    "rl": "RL fine-tuning (RLOO) against a learned reward",
    "train": "iterated reward learning / self-play fine-tuning on demonstrations (IRFT, SPIN-style)",
    "ava": "AVA: approximated variational Bayesian inverse RL (policy and reward in one model)",
}
NAMES = {"train": "irft"}  # a stage kind as it reads in a model's name
LICENSES = {"HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0", "sentence-transformers/all-MiniLM-L6-v2": "apache-2.0"}
EXAMPLE = ([{"role": "user", "content": "What is the capital of France?"}], "Paris.")


def lineage(model: str) -> tuple[str | None, str | None]:
    """(base_model, license) for the card of a model trained from ``model``: a built-in's hub id
    (tiny-random has none); a local folder's own recorded base (its card's ``base_model``) and
    license; a hub id itself, with the license its card in the local hub cache gives, if any."""
    from afd import models

    if model in models.HUB_IDS:
        base = models.HUB_IDS[model]
        return base, LICENSES.get(base)
    if model in models.BUILTINS:
        return None, None
    folder = Path(model).expanduser()
    if folder.is_dir():
        data = _card_data(folder / "README.md")
        base = data.get("base_model")
        base = base[0] if isinstance(base, list) and base else base
        return (base if isinstance(base, str) else None), data.get("license")
    if not model.startswith((".", "/", "~")) and model.count("/") <= 1:  # a hub id ("gpt2", "org/name")
        try:
            from huggingface_hub import hf_hub_download

            readme = hf_hub_download(model, "README.md", local_files_only=True)
        except Exception:  # not in the cache, or offline: the license stays unknown
            return model, LICENSES.get(model)
        return model, _card_data(Path(readme)).get("license") or LICENSES.get(model)
    return None, None


def _card_data(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        from huggingface_hub import ModelCard

        return ModelCard.load(path).data.to_dict()
    except Exception:  # a README without card metadata
        return {}


def dataset_names(cfg: Any) -> list[str]:
    """The training data as the hub's ``datasets`` list: a hub id as given, a file or folder by name."""
    data = str(getattr(cfg, "data", "") or "")
    if not data:
        return []
    local = Path(data).expanduser()
    return [local.name if local.exists() or data.startswith((".", "/", "~")) else data]


def model_name(base: str | None, model: str, kind: str, variant: str) -> str:
    """e.g. SmolLM2-135M-Instruct-afd-reward-init-sft."""
    parts = Path(base or model).parts
    short = parts[-2] if len(parts) > 1 and parts[-1] == "model" else parts[-1] if parts else "model"
    return "-".join([short, "afd", NAMES.get(kind, kind)] + ([variant] if variant else []))


def _load_snippet(kind: str, variant: str) -> str:
    if kind == "ava" or variant.startswith("ava"):
        return ("```python\nfrom afd import rewards\n\nrm = rewards.load(\"PATH\")  # rm.score(prompts, responses), "
                "rm.dense_rewards(...)\n```\n"
                "It is also a causal LM: `AutoModelForCausalLM.from_pretrained(\"PATH\")` loads the policy.")
    if kind == "reward":
        return ("```python\nfrom transformers import AutoModelForSequenceClassification, pipeline\n\n"
                "model = AutoModelForSequenceClassification.from_pretrained(\"PATH\")  # one logit: the reward\n"
                "score = pipeline(\"text-classification\", model=\"PATH\", function_to_apply=\"none\")\n```")
    return ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            "model = AutoModelForCausalLM.from_pretrained(\"PATH\")\ntokenizer = AutoTokenizer.from_pretrained(\"PATH\")\n```")


def scoring_snippet(template: str, response_tokens: int | None) -> str:
    """Python that scores a conversation (its last message the assistant reply) exactly as afd
    trained the reward model at PATH and scores with it (afd.reward.score_texts)."""
    from afd import models

    if models.is_input_template(template):
        render = (f"TEMPLATE = {template!r}  # the prompt template it was trained with (OpenRLHF's input_template)\n\n\n"
                  "def prompt_ids(prompt):  # one user message, put where {} is; then the reply, directly after it\n"
                  "    return tokenizer(TEMPLATE.replace(\"{}\", prompt[-1][\"content\"], 1))[\"input_ids\"], \"\"\n")
    elif template == "raw":
        render = ("def prompt_ids(prompt):  # a lone user message as it is; a conversation as an HH transcript\n"
                  "    if len(prompt) == 1 and prompt[0][\"role\"] == \"user\":\n"
                  "        return tokenizer(prompt[0][\"content\"])[\"input_ids\"], \"\"\n"
                  "    names = {\"user\": \"Human\", \"assistant\": \"Assistant\", \"system\": \"System\"}\n"
                  "    text = \"\".join(f\"\\n\\n{names[m['role']]}: {m['content']}\" for m in prompt) + \"\\n\\nAssistant:\"\n"
                  "    return tokenizer(text)[\"input_ids\"], \" \"\n")
    else:
        render = ("def prompt_ids(prompt):  # the chat template, with the generation prompt\n"
                  "    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)\n"
                  "    return tokenizer(text, add_special_tokens=False)[\"input_ids\"], \"\"\n")
    cut = f"[:{response_tokens}]  # it sees a reply's first {response_tokens} tokens only" if response_tokens else ""
    return ("```python\nimport torch\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
            "tokenizer = AutoTokenizer.from_pretrained(\"PATH\")\n"
            "model = AutoModelForSequenceClassification.from_pretrained(\"PATH\").eval()\n\n\n"
            + render + "\n\n"
            "def reward(messages):\n"
            "    \"\"\"The reward of messages[-1], an assistant reply, to the messages before it.\"\"\"\n"
            "    ids, separator = prompt_ids(messages[:-1])\n"
            "    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id\n"
            "    reply = tokenizer(separator + messages[-1][\"content\"], add_special_tokens=False)[\"input_ids\"] + [end]\n"
            f"    ids = ids + reply{cut}\n"
            "    with torch.no_grad():\n"
            "        return model(torch.tensor([ids])).logits[0, 0].item()\n\n\n"
            "print(reward([{\"role\": \"user\", \"content\": \"What is the capital of France?\"},\n"
            "              {\"role\": \"assistant\", \"content\": \"Paris.\"}]))\n```")


def input_section(folder: Path, template: str, response_tokens: int | None) -> list[str]:
    """What a reward model reads: the rule, an example rendered by its own tokenizer, how TRL's
    rendering of the same conversation differs, and a snippet that scores like afd."""
    from transformers import AutoTokenizer

    from afd import models

    tok = AutoTokenizer.from_pretrained(folder)
    prompt, reply = EXAMPLE
    ids = models.encode_prompt(tok, prompt, template) + models.encode_response(tok, prompt, reply, template)
    ids = ids if not response_tokens else ids[:len(models.encode_prompt(tok, prompt, template)) + response_tokens]
    shown = tok.decode(ids)
    chat = models.uses_chat_template(tok, template)
    if chat:
        rule = ("the prompt rendered by the tokenizer's chat template with the generation prompt "
                "(`apply_chat_template(prompt, add_generation_prompt=True)`), then the reply's tokens and the EOS "
                f"token `{tok.eos_token}`, with nothing after it")
    elif models.is_input_template(template):
        rule = (f"the prompt's user message put where `{{}}` is in the template `{template!r}` (OpenRLHF's "
                f"input_template), then the reply directly after it and the EOS token `{tok.eos_token}`")
    else:
        rule = ("a lone user message as it is (a conversation as an HH transcript ending in `\\n\\nAssistant:`, "
                "the reply after one space), then the reply and the end token")
    if response_tokens:
        rule += f"; only a reply's first {response_tokens} tokens (a cut reply has no end token)"
    lines = ["## Input it scores", "",
             f"The reward is the single logit of the classifier on {rule}. For example, the reply "
             f"{reply!r} to {prompt[0]['content']!r} is scored as exactly this text:", "",
             "```text", shown, "```", "", f"(as a Python string: `{shown!r}`)", ""]
    if chat:
        full = tok.apply_chat_template(prompt + [{"role": "assistant", "content": reply}], tokenize=False)
        mine = models.prompt_text(tok, prompt, template)[0] + reply + tok.eos_token
        if full != mine and full.startswith(mine):
            lines += [f"Rendering the whole conversation with `apply_chat_template(messages, tokenize=False)`, as TRL's "
                      f"`RewardTrainer` and GRPO's `reward_funcs` do, gives this text followed by "
                      f"`{full[len(mine):]!r}`, which shifts the score: remove it (`text.removesuffix("
                      f"{full[len(mine):]!r})`) to score a conversation the way afd trained on it.", ""]
        elif full != mine:
            lines += ["Rendering the whole conversation with `apply_chat_template(messages, tokenize=False)`, as TRL "
                      "does, gives a different text from the one above; score with the snippet below instead.", ""]
        if not response_tokens and tok(mine)["input_ids"] == ids:  # the text tokenizes back to the same ids
            lines += ["The text above, given to `pipeline(\"text-classification\", model=PATH, "
                      "function_to_apply=\"none\")`, gets the same reward: this tokenizer reads it back as the same "
                      "tokens.", ""]
    lines += ["To score a conversation (its last message the assistant's reply) the way afd trained on it:", "",
              scoring_snippet("chat" if chat else template if models.is_input_template(template) else "raw",
                              response_tokens), ""]
    return lines


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "`" + json.dumps(value, default=str) + "`" if isinstance(value, (list, dict)) else str(value)


def write_card(folder: Path, kind: str, base_model: str, cfg: Any, metrics: dict) -> Path:
    """Write ``folder/README.md`` for the model a stage of ``kind`` saved there (``base_model``:
    the model the stage started from, as given)."""
    from huggingface_hub import ModelCard, ModelCardData

    from afd.config import to_dict

    folder = Path(folder)
    variant = str(getattr(cfg, "variant", ""))
    is_reward = kind == "reward" and not variant.startswith("ava")
    options = {k: v for k, v in to_dict(cfg).items() if k != "out"} if cfg is not None else {}
    data = {k: v for k, v in options.items()
            if v and (k in ("data", "prompts", "pool") or k.endswith(("_pool", "_pairs", "_demos")))}
    base, license_ = lineage(base_model) if base_model else (None, None)
    card_data = ModelCardData(
        library_name="transformers", base_model=base, license=license_, datasets=dataset_names(cfg) or None,
        pipeline_tag="text-classification" if is_reward else "text-generation",
        tags=["afd", "alignment-from-demonstrations", kind] + ([variant] if variant else []),
        model_name=model_name(base, base_model, kind, variant))
    counts = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    template = str(getattr(cfg, "template", "auto"))
    lines = [
        "---", card_data.to_yaml(), "---", "",
        f"# {folder.parent.name}: {'reward model' if is_reward else 'policy'} trained with afd", "",
        f"- **Base model:** `{base_model}`" + (f" ({base})" if base and base != base_model else ""),
        f"- **Method:** {METHODS.get(kind, kind)}" + (f", variant `{variant}`" if variant else ""),
        "- **Papers:** " + "; ".join(PAPERS.get(kind, [AFD])),
        "- **Data:** " + (", ".join(f"{k}: `{v}`" for k, v in data.items()) or "see the options"), "",
        "## How to load", "", _load_snippet(kind, variant).replace("PATH", str(folder)), "",
        *(input_section(folder, template, getattr(cfg, "response_tokens", None)) if is_reward else []),
        "## Metrics of the stage", "", "| metric | value |", "| --- | --- |",
        *(f"| {k} | {_fmt(v)} |" for k, v in counts.items()), "",
        "## Options", "", "| option | value |", "| --- | --- |",
        *(f"| {k} | {_fmt(v)} |" for k, v in options.items()), "",
        "Trained with [afd](https://arxiv.org/abs/2405.15624) (alignment from demonstrations).", "",
    ]
    card = ModelCard("\n".join(lines).replace("\"PATH\"", json.dumps(str(folder))))
    path = folder / "README.md"
    card.save(path)
    return path


def card_for_stage(stage, metrics: dict) -> None:
    """The card of the model ``stage`` saved in its ``model`` folder, if it saved one itself (not a
    link to an inner stage's model). Called on the main process only."""
    folder = stage.path / "model"
    if stage.kind not in METHODS or folder.is_symlink() or not (folder / "config.json").exists():
        return
    write_card(folder, stage.kind, str(getattr(stage.cfg, "model", "")), stage.cfg, metrics)
