"""Model cards: every saved policy and reward model gets a ``README.md`` (base model, method
and paper, data and counts, options, the stage's metrics, how to load it), written with
``huggingface_hub``'s ``ModelCard`` API so that a folder uploaded to the hub reads well.

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


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "`" + json.dumps(value, default=str) + "`" if isinstance(value, (list, dict)) else str(value)


def write_card(folder: Path, kind: str, base_model: str, cfg: Any, metrics: dict) -> Path:
    """Write ``folder/README.md`` for the model a stage of ``kind`` saved there."""
    from huggingface_hub import ModelCard, ModelCardData

    from afd.config import to_dict

    folder = Path(folder)
    variant = str(getattr(cfg, "variant", ""))
    is_reward = kind == "reward" and not variant.startswith("ava")
    options = {k: v for k, v in to_dict(cfg).items() if k != "out"} if cfg is not None else {}
    data = {k: v for k, v in options.items()
            if v and (k in ("data", "prompts", "pool") or k.endswith(("_pool", "_pairs", "_demos")))}
    base_on_hub = bool(base_model) and "/" in base_model and not Path(base_model).exists()
    card_data = ModelCardData(
        library_name="transformers", base_model=base_model if base_on_hub else None,
        pipeline_tag="text-classification" if is_reward else "text-generation",
        tags=["afd", "alignment-from-demonstrations", kind] + ([variant] if variant else []),
        model_name=folder.parent.name)
    counts = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    lines = [
        "---", card_data.to_yaml(), "---", "",
        f"# {folder.parent.name}: {'reward model' if is_reward else 'policy'} trained with afd", "",
        f"- **Base model:** `{base_model}`",
        f"- **Method:** {METHODS.get(kind, kind)}" + (f", variant `{variant}`" if variant else ""),
        "- **Papers:** " + "; ".join(PAPERS.get(kind, [AFD])),
        "- **Data:** " + (", ".join(f"{k}: `{v}`" for k, v in data.items()) or "see the options"), "",
        "## How to load", "", _load_snippet(kind, variant).replace("PATH", str(folder)), "",
        "## Metrics of the stage", "", "| metric | value |", "| --- | --- |",
        *(f"| {k} | {_fmt(v)} |" for k, v in counts.items()), "",
        "## Options", "", "| option | value |", "| --- | --- |",
        *(f"| {k} | {_fmt(v)} |" for k, v in options.items()), "",
        "Trained with [afd](https://arxiv.org/abs/2405.15624) (alignment from demonstrations).", "",
    ]
    card = ModelCard("\n".join(lines))
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
