"""Reward models: one interface for everything that scores a response to a prompt.

Best-of-N, evaluation, pair accuracy, RL, the iterated methods and planting all take a
:class:`RewardModel`, built from a name by :func:`load`, so a trained classifier, an AVA model,
the closed-form density ratio, a golden judge and a user's Python function are used alike
(in the spirit of the ``imitation`` library's ``RewardNet``)::

    rm = rewards.load("runs/x/reward/model")
    rm.score(prompts, responses)                 # one sequence reward per response
    rm.score(prompts, responses, token_ids=ids)  # the same, on a pool's sampled tokens
    rm.dense_rewards(prompts, responses)         # per-token rewards (where rm.has_dense)
    rm.rl_reward(prompts, responses)             # what RL maximises

Prompts are message lists, responses text. ``token_ids`` (a pool's sampled tokens, the stop
token last only where the sampler emitted one) let a model that shares the policy's tokenizer
score exactly the tokens sampled, so a response cut at ``max_new_tokens`` is not scored as if
it had ended with EOS; text is the fallback wherever the ids are not this model's tokens for
the response.

Names (``load``):

- ``FOLDER`` or ``rm:FOLDER_OR_HUB_ID``: a reward model saved by ``afd reward``: a sequence
  classifier (any ``AutoModelForSequenceClassification`` with one label; the reward is its
  logit) or an AVA model (a folder with AVA heads; METHODS §3). Either restores the input
  settings it was trained with (template, max lengths, response tokens); a classifier saved
  by another tool has none and is read with the caller's ``template``.
- ``density-ratio:POLICY,REFERENCE``: ``log pi(y|x) - log pi_ref(y|x)``, the closed-form
  optimum of the ``init-sft`` classifier (METHODS §1); ``density-ratio-norm:`` divides by the
  number of response tokens. Both models are loaded once, on first use, and kept.
- ``vader``: VADER sentiment, the ``compound`` score of the response in [-1, 1].
- ``gold:NAME``: a built-in golden scorer learned once from labelled data no method sees
  (:mod:`afd.gold`).
- ``python:MODULE:FUNCTION``: ``FUNCTION(prompts, responses) -> list[float]`` (the current
  folder is importable).
- ``random`` / ``random:SEED``: a uniform number in [0, 1) fixed by the seed, the prompt and the
  response: a floor that ranks at random.
- ``length``: the response's length in tokens (the sampled tokens where given, EOS included
  where sampled; else its whitespace-separated words): the control a reward must beat.
- ``ensemble:NAME;NAME;...``: the mean of several rewards (standardise each first with ``z:`` when
  their scales differ: Coste et al. 2023 average an ensemble's members).
- ``z:MEAN,SD:NAME`` or ``z:POOL:NAME``: the reward ``NAME`` standardised, ``(r - MEAN) / SD``,
  with the mean and standard deviation given, or measured over a pool of samples (Gao et al.
  2022 standardise the gold to mean 0, sd 1 on pi_0's samples), for any reward.

Every score is checked: one finite number per response, or one sentence naming the scorer and
the row.

``load(..., memo={})`` remembers the scores of every model-based reward (a trained folder, the
density ratio) by name and (prompt, response, sampled tokens), in the dict given: a stage that
loads several names over the same rows (``afd eval``'s proxies, whose ensemble and ``z:``
members repeat a reward already scored) scores each row with each model once.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import numbers
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from afd import models
from afd.ava import CONFIG_FILE as AVA_CONFIG, HEADS_FILE as AVA_HEADS
from afd.errors import AfdError



class RewardModel:
    """A reward: ``score`` gives one number per (prompt, response); ``dense_rewards`` one per
    response token, for the models that have them (``has_dense``)."""

    name: str = "reward"
    has_dense: bool = False

    def score(self, prompts: list[list[dict]], responses: list[str], token_ids: list[list[int]] | None = None
              ) -> list[float]:
        """One sequence reward per response: the one that ranks responses."""
        return checked(self.name, self._score(prompts, responses, token_ids), responses)

    def _score(self, prompts, responses, token_ids) -> list[float]:
        raise NotImplementedError

    def dense_rewards(self, prompts: list[list[dict]], responses: list[str],
                      token_ids: list[list[int]] | None = None) -> list[list[float]]:
        """Per-token rewards for RL, one list per response (one value per response token)."""
        raise AfdError(f"reward '{self.name}' has no per-token rewards; dense rewards need an AVA reward model "
                       f"(afd reward --variant ava-d|ava-p)")

    def rl_reward(self, prompts: list[list[dict]], responses: list[str], token_ids: list[list[int]] | None = None
                  ) -> list[float]:
        """The sequence reward RL maximises: the plain sum of the per-token rewards where the
        model has them (AVA's Eq. 19), else :meth:`score`."""
        if not self.has_dense:
            return self.score(prompts, responses, token_ids)
        return checked(self.name, [sum(r) for r in self.dense_rewards(prompts, responses, token_ids)], responses)


def checked(name: str, values, responses: list) -> list[float]:
    """``values`` as floats, after checking there is one finite number per response."""
    if values is None or isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise AfdError(f"scorer '{name}' returned {type(values).__name__}, not a list of numbers")
    if len(values) != len(responses):
        raise AfdError(f"scorer '{name}' returned {len(values)} scores for {len(responses)} responses")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise AfdError(f"scorer '{name}' returned {v!r} (a {type(v).__name__}) for response {i + 1}; "
                           f"a score must be a number")
        v = float(v)
        if not math.isfinite(v):
            raise AfdError(f"scorer '{name}' returned {v} for response {i + 1} ({str(responses[i])[:60]!r}); "
                           f"scores must be finite")
        out.append(v)
    return out


def _tokens_of(tok, prompt: list[dict], response: str, ids: list[int] | None, template: str) -> str | list[int]:
    """The sampled token ids when they are this tokenizer's tokens for ``response`` (they decode
    to it), else the text (tokenised with EOS, as in SFT)."""
    if ids is not None and models.decode_response(tok, prompt, list(ids), template) == response:
        return list(ids)
    return response


def _each(token_ids, n: int) -> list:
    return token_ids if token_ids is not None else [None] * n


# --------------------------------------------------------------------------- trained models

@dataclass
class InputSettings:
    """How a trained reward model reads a (prompt, response): saved with the model and
    restored by ``from_pretrained``, so a model is scored exactly as it was trained."""

    template: str = "auto"
    max_length: int | None = None
    response_tokens: int | None = None  # classifiers only: keep the first N response tokens


def classifier_input(tok, prompt: list[dict], response, settings: InputSettings,
                     prompt_ids: list[int] | None = None) -> list[int]:
    """A classifier's input ids: the prompt rendered as in SFT and sampling, then the response
    and EOS (only its first ``response_tokens`` tokens, without EOS, when it is longer), fitted
    into ``max_length`` by cutting the prompt's left first (:func:`afd.models.fit`)."""
    if prompt_ids is None:
        prompt_ids = models.encode_prompt(tok, prompt, settings.template)
    ids = list(response) if isinstance(response, list) else \
        models.encode_response(tok, prompt, response, settings.template)
    limit = settings.response_tokens
    return models.fit(prompt_ids, ids[:limit] if limit and len(ids) > limit else ids, settings.max_length)


class Classifier(RewardModel):
    """A sequence classifier with one label; the reward is its logit (AfD's IRL reward models,
    the ``bt`` baseline, or any such model from the hub)."""

    def __init__(self, model, tokenizer, settings: InputSettings | None = None, batch_size: int = 16,
                 name: str = "classifier"):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.settings = settings or InputSettings()
        self.batch_size, self.name = batch_size, name

    @classmethod
    def from_pretrained(cls, path: str, device: str = "auto", dtype: str = "auto", template: str = "auto",
                        batch_size: int = 16) -> Classifier:
        from transformers import AutoModelForSequenceClassification

        dev = models.pick_device(device)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(models.resolve(path),
                                                                       dtype=models.pick_dtype(dtype, dev))
        except (OSError, ValueError) as e:
            raise models.load_error(path, e) from None
        if model.config.num_labels != 1:
            raise AfdError(f"reward model {path} has {model.config.num_labels} labels; a reward model has one "
                           f"(its logit is the reward)")
        tok = models.load_tokenizer(path)
        model.config.pad_token_id = tok.pad_token_id
        saved = getattr(model.config, "afd", None) or {}
        fields = InputSettings.__dataclass_fields__
        settings = InputSettings(**{k: v for k, v in saved.items() if k in fields}) if saved \
            else InputSettings(template=template)
        return cls(model.to(dev), tok, settings, batch_size, name=path)

    @torch.inference_mode()
    def _score(self, prompts, responses, token_ids=None) -> list[float]:
        from afd.training import Collator

        device = next(self.model.parameters()).device
        collate = Collator(self.tokenizer.pad_token_id)
        prompt_ids: dict[str, list[int]] = {}  # a pool repeats each prompt K times: render it once
        seqs = []
        for p, r in zip(prompts, responses):
            key = json.dumps(p, sort_keys=True)
            if key not in prompt_ids:
                prompt_ids[key] = models.encode_prompt(self.tokenizer, p, self.settings.template)
            seqs.append(classifier_input(self.tokenizer, p, r, self.settings, prompt_ids[key]))
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        out = [0.0] * len(seqs)
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            batch = {k: v.to(device) for k, v in collate([{"input_ids": seqs[i]} for i in idx]).items()}
            for i, r in zip(idx, self.model(**batch).logits.squeeze(-1).float().tolist()):
                out[i] = r
        return out


class AVAReward(RewardModel):
    """A trained AVA model (METHODS §3) as a reward: ``score`` is the sequence reward that ranks
    responses (:func:`afd.ava.score_key`), ``dense_rewards`` the per-token means ``mu_t`` RL takes
    (Eq. 19), and ``token_rewards`` the per-token view (mean, std, weight)."""

    has_dense = True

    def __init__(self, model, tokenizer, opts, settings: InputSettings | None = None, objective: str = "ava-d",
                 batch_size: int = 16, name: str = "ava"):
        self.model, self.tokenizer, self.opts = model.eval(), tokenizer, opts
        self.settings = settings or InputSettings()
        self.objective, self.batch_size, self.name = objective, batch_size, name

    @staticmethod
    def is_ava(path: str) -> bool:
        return (Path(path) / AVA_CONFIG).is_file()

    @classmethod
    def from_pretrained(cls, path: str, device: str = "auto", dtype: str = "auto", batch_size: int = 16) -> AVAReward:
        from safetensors.torch import load_file

        from afd import ava

        folder = Path(path)
        if not cls.is_ava(path):
            raise AfdError(f"{path} is not an AVA model (no {AVA_CONFIG}); train one with afd reward --variant ava-d")
        saved = json.loads((folder / AVA_CONFIG).read_text())
        opts = ava.AVAOptions(**{k: v for k, v in saved.items() if k in ava.AVAOptions.__dataclass_fields__})
        model, tok = models.load_causal_lm(str(folder), device, dtype)
        heads = ava.attach(model, opts)
        heads.load_state_dict(load_file(str(folder / AVA_HEADS)))
        heads.to(dtype=next(model.parameters()).dtype)
        settings = InputSettings(**{k: v for k, v in saved.items() if k in ("template", "max_length")})
        return cls(model, tok, opts, settings, saved.get("objective", "ava-d"), batch_size, name=path)

    def token_rewards(self, prompts: list[list[dict]], responses: list, token_ids=None, batch_size: int | None = None):
        """Per response, an :class:`afd.ava.TokenRewards` (tokens, mean, std, weight, reward)."""
        from afd import ava

        items = [_tokens_of(self.tokenizer, p, r, ids, self.settings.template)
                 for p, r, ids in zip(prompts, responses, _each(token_ids, len(responses)))]
        return ava.token_rewards(self.model, self.tokenizer, self.opts, self.objective, prompts, items,
                                 self.settings.template, self.settings.max_length, batch_size or self.batch_size)

    def _score(self, prompts, responses, token_ids=None) -> list[float]:
        return [t.reward for t in self.token_rewards(prompts, responses, token_ids)]

    def dense_rewards(self, prompts, responses, token_ids=None) -> list[list[float]]:
        return [t.mean for t in self.token_rewards(prompts, responses, token_ids)]


def load_trained(path: str, device: str = "auto", dtype: str = "auto", batch_size: int = 16,
                 template: str = "auto") -> RewardModel:
    """A reward-model folder (or hub id): an AVA model when it holds AVA heads, else a classifier."""
    if AVAReward.is_ava(models.resolve(path)):
        return AVAReward.from_pretrained(models.resolve(path), device, dtype, batch_size)
    return Classifier.from_pretrained(path, device, dtype, template, batch_size)


# --------------------------------------------------------------------------- closed forms and judges

class DensityRatio(RewardModel):
    """``log pi(y|x) - log pi_ref(y|x)`` (``normalise``: divided by the number of response
    tokens), teacher-forced (:mod:`afd.scoring`) in fp32 unless ``dtype`` names another: a
    difference of log-probabilities is not computed in bf16 by default (afd.models.pick_dtype).
    The two models are loaded on the first call and kept, so a stage that scores many batches
    (RL) loads them once; :meth:`close` frees them."""

    def __init__(self, policy: str, reference: str, normalise: bool = False, device: str = "auto",
                 template: str = "auto", batch_size: int = 16, dtype: str = "auto"):
        self.names, self.normalise = (policy, reference), normalise
        self.device, self.template, self.batch_size = device, template, batch_size
        self.dtype = "float32" if dtype == "auto" else dtype
        self.name = f"density-ratio{'-norm' if normalise else ''}:{policy},{reference}"
        self.loaded: list | None = None

    def _models(self) -> list:
        if self.loaded is None:
            self.loaded = [models.load_causal_lm(n, self.device, self.dtype) for n in self.names]
        return self.loaded

    def close(self) -> None:
        self.loaded = None

    def _score(self, prompts, responses, token_ids=None) -> list[float]:
        from afd.scoring import response_logprobs

        out = []
        for name, (model, tok) in zip(self.names, self._models()):
            items = [(p, _tokens_of(tok, p, r, ids, self.template))
                     for p, r, ids in zip(prompts, responses, _each(token_ids, len(responses)))]
            out.append(response_logprobs(model, tok, items, self.template, self.batch_size, per_token=self.normalise,
                                         progress=f"log-probs under {Path(name).name}"))
        if not self.normalise:
            return [a - b for a, b in zip(*out)]
        (sa, ta), (sb, _) = out
        return [(a - b) / max(len(t), 1) for a, b, t in zip(sa, sb, ta)]


class Vader(RewardModel):
    name = "vader"

    def __init__(self):
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError:
            raise AfdError("scorer 'vader' needs vaderSentiment: pip install vaderSentiment") from None
        self.analyzer = SentimentIntensityAnalyzer()

    def _score(self, prompts, responses, token_ids=None) -> list[float]:
        return [self.analyzer.polarity_scores(r)["compound"] for r in responses]


class Function(RewardModel):
    """A Python function as a reward model: ``fn(prompts, responses)``, or
    ``fn(prompts, responses, token_ids=...)`` when its signature takes ``token_ids`` (it then gets
    a pool's sampled tokens, or None)."""

    def __init__(self, fn, name: str = ""):
        import inspect

        self.fn, self.name = fn, name or getattr(fn, "__name__", "function")
        try:
            self.takes_ids = "token_ids" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            self.takes_ids = False

    def _score(self, prompts, responses, token_ids=None):
        try:
            if self.takes_ids:
                return self.fn(prompts, responses, token_ids=token_ids)
            return self.fn(prompts, responses)
        except AfdError:
            raise
        except Exception as e:  # the user's function: say whose error it is, in one sentence
            raise AfdError(f"scorer '{self.name}' raised {type(e).__name__}: {e}") from None


class Python(Function):
    """``python:MODULE:FUNCTION``, called as ``FUNCTION(prompts, responses)``."""

    def __init__(self, spec: str):
        name = f"python:{spec}"
        module, sep, fn = spec.rpartition(":")
        if not sep or not module or not fn:
            raise AfdError(f"scorer '{name}' should be python:MODULE:FUNCTION (e.g. python:my_golds:score)")
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())  # a module in the current folder, as `python -c` would find it
        try:
            function = getattr(importlib.import_module(module), fn)
        except ImportError as e:
            raise AfdError(f"scorer '{name}': module '{module}' could not be imported ({e})") from None
        except AttributeError:
            raise AfdError(f"scorer '{name}': module '{module}' has no function '{fn}'") from None
        if not callable(function):
            raise AfdError(f"scorer '{name}': '{fn}' in module '{module}' is not a function")
        super().__init__(function, name)


class Remembered(RewardModel):
    """Another reward model whose scores are kept in ``store``, keyed by (prompt, response,
    sampled tokens): a row it has scored is never scored again (``load(..., memo=...)``)."""

    def __init__(self, inner: RewardModel, store: dict):
        self.inner, self.store, self.name, self.has_dense = inner, store, inner.name, inner.has_dense

    def _score(self, prompts, responses, token_ids=None) -> list[float]:
        ids = _each(token_ids, len(responses))
        keys = [json.dumps([p, r, list(i) if i is not None else None], ensure_ascii=False)
                for p, r, i in zip(prompts, responses, ids)]
        todo = [i for i, k in enumerate(keys) if k not in self.store]  # the order (and batches) as asked
        if todo:
            new = self.inner.score([prompts[i] for i in todo], [responses[i] for i in todo],
                                   [ids[i] for i in todo] if token_ids is not None else None)
            self.store.update({keys[i]: v for i, v in zip(todo, new)})
        return [self.store[k] for k in keys]

    def dense_rewards(self, prompts, responses, token_ids=None) -> list[list[float]]:
        return self.inner.dense_rewards(prompts, responses, token_ids)


class Standardised(RewardModel):
    """``(r - mean) / sd`` of another reward model (``z:`` names)."""

    def __init__(self, inner: RewardModel, mean: float, sd: float):
        if not (math.isfinite(mean) and math.isfinite(sd) and sd > 0):
            raise AfdError(f"standardising '{inner.name}' needs a finite mean and a positive sd; got {mean}, {sd}")
        self.inner, self.mean, self.sd = inner, mean, sd
        self.name = f"z:{mean:.6g},{sd:.6g}:{inner.name}"

    @classmethod
    def over_pool(cls, inner: RewardModel, pool: str) -> Standardised:
        from afd.sampling import read_pool

        rows = read_pool(pool)
        token_ids = [r["token_ids"] for r in rows] if all("token_ids" in r for r in rows) else None
        values = inner.score([r["prompt"] for r in rows], [r["response"] for r in rows], token_ids)
        mean = sum(values) / len(values)
        sd = (sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)) ** 0.5
        return cls(inner, mean, sd)

    def _score(self, prompts, responses, token_ids=None) -> list[float]:
        return [(v - self.mean) / self.sd for v in self.inner.score(prompts, responses, token_ids)]


class Gold(RewardModel):
    """A golden scorer trained by ``afd gold`` (``gold:NAME``): the logit of positive sentiment
    of the response's text (the prompt is not scored)."""

    def __init__(self, scorer, name: str = "gold"):
        self.scorer, self.name = scorer, name

    def _score(self, prompts, responses, token_ids=None) -> list[float]:
        return self.scorer.score(responses)


class Ensemble(RewardModel):
    """The mean of several reward models' scores (``ensemble:A;B;...``)."""

    def __init__(self, members: list[RewardModel]):
        self.members = members
        self.name = "ensemble:" + ";".join(m.name for m in members)

    def _score(self, prompts, responses, token_ids=None) -> list[float]:
        scores = [m.score(prompts, responses, token_ids) for m in self.members]
        return [sum(s) / len(s) for s in zip(*scores)]


class Random(RewardModel):
    """A uniform number in [0, 1) fixed by (seed, prompt, response): the floor of a study."""

    def __init__(self, seed: int = 0):
        self.seed, self.name = seed, f"random:{seed}"

    def _score(self, prompts, responses, token_ids=None) -> list[float]:
        def u(p, r):
            key = json.dumps([self.seed, p, r], sort_keys=True, ensure_ascii=False).encode()
            return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") / 2 ** 64
        return [u(p, r) for p, r in zip(prompts, responses)]


class Length(RewardModel):
    """The response's length: its sampled tokens where given (EOS included where sampled), else
    its whitespace-separated words."""

    name = "length"

    def _score(self, prompts, responses, token_ids=None) -> list[float]:
        return [float(len(ids)) if ids is not None else float(len(r.split()))
                for r, ids in zip(responses, _each(token_ids, len(responses)))]


# --------------------------------------------------------------------------- names

def load(spec: str, device: str = "auto", dtype: str = "auto", batch_size: int = 16,
         template: str = "auto", memo: dict | None = None) -> RewardModel:
    """A reward model from its name (see the module docstring). ``device``, ``dtype``,
    ``batch_size`` and ``template`` reach the model-based ones; the others ignore them. With
    ``memo`` (a dict a caller keeps), model-based rewards remember their scores in it (:class:`Remembered`)."""
    if not isinstance(spec, str) or not spec:
        raise AfdError("a reward or scorer name is required (a reward-model folder, density-ratio:P,R, vader, "
                       "gold:NAME, python:MODULE:FUNCTION, random or length)")
    if spec == "vader":
        return Vader()
    if spec == "length":
        return Length()
    if spec == "random" or spec.startswith("random:"):
        try:
            return Random(int(spec.partition(":")[2] or 0))
        except ValueError:
            raise AfdError(f"scorer '{spec}' should be random or random:SEED (a whole number)") from None
    if spec.startswith("z:"):
        arg, sep, inner = spec[2:].partition(":")
        if not sep or not arg or not inner:
            raise AfdError(f"scorer '{spec}' should be z:MEAN,SD:NAME or z:POOL:NAME")
        rm = load(inner, device, dtype, batch_size, template, memo)
        numbers = arg.split(",")
        if len(numbers) == 2 and not Path(arg).exists():
            try:
                return Standardised(rm, float(numbers[0]), float(numbers[1]))
            except ValueError:
                pass
        return Standardised.over_pool(rm, arg)
    if spec.startswith("ensemble:"):
        members = [m for m in spec[len("ensemble:"):].split(";") if m]
        if len(members) < 2:
            raise AfdError(f"scorer '{spec}' should be ensemble:NAME;NAME[;NAME...] (at least two rewards)")
        return Ensemble([load(m, device, dtype, batch_size, template, memo) for m in members])
    if spec.startswith("gold:"):
        from afd.gold import load_gold

        return Gold(load_gold(spec[len("gold:"):]), spec)
    if spec.startswith("python:"):
        return Python(spec[len("python:"):])
    for prefix, normalise in (("density-ratio:", False), ("density-ratio-norm:", True)):
        if spec.startswith(prefix):
            parts = spec[len(prefix):].split(",")
            if len(parts) != 2 or not all(parts):
                raise AfdError(f"scorer '{spec}' should be {prefix}POLICY,REFERENCE")
            return _remembered(DensityRatio(parts[0], parts[1], normalise, device, template, batch_size, dtype),
                               spec, memo)
    path = trained_path(spec)
    if path is not None:
        return _remembered(load_trained(path, device, dtype, batch_size, template), spec, memo)
    raise AfdError(f"unknown scorer '{spec}': use a reward-model folder, rm:PATH_OR_HUB_ID, "
                   f"density-ratio:POLICY,REFERENCE, vader, gold:NAME, python:MODULE:FUNCTION, random or length")


def _remembered(rm: RewardModel, spec: str, memo: dict | None) -> RewardModel:
    return rm if memo is None else Remembered(rm, memo.setdefault(spec, {}))


def trained_path(spec: str) -> str | None:
    """The reward-model folder or hub id a name refers to, or None for the other scorers."""
    if spec.startswith("rm:"):
        return spec[len("rm:"):]
    if Path(spec).is_dir():
        return spec
    return None
