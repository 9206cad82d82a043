"""Teacher-forced scoring: log pi(y | x) of given responses under a causal LM.

Shared by every method that needs a policy's likelihood of a response it did not sample:
the density-ratio reward ``log pi_sft(y|x) - log pi_0(y|x)`` (METHODS §1), KL estimates,
and the implicit rewards of IRFT/SPIN (METHODS §2). Responses are tokenised exactly as SFT
and sampling tokenise them (:func:`afd.models.encode_prompt` / ``encode_response``), EOS
included, so a response is scored in the context it was trained and sampled in.

Batches are left-padded so that every response ends in the last column; the LM head is then
applied only to the last ``max response length`` positions (``logits_to_keep``), not to the
prompt, which on long prompts is most of the vocabulary-projection cost.

A pool holds K samples of each prompt. Where several items share a prompt, the prompt is run
once and its KV cache copied to each of its responses (:func:`_shared_prompt_logprobs`), as the
sampler does, instead of once per response: the same log-probs (to float rounding) for
(K - 1) / K fewer prompt tokens through the model.
"""

from __future__ import annotations

import torch

from afd import models


@torch.inference_mode()
def response_logprobs(model, tokenizer, items: list[tuple[list[dict], str | list[int]]], template: str = "auto",
                      batch_size: int = 16, per_token: bool = False, progress: str | None = None,
                      share_prompts: bool = True):
    """Summed log-probability of each ``(prompt messages, response)``; with ``per_token``,
    also the list of per-token log-probs (EOS last). A response given as a list of token ids
    is scored as exactly those tokens (no EOS added). ``share_prompts``: run a prompt that
    several items share once (see the module docstring); False scores every item whole."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [(models.encode_prompt(tokenizer, m, template),
                list(r) if isinstance(r, list) else models.encode_response(tokenizer, m, r, template))
               for m, r in items]
    if share_prompts and len({tuple(p) for p, _ in encoded}) < len(encoded) and _takes_cache(model):
        return _shared_prompt_logprobs(model, encoded, pad, batch_size, per_token, progress)
    order = sorted(range(len(encoded)), key=lambda i: -sum(map(len, encoded[i])))
    sums: list[float] = [0.0] * len(encoded)
    tokens: list[list[float]] = [[] for _ in encoded]
    for start in tqdm(range(0, len(order), batch_size), desc=progress, disable=progress is None):
        batch = order[start:start + batch_size]
        keep = max(len(encoded[i][1]) for i in batch) + 1
        ids, mask, pos = models.left_padded([encoded[i][0] + encoded[i][1] for i in batch], pad, device)
        width = ids.shape[1]
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits
        # logits[:, j] predicts token width - keep + j + 1
        logp = logits[:, :-1].float().log_softmax(-1)
        targets = ids[:, width - keep + 1:]
        picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu()
        for row, i in enumerate(batch):
            n = len(encoded[i][1])
            values = picked[row, keep - 1 - n:]
            sums[i] = float(values.double().sum())
            if per_token:
                tokens[i] = values.tolist()
    return (sums, tokens) if per_token else sums


def _takes_cache(model) -> bool:
    return models.preallocated_cache(0) is not None and getattr(model.config, "is_encoder_decoder", False) is False


def _shared_prompt_logprobs(model, encoded, pad: int, batch_size: int, per_token: bool, progress):
    """:func:`response_logprobs` with each distinct prompt run once. Prompts are taken in
    chunks (about 8 batches of responses each, similar prompt lengths together); a chunk's
    prompts are prefilled, left-padded to one width, and their KV kept; its responses are then
    scored in batches of ``batch_size``, longest first so that batches pad little, each on a
    copy of its prompts' KV (right-padded, positions continuing their prompt's). The first
    response token's log-prob comes from the prefill's last logits, the others from the
    response pass."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    groups: dict[tuple, list[int]] = {}
    for i, (p, _) in enumerate(encoded):
        groups.setdefault(tuple(p), []).append(i)
    ordered = sorted(groups.items(), key=lambda g: -len(g[0]))
    chunks, current = [], []
    for g in ordered:
        current.append(g)
        if sum(len(idx) for _, idx in current) >= 8 * batch_size:
            chunks.append(current)
            current = []
    if current:
        chunks.append(current)
    sums: list[float] = [0.0] * len(encoded)
    tokens: list[list[float]] = [[] for _ in encoded]
    bar = tqdm(total=len(encoded), desc=progress, disable=progress is None)
    for chunk in chunks:
        ids, mask, pos = models.left_padded([list(p) for p, _ in chunk], pad, device)  # prompts end at the last column
        kv, first = [], []
        for s in range(0, len(chunk), batch_size):  # prefill, batch_size prompts at a time
            out = model(input_ids=ids[s:s + batch_size], attention_mask=mask[s:s + batch_size],
                        position_ids=pos[s:s + batch_size], use_cache=True,
                        **models.kv_cache(model, models.preallocated_cache(0)), logits_to_keep=1)
            first.append(out.logits[:, -1].float().log_softmax(-1))
            kv.append([(layer.keys, layer.values) for layer in models.returned_cache(out).layers])
        first = torch.cat(first)
        kv = [(torch.cat([b[i][0] for b in kv]), torch.cat([b[i][1] for b in kv])) for i in range(len(kv[0]))]
        items = sorted(((g, i) for g, (_, idx) in enumerate(chunk) for i in idx), key=lambda x: -len(encoded[x[1]][1]))
        for s in range(0, len(items), batch_size):
            batch = items[s:s + batch_size]
            owner = torch.tensor([g for g, _ in batch], device=device)
            n = [len(encoded[i][1]) for _, i in batch]
            longest = max(n)
            bar.update(len(batch))
            if longest == 0:
                continue
            resp = torch.full((len(batch), longest), pad, dtype=torch.long)
            for r, (_, i) in enumerate(batch):  # right padding: pads come after every real token
                resp[r, : n[r]] = torch.tensor(encoded[i][1], dtype=torch.long)
            resp = resp.to(device)
            picked = first[owner].gather(-1, resp[:, :1])
            if longest > 1:
                cache = models.preallocated_cache(longest)
                for layer, (k, v) in enumerate(kv):
                    cache.update(k[owner], v[owner], layer)
                rmask = (torch.arange(longest, device=device)[None] < torch.tensor(n, device=device)[:, None]).long()
                full = torch.cat([mask[owner], rmask], dim=1)
                rpos = pos[owner, -1:] + 1 + torch.arange(longest, device=device)
                logits = model(input_ids=resp[:, :-1], attention_mask=full[:, :-1], position_ids=rpos[:, :-1],
                               use_cache=True, **models.kv_cache(model, cache)).logits
                rest = logits.float().log_softmax(-1).gather(-1, resp[:, 1:, None]).squeeze(-1)
                picked = torch.cat([picked, rest], dim=1)
            picked = picked.cpu()
            for r, (_, i) in enumerate(batch):
                values = picked[r, : n[r]]
                sums[i] = float(values.double().sum())
                if per_token:
                    tokens[i] = values.tolist()
    bar.close()
    return (sums, tokens) if per_token else sums
