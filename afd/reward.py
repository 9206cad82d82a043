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
model instead (METHODS §3, :mod:`afd.ava`), saved as a causal-LM folder with its heads. Either
kind is read back as a :class:`afd.rewards.RewardModel` (``afd.rewards.load(folder)``), with the
input settings it was trained with.

``loss: bt`` trains any classifier variant (init-sft, init-demo, sft-demo, kto) with the pairwise
Bradley-Terry loss
``-log sigma(r(x, y+) - r(x, y-))`` instead, pairing positives and negatives of the same
prompt; ``bt`` always uses it. The model is an ``AutoModelForSequenceClassification`` with one
label (default backbone: the initial policy), saved with ``save_pretrained`` so that
``pipeline("text-classification")`` loads it. Its input is the prompt rendered exactly as in
SFT and sampling, followed by the response and EOS (:func:`afd.rewards.classifier_input`); the
settings of that rendering are saved in its ``config.json`` (``afd``) and restored when it scores.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from afd import models
from afd.ava import AVAOptions
from afd.config import check_choice, opt
from afd.data import check_pairs, prompt_key
from afd.errors import AfdError
from afd.rewards import Classifier, InputSettings, classifier_input
from afd.runs import DataOptions, EvalPairsOptions, StageDir, StageOptions, restore_on_failure
from afd.stats import auc, pair_accuracy
from afd.training import (TrainOptions, apply_lora, finish_training, load_for_training, loss_trainer_class,
                          make_trainer, train_resuming, trained_model)

VARIANTS = ("init-sft", "init-demo", "sft-demo", "bt", "kto", "ava-d", "ava-p")
AVA_VARIANTS = ("ava-d", "ava-p")


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

    def unused_options(self) -> tuple[str, ...]:
        """AVA's options mean nothing to a classifier: they are left out of its config.yaml,
        fingerprint and model card."""
        return () if self.variant in AVA_VARIANTS else tuple(AVAOptions.__dataclass_fields__)

    def input_settings(self) -> InputSettings:
        return InputSettings(self.template, self.max_length, self.response_tokens)


@dataclass
class Example:
    prompt: list[dict]
    response: str
    label: float  # 1.0 positive, 0.0 negative
    group: str    # the prompt, as a key: examples of one prompt share a split and form BT pairs
    pair: str = ""      # pair data: the pair's id (its two sides form one BT pair)
    ended: bool = True  # the response ended by itself (EOS), not cut at max_new_tokens


def examples(cfg: RewardConfig) -> list[Example]:
    """Positives and negatives of the configured variant."""
    from afd.data import load_demos, load_negatives, load_pairs
    from afd.sampling import read_pool

    def pool(path: str, label: float) -> list[Example]:
        return [Example(r["prompt"], r["response"], label, prompt_key(r["prompt"]),
                        ended=r.get("finish_reason") != "length") for r in read_pool(path)]

    def demos(label: float) -> list[Example]:
        return [Example(d.prompt, d.response, label, prompt_key(d.prompt), ended=d.ended)
                for d in load_demos(cfg.data_config())[0]]

    if cfg.variant == "bt":
        out = []
        for p in check_pairs(load_pairs(cfg.data_config())[0], cfg.data):
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

    return split(items, fraction, seed, key=lambda e: e.group)


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


def encode(tokenizer, prompt, response, cfg: RewardConfig) -> list[int] | None:
    """Classifier input ids, or None when the prompt is over-long (dropped, or an error)."""
    p = models.encode_prompt_within(tokenizer, prompt, cfg.template, cfg.max_prompt_length, cfg.long_prompts,
                                    "a reward-model prompt")
    return None if p is None else classifier_input(tokenizer, prompt, response, cfg.input_settings(), p)


def reward_loss(rewards: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """BCE with the logit as reward (labels given), or Bradley-Terry on [chosen; rejected]."""
    if labels is not None:
        return torch.nn.functional.binary_cross_entropy_with_logits(rewards, labels)
    chosen, rejected = rewards.chunk(2)
    return -torch.nn.functional.logsigmoid(chosen - rejected).mean()


def _trainer_class():
    class RewardTrainer(loss_trainer_class()):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("label", None)
            rewards = model(**inputs).logits.squeeze(-1).float()
            loss = reward_loss(rewards, labels)
            return (loss, {"rewards": rewards}) if return_outputs else loss

    return RewardTrainer


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
                                                     [sign * values[id(r)] for _, r in pairs])
    for label, side in ((1.0, "positive"), (0.0, "negative")):
        part = [e for e in held if e.label == label]
        out[f"eval_truncated_share_{side}"] = sum(not e.ended for e in part) / len(part) if part else None
    return out


@restore_on_failure
def reward(cfg: RewardConfig) -> dict:
    """Run the stage; returns its metrics. The reward model is saved to OUT/reward/model."""
    from transformers import AutoModelForSequenceClassification

    stage = StageDir(cfg, "reward")
    if not stage.begin():
        return stage.metrics()
    eval_pairs = load_eval_pairs(cfg)  # before any training, so a mistake in them costs none
    if cfg.variant in AVA_VARIANTS:
        from afd import ava
        from afd.rewards import AVAReward

        metrics, model, tok = ava.train(cfg, stage, cfg.variant)
        metrics["variant"] = cfg.variant
        if cfg.eval_pairs:
            rm = AVAReward(model, tok, cfg, InputSettings(cfg.template, cfg.max_length), cfg.variant, cfg.batch_size)
            metrics.update(preference_metrics(rm, cfg, eval_pairs))
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
                    out.append({"chosen": {"input_ids": a}, "rejected": {"input_ids": b}})
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

    model = load_for_training(AutoModelForSequenceClassification, cfg.model, cfg, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    # how the model reads its input, restored by afd.rewards.Classifier.from_pretrained
    model.config.afd = {"variant": cfg.variant, "loss": "bt" if pairwise else "bce",
                        **vars(cfg.input_settings())}
    if cfg.lora_r > 0:
        model = apply_lora(model, cfg, task_type="SEQ_CLS")

    trainer = make_trainer(stage, cfg, model, tok, train_rows, eval_rows, _trainer_class())
    _, run = train_resuming(trainer)
    trained = Classifier(trained_model(trainer), tok, cfg.input_settings(), cfg.batch_size)

    metrics = {"variant": cfg.variant, "loss": "bt" if pairwise else "bce", "train_examples": len(train_rows),
               "eval_examples": len(eval_rows), "prompts_dropped_too_long": dropped,
               "steps": trainer.state.global_step, **run}
    metrics.update(held_out_metrics(trained, held, cfg.seed))
    # each response's whole length, tokenised once: the model sees min(n, N) tokens of it, and its
    # EOS only when the whole response fits in N (the input keeps the first N of a longer one)
    n = {id(e): len(models.encode_response(tok, e.prompt, e.response, cfg.template)) for e in train + held}
    limit = cfg.response_tokens
    metrics.update(controls(train, held, lambda e: min(n[id(e)], limit or n[id(e)]), cfg.seed,
                            ended=lambda e: e.ended and (not limit or n[id(e)] <= limit)))
    if cfg.eval_pairs:
        metrics.update(preference_metrics(trained, cfg, eval_pairs))
    finish_training(stage, trainer, tok, f"reward model ({cfg.variant})")  # LoRA merged when saved
    return stage.finish(metrics)


def held_out_metrics(rm: Classifier, held: list[Example], seed: int) -> dict:
    """On held-out prompts: accuracy (logit > 0 on positives, < 0 on negatives; meaningful for
    BCE, where the logit's offset is learnt), AUC, and the share of same-prompt
    (positive, negative) pairs ranked right."""
    if not held:
        return {}
    scores = rm.score([e.prompt for e in held], [e.response for e in held])
    labels = [e.label for e in held]
    pos = [s for s, l in zip(scores, labels) if l > 0.5]
    neg = [s for s, l in zip(scores, labels) if l <= 0.5]
    by_example = {id(e): s for e, s in zip(held, scores)}
    pairs = bt_pairs(held, seed)
    return {"eval_accuracy": sum((s > 0) == (l > 0.5) for s, l in zip(scores, labels)) / len(held),
            "eval_auc": auc(scores, labels),
            "eval_pair_accuracy": pair_accuracy([by_example[id(c)] for c, _ in pairs],
                                                [by_example[id(r)] for _, r in pairs]),
            "eval_mean_reward_positive": sum(pos) / len(pos) if pos else None,
            "eval_mean_reward_negative": sum(neg) / len(neg) if neg else None}


def load_eval_pairs(cfg) -> tuple[list, object] | None:
    """(pairs, load stats) of option ``eval_pairs``, read with its own split, format and columns
    (None without it)."""
    from afd.data import load_pairs

    return load_pairs(cfg.eval_pairs_config()) if cfg.eval_pairs else None


def preference_metrics(rm, cfg, loaded=None) -> dict:
    """Accuracy on human preference pairs (never trained on, unless they are the bt data) of a
    :class:`afd.rewards.RewardModel`; ``loaded``: the pairs, if already loaded."""
    pairs, stats = loaded or load_eval_pairs(cfg)
    prompts = [p.prompt for p in pairs]
    chosen, rejected = rm.score(prompts, [p.chosen for p in pairs]), rm.score(prompts, [p.rejected for p in pairs])
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
