"""AVA: approximated variational Bayesian IRL with token-level rewards (METHODS §3).

Cai et al., 2024, "Approximated Variational Bayesian Inverse Reinforcement Learning for Large
Language Model Alignment" (arXiv 2411.09341), adapting AVRIL (Chan & van der Schaar, 2021).
What afd implements, equation by equation, with the paper's t (the sentence y_1..y_|y| is
prompt then response; afd's sums run over the response, as METHODS §3 asks):

**Eq. 8-10, the TQR model.** A causal-LM backbone; both heads read the same hidden state h_t
(the last layer, after the final norm), which has seen y_1:t:

    Q(y_1:t, .)          = QHead(h_t)                                  (Eq. 8)
    [mu_t, sigma_t]      = RHead(h_t),  q_phi(R(y_1:t+1)) = N(mu_t, sigma_t^2)   (Eq. 9)

RHead is ``linear(h_t) -> (mu, softplus(.) + 1e-4)``, one scalar pair per position: the reward
of the token y_t+1 is predicted from the state before it (a token's own id cannot change its
reward; the last token's reward sees the whole response but that token, usually EOS).
QHead (``ava_q_head``) is ``pretrained`` by default, Eq. 12:
``Q(y_1:t, a) = log softmax(alpha * pi(. | y_1:t))[a]`` with ``pi`` the LM's own next-token
distribution; ``new`` is a fresh linear head (the paper's "w/o ptq" ablation).

**Eq. 11, weights.** ``w_t = (1/|P|) sum_(i in P) A[i, t]``: the mean of the attention rows of
the head positions P (the states h_t before the response tokens), of the layer
``ava_attention_layer`` (the paper does not say which; afd takes the last, nearest the heads, as
Preference Transformer takes its final attention layer), averaged over attention heads. Under
the causal mask an early position is attended by more rows, so it weighs more. The paper's rows
run over the whole sentence and sum to 1; restricted to the response they sum to the share of
attention the response gives itself, so afd normalises w to sum to 1 over the response (the
ratios are the paper's). ``ava_weighting: uniform`` (``w_t = 1/|y|``) is "w/o rwt".
The paper "multiplies the output of the t-th position of the heads by w_t"; afd reads this as
weighting each position's terms of the objective by w_t (a constant there: the backbone cannot
lower the loss by moving attention onto easy tokens) and the weighted reward below.

**Eq. 5-7, AVA-d** (demonstrations), per response, maximised:

    sum_(t = 1 .. |y|-2)  w_t [ log B(y_t+1 | y_1:t)                          (Eq. 5, likelihood)
                               - KL( N(mu_t, sigma_t^2) || N(0, 1) )           (Eq. 6, reward prior)
                               + lambda * log N(delta_t ; mu_t, sigma_t^2) ]    (TD constraint)
    delta_t = Q(y_1:t, y_t+1) - gamma * Q(y_1:t+1, y_t+2)                      (Eq. 7)

The sum stops one token before the end: there is no transition out of the last token (no
terminal Q = 0), so the last token contributes no likelihood, prior or TD term. (afd used to add
a terminal step with Q = 0; its target was Q_T, about -log V (-10.6 on SmolLM2) against targets
in [-1, 1] elsewhere, which made the sequence reward a function of 1/length.)

**Eq. 3 / 13, the likelihood term.** ``B(a | y_1:t) = softmax(beta * Q(y_1:t, .))[a]``, the
Boltzmann policy of Eq. 3, so ``log B`` is the log-likelihood of a distribution. With the
pretrained Q this is ``log softmax(alpha * beta * pi)[y_t+1]``: alpha and beta act on it only
through their product. The paper's Eq. 13 writes the term as ``beta * log softmax(alpha * pi)
[y_t+1] = beta * Q``, which is Eq. 3 without B's normaliser ``log sum_a exp(beta Q(., a))``; afd
keeps Eq. 3 (the same term in AVA-d, AVA-p and direct optimisation, and the one AVRIL derives).
Its strength: B can never exceed ``e^(alpha beta) / (e^(alpha beta) + V - 1)`` (0.31 at
alpha beta = 10 and V = 49k; 0.9 needs alpha beta >= log(9 (V - 1)) = 13.0); its gradient in
the demonstration's probability is ``alpha beta (1 - B)``, never the ``1 / pi`` of SFT's NLL.
alpha alone sets the TD targets' scale: ``delta_t ~ alpha (pi(y_t+1) - gamma pi(y_t+2))``.

**Eq. 17-18, AVA-p** (pairs): the prior and TD terms of the chosen and the rejected response,
``+`` the chosen likelihood ``-`` the rejected one, and the contrastive expected return
``ava_contrastive * log sigma(E_q[R | y+] - E_q[R | y-])`` on the reward of the last time step,
``E_q[R(y_1:|y|)] = mu_(|y|-1)`` (Eq. 18, "we only consider the reward of the last timestep").
That reward is the last token's, which has no TD or prior term: in AVA-p only the contrastive
term trains it.

**Sequence rewards.** :func:`sequence_terms` gives three: ``last`` (Eq. 18), ``weighted``
(``sum_t w_t mu_t`` over the TD steps, Eq. 10-11) and ``total`` (Eq. 19). What ranks responses
(Best-of-N, evaluation, pair accuracy) is ``ava_score``; ``auto`` takes the reward the
objective trains: ``last`` for AVA-p (the paper ranks by the reward its contrastive term
trains), ``weighted`` for AVA-d, whose last-step reward no term of Eq. 5 trains.

**Eq. 19, RL.** ``J = E_y~pi [ sum_(t=1..|y|-1) E_q[R(y_1:t+1)] ]``: RL takes the per-token
rewards ``mu_t`` (:meth:`afd.rewards.AVAReward.dense_rewards`) and, as a sequence reward, their plain
sum (``afd rl`` with an AVA reward model; ``--dense-rewards`` credits each token by its
reward-to-go).

**Defaults, and why** (the paper gives none): ``alpha = 1`` keeps TD targets in [-1, 1], the
scale of the N(0, 1) reward prior (sd 0.44 on HH replies under SmolLM2; alpha = 2: 0.89, 4: 1.8);
``beta = 20``, so that alpha beta = 20 lets B approach 1 (ceiling 0.9999) and B's mean on HH
chosen replies is 0.24 against the LM's own mean pi(y) 0.30 and mean log B is highest
(-6.8; alpha beta = 10: mean B 0.03, ceiling 0.31, mean log B -8.0, near uniform's -10.8; 40:
0.34, -8.1) (``python bench/ava_alpha_sweep.py --scales``); ``gamma = 1`` (undiscounted, as token-level
RLHF is; without a terminal step the targets telescope to ``Q_first - Q_last``, in [-1, 1]
whatever the length); ``lambda = 1`` and ``ava_contrastive = 1`` weigh the terms equally.
Ablations: ``ava_lambda 0`` ("w/o irl"), ``ava_contrastive 0`` ("w/o cer"), ``ava_weighting
uniform`` ("w/o rwt"), ``ava_q_head new`` ("w/o ptq").

**Where afd still departs from the paper, and why.** (1) The sums run over the response only
(METHODS §3), not the prompt. (2) w is normalised over the response (above). (3) The objective
is a w-weighted mean over tokens where Eq. 5 is a sum; w carries no gradient. (4) Eq. 3's
likelihood, not Eq. 13's (above). (5) The reward head is one Gaussian per position, not one per
vocabulary entry as AVRIL's discrete-action encoder would have it.

**Uses.** (a) a reward model: ``afd reward --variant ava-d|ava-p``; :class:`afd.rewards.AVAReward`
is the reward-model interface over it (``score``, ``dense_rewards``, ``token_rewards``: per-token
means, standard deviations and weights, :func:`token_rewards`), reading its input as trained
(template and max_length, saved in ``ava.json``). (b) dense rewards for RL: ``afd rl
--dense-rewards`` and ``afd irl --reward-variant ava-p --dense-rewards``. (c) direct
optimisation: ``afd ava`` trains the policy itself with the objective and saves the LM (as the
last token has no likelihood term, the demonstrations' EOS is not trained).

A saved AVA model is a plain causal-LM folder (``save_pretrained``; loadable as a policy by any
tool) plus ``ava_heads.safetensors`` and ``ava.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from afd import models
from afd.config import check_choice, opt, options_of
from afd.errors import AfdError
from afd.runs import DataOptions, StageDir, StageOptions, restore_on_failure
from afd.stats import pair_accuracy
from afd.training import (Collator, TrainOptions, finish_training, load_for_training, loss_trainer_class,
                          make_trainer, merged, pad_id, train_resuming, trained_model)

OBJECTIVES = ("ava-d", "ava-p")
HEADS_FILE, CONFIG_FILE = "ava_heads.safetensors", "ava.json"


@dataclass
class AVAOptions:
    """The objective's options, shared by ``afd ava``, ``afd reward --variant ava-*`` and ``afd irl``."""

    ava_alpha: float = opt(1.0, "alpha of the pretrained Q head, Q = log softmax(alpha * softmax(logits))")
    ava_beta: float = opt(20.0, "beta, inverse temperature of the Boltzmann policy softmax(beta * Q)")
    ava_gamma: float = opt(1.0, "gamma, discount of the TD term Q(s, a) - gamma * Q(s', a')")
    ava_lambda: float = opt(1.0, "lambda, weight of the TD (IRL) term; 0 is the no-IRL ablation")
    ava_contrastive: float = opt(1.0, "weight of AVA-p's contrastive term on sequence rewards; 0 is its ablation")
    ava_q_head: str = opt("pretrained", "Q head: pretrained (the LM's logits) or new (a fresh linear head; ablation)")
    ava_weighting: str = opt("attention", "token weights w_t: attention (column means) or uniform (ablation)")
    ava_attention_layer: int = opt(-1, "layer whose attention gives w_t (python index; -1 = last)")
    ava_head_lr: float | None = opt(None, "learning rate of the new heads (default: lr, as the backbone)")
    ava_score: str = opt("auto", "sequence reward that ranks responses: last (Eq. 18), weighted (sum of w_t mu_t), "
                                 "total (Eq. 19) or auto (last for ava-p, weighted for ava-d)")

    def validate_ava(self) -> None:
        check_choice("ava_q_head", self.ava_q_head, ("pretrained", "new"))
        check_choice("ava_weighting", self.ava_weighting, ("attention", "uniform"))
        check_choice("ava_score", self.ava_score, ("auto", "last", "weighted", "total"))
        if self.ava_beta <= 0 or self.ava_alpha <= 0:
            raise AfdError("options 'ava_alpha' and 'ava_beta' must be positive")
        if not 0 <= self.ava_gamma <= 1:
            raise AfdError(f"option 'ava_gamma' must be in [0, 1]; got {self.ava_gamma}")
        if self.ava_lambda < 0 or self.ava_contrastive < 0:
            raise AfdError("options 'ava_lambda' and 'ava_contrastive' must be >= 0")
        if self.ava_head_lr is not None and self.ava_head_lr <= 0:
            raise AfdError(f"option 'ava_head_lr' must be positive; got {self.ava_head_lr}")

    def ava_options(self) -> dict:
        return options_of(self, AVAOptions)


class AVAHeads(nn.Module):
    """The reward head (mean and standard deviation per token) and, for the ablation, a Q head."""

    def __init__(self, hidden: int, vocab: int, new_q: bool):
        super().__init__()
        self.reward = nn.Linear(hidden, 2)
        nn.init.normal_(self.reward.weight, std=0.02 / math.sqrt(hidden))
        with torch.no_grad():  # start at the prior: mean 0, std 1
            self.reward.bias.copy_(torch.tensor([0.0, math.log(math.e - 1)]))
        self.q = nn.Linear(hidden, vocab) if new_q else None
        if self.q is not None:
            nn.init.normal_(self.q.weight, std=0.02)
            nn.init.zeros_(self.q.bias)

    def mean_std(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.reward(hidden.to(self.reward.weight.dtype)).float()
        return out[..., 0], nn.functional.softplus(out[..., 1]) + 1e-4


def attach(model, opts: AVAOptions) -> AVAHeads:
    """Add the heads to a causal LM (as ``model.ava_heads``, so Trainer trains and checkpoints
    them with it) and switch to eager attention when the weights come from attention."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = AVAHeads(cfg.hidden_size, model.get_output_embeddings().weight.shape[0], opts.ava_q_head == "new")
    model.ava_heads = heads.to(next(model.parameters()).device)
    if opts.ava_weighting == "attention":
        model.set_attn_implementation("eager")
    return heads


def _unwrap(model):
    """The causal LM under a PEFT or DDP wrapper (where ``ava_heads`` lives)."""
    while not hasattr(model, "ava_heads"):
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            raise AfdError("this model has no AVA heads")
    return model


def token_weights(attention: torch.Tensor | None, response: torch.Tensor) -> torch.Tensor:
    """Eq. 11, ``w`` aligned with the response tokens (B, T), zero elsewhere, summing to 1 over
    each response. ``response``: (B, T) bool, the tokens ``y_j`` whose heads are read at position
    ``j - 1``; ``attention``: (B, heads, T, T) of one layer (rows attend to columns), or None
    (uniform, the no-weighting ablation). The weight of the heads' output at position p is the
    mean of the attention rows of the response's head positions, ``(1/|P|) sum_(i in P) A[i, p]``
    (a causal mask leaves row i only the columns p <= i; the mean still divides by |P|), then
    normalised over the response (the paper's rows run over the whole sentence and so sum to 1;
    restricted to the response they would sum to its share of attention)."""
    resp = response.float()
    if attention is None:
        w = resp
    else:
        heads_at = torch.cat([resp[:, 1:], torch.zeros_like(resp[:, :1])], 1)  # p = j - 1 for response tokens j
        a = attention.float().mean(1)  # (B, T, T), averaged over attention heads
        col = (a * heads_at[:, :, None]).sum(1) / heads_at.sum(1, keepdim=True).clamp(min=1)  # mean over rows i in P
        col = col * heads_at
        w = torch.cat([torch.zeros_like(col[:, :1]), col[:, :-1]], 1)  # head position p -> its token j = p + 1
    return w / w.sum(-1, keepdim=True).clamp(min=1e-12)


def step_terms(q: torch.Tensor, log_b: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, response: torch.Tensor,
               gamma: float) -> dict[str, torch.Tensor]:
    """The per-token terms of Eq. 5-7 from the heads' outputs, all (B, T) aligned with the
    response tokens ``y_j`` (each read at position ``j - 1``, the state ``y_<j``): ``q`` Q(y_<j,
    y_j), ``log_b`` log B(y_j | y_<j), ``mean``/``std`` of q_phi(R | y_<=j). A token is a TD step
    (``step``) when the response goes on after it: Eq. 5 runs t = 1 .. |y| - 2, so the last
    token has no transition out of it, and its likelihood, prior and TD terms are not summed."""
    resp = response
    step = resp & torch.cat([resp[:, 1:], torch.zeros_like(resp[:, :1])], 1)
    mask = step.float()
    q_next = torch.cat([q[:, 1:], torch.zeros_like(q[:, :1])], 1)
    td = (q - gamma * q_next) * mask  # Eq. 7: delta_t = Q(y_1:t, y_t+1) - gamma Q(y_1:t+1, y_t+2)
    std = torch.where(resp, std, torch.ones_like(std))
    mean = mean * resp.float()
    kl = (0.5 * (mean ** 2 + std ** 2 - 1) - std.log()) * mask  # KL(N(mu, s^2) || N(0, 1)), Eq. 6
    log_n = (-0.5 * math.log(2 * math.pi) - std.log() - 0.5 * ((td - mean) / std) ** 2) * mask  # log q_phi(delta_t)
    return {"logB": log_b * mask, "Q": q * resp.float(), "td": td, "mean": mean, "std": std, "kl": kl,
            "logN": log_n, "step": step, "response": resp}


def token_terms(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response: torch.Tensor,
                opts: AVAOptions) -> dict[str, torch.Tensor]:
    """Per-token quantities (:func:`step_terms` and the weights ``w``), each (B, T), aligned
    with ``input_ids``: position j is the response token y_j, the heads' outputs for it are read
    from the hidden state before it, h_(j-1) (Eq. 8-9: Q(y_1:t, .) and [mu_t, sigma_t] from the
    same h_t); zero outside the response."""
    lm = _unwrap(model)
    heads = lm.ava_heads
    weighted = opts.ava_weighting == "attention"
    # the LM head runs only on the states before response tokens, not over the prompt
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                output_attentions=weighted, logits_to_keep=1)
    hidden = out.hidden_states[-1]  # after the final norm: logits = lm_head(hidden)
    resp = response.clone()
    resp[:, 0] = False  # the first token has no state before it
    rows, cols = resp.nonzero(as_tuple=True)
    before = hidden[rows, cols - 1]  # h_t for the action y_t+1
    targets = input_ids[rows, cols].unsqueeze(-1)
    if heads.q is None:  # Eq. 12: Q(y_1:t, .) = log softmax(alpha * pi(. | y_1:t))
        logits = lm.get_output_embeddings()(before).float()
        cap = getattr(lm.config, "final_logit_softcapping", None)
        if cap:
            logits = cap * torch.tanh(logits / cap)
        q_all = (opts.ava_alpha * logits.softmax(-1)).log_softmax(-1)
    else:
        q_all = heads.q(before.to(heads.q.weight.dtype)).float()
    zeros = torch.zeros(resp.shape, device=hidden.device)
    log_b = zeros.index_put((rows, cols), (opts.ava_beta * q_all).log_softmax(-1).gather(-1, targets).squeeze(-1))
    q = zeros.index_put((rows, cols), q_all.gather(-1, targets).squeeze(-1))
    mu, s = heads.mean_std(before)  # Eq. 9: [mu_t, sigma_t] = RHead(h_t)
    mean, std = zeros.index_put((rows, cols), mu), torch.ones_like(zeros).index_put((rows, cols), s)
    attention = out.attentions[opts.ava_attention_layer] if weighted else None
    return {**step_terms(q, log_b, mean, std, resp, opts.ava_gamma), "w": token_weights(attention, resp)}


def last_reward(t: dict[str, torch.Tensor]) -> torch.Tensor:
    """E_q[R(y_1:|y|)] = mu of each response's last token (B,): the reward of Eq. 18."""
    resp = t["response"]
    last = resp.shape[1] - 1 - resp.flip(-1).float().argmax(-1)
    return t["mean"].gather(1, last[:, None]).squeeze(1)


def sequence_terms(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per response (B,): the weighted sums of Eq. 5's terms over its TD steps (``likelihood``,
    ``kl``, ``td``), and three sequence rewards: ``last`` (Eq. 18, the last token's expected
    reward), ``weighted`` (sum over the TD steps of w_t mu_t, Eq. 10-11) and ``total`` (Eq. 19,
    the plain sum of every token's expected reward)."""
    w = t["w"].detach()
    step = t["step"].float()
    return {"likelihood": (w * t["logB"]).sum(-1), "kl": (w * t["kl"]).sum(-1), "td": (w * t["logN"]).sum(-1),
            "last": last_reward(t), "weighted": (w * step * t["mean"]).sum(-1), "total": t["mean"].sum(-1)}


def ava_loss(s: dict[str, torch.Tensor], objective: str, opts: AVAOptions) -> torch.Tensor:
    """Minus the objective (mean over responses or pairs). For AVA-p, ``s`` holds the chosen
    rows then the rejected rows."""
    if objective == "ava-d":  # Eq. 5
        return -(s["likelihood"] - s["kl"] + opts.ava_lambda * s["td"]).mean()
    c, r = ({k: v.chunk(2)[i] for k, v in s.items()} for i in (0, 1))
    objective_ = (c["likelihood"] - r["likelihood"] - (c["kl"] + r["kl"]) + opts.ava_lambda * (c["td"] + r["td"])
                  + opts.ava_contrastive * nn.functional.logsigmoid(c["last"] - r["last"]))  # Eq. 17-18
    return -objective_.mean()


def score_key(objective: str, opts: AVAOptions) -> str:
    """Which sequence reward ranks responses (Best-of-N, pair accuracy): ``ava_score``, where
    ``auto`` is the reward the objective trains to rank: AVA-p's last-step reward (Eq. 18);
    AVA-d has no ranking term and its last token has no TD step, so ``weighted``."""
    if opts.ava_score != "auto":
        return opts.ava_score
    return "last" if objective == "ava-p" else "weighted"


# ---------------------------------------------------------------------------------------
# data


def encode(tok, prompt: list[dict], response, cfg) -> dict | None:
    """``input_ids`` and the response's first position ``start``; a response may be given as
    token ids (scored exactly). An over-long input loses prompt tokens from its left first
    (:func:`afd.models.fit`), never the response's end. None for a prompt over
    ``max_prompt_length`` (dropped and counted)."""
    p = models.encode_prompt_within(tok, prompt, cfg.template, cfg.max_prompt_length, cfg.long_prompts,
                                    "an AVA prompt")
    if p is None:
        return None
    r = list(response) if isinstance(response, list) else models.encode_response(tok, prompt, response, cfg.template)
    ids = models.fit(p, r, cfg.max_length)
    return {"input_ids": ids, "start": len(ids) - min(len(r), len(ids))}


def training_rows(cfg, objective: str, tok) -> tuple[list[dict], list[dict], int]:
    """(train rows, held-out rows, prompts dropped): demonstrations for AVA-d, pairs for AVA-p,
    held out by prompt."""
    from afd.data import load_demos, load_pairs, prompt_key, split

    if objective == "ava-d":
        # a demonstration cut before its end is read as its tokens without EOS, as in SFT
        items = [(d.prompt, d.response if d.ended else models.encode_response(tok, d.prompt, d.response, cfg.template,
                                                                             False))
                 for d in load_demos(cfg.data_config())[0]]
    else:
        from afd.data import check_pairs

        items = [(p.prompt, (p.chosen, p.rejected)) for p in check_pairs(load_pairs(cfg.data_config())[0], cfg.data)]
    if not items:
        raise AfdError(f"{objective} has no training examples in {cfg.data}")
    parts = split(items, cfg.eval_fraction, cfg.seed, key=lambda item: prompt_key(item[0]))
    (train, evals), dropped = ([], []), 0
    for part, out in zip(parts, (train, evals)):
        for prompt, resp in part:
            if objective == "ava-d":
                row = encode(tok, prompt, resp, cfg)
            else:
                c, r = encode(tok, prompt, resp[0], cfg), encode(tok, prompt, resp[1], cfg)
                row = None if c is None or r is None else {"chosen": c, "rejected": r}
            if row is None:
                dropped += 1
            else:
                out.append(row)
    if not train:
        raise AfdError(f"{objective} has no training examples after filtering {cfg.data}")
    return train, evals, dropped


# ---------------------------------------------------------------------------------------
# training (reward model and direct optimisation share it)


def _trainer_class(objective: str, opts: AVAOptions):
    class AVATrainer(loss_trainer_class()):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            response = inputs.pop("response")
            terms = sequence_terms(token_terms(model, inputs["input_ids"], inputs["attention_mask"], response, opts))
            loss = ava_loss(terms, objective, opts)
            return (loss, terms) if return_outputs else loss

        def create_optimizer(self, *args, **kw):
            """Trainer's optimizer, with the heads in their own group at ``ava_head_lr``."""
            optimizer = super().create_optimizer(*args, **kw)
            if opts.ava_head_lr is None or any(g.get("afd_heads") for g in optimizer.param_groups):
                return optimizer
            heads = {id(p) for p in _unwrap(self.model).ava_heads.parameters()}
            moved = []
            for group in optimizer.param_groups:
                moved += [p for p in group["params"] if id(p) in heads]
                group["params"] = [p for p in group["params"] if id(p) not in heads]
            optimizer.add_param_group({"params": moved, "lr": opts.ava_head_lr, "weight_decay": 0.0, "afd_heads": True})
            return optimizer

    return AVATrainer


def save(model, tok, folder: Path, cfg, objective: str) -> None:
    """The LM with ``save_pretrained`` (a policy any tool loads), the heads beside it, and
    ``ava.json``: the objective's options and how the model reads its input (template,
    max_length), which :class:`afd.rewards.AVAReward` restores."""
    from safetensors.torch import save_file

    model = _unwrap(merged(model))
    heads = model.ava_heads
    del model.ava_heads
    try:
        model.save_pretrained(folder)
    finally:
        model.ava_heads = heads
    tok.save_pretrained(folder)
    save_file({k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}, str(folder / HEADS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps({"objective": objective, "template": getattr(cfg, "template", "auto"),
                                                  "max_length": getattr(cfg, "max_length", None),
                                                  **AVAOptions.ava_options(cfg)}, indent=1))


def train(cfg, stage: StageDir, objective: str) -> tuple[dict, object, object]:
    """Train the TQR model on ``cfg.data`` with ``objective``; saves it to ``stage/model`` and
    returns (metrics, model, tokenizer)."""
    from transformers import AutoModelForCausalLM

    tok = models.load_tokenizer(cfg.model)
    train_rows, eval_rows, dropped = training_rows(cfg, objective, tok)
    model = load_for_training(AutoModelForCausalLM, cfg.model, cfg)
    if not (-model.config.num_hidden_layers <= cfg.ava_attention_layer
                                           < model.config.num_hidden_layers):
        raise AfdError(f"option 'ava_attention_layer' is {cfg.ava_attention_layer} but {cfg.model} has "
                       f"{model.config.num_hidden_layers} layers")
    heads = attach(model, cfg)
    out_emb = model.get_output_embeddings().weight
    if heads.q is not None and out_emb is not model.get_input_embeddings().weight:
        out_emb.requires_grad_(False)  # a new Q head: the LM head is unused (and has no gradient)
    if cfg.lora_r > 0:
        from afd.training import apply_lora, lora_config

        lc = lora_config(cfg)
        lc.modules_to_save = ["ava_heads"]
        model = apply_lora(model, cfg, config=lc)
    # the heads run outside the model's forward, where DDP's search for unused parameters
    # would count them twice; every trainable parameter has a gradient, so it needs none
    # its TD terms difference log-probabilities (Eq. 7, 14): fp32 unless --bf16
    trainer = make_trainer(stage, cfg, model, tok, train_rows, eval_rows, _trainer_class(objective, cfg),
                           differenced=True, ddp_find_unused_parameters=False)
    _, run = train_resuming(trainer)
    trained = trained_model(trainer)
    metrics = {"objective": objective, "train_examples": len(train_rows), "eval_examples": len(eval_rows),
               "prompts_dropped_too_long": dropped, "steps": trainer.state.global_step, **run,
               **held_out(trained, tok, eval_rows, objective, cfg)}
    finish_training(stage, trainer, tok, f"{objective} training", "minus the AVA objective",
                    save=lambda m, t, folder: save(m, t, folder, cfg, objective))
    return metrics, trained, tok


@torch.no_grad()
def held_out(model, tok, rows: list[dict], objective: str, opts) -> dict:
    """Mean objective terms on the held-out rows; for AVA-p also the pair accuracy of its
    ranking reward (ties half)."""
    if not rows:
        return {}
    collate = Collator(pad_id(tok))
    device = next(model.parameters()).device
    sums: dict[str, list[float]] = {}
    for s in range(0, len(rows), opts.batch_size):
        batch = {k: v.to(device) for k, v in collate(rows[s:s + opts.batch_size]).items()}
        terms = sequence_terms(token_terms(model, batch["input_ids"], batch["attention_mask"], batch["response"], opts))
        for k, v in terms.items():
            sums.setdefault(k, []).extend(v.float().cpu().tolist())
    means = {f"eval_{k}": sum(v) / len(v) for k, v in sums.items()}
    if objective == "ava-d":
        return means
    scores = sums[score_key(objective, opts)]
    n = len(scores) // 2
    return {"eval_pair_accuracy": pair_accuracy(scores[:n], scores[n:]), **means}


# ---------------------------------------------------------------------------------------
# the trained model's rewards (afd.rewards.AVAReward is the reward-model interface over them)


@dataclass
class TokenRewards:
    """One response's per-token view: ``tokens`` (strings), ``ids``, ``mean`` and ``std`` of
    q_phi(R | y_<=j) for each token (read at the state before it), ``weight`` w_j (Eq. 11, sums to
    1), and ``reward``, the sequence reward that ranks responses (see :func:`score_key`)."""

    tokens: list[str]
    ids: list[int]
    mean: list[float]
    std: list[float]
    weight: list[float]
    reward: float


@dataclass
class _InputOptions:
    template: str
    max_length: int | None
    max_prompt_length: int = 10 ** 9
    long_prompts: str = "drop"


@torch.no_grad()
def token_rewards(model, tok, opts: AVAOptions, objective: str, prompts: list[list[dict]], responses: list,
                  template: str = "auto", max_length: int | None = None, batch_size: int = 16) -> list[TokenRewards]:
    """Per response, its :class:`TokenRewards` under a trained AVA model (``model`` with heads).
    Responses are text (tokenised as in training, EOS included) or token ids (scored exactly)."""
    rows = [encode(tok, p, r, _InputOptions(template, max_length)) for p, r in zip(prompts, responses)]
    collate = Collator(pad_id(tok))
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    out: list[TokenRewards | None] = [None] * len(rows)
    key = score_key(objective, opts)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        batch = {k: v.to(device) for k, v in collate([rows[i] for i in idx]).items()}
        t = token_terms(model, batch["input_ids"], batch["attention_mask"], batch["response"], opts)
        reward = sequence_terms(t)[key].tolist()
        for b, i in enumerate(idx):
            start, n = rows[i]["start"], len(rows[i]["input_ids"])
            ids = rows[i]["input_ids"][start:n]
            out[i] = TokenRewards(tok.convert_ids_to_tokens(ids), ids, t["mean"][b, start:n].tolist(),
                                  t["std"][b, start:n].tolist(), t["w"][b, start:n].tolist(), reward[b])
    return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------
# direct optimisation: ``afd ava``


@dataclass
class AVAConfig(StageOptions, DataOptions, TrainOptions, AVAOptions):
    model: str = opt("tiny-random", "policy to train (usually the SFT policy): built-in name, folder or hub id")
    objective: str = opt("ava-d", "ava-d (demonstrations; any demonstration format) or ava-p (preference pairs)")

    def validate(self) -> None:
        self.validate_training()
        self.validate_ava()
        check_choice("objective", self.objective, OBJECTIVES)
        if self.ava_q_head != "pretrained":
            raise AfdError("direct optimisation needs ava_q_head 'pretrained': the policy is the LM whose logits "
                           "define Q")
        if not self.data:
            raise AfdError("option 'data' is required: demonstrations (ava-d) or preference pairs (ava-p)")


@restore_on_failure
def ava(cfg: AVAConfig) -> dict:
    """``afd ava``: the policy trained with the AVA objective is saved to OUT/ava/model (a plain
    causal-LM folder, with the AVA heads beside it, so it is also an AVA reward model)."""
    stage = StageDir(cfg, "ava")
    if not stage.begin():
        return stage.metrics()
    metrics, _, _ = train(cfg, stage, cfg.objective)
    return stage.finish({"model": str(stage.path / "model"), **metrics})
