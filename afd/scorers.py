"""Scorers: anything that maps (prompt, response) pairs to one number each.

Best-of-N and evaluation take a scorer by name, so a trained reward model, the closed-form
density ratio and a golden judge are used the same way:

- ``FOLDER`` or ``rm:FOLDER_OR_HUB_ID``: a reward model saved by ``afd reward`` (or any
  ``AutoModelForSequenceClassification`` with one label); the reward is its logit. An AVA
  model (``afd reward --variant ava-d|ava-p``) gives the sequence reward that ranks responses
  (:func:`afd.ava.score_key`).
- ``density-ratio:POLICY,REFERENCE``: ``log pi(y|x) - log pi_ref(y|x)``, the closed-form
  optimum of the ``init-sft`` classifier (METHODS §1); ``density-ratio-norm:`` divides by
  the number of response tokens. Given ``token_ids`` (a pool's sampled tokens, its stop token
  last only where the sampler emitted one) it scores exactly those tokens, so a response cut
  at ``max_new_tokens`` is not scored as if it had ended with EOS; text is the fallback.
- ``vader``: VADER sentiment, the ``compound`` score of the response in [-1, 1].
- ``python:MODULE:FUNCTION``: ``FUNCTION(prompts, responses) -> list[float]``, where prompts
  are message lists and responses strings.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Protocol

from afd import models
from afd.errors import AfdError

Scorer = Callable[[list[list[dict]], list[str]], list[float]]


class RewardModel(Protocol):
    """What Best-of-N, evaluation, pair accuracy and RL ask of a trained reward model, whatever
    it is (:class:`afd.reward.ClassifierReward`, :class:`afd.ava.AVARewardModel`)."""

    tokenizer: object

    def score(self, prompts: list[list[dict]], responses: list) -> list[float]:
        """One sequence reward per response, the one that ranks responses."""

    #: per-token rewards for RL, ``(prompts, responses) -> list[list[float]]`` (one per response
    #: token; responses may be token ids), or None for a model without them
    dense_rewards: Callable[[list[list[dict]], list], list[list[float]]] | None


def load_reward(path: str, device: str = "auto", dtype: str = "auto", batch_size: int = 16,
                template: str = "auto") -> RewardModel:
    """A reward-model folder (or hub id) as a :class:`RewardModel`: an AVA model when the folder
    holds AVA heads, else a sequence classifier."""
    from afd.ava import AVARewardModel
    from afd.reward import ClassifierReward

    if AVARewardModel.is_ava(models.resolve(path)):
        return AVARewardModel.from_pretrained(models.resolve(path), device, dtype, batch_size=batch_size)
    return ClassifierReward.from_pretrained(path, device, dtype, template, batch_size)


def reward_model_scorer(path: str, device: str = "auto", dtype: str = "auto", batch_size: int = 16,
                        template: str = "auto") -> Scorer:
    return load_reward(path, device, dtype, batch_size, template).score


def reward_model_path(spec: str) -> str | None:
    """The reward-model folder or hub id a scorer name refers to, or None for other scorers."""
    if spec.startswith("rm:"):
        return spec[len("rm:"):]
    if spec != "vader" and not spec.startswith(("python:", "density-ratio")) and Path(spec).is_dir():
        return spec
    return None


def rl_scorer(spec: str, **kw) -> Scorer:
    """The sequence reward RL maximises: for a reward model with per-token rewards, their plain
    sum (AVA's Eq. 19); for any other scorer, its score."""
    path = reward_model_path(spec)
    if path is None:
        return make_scorer(spec, **kw)
    rm = load_reward(path, **kw)
    if rm.dense_rewards is None:
        return rm.score
    return lambda prompts, responses: [sum(r) for r in rm.dense_rewards(prompts, responses)]


def density_ratio_scorer(policy: str, reference: str, normalise: bool = False, device: str = "auto",
                         dtype: str = "auto", batch_size: int = 16, template: str = "auto") -> Scorer:
    from afd.scoring import response_logprobs

    def score(prompts, responses, token_ids=None):
        out = []
        for name in (policy, reference):
            model, tok = models.load_causal_lm(name, device, dtype)
            items = [(p, sampled(tok, p, r, ids, template)) for p, r, ids in
                     zip(prompts, responses, token_ids or [None] * len(prompts))]
            out.append(response_logprobs(model, tok, items, template, batch_size, per_token=normalise,
                                         progress=f"log-probs under {Path(name).name}"))
            del model
        if not normalise:
            return [a - b for a, b in zip(out[0], out[1])]
        (sa, ta), (sb, _) = out
        return [(a - b) / max(len(t), 1) for a, b, t in zip(sa, sb, ta)]

    score.takes_token_ids = True
    return score


def sampled(tok, prompt: list[dict], response: str, ids: list[int] | None, template: str) -> str | list[int]:
    """The sampled token ids when they are this tokenizer's tokens for ``response`` (they decode
    to it), else the text (tokenised with EOS, as in SFT)."""
    if ids is not None and models.decode_response(tok, prompt, list(ids), template) == response:
        return list(ids)
    return response


def vader_scorer() -> Scorer:
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise AfdError("scorer 'vader' needs vaderSentiment: pip install vaderSentiment") from None
    analyzer = SentimentIntensityAnalyzer()

    def score(prompts, responses):
        return [analyzer.polarity_scores(r)["compound"] for r in responses]

    return score


def python_scorer(spec: str) -> Scorer:
    module, _, name = spec.rpartition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise AfdError(f"scorer 'python:{spec}' could not be imported ({e})") from None
    return fn


def make_scorer(spec: str, **kw) -> Scorer:
    """A scorer from its name (see the module docstring). ``kw`` (device, dtype, batch_size,
    template) reach the model-based scorers; the others take none and ignore them."""
    if spec == "vader":
        return vader_scorer()
    if spec.startswith("python:"):
        return python_scorer(spec[len("python:"):])
    for prefix, normalise in (("density-ratio:", False), ("density-ratio-norm:", True)):
        if spec.startswith(prefix):
            parts = spec[len(prefix):].split(",")
            if len(parts) != 2 or not all(parts):
                raise AfdError(f"scorer '{spec}' should be {prefix}POLICY,REFERENCE")
            return density_ratio_scorer(parts[0], parts[1], normalise, **kw)
    path = reward_model_path(spec)
    if path is not None:
        return reward_model_scorer(path, **kw)
    raise AfdError(f"unknown scorer '{spec}': use a reward-model folder, rm:PATH_OR_HUB_ID, "
                   f"density-ratio:POLICY,REFERENCE, vader, or python:MODULE:FUNCTION")

