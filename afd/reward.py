"""``afd reward``: reward models from demonstrations (AfD's IRL reward models) or preferences.

METHODS §1 (Sun & van der Schaar, 2024). Minimising the reverse KL needs a discriminator
``D_phi(y|x) = sigma(r_phi(x, y))`` trained with binary cross-entropy

    max_phi  E_pos[log sigma(r_phi)] + E_neg[log(1 - sigma(r_phi))]

whose logit ``r_phi`` is the reward. The variants differ only in what is positive and what
is negative:

    variant     positives               negatives
    init-sft    samples of pi_sft       samples of pi_0      (proposed: same model family)
    init-demo   demonstrations          samples of pi_0      (heterogeneous: reward-hacks)
    sft-demo    demonstrations          samples of pi_sft    (most heterogeneous)
    bt          chosen                  rejected             (preference baseline)
    kto         responses labelled true responses labelled false (a KTO / unpaired-preference file)

``ava-d`` (demonstrations) and ``ava-p`` (pairs) train AVA's token-level Bayesian reward
model instead (METHODS §3, :mod:`afd.ava`), saved as a causal-LM folder with its heads.

``loss: bt`` trains any of the first four variants with the pairwise Bradley-Terry loss
``-log sigma(r(x, y+) - r(x, y-))`` instead, pairing positives and negatives of the same
prompt; ``bt`` always uses it. The model is an ``AutoModelForSequenceClassification`` with one
label (default backbone: the initial policy), saved with ``save_pretrained`` so that
``pipeline("text-classification")`` loads it. Its input is the prompt rendered exactly as in
SFT and sampling, followed by the response and EOS.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import torch

from afd import dist, models
from afd.ava import AVAOptions
from afd.config import check_choice, opt
from afd.errors import AfdError
from afd.runs import DataOptions, EvalPairsOptions, StageDir, StageOptions
from afd.training import (TokenRate, TrainOptions, apply_lora, loss_plot, merged, save_model, train_resuming,
                          training_arguments)

VARIANTS = ("init-sft", "init-demo", "sft-demo", "bt", "kto", "ava-d", "ava-p")


@dataclass
class RewardConfig(StageOptions, DataOptions, EvalPairsOptions, TrainOptions, AVAOptions):
    model: str = opt("tiny-random", "backbone: built-in name, local folder or hub id (default: the initial policy)")
    variant: str = opt("init-sft", "init-sft, init-demo, sft-demo, ava-d (from demonstrations), bt, ava-p (from "
                                   "preference pairs) or kto (a file labelling each response true or false); ava-* is "
                                   "AVA's token-level Bayesian reward (afd.ava)")
    loss: str = opt("bce", "bce (classifier: logit = reward) or bt (pairwise Bradley-Terry on same-prompt pairs)")
    init_pool: str = opt("", "samples of the initial policy pi_0 (a pool file or a sample stage folder)")
    sft_pool: str = opt("", "samples of the SFT policy pi_sft (a pool file or a sample stage folder)")
    same_prompts: bool = opt(True, "train and evaluate only on prompts that have both positives and negatives, "
                                   "so the prompt alone cannot tell the classes apart (init-sft, init-demo, sft-demo, "
                                   "kto)")
    response_tokens: int | None = opt(None, "classifier input keeps at most N response tokens (a cut response has "
                                            "no EOS), so that length past N and how a response ends cannot tell "
                                            "the classes apart; the saved model applies the same cut when scoring")

    def validate(self) -> None:
        self.validate_training()
        check_choice("variant", self.variant, VARIANTS)
        check_choice("loss", self.loss, ("bce", "bt"))
        self.validate_ava()
        need = {"init-sft": ("init_pool", "sft_pool"), "init-demo": ("init_pool", "data"),
                "sft-demo": ("sft_pool", "data")}.get(self.variant, ("data",))
        for name in need:
            if not getattr(self, name):
                raise AfdError(f"variant '{self.variant}' needs option '{name}'")


@dataclass
class Example:
    prompt: list[dict]
    response: str
    label: float  # 1.0 positive, 0.0 negative
    group: str    # the prompt, as a key: examples of one prompt share a split and form BT pairs
    pair: str = ""      # pair data: the pair's id (its two sides form one BT pair)
    ended: bool = True  # the response ended by itself (EOS), not cut at max_new_tokens


def prompt_key(prompt: list[dict]) -> str:
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def examples(cfg: RewardConfig) -> list[Example]:
    """Positives and negatives of the configured variant."""
    from afd.data import load_demos, load_negatives, load_pairs
    from afd.sampling import read_pool

    def pool(path: str, label: float) -> list[Example]:
        return [Example(r["prompt"], r["response"], label, prompt_key(r["prompt"]),
                        ended=r.get("finish_reason") != "length") for r in read_pool(path)]

    def demos(label: float) -> list[Example]:
        return [Example(d.prompt, d.response, label, prompt_key(d.prompt)) for d in load_demos(cfg.data_config())[0]]

    if cfg.variant == "bt":
        out = []
        for p in load_pairs(cfg.data_config())[0]:
            # grouped by prompt, so that pairs sharing a prompt (and, in afd irl, a chosen
            # demonstration) fall on one side of the held-out split
            key = prompt_key(p.prompt)
            out += [Example(p.prompt, p.chosen, 1.0, key, p.id), Example(p.prompt, p.rejected, 0.0, key, p.id)]
        return out
    positives = pool(cfg.sft_pool, 1.0) if cfg.variant == "init-sft" else demos(1.0)
    if cfg.variant == "kto":  # the rows the same file labels false
        negatives = [Example(d.prompt, d.response, 0.0, prompt_key(d.prompt))
                     for d in load_negatives(cfg.data_config())[0]]
    else:
        negatives = pool(cfg.sft_pool if cfg.variant == "sft-demo" else cfg.init_pool, 0.0)
    if cfg.same_prompts:
        shared = {e.group for e in positives} & {e.group for e in negatives}
        if not shared:
            raise AfdError(f"variant '{cfg.variant}': no prompt has both positives and negatives; sample the pools "
                           f"on the demonstrations' prompts (kto: label responses to shared prompts both ways), or "
                           f"set same_prompts false")
        positives = [e for e in positives if e.group in shared]
        negatives = [e for e in negatives if e.group in shared]
    return positives + negatives


def split_groups(items: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Held-out examples by prompt, so no prompt is both trained and evaluated on."""
    from afd.data import split

    groups = sorted({e.group for e in items})
    _, held = split(groups, fraction, seed) if fraction > 0 and len(groups) > 1 else (groups, [])
    held = set(held)
    return [e for e in items if e.group not in held], [e for e in items if e.group in held]


def bt_pairs(items: list[Example], seed: int) -> list[tuple[Example, Example]]:
    """Pair each prompt's positives with its negatives (shuffled, as many pairs as the
    smaller side): the data of the pairwise loss."""
    rng = random.Random(seed)
    by_group: dict[tuple[str, str], tuple[list, list]] = {}
    for e in items:
        by_group.setdefault((e.group, e.pair), ([], []))[0 if e.label > 0.5 else 1].append(e)
    pairs = []
    for group in sorted(by_group):
        pos, neg = by_group[group]
        rng.shuffle(pos)
        rng.shuffle(neg)
        pairs += list(zip(pos, neg))
    return pairs


def encode(tokenizer, prompt, response, cfg) -> list[int] | None:
    """Classifier input ids, or None when the prompt is over-long (dropped, or an error)."""
    p = models.encode_prompt_within(tokenizer, prompt, cfg.template, cfg.max_prompt_length, cfg.long_prompts,
                                    "a reward-model prompt")
    if p is None:
        return None
    return fit(p, response_ids(tokenizer, prompt, response, cfg.template, cfg.response_tokens), cfg.max_length)


def response_ids(tokenizer, prompt, response: str, template: str, limit: int | None) -> list[int]:
    """The response's tokens and EOS, or only its first ``limit`` tokens when it is longer."""
    ids = models.encode_response(tokenizer, prompt, response, template)
    return ids[:limit] if limit and len(ids) > limit else ids


def fit(prompt_ids: list[int], response_ids: list[int], max_length: int | None) -> list[int]:
    """``prompt + response`` in at most ``max_length`` tokens: the prompt loses tokens from its
    left first, so the response, and the end of the prompt next to it, stay whole; only a
    response longer than ``max_length`` is cut (at its end). Cutting the joined sequence at its
    end instead would make two replies to a long prompt identical inputs (a tie)."""
    if max_length is None or len(prompt_ids) + len(response_ids) <= max_length:
        return prompt_ids + response_ids
    keep = max(max_length - len(response_ids), 0)
    return prompt_ids[len(prompt_ids) - keep:] + response_ids[:max_length - keep]


class RewardCollator:
    """Right-padded classifier inputs; BT batches hold the chosen rows then the rejected ones."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def pad(self, seqs: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        if "chosen" in batch[0]:
            return self.pad([b["chosen"] for b in batch] + [b["rejected"] for b in batch])
        return {**self.pad([b["input_ids"] for b in batch]),
                "labels": torch.tensor([b["label"] for b in batch], dtype=torch.float32)}


def reward_loss(rewards: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """BCE with the logit as reward (labels given), or Bradley-Terry on [chosen; rejected]."""
    if labels is not None:
        return torch.nn.functional.binary_cross_entropy_with_logits(rewards, labels)
    chosen, rejected = rewards.chunk(2)
    return -torch.nn.functional.logsigmoid(chosen - rejected).mean()


def _trainer_class():
    from transformers import Trainer

    class RewardTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels", None)
            rewards = model(**inputs).logits.squeeze(-1).float()
            loss = reward_loss(rewards, labels)
            return (loss, {"rewards": rewards}) if return_outputs else loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            with torch.no_grad():
                loss = self.compute_loss(model, dict(inputs))
            return loss.detach(), None, None

    return RewardTrainer


def load_reward_model(path: str, device: str = "auto", dtype: str = "auto"):
    from transformers import AutoModelForSequenceClassification

    dev = models.pick_device(device)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(models.resolve(path),
                                                                   dtype=models.pick_dtype(dtype, dev))
    except (OSError, ValueError) as e:
        raise models._load_error(path, e) from None
    tok = models.load_tokenizer(path)
    model.config.pad_token_id = tok.pad_token_id
    return model.to(dev).eval(), tok


@torch.inference_mode()
def score_texts(model, tokenizer, prompts: list[list[dict]], responses: list[str], template: str = "auto",
                batch_size: int = 16, max_length: int | None = None, response_tokens: int | None = None) -> list[float]:
    """Reward (the classifier logit) of each response to its prompt (``response_tokens``: the
    model's own cut, by default the one it was trained with)."""
    device = next(model.parameters()).device
    collate = RewardCollator(tokenizer.pad_token_id)
    if response_tokens is None:
        response_tokens = (getattr(model.config, "afd", None) or {}).get("response_tokens")
    seqs = [fit(models.encode_prompt(tokenizer, p, template), response_ids(tokenizer, p, r, template, response_tokens),
                max_length) for p, r in zip(prompts, responses)]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = [0.0] * len(seqs)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        batch = {k: v.to(device) for k, v in collate.pad([seqs[i] for i in idx]).items()}
        for i, r in zip(idx, model(**batch).logits.squeeze(-1).float().tolist()):
            out[i] = r
    return out


class ClassifierReward:
    """A sequence classifier as a reward (the reward-model interface of :mod:`afd.scorers`):
    ``score`` gives its logit; it has no per-token rewards (``dense_rewards`` is None)."""

    dense_rewards = None

    def __init__(self, model, tokenizer, template: str = "auto", batch_size: int = 16, max_length: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.template, self.batch_size, self.max_length = template, batch_size, max_length

    @classmethod
    def from_pretrained(cls, path: str, device: str = "auto", dtype: str = "auto", template: str = "auto",
                        batch_size: int = 16):
        return cls(*load_reward_model(path, device, dtype), template, batch_size)

    def score(self, prompts: list[list[dict]], responses: list[str]) -> list[float]:
        return score_texts(self.model, self.tokenizer, prompts, responses, self.template, self.batch_size,
                           self.max_length)


def auc(scores: list[float], labels: list[float]) -> float | None:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties half."""
    pos = [s for s, l in zip(scores, labels) if l > 0.5]
    neg = [s for s, l in zip(scores, labels) if l <= 0.5]
    if not pos or not neg:
        return None
    ranked = sorted((s, l > 0.5) for s, l in zip(scores, labels))
    # average ranks for ties (Mann-Whitney U)
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        avg = (i + j) / 2 + 1
        rank_sum += avg * sum(1 for k in range(i, j + 1) if ranked[k][1])
        i = j + 1
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def pair_accuracy(chosen: list[float], rejected: list[float]) -> float:
    """Share of pairs ranked right (ties count half)."""
    return sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected)) / len(chosen)


def threshold_rule(values: list[float], labels: list[float]) -> tuple[float, float]:
    """(threshold, sign) of the one-feature classifier "positive iff sign * (value - threshold) > 0"
    with the best accuracy on these examples (thresholds halfway between observed values)."""
    cuts = sorted(set(values))
    candidates = [cuts[0] - 1] + [(a + b) / 2 for a, b in zip(cuts, cuts[1:])] + [cuts[-1] + 1]
    best = (-1.0, 0.0, 1.0)
    for t in candidates:
        for sign in (1.0, -1.0):
            acc = sum((sign * (v - t) > 0) == (l > 0.5) for v, l in zip(values, labels))
            if acc > best[0]:
                best = (acc, t, sign)
    return best[1], best[2]


def controls(train: list[Example], held: list[Example], length, seed: int = 0, ended=None) -> dict:
    """What a reward model's held-out figures are to be read against: the same classification
    by one feature of the response alone, fitted on the training examples and scored on the
    held-out ones of the same split. ``length_only_accuracy`` (and ``length_only_auc``,
    ``length_only_pair_accuracy`` on the same-prompt pairs) use its length in tokens
    (``length(example)``); ``eos_only_*`` use whether it ended with EOS rather than being cut at
    ``max_new_tokens`` (given where that varies; ``ended(example)``, by default ``e.ended``: a
    model shown only a response's first tokens sees its EOS only if it ended within them),
    beside the held-out share of cut responses of each class. A reward model no better than
    these has learnt length or truncation."""
    ended = ended or (lambda e: e.ended)
    if not train or not held:
        return {}
    out = {}
    for name, feature in (("length_only", lambda e: float(length(e))), ("eos_only", lambda e: float(ended(e)))):
        values = {id(e): feature(e) for e in train + held}
        if name == "eos_only" and len(set(values.values())) < 2:
            continue
        t, sign = threshold_rule([values[id(e)] for e in train], [e.label for e in train])
        scores = [sign * (values[id(e)] - t) for e in held]
        labels = [e.label for e in held]
        pairs = bt_pairs(held, seed)
        out[f"{name}_accuracy"] = sum((s > 0) == (l > 0.5) for s, l in zip(scores, labels)) / len(held)
        out[f"{name}_auc"] = auc(scores, labels)
        out[f"{name}_pair_accuracy"] = pair_accuracy([sign * values[id(c)] for c, _ in pairs],
                                                     [sign * values[id(r)] for _, r in pairs]) if pairs else None
    for label, side in ((1.0, "positive"), (0.0, "negative")):
        part = [e for e in held if e.label == label]
        out[f"eval_truncated_share_{side}"] = sum(not e.ended for e in part) / len(part) if part else None
    return out


def reward(cfg: RewardConfig) -> dict:
    """Run the stage; returns its metrics. The reward model is saved to OUT/reward/model."""
    from transformers import AutoModelForSequenceClassification

    stage = StageDir(cfg, "reward")
    if not stage.begin():
        return stage.metrics()
    eval_pairs = load_eval_pairs(cfg)  # before any training, so a mistake in them costs none
    if cfg.variant in ("ava-d", "ava-p"):
        from afd import ava

        metrics, model, tok = ava.train(cfg, stage, cfg.variant)
        metrics["variant"] = cfg.variant
        if cfg.eval_pairs:
            rm = ava.AVARewardModel(model, tok, cfg, cfg.template, cfg.max_length, cfg.variant, cfg.batch_size)
            metrics.update(preference_metrics(rm.score, cfg, eval_pairs))
        return stage.finish(metrics)
    items = examples(cfg)
    train, held = split_groups(items, cfg.eval_fraction, cfg.seed)
    tok = models.load_tokenizer(cfg.model)
    pairwise = cfg.loss == "bt" or cfg.variant == "bt"

    def rows(part: list[Example]) -> tuple[list[dict], int]:
        dropped = 0
        if pairwise:
            out = []
            for c, r in bt_pairs(part, cfg.seed):
                a, b = encode(tok, c.prompt, c.response, cfg), encode(tok, r.prompt, r.response, cfg)
                if a is None or b is None:
                    dropped += 1
                else:
                    out.append({"chosen": a, "rejected": b})
            return out, dropped
        out = []
        for e in part:
            ids = encode(tok, e.prompt, e.response, cfg)
            if ids is None:
                dropped += 1
            else:
                out.append({"input_ids": ids, "label": e.label})
        return out, dropped

    train_rows, dropped = rows(train)
    eval_rows, _ = rows(held)
    if not train_rows:
        raise AfdError(f"variant '{cfg.variant}' has no training examples after filtering")

    dev = models.pick_device(cfg.device)
    dtype = torch.float32 if cfg.dtype == "auto" else models.pick_dtype(cfg.dtype, dev)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(models.resolve(cfg.model), num_labels=1,
                                                                   dtype=dtype)
    except (OSError, ValueError) as e:
        raise models._load_error(cfg.model, e) from None
    model.config.pad_token_id = tok.pad_token_id
    model.config.afd = {"variant": cfg.variant, "loss": "bt" if pairwise else "bce", "template": cfg.template,
                        "response_tokens": cfg.response_tokens}
    if cfg.lora_r > 0:
        model = apply_lora(model, cfg, task_type="SEQ_CLS")

    checkpoints = stage.path / "checkpoints"
    rate = TokenRate()
    trainer = _trainer_class()(model=model, args=training_arguments(cfg, checkpoints, bool(eval_rows)),
                               train_dataset=train_rows, eval_dataset=eval_rows or None,
                               data_collator=RewardCollator(tok.pad_token_id), processing_class=tok,
                               callbacks=[rate])
    result, resume = train_resuming(trainer, checkpoints)
    trained = merged(trainer.model).eval()

    metrics = {"variant": cfg.variant, "loss": "bt" if pairwise else "bce", "train_examples": len(train_rows),
               "eval_examples": len(eval_rows), "prompts_dropped_too_long": dropped,
               "train_loss": dist.reduce_mean(result.training_loss), "steps": trainer.state.global_step, "resumed": resume,
               "train_tokens_per_second": rate.rate}
    metrics.update(held_out_metrics(trained, tok, held, cfg))
    # each response's whole length, tokenised once: the model sees min(n, N) tokens of it, and its
    # EOS only when the whole response fits in N (response_ids keeps the first N of a longer one)
    n = {id(e): len(response_ids(tok, e.prompt, e.response, cfg.template, None)) for e in train + held}
    limit = cfg.response_tokens
    metrics.update(controls(train, held, lambda e: min(n[id(e)], limit or n[id(e)]), cfg.seed,
                            ended=lambda e: e.ended and (not limit or n[id(e)] <= limit)))
    if cfg.eval_pairs:
        metrics.update(preference_metrics(
            ClassifierReward(trained, tok, cfg.template, cfg.batch_size, cfg.max_length).score, cfg, eval_pairs))
    # rank 0 writes the scored model (LoRA already merged)
    dist.save_trained(trainer, tok, stage.path / "model", lambda _, t, folder: save_model(trained, t, folder))
    if dist.is_main():
        (stage.path / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
        loss_plot(trainer.state.log_history, stage.path / "loss.png", "loss", f"reward model ({cfg.variant})")
    return stage.finish(metrics)


def held_out_metrics(model, tok, held: list[Example], cfg) -> dict:
    """On held-out prompts: accuracy (logit > 0 on positives, < 0 on negatives; meaningful for
    BCE, where the logit's offset is learnt), AUC, and the share of same-prompt
    (positive, negative) pairs ranked right."""
    if not held:
        return {}
    scores = score_texts(model, tok, [e.prompt for e in held], [e.response for e in held], cfg.template,
                         cfg.batch_size, cfg.max_length)
    labels = [e.label for e in held]
    pos = [s for s, l in zip(scores, labels) if l > 0.5]
    neg = [s for s, l in zip(scores, labels) if l <= 0.5]
    by_example = {id(e): s for e, s in zip(held, scores)}
    pairs = bt_pairs(held, cfg.seed)
    return {"eval_accuracy": sum((s > 0) == (l > 0.5) for s, l in zip(scores, labels)) / len(held),
            "eval_auc": auc(scores, labels),
            "eval_pair_accuracy": pair_accuracy([by_example[id(c)] for c, _ in pairs],
                                                [by_example[id(r)] for _, r in pairs]) if pairs else None,
            "eval_mean_reward_positive": sum(pos) / len(pos) if pos else None,
            "eval_mean_reward_negative": sum(neg) / len(neg) if neg else None}


def load_eval_pairs(cfg) -> tuple[list, object] | None:
    """(pairs, load stats) of option ``eval_pairs``, read with its own split, format and columns
    (None without it)."""
    from afd.data import load_pairs

    return load_pairs(cfg.eval_pairs_config()) if cfg.eval_pairs else None


def preference_metrics(score, cfg, loaded=None) -> dict:
    """Accuracy on human preference pairs (never trained on, unless they are the bt data) of
    ``score(prompts, responses) -> rewards``; ``loaded``: the pairs, if already loaded."""
    pairs, stats = loaded or load_eval_pairs(cfg)
    prompts = [p.prompt for p in pairs]
    chosen, rejected = score(prompts, [p.chosen for p in pairs]), score(prompts, [p.rejected for p in pairs])
    lengths = [(len(p.chosen), len(p.rejected)) for p in pairs]
    untied = [(c, r) for c, r in zip(chosen, rejected) if c != r]
    return {"pair_accuracy": pair_accuracy(chosen, rejected), "pairs": len(pairs),
            "pairs_tied": len(pairs) - len(untied),
            "pair_accuracy_untied": pair_accuracy(*zip(*untied)) if untied else None,
            "pairs_skipped": stats.skipped, **length_bias(chosen, rejected, lengths)}


def length_bias(chosen: list[float], rejected: list[float], lengths: list[tuple[int, int]]) -> dict:
    """How much of a pair accuracy length alone explains: ``longer_chosen_accuracy``, the
    accuracy of "the longer reply wins", and ``prefers_longer``, the share of pairs of unequal
    length in which the reward ranks the longer reply higher (ties half)."""
    unequal = [(c, r, lc > lr) for c, r, (lc, lr) in zip(chosen, rejected, lengths) if lc != lr]
    longer = [c if chosen_longer else r for c, r, chosen_longer in unequal]
    shorter = [r if chosen_longer else c for c, r, chosen_longer in unequal]
    return {"longer_chosen_accuracy": pair_accuracy([float(a) for a, _ in lengths], [float(b) for _, b in lengths]),
            "prefers_longer": pair_accuracy(longer, shorter) if unequal else None}
