"""The exact toy of the known-truth checks (``../shared/docs/VERIFICATION.md`` §2).

Responses are one token (``max_new_tokens: 1``), so every distribution the checks need is
computable exactly from one forward pass: ``pi_0(y|x)`` and any trained policy's ``pi(y|x)`` are
the softmax of the next-token logits at the prompt's end, and the planted optimum is

    pi*(y|x) = pi_0(y|x) exp(r*(y) / beta) / Z(x)

with ``r*`` a fixed table: :func:`reward` gives each response text a level in
``{0, 1, ..., LEVELS - 1}`` by hashing it (the empty response, a stop token or a special one,
gets 0). ``python:afd.toy:reward`` names it wherever afd takes a reward, and it is hidden from
every method as any planted reward is. :func:`kl_to_pi_star` measures how far a policy is from
``pi*`` in both directions.
"""

from __future__ import annotations

import hashlib

import torch

from afd import models

LEVELS = 4


def level(text: str, seed: int = 0) -> float:
    """r* of one response text: a level in [0, LEVELS) fixed by the text (0 for an empty one)."""
    if not text:
        return 0.0
    digest = hashlib.blake2b(f"{seed}\x00{text}".encode(), digest_size=8).digest()
    return float(int.from_bytes(digest, "little") % LEVELS)


def reward(prompts: list, responses: list[str]) -> list[float]:
    """The planted reward as a scorer (``python:afd.toy:reward``)."""
    return [level(r) for r in responses]


@torch.no_grad()
def first_token_probs(model, tokenizer, prompts: list[list[dict]], template: str = "auto") -> torch.Tensor:
    """``pi(y|x)`` over the whole vocabulary for one-token responses: (prompts, vocab), fp32."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, mask, pos = models.left_padded([models.encode_prompt(tokenizer, p, template) for p in prompts], pad, device)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1]
    return logits.float().softmax(-1).cpu()


def token_rewards(tokenizer, prompt: list[dict], template: str = "auto") -> torch.Tensor:
    """r* of every one-token response (as the sampler decodes it), (vocab,)."""
    return torch.tensor([level(models.decode_response(tokenizer, prompt, [t], template))
                         for t in range(len(tokenizer))])


def pi_star(p0: torch.Tensor, r: torch.Tensor, beta: float) -> torch.Tensor:
    """``pi_0 exp(r / beta)`` normalised, row by row."""
    w = p0 * torch.exp((r - r.max()) / beta)
    return w / w.sum(-1, keepdim=True)


def kl(p: torch.Tensor, q: torch.Tensor) -> float:
    """Mean over rows of KL(p || q) in nats."""
    p, q = p.double(), q.double()
    terms = torch.where(p > 0, p * (p.clamp_min(1e-300).log() - q.clamp_min(1e-300).log()), torch.zeros_like(p))
    return float(terms.sum(-1).mean())


def kl_to_pi_star(policy: str, reference: str, prompts: list[list[dict]], beta: float, template: str = "auto") -> dict:
    """KL between a policy and the planted optimum over ``prompts``, both directions, and the
    expected r* of each (exact: one-token responses), with ``pi*`` built on ``reference`` (pi_0)."""
    p0_model, tok = models.load_causal_lm(reference, "cpu", "float32")
    p0 = first_token_probs(p0_model, tok, prompts, template)
    pi_model, ptok = models.load_causal_lm(policy, "cpu", "float32")
    pi = first_token_probs(pi_model, ptok, prompts, template)
    r = token_rewards(tok, prompts[0], template)
    star = pi_star(p0, r, beta)
    return {"kl_policy_to_pi_star": kl(pi, star), "kl_pi_star_to_policy": kl(star, pi),
            "expected_reward": float((pi * r).sum(-1).mean()), "expected_reward_pi_star": float((star * r).sum(-1).mean()),
            "expected_reward_pi0": float((p0 * r).sum(-1).mean())}
