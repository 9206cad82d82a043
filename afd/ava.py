"""AVA: approximated variational Bayesian IRL with token-level rewards (METHODS §3).

Cai et al., 2024, "Approximated Variational Bayesian Inverse Reinforcement Learning for Large
Language Model Alignment" (arXiv 2411.09341), adapting AVRIL (Chan & van der Schaar, 2021).

**The TQR model.** A causal-LM backbone with, at every position, a Q-function over the
vocabulary and a Gaussian reward head. For the response token ``y_j`` (action) taken in the
state ``y_<j`` (prompt and the response so far):

    Q(y_<j, a)      = log softmax(alpha * softmax(logits_(j-1)))[a]   (ava_q_head: pretrained;
                      the backbone's own LM head; ``new`` is a fresh linear head, the ablation)
    B(y_j | y_<j)   = softmax(beta * Q(y_<j, .))[y_j]                 Boltzmann policy of Q
    q_phi(R_j)      = N(mu_j, s_j^2), (mu_j, log-ish s_j) = linear(h_j) the reward of y_j given
                      y_<=j, read from the hidden state at y_j itself

**Weights.** ``w_j`` is the column mean of the attention probabilities of layer
``ava_attention_layer`` (default the last, nearest the heads, as in Preference Transformer whose
weights come from its final attention layer), averaged over heads, over the response block:
``w_j = mean_{i in response, i >= j} A[i, j]`` (the mean over the entries a causal mask leaves,
so late tokens are not penalised for having fewer rows), then normalised to sum to 1 over the
response. ``ava_weighting: uniform`` (``w_j = 1/|y|``) is the paper's no-weighting ablation.

**AVA-d** (demonstrations), per response, maximised (METHODS §3):

    sum_j w_j [ log B(y_j | y_<j)                                      likelihood of the demo
               - KL( N(mu_j, s_j^2) || N(0, 1) )                       reward prior
               + lambda * log N( Q(y_<j, y_j) - gamma * Q(y_<=j, y_j+1) ; mu_j, s_j^2 ) ]  TD

with ``Q(., y_j+1) = 0`` after the last token (a terminal state). **AVA-p** (pairs) adds the
likelihood of the chosen response and subtracts that of the rejected one, keeps the prior and
TD terms of both, and adds ``ava_contrastive * log sigma(R(chosen) - R(rejected))`` on the
sequence rewards ``R(y) = sum_j w_j mu_j``. ``w_j`` is a constant in the per-token terms (the
backbone cannot lower the loss by moving attention onto easy tokens) and is learnt through the
contrastive term, as Preference Transformer learns its weights from preferences.

**Defaults, and why** (the paper gives none): ``alpha = 1`` keeps Q within [-1 - log V, 1 - log V]
so TD differences lie in [-1, 1], the scale of the N(0, 1) reward prior; ``beta = 10`` makes
``B`` sharper than uniform over a large vocabulary (``B`` is ``softmax(alpha*beta*p)``); ``gamma
= 1`` (undiscounted, as in token-level RLHF, so the weighted rewards telescope to Q's values);
``lambda = 1`` and ``ava_contrastive = 1`` weigh the terms equally. Ablations: ``ava_lambda 0``
(no IRL/TD term), ``ava_contrastive 0``, ``ava_weighting uniform``, ``ava_q_head new``.

**A property of these defaults worth knowing.** With ``gamma = 1`` and ``Q = 0`` after the last
token the TD targets telescope: ``sum_j (Q_j - Q_(j+1)) = Q_1``, the first token's Q, which the
pretrained head puts near ``-log V`` (-10.8 for a 49k vocabulary) for every response. So the
more closely the means fit their TD targets, the more a uniformly weighted sequence reward
``sum_j mu_j / |y|`` is ``-log V / |y|``: a preference for longer responses that only the
attention weights and AVA-p's contrastive term work against. afd's reward metrics report
``prefers_longer`` so that this shows (``bench/recipes/hh_ava.py``).

**Uses.** (a) a reward model: ``afd reward --variant ava-d|ava-p``; its sequence reward serves
Best-of-N and pair ranking, and :class:`AVARewardModel` gives per-token means, standard
deviations and weights. (b) dense rewards for RL: ``afd rl --dense-rewards`` and ``afd irl
--reward-variant ava-p --dense-rewards`` give each token ``w_j * mu_j``. (c) direct
optimisation: ``afd ava`` trains the policy itself with the objective and saves the LM.

A saved AVA model is a plain causal-LM folder (``save_pretrained``; loadable as a policy by any
tool) plus ``ava_heads.safetensors`` and ``ava.json``. It is not an
``AutoModelForSequenceClassification``: its sequence reward is an attention-weighted sum.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from afd import dist, models
from afd.config import check_choice, opt, options_of
from afd.errors import AfdError
from afd.runs import DataOptions, StageDir, StageOptions
from afd.training import TokenRate, TrainOptions, loss_plot, merged, train_resuming, training_arguments

OBJECTIVES = ("ava-d", "ava-p")
HEADS_FILE, CONFIG_FILE = "ava_heads.safetensors", "ava.json"


@dataclass
class AVAOptions:
    """The objective's options, shared by ``afd ava``, ``afd reward --variant ava-*`` and ``afd irl``."""

    ava_alpha: float = opt(1.0, "alpha of the pretrained Q head, Q = log softmax(alpha * softmax(logits))")
    ava_beta: float = opt(10.0, "beta, inverse temperature of the Boltzmann policy softmax(beta * Q)")
    ava_gamma: float = opt(1.0, "gamma, discount of the TD term Q(s, a) - gamma * Q(s', a')")
    ava_lambda: float = opt(1.0, "lambda, weight of the TD (IRL) term; 0 is the no-IRL ablation")
    ava_contrastive: float = opt(1.0, "weight of AVA-p's contrastive term on sequence rewards; 0 is its ablation")
    ava_q_head: str = opt("pretrained", "Q head: pretrained (the LM's logits) or new (a fresh linear head; ablation)")
    ava_weighting: str = opt("attention", "token weights w_t: attention (column means) or uniform (ablation)")
    ava_attention_layer: int = opt(-1, "layer whose attention gives w_t (python index; -1 = last)")
    ava_head_lr: float | None = opt(None, "learning rate of the new heads (default: lr, as the backbone)")

    def validate_ava(self) -> None:
        check_choice("ava_q_head", self.ava_q_head, ("pretrained", "new"))
        check_choice("ava_weighting", self.ava_weighting, ("attention", "uniform"))
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
    """``w`` over the response block, rows summing to 1. ``attention``: (B, heads, T, T) of one
    layer or None (uniform); ``response``: (B, T) bool. Zero outside the response."""
    resp = response.float()
    if attention is None:
        w = resp
    else:
        a = attention.float().mean(1)  # (B, T, T): rows attend to columns
        t = a.shape[-1]
        causal = torch.ones(t, t, device=a.device).tril()  # [i, j] = 1 for i >= j
        valid = causal * resp[:, :, None] * resp[:, None, :]
        w = (a * valid).sum(1) / valid.sum(1).clamp(min=1)  # column mean over valid rows
        w = w * resp
    return w / w.sum(-1, keepdim=True).clamp(min=1e-12)


def token_terms(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response: torch.Tensor,
                opts: AVAOptions) -> dict[str, torch.Tensor]:
    """Per-token quantities, each (B, T), aligned with ``input_ids`` (position j is token y_j;
    zero outside the response): ``logB`` log B(y_j | y_<j), ``Q`` Q(y_<j, y_j), ``td`` Q(y_<j, y_j)
    - gamma Q(y_<=j, y_j+1), ``mean``/``std`` of q_phi(R_j), ``kl`` KL(q_phi || N(0,1)), ``logN``
    log N(td; mean, std^2), and the weights ``w``."""
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
    before = hidden[rows, cols - 1]
    targets = input_ids[rows, cols].unsqueeze(-1)
    if heads.q is None:
        logits = lm.get_output_embeddings()(before).float()
        cap = getattr(lm.config, "final_logit_softcapping", None)
        if cap:
            logits = cap * torch.tanh(logits / cap)
        q_all = (opts.ava_alpha * logits.softmax(-1)).log_softmax(-1)
    else:
        q_all = heads.q(before.to(heads.q.weight.dtype)).float()
    mask = resp.float()
    log_b = torch.zeros_like(mask).index_put((rows, cols), (opts.ava_beta * q_all).log_softmax(-1).gather(-1, targets)
                                             .squeeze(-1))
    q = torch.zeros_like(mask).index_put((rows, cols), q_all.gather(-1, targets).squeeze(-1))
    pad = torch.zeros_like(q[:, :1])
    q_next = torch.cat([q[:, 1:], pad], 1) * torch.cat([mask[:, 1:], pad], 1)  # 0 after the last token
    td = (q - opts.ava_gamma * q_next) * mask
    mean, std = heads.mean_std(hidden)
    mean, std = mean * mask, torch.where(resp, std, torch.ones_like(std))
    kl = (0.5 * (mean ** 2 + std ** 2 - 1) - std.log()) * mask
    log_n = (-0.5 * math.log(2 * math.pi) - std.log() - 0.5 * ((td - mean) / std) ** 2) * mask
    attention = out.attentions[opts.ava_attention_layer] if weighted else None
    return {"logB": log_b, "Q": q, "td": td, "mean": mean, "std": std, "kl": kl, "logN": log_n,
            "w": token_weights(attention, resp)}


def sequence_terms(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weighted sums over each response, (B,): w is a constant in the per-token terms and
    carries gradient in the sequence reward (see the module docstring)."""
    w = t["w"].detach()
    return {"likelihood": (w * t["logB"]).sum(-1), "kl": (w * t["kl"]).sum(-1), "td": (w * t["logN"]).sum(-1),
            "reward": (t["w"] * t["mean"]).sum(-1)}


def ava_loss(s: dict[str, torch.Tensor], objective: str, opts: AVAOptions) -> torch.Tensor:
    """Minus the objective (mean over responses or pairs). For AVA-p, ``s`` holds the chosen
    rows then the rejected rows."""
    if objective == "ava-d":
        return -(s["likelihood"] - s["kl"] + opts.ava_lambda * s["td"]).mean()
    c, r = ({k: v.chunk(2)[i] for k, v in s.items()} for i in (0, 1))
    objective_ = (c["likelihood"] - r["likelihood"] - (c["kl"] + r["kl"]) + opts.ava_lambda * (c["td"] + r["td"])
                  + opts.ava_contrastive * nn.functional.logsigmoid(c["reward"] - r["reward"]))
    return -objective_.mean()


# ---------------------------------------------------------------------------------------
# data


def encode(tok, prompt: list[dict], response, cfg) -> dict | None:
    """``input_ids`` and the response's first position; a response may be given as token ids
    (scored exactly). None for an over-long prompt (dropped and counted)."""
    p = models.encode_prompt_within(tok, prompt, cfg.template, cfg.max_prompt_length, cfg.long_prompts,
                                    "an AVA prompt")
    if p is None:
        return None
    r = list(response) if isinstance(response, list) else models.encode_response(tok, prompt, response, cfg.template)
    return {"input_ids": (p + r)[: cfg.max_length], "start": len(p)}


class AVACollator:
    """Right-padded rows with the response mask; pairs as chosen rows then rejected rows."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def pad(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        response = torch.zeros_like(ids, dtype=torch.bool)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            mask[i, :n] = 1
            response[i, r["start"]:n] = True
        return {"input_ids": ids, "attention_mask": mask, "response": response}

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        if "chosen" in batch[0]:
            return self.pad([b["chosen"] for b in batch] + [b["rejected"] for b in batch])
        return self.pad(batch)


def training_rows(cfg, objective: str, tok) -> tuple[list[dict], list[dict], int]:
    """(train rows, held-out rows, prompts dropped): demonstrations for AVA-d, pairs for AVA-p,
    held out by prompt."""
    from afd.data import load_demos, load_pairs, split

    if objective == "ava-d":
        items = [(d.id, d.prompt, d.response) for d in load_demos(cfg.data_config())[0]]
    else:
        items = [(p.id, p.prompt, (p.chosen, p.rejected)) for p in load_pairs(cfg.data_config())[0]]
    if not items:
        raise AfdError(f"{objective} has no training examples in {cfg.data}")
    groups = sorted({json.dumps(p, sort_keys=True) for _, p, _ in items})
    held = set(split(groups, cfg.eval_fraction, cfg.seed)[1]) if cfg.eval_fraction > 0 and len(groups) > 1 else set()
    train, evals, dropped = [], [], 0
    for _, prompt, resp in items:
        if objective == "ava-d":
            row = encode(tok, prompt, resp, cfg)
        else:
            c, r = encode(tok, prompt, resp[0], cfg), encode(tok, prompt, resp[1], cfg)
            row = None if c is None or r is None else {"chosen": c, "rejected": r}
        if row is None:
            dropped += 1
            continue
        (evals if json.dumps(prompt, sort_keys=True) in held else train).append(row)
    if not train:
        raise AfdError(f"{objective} has no training examples after filtering {cfg.data}")
    return train, evals, dropped


# ---------------------------------------------------------------------------------------
# training (reward model and direct optimisation share it)


def _trainer_class(objective: str, opts: AVAOptions):
    from transformers import Trainer

    class AVATrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            response = inputs.pop("response")
            terms = sequence_terms(token_terms(model, inputs["input_ids"], inputs["attention_mask"], response, opts))
            loss = ava_loss(terms, objective, opts)
            return (loss, terms) if return_outputs else loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            with torch.no_grad():
                loss = self.compute_loss(model, dict(inputs))
            return loss.detach(), None, None

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


def save(model, tok, folder: Path, opts: AVAOptions, objective: str) -> None:
    """The LM with ``save_pretrained`` (a policy any tool loads), the heads beside it."""
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
    (folder / CONFIG_FILE).write_text(json.dumps({"objective": objective, "template": getattr(opts, "template", "auto"),
                                                  **AVAOptions.ava_options(opts)}, indent=1))


def train(cfg, stage: StageDir, objective: str) -> tuple[dict, object, object]:
    """Train the TQR model on ``cfg.data`` with ``objective``; saves it to ``stage/model`` and
    returns (metrics, model, tokenizer)."""
    from transformers import AutoModelForCausalLM

    tok = models.load_tokenizer(cfg.model)
    train_rows, eval_rows, dropped = training_rows(cfg, objective, tok)
    dev = models.pick_device(cfg.device)
    dtype = torch.float32 if cfg.dtype == "auto" else models.pick_dtype(cfg.dtype, dev)
    try:
        model = AutoModelForCausalLM.from_pretrained(models.resolve(cfg.model), dtype=dtype)
    except (OSError, ValueError) as e:
        raise models._load_error(cfg.model, e) from None
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
    checkpoints = stage.path / "checkpoints"
    rate = TokenRate()
    trainer = _trainer_class(objective, cfg)(
        # the heads run outside the model's forward, where DDP's search for unused parameters
        # would count them twice; every trainable parameter has a gradient, so it needs none
        model=model, args=training_arguments(cfg, checkpoints, bool(eval_rows), ddp_find_unused_parameters=False),
        train_dataset=train_rows,
        eval_dataset=eval_rows or None, data_collator=AVACollator(tok.pad_token_id), processing_class=tok,
        callbacks=[rate])
    result, resume = train_resuming(trainer, checkpoints)
    trained = merged(trainer.model).eval()
    metrics = {"objective": objective, "train_examples": len(train_rows), "eval_examples": len(eval_rows),
               "prompts_dropped_too_long": dropped, "train_loss": dist.reduce_mean(result.training_loss),
               "steps": trainer.state.global_step, "resumed": resume, "train_tokens_per_second": rate.rate,
               **held_out(trained, tok, eval_rows, objective, cfg)}
    if trainer.is_world_process_zero():
        save(trained, tok, stage.path / "model", cfg, objective)
    if dist.is_main():
        (stage.path / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
        loss_plot(trainer.state.log_history, stage.path / "loss.png", "minus the AVA objective", f"{objective} training")
    return metrics, trained, tok


@torch.no_grad()
def held_out(model, tok, rows: list[dict], objective: str, opts) -> dict:
    """Mean objective terms on the held-out rows; for AVA-p also the pair accuracy of R."""
    if not rows:
        return {}
    collate = AVACollator(tok.pad_token_id)
    device = next(model.parameters()).device
    sums: dict[str, list[float]] = {}
    for s in range(0, len(rows), opts.batch_size):
        batch = {k: v.to(device) for k, v in collate(rows[s:s + opts.batch_size]).items()}
        terms = sequence_terms(token_terms(model, batch["input_ids"], batch["attention_mask"], batch["response"], opts))
        for k, v in terms.items():
            sums.setdefault(k, []).extend(v.float().cpu().tolist())
    if objective == "ava-d":
        return {f"eval_{k}": sum(v) / len(v) for k, v in sums.items()}
    n = len(sums["reward"]) // 2
    chosen, rejected = sums["reward"][:n], sums["reward"][n:]
    from afd.reward import pair_accuracy

    return {"eval_pair_accuracy": pair_accuracy(chosen, rejected),
            **{f"eval_{k}": sum(v) / len(v) for k, v in sums.items()}}


# ---------------------------------------------------------------------------------------
# the trained model as a reward


@dataclass
class TokenRewards:
    """One response's per-token rewards: ``tokens`` (strings), ``ids``, ``mean`` and ``std`` of
    q_phi(R_j), ``weight`` w_j (sums to 1), and ``reward`` = sum_j w_j * mean_j."""

    tokens: list[str]
    ids: list[int]
    mean: list[float]
    std: list[float]
    weight: list[float]
    reward: float


class AVARewardModel:
    """A trained AVA model as a reward::

        rm = AVARewardModel.from_pretrained("runs/x/reward/model")
        rm.score(prompts, responses)               # sequence rewards, one float each
        rm.token_rewards(prompts, responses)       # per-token mean, std, weight (TokenRewards)

    Prompts are message lists, responses text (tokenised as in training, EOS included) or
    token ids (scored exactly as given)."""

    def __init__(self, model, tokenizer, opts: AVAOptions, template: str = "auto", max_length: int = 4096):
        self.model, self.tokenizer, self.opts = model.eval(), tokenizer, opts
        self.template, self.max_length = template, max_length

    @staticmethod
    def is_ava(path: str) -> bool:
        return (Path(path) / CONFIG_FILE).is_file()

    @classmethod
    def from_pretrained(cls, path: str, device: str = "auto", dtype: str = "auto", template: str | None = None):
        from safetensors.torch import load_file

        folder = Path(path)
        if not (folder / CONFIG_FILE).is_file():
            raise AfdError(f"{path} is not an AVA model (no {CONFIG_FILE}); train one with afd reward --variant ava-d")
        saved = json.loads((folder / CONFIG_FILE).read_text())
        opts = AVAOptions(**{k: v for k, v in saved.items() if k in AVAOptions.__dataclass_fields__})
        model, tok = models.load_causal_lm(str(folder), device, dtype)
        heads = attach(model, opts)
        heads.load_state_dict(load_file(str(folder / HEADS_FILE)))
        heads.to(dtype=next(model.parameters()).dtype)
        return cls(model, tok, opts, template or saved.get("template", "auto"))

    @torch.no_grad()
    def token_rewards(self, prompts: list[list[dict]], responses: list, batch_size: int = 16) -> list[TokenRewards]:
        cfg = _EncodeOptions(self.template, self.max_length)
        rows = [encode(self.tokenizer, p, r, cfg) for p, r in zip(prompts, responses)]
        collate = AVACollator(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                              else self.tokenizer.eos_token_id)
        device = next(self.model.parameters()).device
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
        out: list[TokenRewards | None] = [None] * len(rows)
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            batch = {k: v.to(device) for k, v in collate.pad([rows[i] for i in idx]).items()}
            t = token_terms(self.model, batch["input_ids"], batch["attention_mask"], batch["response"], self.opts)
            reward = sequence_terms(t)["reward"].tolist()
            for b, i in enumerate(idx):
                start, n = rows[i]["start"], len(rows[i]["input_ids"])
                ids = rows[i]["input_ids"][start:n]
                out[i] = TokenRewards(self.tokenizer.convert_ids_to_tokens(ids), ids,
                                      t["mean"][b, start:n].tolist(), t["std"][b, start:n].tolist(),
                                      t["w"][b, start:n].tolist(), reward[b])
        return out  # type: ignore[return-value]

    def score(self, prompts: list[list[dict]], responses: list, batch_size: int = 16) -> list[float]:
        return [t.reward for t in self.token_rewards(prompts, responses, batch_size)]


@dataclass
class _EncodeOptions:
    template: str
    max_length: int
    max_prompt_length: int = 10 ** 9
    long_prompts: str = "drop"


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


def ava(cfg: AVAConfig) -> dict:
    """``afd ava``: the policy trained with the AVA objective is saved to OUT/ava/model (a plain
    causal-LM folder, with the AVA heads beside it, so it is also an AVA reward model)."""
    stage = StageDir(cfg, "ava")
    if not stage.begin():
        return stage.metrics()
    metrics, _, _ = train(cfg, stage, cfg.objective)
    return stage.finish({"model": str(stage.path / "model"), **metrics})
