"""Teacher-forced scoring: log pi(y | x) of given responses under a causal LM.

Shared by every method that needs a policy's likelihood of a response it did not sample:
the density-ratio reward ``log pi_sft(y|x) - log pi_0(y|x)`` (METHODS §1), KL estimates,
and the implicit rewards of IRFT/SPIN (METHODS §2). Responses are tokenised exactly as SFT
and sampling tokenise them (:func:`afd.models.encode_prompt` / ``encode_response``), EOS
included, so a response is scored in the context it was trained and sampled in.

Batches are left-padded so that every response ends in the last column; the LM head is then
applied only to the last ``max response length`` positions (``logits_to_keep``), not to the
prompt, which on long prompts is most of the vocabulary-projection cost.
"""

from __future__ import annotations

import torch

from afd import models


@torch.inference_mode()
def response_logprobs(model, tokenizer, items: list[tuple[list[dict], str | list[int]]], template: str = "auto",
                      batch_size: int = 16, per_token: bool = False, progress: str | None = None):
    """Summed log-probability of each ``(prompt messages, response)``; with ``per_token``,
    also the list of per-token log-probs (EOS last). A response given as a list of token ids
    is scored as exactly those tokens (no EOS added)."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [(models.encode_prompt(tokenizer, m, template),
                list(r) if isinstance(r, list) else models.encode_response(tokenizer, m, r, template))
               for m, r in items]
    order = sorted(range(len(encoded)), key=lambda i: -sum(map(len, encoded[i])))
    sums: list[float] = [0.0] * len(encoded)
    tokens: list[list[float]] = [[] for _ in encoded]
    for start in tqdm(range(0, len(order), batch_size), desc=progress, disable=progress is None):
        batch = order[start:start + batch_size]
        seqs = [encoded[i][0] + encoded[i][1] for i in batch]
        width = max(map(len, seqs))
        keep = max(len(encoded[i][1]) for i in batch) + 1
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, s in enumerate(seqs):
            ids[row, width - len(s):] = torch.tensor(s)
            mask[row, width - len(s):] = 1
        ids, mask = ids.to(device), mask.to(device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
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
