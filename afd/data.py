"""Loading demonstrations, preference pairs and prompts.

Every stage reads its data through four loaders:

- ``load_demos``     -> ``Demo(id, prompt, response)``          (SFT, the expert in AfD methods)
- ``load_negatives`` -> ``Demo(id, prompt, response)``          (a labelled file's false rows)
- ``load_pairs``     -> ``Pair(id, prompt, chosen, rejected)``  (reward models, DPO)
- ``load_prompts``   -> ``Prompt(id, prompt)``                  (sampling, evaluation)

A prompt is always a list of chat messages ``{"role", "content"}`` whose last message is a user
turn (system turns and earlier user/assistant turns may come first).

Sources: a local ``.jsonl``, ``.jsonl.gz``, ``.json``, ``.csv`` or ``.parquet`` file, or any other
string that is not a local path, which is loaded as a Hugging Face hub dataset id.

Formats (``format="auto"`` detects them from the columns, after the ``columns`` mapping):

- ``prompt-completion``: ``prompt`` + ``completion`` (or ``response``); each is text, or a message
  list (TRL's conversational form, where the completion is one assistant message).
- ``messages``: a ``messages`` conversation; the final assistant message is the response.
- ``preference``: ``chosen`` / ``rejected`` with an explicit ``prompt``, or (implicit prompt) two
  whole conversations that differ only in their final assistant message.
- ``hh``: Anthropic HH-RLHF transcripts, ``chosen`` / ``rejected`` strings of the form
  ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``.
- ``alpaca``: ``instruction``, optional ``input``, ``output``.
- ``sharegpt``: ``conversations`` of ``{"from", "value"}`` turns (or ``{"role", "content"}``, Axolotl's
  chat_template layout).
- ``sharegpt-preference``: LlamaFactory's ``conversations`` + ``chosen`` / ``rejected``.
- ``prompt``: ``prompt`` only.

Conversations (``messages``, ``conversations``, and message lists anywhere) read a message's role
from ``role`` or ``from`` and its text from ``content`` or ``value`` (``message_keys`` names others:
Axolotl's ``message_property_mappings``); ``human`` / ``gpt`` and ShareGPT's other speakers are
known roles, and ``roles`` maps a file's own (``bot=assistant``). Content is text, or TRL's typed
parts when they are all text. An explicit ``prompt`` beside ``chosen`` / ``rejected`` conversations
that include the prompt turns (UltraFeedback-binarized) is checked against them.

Nothing is dropped without a word: images, audio or video (a column, or a content part) and
TRL's ``tools`` column (tool definitions) stop the load in one sentence naming them, as do tool
calls (``tool_calls``) and tool turns (role ``tool``, unless ``roles`` maps it); Axolotl's
per-turn ``train`` flags (or ``weight`` 0/1) are kept on each demonstration for SFT
(``Demo.train_flags``); a ``system`` column (LlamaFactory) is the prompt's system message; and
every other column the format does not read is named once, in a note.

``load_prompts`` reads any format and drops the responses; ``load_demos`` reads any format with
responses (preference data gives its chosen responses); ``load_pairs`` reads ``preference`` and
``hh``. Row ids are the row's own ``id`` column when it has one, else ``"<source>:<row>"``.

Bad input (the project's rules):

- A malformed row (invalid JSON, a missing field, a wrong type such as a number where text is
  expected, a message without role or content, an unknown role, a conversation that does not end
  with the assistant turn a response needs, a broken HH transcript) raises ``DataError`` naming
  the file, row and field, e.g. ``data.jsonl, row 7: field 'completion' is missing``. With
  ``on_invalid="skip"`` the row is skipped instead, counted in ``LoadStats.skipped``, and its
  reason kept in ``LoadStats.reasons`` (the first 20).
- An empty or whitespace-only response, chosen or rejected is a malformed row under the same rule;
  when skipped it is also counted in ``LoadStats.empty``. An empty prompt is malformed too.
- A source with no usable row at all raises ``DataError``.
- A format that cannot be detected raises ``DataError`` naming the columns found.
- An unknown option or option value raises ``DataError`` naming the option.

Row numbers are 1-based: the line number in JSONL (blank lines are ignored), the data row number
in CSV (the header is not counted), the position in the list for JSON, Parquet and the hub.
Over-long prompts are dealt with at tokenization time, not here.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import json
import os
import random
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from afd.errors import DataError, note

FORMATS = ("prompt-completion", "messages", "preference", "hh", "alpaca", "sharegpt", "sharegpt-preference",
           "prompt")
PAIR_FORMATS = ("preference", "hh", "sharegpt-preference")
CANONICAL_COLUMNS = ("prompt", "response", "completion", "messages", "chosen", "rejected",
                     "instruction", "input", "output", "conversations", "id", "label", "ended")
EXTENSIONS = (".jsonl", ".jsonl.gz", ".json", ".csv", ".parquet")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "model": "assistant",
                  "system": "system",
                  # LlamaFactory's tool turns: a tool's output is read as a user turn, a call as an assistant one
                  "observation": "user", "function_call": "assistant"}
# A per-row desirability label (TRL's unpaired preference / KTO format, LlamaFactory's KTO files):
# true rows are demonstrations, false rows are negatives (afd reward --variant kto).
LABEL_COLUMNS = ("label", "kto_tag")
# Columns that look like a label or flag afd would otherwise silently ignore
SUSPECT_LABEL_COLUMNS = ("labels", "flag", "flags", "desirable", "is_desirable", "kto_label", "is_good")
# how a conversation's messages name their author: afd's roles and every other name it knows
KNOWN_ROLES = {"system": "system", "user": "user", "assistant": "assistant", **SHAREGPT_ROLES}
TOOL_ROLES = ("tool", "function", "ipython")
# columns that hold what a text-only model cannot see
MODALITY_COLUMNS = {"images": "images", "image": "images", "audios": "audio", "audio": "audio",
                    "videos": "video", "video": "video"}
# what each format reads (beside id, system and, where labelled, label / kto_tag)
FORMAT_COLUMNS = {"prompt-completion": ("prompt", "completion", "response"), "messages": ("messages",),
                  "preference": ("prompt", "chosen", "rejected"), "hh": ("chosen", "rejected"),
                  "alpaca": ("instruction", "input", "output"), "sharegpt": ("conversations",),
                  "sharegpt-preference": ("conversations", "chosen", "rejected"), "prompt": ("prompt",)}
UNREAD_WHY = {"margin": "a reward margin: afd's Bradley-Terry loss has no margin term",
              "score_chosen": "a rating: afd reads which reply is chosen, not by how much",
              "score_rejected": "a rating: afd reads which reply is chosen, not by how much",
              "history": "earlier turns: give them as a conversation (messages) to use them"}
MAX_REASONS = 20
DETECT_ROWS = 20  # auto-detection looks at the columns of this many leading rows


@dataclass
class Demo:
    """One demonstration: a prompt and the demonstrated assistant reply. ``ended`` is False for a
    reply cut before its end (an optional boolean ``ended`` column, as ``afd plant`` writes for a
    sample cut at max_new_tokens): it is imitated without an end-of-sequence token."""
    id: str
    prompt: list[dict]
    response: str
    train_flags: tuple = ()
    """per prompt message, the file's per-turn ``train`` flag (True / False; None where a message
    has none), or () when no message of the row has one; SFT trains the earlier assistant turns
    flagged True and never those flagged False"""
    ended: bool = True


@dataclass
class Pair:
    """One preference pair: a prompt, the preferred reply and the dispreferred one."""
    id: str
    prompt: list[dict]
    chosen: str
    rejected: str


@dataclass
class Prompt:
    """A prompt alone, to sample replies for."""
    id: str
    prompt: list[dict]


@dataclass
class DataConfig:
    path: str
    """local file (.jsonl, .jsonl.gz, .json, .csv, .parquet) or a Hugging Face hub dataset id"""
    split: str = "train"
    """hub split (ignored for local files)"""
    format: str = "auto"
    """auto, or one of FORMATS"""
    columns: dict[str, str] = field(default_factory=dict)
    """canonical field -> column in the file, e.g. {"prompt": "question", "response": "answer"}"""
    on_invalid: str = "error"
    """what to do with a malformed row: error, or skip (and count it)"""
    limit: int | None = None
    """keep only the first N valid examples"""
    system_prompt: str | None = None
    """if set, prepended as a system message to every prompt that has none"""
    roles: dict[str, str] = field(default_factory=dict)
    """role names of the file's conversations -> afd's (system, user, assistant), e.g. {"bot": "assistant"}"""
    message_keys: dict[str, str] = field(default_factory=dict)
    """the keys of a conversation's messages: {"role": "from", "content": "value"}"""
    option: str = "data"
    """the stage option this data comes from (data, eval_pairs, demos): messages name its flags"""

    def flag(self, what: str) -> str:
        """The command-line flag of this data's ``what`` (format, columns, split)."""
        if self.option == "data":
            return "--columns" if what == "columns" else f"--data-{what}"
        return f"--{self.option.replace('_', '-')}-{what}"

    def __post_init__(self):
        if not isinstance(self.path, str) or not self.path:
            raise DataError("data option 'path' must be a file name or a hub dataset id")
        if not isinstance(self.split, str):
            raise DataError(f"data option 'split' must be text, not {self.split!r}")
        if self.format not in ("auto", *FORMATS):
            raise DataError(f"data option 'format' is {self.format!r}; "
                            f"use one of: auto, {', '.join(FORMATS)}")
        if self.on_invalid not in ("error", "skip"):
            raise DataError(f"data option 'on_invalid' is {self.on_invalid!r}; "
                            "use 'error' or 'skip'")
        if not isinstance(self.columns, dict):
            raise DataError("data option 'columns' must map field names to column names")
        for key, column in self.columns.items():
            if key not in CANONICAL_COLUMNS:
                raise DataError(f"data option 'columns' has unknown field {key!r}; "
                                f"known fields: {', '.join(CANONICAL_COLUMNS)}")
            if not isinstance(column, str):
                raise DataError(f"data option 'columns' maps {key!r} to {column!r}, "
                                "not a column name")
        if self.limit is not None and (type(self.limit) is not int or self.limit < 1):
            limit = {"data": "max_examples", "eval_pairs": "eval_pairs_max", "demos": "max_demos"}.get(self.option,
                                                                                                     "limit")
            raise DataError(f"option '{limit}' must be a positive whole number (use only the first N valid examples), "
                            f"not {self.limit!r}")
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise DataError(f"data option 'system_prompt' must be text, not {self.system_prompt!r}")
        for name, role in self.roles.items():
            if role not in ROLES:
                raise DataError(f"data option 'roles' maps {name!r} to {role!r}; map each name onto one of "
                                f"{', '.join(ROLES)}")
        unknown = sorted(set(self.message_keys) - {"role", "content"})
        if unknown:
            raise DataError(f"data option 'message_keys' has {unknown[0]!r}; it maps 'role' and 'content' onto "
                            f"the keys a message uses, e.g. role=from,content=value")

    @classmethod
    def from_dict(cls, d: dict) -> DataConfig:
        known = [f.name for f in fields(cls)]
        for key in d:
            if key not in known:
                raise DataError(f"unknown data option {key!r}; known options: {', '.join(known)}")
        if "path" not in d:
            raise DataError("data option 'path' is required")
        return cls(**d)


@dataclass
class LoadStats:
    rows: int = 0
    """rows read"""
    kept: int = 0
    skipped: int = 0
    """malformed rows skipped (on_invalid=skip)"""
    empty: int = 0
    """of the skipped: empty or whitespace-only response, chosen or rejected"""
    reasons: list[str] = field(default_factory=list)
    """the first MAX_REASONS skip messages, each naming file, row and field"""
    format: str = ""
    """the format read (as detected, when format=auto)"""
    undesirable: int = 0
    """rows labelled false (KTO / unpaired preference): not demonstrations, but negatives"""
    unread: list[str] = field(default_factory=list)
    """columns of the file that its format does not read (named in a note when loading)"""


# ---------------------------------------------------------------------------------------------
# Loaders


def load_demos(cfg: DataConfig) -> tuple[list[Demo], LoadStats]:
    """Demonstrations from any format with responses (preference data: its chosen replies;
    labelled data: the rows labelled true, the false ones counted in ``stats.undesirable``)."""
    parsed, stats = _load(cfg, "demo")
    return [Demo(key, p.prompt, p.chosen, p.flags, p.ended) for key, p in parsed], stats


def load_negatives(cfg: DataConfig) -> tuple[list[Demo], LoadStats]:
    """The responses a labelled file (KTO / unpaired preference: a boolean ``label`` or
    ``kto_tag`` column) marks undesirable, as prompt + response."""
    parsed, stats = _load(cfg, "negative")
    return [Demo(key, p.prompt, p.chosen) for key, p in parsed], stats


def load_pairs(cfg: DataConfig) -> tuple[list[Pair], LoadStats]:
    """Preference pairs from the preference, hh or sharegpt-preference format."""
    parsed, stats = _load(cfg, "pair")
    return [Pair(key, p.prompt, p.chosen, p.rejected) for key, p in parsed], stats


def load_prompts(cfg: DataConfig) -> tuple[list[Prompt], LoadStats]:
    """Prompts from any format, responses dropped; nothing is de-duplicated."""
    parsed, stats = _load(cfg, "prompt")
    return [Prompt(key, p.prompt) for key, p in parsed], stats


def check_unique_ids(items: list, source: str, what: str, why: str) -> None:
    """Stop, naming the first id that appears twice, where a stage keys anything by id (a pool's
    samples to their prompt, IRL's pairs and IRFT's negatives to their demonstration); SFT,
    reward models and AVA do not, and take repeated ids as they are."""
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise DataError(f"{what} id '{item.id}' appears twice in {source}; {why} (give each row its own id, or "
                            f"drop the id column to number the rows)")
        seen.add(item.id)


def check_pairs(pairs: list, source: str) -> list:
    """Preference pairs whose chosen reply differs from the rejected one: a pair of two equal
    replies teaches a pairwise loss nothing (its gradients cancel; Bradley-Terry's loss stays
    ln 2). Every pair equal is an error, some equal a note; they are kept either way."""
    same = sum(p.chosen == p.rejected for p in pairs)
    if pairs and same == len(pairs):
        raise DataError(f"every pair in {source} ({same}) has its chosen reply equal to its rejected one, so a reward "
                       f"model learns nothing from them (the loss stays at ln 2); check which columns hold chosen "
                       f"and rejected (--columns chosen=...,rejected=...)")
    if same:
        note(f"{same} of {len(pairs)} pairs in {source} have their chosen reply equal to their rejected one; they "
             f"teach the reward model nothing")
    return pairs


def prompt_key(prompt: list[dict]) -> str:
    """A prompt as one string: the key by which samples, pairs and splits are grouped by prompt."""
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def split(items: list, eval_fraction: float, seed: int, key=None) -> tuple[list, list]:
    """(train, eval): a random eval subset of round(n * eval_fraction) items, at least 1 when
    eval_fraction > 0 and n >= 2, chosen by `seed` alone; both keep the input order. With
    ``key`` (e.g. a pair's prompt), items of one key are held out together: the fraction is of
    the distinct keys (taken in sorted order, so the split does not depend on the rows' order),
    so no key is on both sides."""
    if not 0 <= eval_fraction < 1:
        raise DataError(f"eval_fraction must be at least 0 and below 1, not {eval_fraction!r}")
    if key is not None:
        keys = sorted({key(x) for x in items})
        held = set(split(keys, eval_fraction, seed)[1])
        return [x for x in items if key(x) not in held], [x for x in items if key(x) in held]
    n = len(items)
    n_eval = round(n * eval_fraction)
    if eval_fraction > 0 and n >= 2:
        n_eval = min(max(n_eval, 1), n - 1)
    eval_idx = set(random.Random(seed).sample(range(n), n_eval))
    train = [x for i, x in enumerate(items) if i not in eval_idx]
    held_out = [x for i, x in enumerate(items) if i in eval_idx]
    return train, held_out


# ---------------------------------------------------------------------------------------------
# The one loading loop


class _Parsed(NamedTuple):
    prompt: list[dict]
    chosen: str | None = None  # the response, for demonstrations
    rejected: str | None = None
    label: bool | None = None  # labelled data: is the response desirable
    ended: bool = True  # the response is whole (an ``ended`` column may say it was cut)
    flags: tuple = ()          # per prompt message, its per-turn train flag (Demo.train_flags)


@dataclass(frozen=True)
class _Style:
    """How a file writes its conversations' messages: role names and keys."""
    roles: tuple = ()               # (file name, afd role) pairs, the user's own mapping
    role_key: str | None = None     # None: role, else from
    content_key: str | None = None  # None: content, else value

    @classmethod
    def of(cls, cfg: DataConfig) -> _Style:
        return cls(tuple(cfg.roles.items()), cfg.message_keys.get("role"), cfg.message_keys.get("content"))


class _RowError(Exception):
    """A malformed row; the loader adds the file and row number."""

    def __init__(self, field: str | None, problem: str, empty: bool = False):
        super().__init__(problem)
        self.field, self.problem, self.empty = field, problem, empty

    def describe(self, columns: dict[str, str]) -> str:
        if self.field is None:
            return self.problem
        return f"field '{columns.get(self.field, self.field)}' {self.problem}"


def _load(cfg: DataConfig, need: str) -> tuple[list[tuple[str, _Parsed]], LoadStats]:
    """Parse cfg's rows into (id, _Parsed) for `need` in {"demo", "pair", "prompt", "negative"}:
    a labelled file's false rows are negatives, not demonstrations."""
    stats = LoadStats()
    rows = _rows(cfg.path, cfg.split, cfg.flag("split"))
    head = list(itertools.islice(rows, DETECT_ROWS))
    rows = itertools.chain(head, rows)
    fmt = None if cfg.format == "auto" else cfg.format
    objects = [_rename(row, cfg.columns) for _, row in head if isinstance(row, dict)]
    if fmt is None:
        fmt = _detect(cfg, objects) if objects else None
    if fmt is not None:
        _check_format_fits(cfg.path, fmt, need)
    _check_label_columns(cfg.path, objects, need, set(cfg.columns.values()))
    _check_unusable_columns(cfg.path, objects)
    if fmt is not None:
        stats.unread = _note_unread(cfg, fmt, objects)

    style = _Style.of(cfg)
    source = _source_name(cfg.path, cfg.split)
    out = []
    for n, row in rows:
        stats.rows += 1
        try:
            if isinstance(row, _RowError):
                raise row
            row = _rename(row, cfg.columns)
            if fmt is None:  # every row before this one was unreadable
                fmt = _detect(cfg, [row])
                _check_format_fits(cfg.path, fmt, need)
            _check_row_columns(row)
            parsed = PARSERS[fmt](row, "demo" if need == "negative" else need, style)
            parsed = parsed._replace(label=_label(row) if fmt in LABELLED_FORMATS else None, ended=_ended(row))
        except _RowError as e:
            reason = f"{_where(cfg.path, n)}: {e.describe(cfg.columns)}"
            if cfg.on_invalid == "error":
                raise DataError(reason) from None
            stats.skipped += 1
            stats.empty += e.empty
            if len(stats.reasons) < MAX_REASONS:
                stats.reasons.append(reason)
            continue
        if need == "negative" and parsed.label is not False:
            continue
        if need == "demo" and parsed.label is False:
            stats.undesirable += 1
            continue
        prompt = parsed.prompt
        for system in (row.get("system"), cfg.system_prompt):  # the row's own (LlamaFactory), then the option's
            if isinstance(system, str) and system.strip() and prompt[0]["role"] != "system":
                prompt = [{"role": "system", "content": system}, *prompt]
        flags = ((None,) * (len(prompt) - len(parsed.prompt)) + parsed.flags) if parsed.flags else ()
        out.append((_row_id(row, source, n), parsed._replace(prompt=prompt, flags=flags)))
        if cfg.limit is not None and len(out) >= cfg.limit:
            break

    stats.kept, stats.format = len(out), fmt or ""
    if not out:
        detail = f"{stats.rows} rows read, {stats.skipped} skipped"
        if need == "negative":
            detail += "; negatives are the rows whose 'label' (or 'kto_tag') is false"
        elif stats.undesirable:
            detail += f", {stats.undesirable} labelled false (negatives, not demonstrations)"
        if stats.reasons:
            detail += f": first reason: {stats.reasons[0]}"
        raise DataError(f"no valid rows in {cfg.path} ({detail})")
    return out, stats


def _rename(row: dict, columns: dict[str, str]) -> dict:
    """The row with its mapped columns under their canonical names (None where absent)."""
    return {**row, **{canonical: row.get(column) for canonical, column in columns.items()}}


def _detect(cfg: DataConfig, rows: list[dict]) -> str:
    keys = set().union(*rows)
    if {"conversations", "chosen", "rejected"} <= keys:
        return "sharegpt-preference"
    if {"chosen", "rejected"} <= keys:
        hh = any(isinstance(r.get("chosen"), str) and r["chosen"].lstrip().startswith("Human:")
                 for r in rows)
        return "hh" if hh and "prompt" not in keys else "preference"
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys:
        return "alpaca"
    if "prompt" in keys:
        return "prompt-completion" if keys & {"completion", "response"} else "prompt"
    found = ", ".join(sorted(map(str, keys)))
    raise DataError(f"cannot tell the format of {cfg.path} from its columns ({found}); known formats: "
                    f"{', '.join(FORMATS)}; set one with {cfg.flag('format')}, or map your columns with "
                    f"{cfg.flag('columns')} (e.g. {cfg.flag('columns')} prompt=question,response=answer)")


def _check_format_fits(path: str, fmt: str, need: str) -> None:
    if need == "demo" and fmt == "prompt":
        raise DataError(f"{path} holds prompts only (format 'prompt'), so it has no "
                        "demonstrations; map a reply column with columns={\"response\": ...}")
    if need == "pair" and fmt not in PAIR_FORMATS:
        raise DataError(f"{path} has format '{fmt}', which has no chosen/rejected pairs; "
                        f"preference pairs need format {', '.join(repr(f) for f in PAIR_FORMATS)}")
    if need == "negative" and fmt not in LABELLED_FORMATS:
        raise DataError(f"{path} has format '{fmt}', which has no per-row label; negatives come from a labelled "
                        f"file (a boolean 'label' or 'kto_tag' column beside {', '.join(LABELLED_FORMATS)} rows)")


def _check_label_columns(path: str, rows: list[dict], need: str, mapped: set) -> None:
    """A column that looks like a label or flag, but that afd would not read (nor is mapped
    onto a field), is reported rather than silently ignored; negatives need a label column."""
    keys = set().union(*rows) if rows else set()
    suspect = sorted(keys & set(SUSPECT_LABEL_COLUMNS) - mapped)
    if suspect:
        raise DataError(f"{path} has a column '{suspect[0]}' that looks like a label, which afd does not read: "
                        f"a per-row desirability label goes in a boolean 'label' (or 'kto_tag') column (map it "
                        f"with columns label={suspect[0]}), or remove the column")
    if need == "negative" and rows and not keys & set(LABEL_COLUMNS):
        raise DataError(f"{path} has no 'label' (or 'kto_tag') column, so no row is marked undesirable; "
                        f"negatives come from a labelled (KTO) file")


def _check_unusable_columns(path: str, rows: list[dict]) -> None:
    """Images, audio, video and tool definitions would be dropped: stop, naming them."""
    for row in rows:
        try:
            _check_row_columns(row)
        except _RowError as e:
            raise DataError(f"{path} has a column '{e.field}' that {e.problem}") from None


def _check_row_columns(row: dict) -> None:
    for column, kind in MODALITY_COLUMNS.items():
        if row.get(column) not in (None, "", [], {}):
            raise _RowError(column, f"holds {kind}, which afd cannot use: it trains text-only models; remove the "
                                    f"column (or the rows that need it)")
    if row.get("tools") not in (None, "", [], {}, "[]"):
        raise _RowError("tools", "holds tool definitions, which afd does not render into prompts (it trains on "
                                 "text conversations without tool use); remove the column and the tool-use rows")


def _note_unread(cfg: DataConfig, fmt: str, rows: list[dict]) -> list[str]:
    """Name, once, the columns of the file that its format does not read."""
    read = {*FORMAT_COLUMNS[fmt], "id", "system", "ended", *cfg.columns.values(), *cfg.columns}
    if fmt in LABELLED_FORMATS:
        read.update(LABEL_COLUMNS)
    unread = sorted({str(k) for row in rows for k in row} - read)
    if unread:
        named = ", ".join(f"'{c}'" + (f" ({UNREAD_WHY[c]})" if c in UNREAD_WHY else "") for c in unread)
        note(f"{_source_name(cfg.path, cfg.split)} ({fmt}): afd does not read column{'s' if len(unread) > 1 else ''} "
             f"{named}; map a column onto a field with {cfg.flag('columns')} FIELD=COLUMN if it holds one")
    return unread


def _where(path: str, n: int) -> str:
    return f"{path}, {'data row' if path.endswith('.csv') else 'row'} {n}"


def _source_name(path: str, split: str) -> str:
    if _is_local(path):
        local = Path(path).expanduser()
        return f"{local.name}[{split}]" if local.is_dir() else local.name
    return f"{path}[{split}]"


def _row_id(row: dict, source: str, n: int) -> str:
    own = row.get("id")
    return f"{source}:{n}" if own is None or own == "" else str(own)


# ---------------------------------------------------------------------------------------------
# One parser per format: row (canonical column names) -> _Parsed, or _RowError.
# `need` is "demo" (prompt + chosen), "pair" (prompt + chosen + rejected) or "prompt".


def _parse_prompt_completion(row: dict, need: str, style: _Style) -> _Parsed:
    prompt = _prompt(row, "prompt", style)
    if need == "prompt":
        return _Parsed(prompt)
    name = "response" if "response" in row and "completion" not in row else "completion"
    return _Parsed(prompt, _completion(row, name, style))


def _parse_prompt(row: dict, need: str, style: _Style) -> _Parsed:
    return _Parsed(_prompt(row, "prompt", style))


def _parse_messages(row: dict, need: str, style: _Style) -> _Parsed:
    return _conversation(*_messages(_get(row, "messages"), "messages", style), "messages", need)


def _parse_sharegpt(row: dict, need: str, style: _Style) -> _Parsed:
    return _conversation(*_messages(_get(row, "conversations"), "conversations", style, "turn"), "conversations", need)


def _sharegpt_reply(row: dict, name: str, style: _Style) -> str:
    """One assistant reply: a {from, value} message (LlamaFactory) or text."""
    value = _get(row, name)
    if isinstance(value, str):
        return _nonempty(value, name)
    message, _ = _message(value, name, "the reply", style)
    if message["role"] != "assistant":
        raise _RowError(name, f"must be an assistant ('gpt') message, not from {value.get('from', value.get('role'))!r}")
    return _nonempty(message["content"], name)


LABELLED_FORMATS = ("messages", "prompt-completion", "sharegpt")


def _ended(row: dict) -> bool:
    """The row's ``ended`` flag (default true): false marks a response cut before its end."""
    value = row.get("ended")
    if value is None:
        return True
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):  # CSV cells
        return value.strip().lower() == "true"
    raise _RowError("ended", f"must be true or false, not {value!r}")


def _label(row: dict) -> bool | None:
    """The row's desirability label (``label`` or ``kto_tag``): True, False, or None without one."""
    for name in LABEL_COLUMNS:
        value = row.get(name)
        if value is None:
            continue
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):  # CSV cells
            return value.strip().lower() == "true"
        raise _RowError(name, f"must be true or false, not {value!r}")
    return None


def _parse_alpaca(row: dict, need: str, style: _Style) -> _Parsed:
    text = _nonempty(_text(row, "instruction"), "instruction", empty_response=False)
    extra = row.get("input")
    if extra is not None and not isinstance(extra, str):
        raise _RowError("input", f"must be text, not {_kind(extra)}")
    if extra and extra.strip():
        text += "\n\n" + extra
    prompt = [{"role": "user", "content": text}]
    if need == "prompt":
        return _Parsed(prompt)
    return _Parsed(prompt, _nonempty(_text(row, "output"), "output"))


def _parse_preference(row: dict, need: str, style: _Style) -> _Parsed:
    if row.get("prompt") is not None:  # explicit prompt
        prompt = _prompt(row, "prompt", style)
        if _whole_conversation(row.get("chosen")):
            # UltraFeedback-binarized: chosen and rejected are whole conversations, the prompt's turns
            # included; their turns before the reply are the prompt (they may hold a system message)
            before, chosen = _last_reply(_plain(row["chosen"], "chosen", style), "chosen")
            if not _same_prompt(before, prompt):
                raise _RowError("chosen", "holds a conversation whose turns before its final assistant message "
                                          "differ from 'prompt'")
            prompt = before
            if need == "prompt":
                return _Parsed(prompt)
            chosen = _nonempty(chosen, "chosen")
            return _Parsed(prompt, chosen, _side(row, "rejected", prompt, style) if need == "pair" else None)
        if need == "prompt":
            return _Parsed(prompt)
        chosen = _completion(row, "chosen", style)
        return _Parsed(prompt, chosen, _side(row, "rejected", prompt, style) if need == "pair" else None)
    # implicit prompt: whole conversations sharing everything but the final assistant turn
    if isinstance(row.get("chosen"), str):
        raise _RowError("prompt", "is missing (chosen is plain text, so the prompt must be given)")
    prompt, chosen = _last_reply(_plain(_get(row, "chosen"), "chosen", style), "chosen")
    if need == "prompt":
        return _Parsed(prompt)
    if need == "demo":
        return _Parsed(prompt, _nonempty(chosen, "chosen"))
    other, rejected = _last_reply(_plain(_get(row, "rejected"), "rejected", style), "rejected")
    if other != prompt:
        raise _RowError("rejected", "differs from 'chosen' before the final assistant message")
    return _Parsed(prompt, _nonempty(chosen, "chosen"), _nonempty(rejected, "rejected"))


def _whole_conversation(value: Any) -> bool:
    """A message list holding more than the reply (TRL's conversational completion is one
    assistant message)."""
    return isinstance(value, list) and (len(value) > 1 or (
        len(value) == 1 and isinstance(value[0], dict) and value[0].get("role", value[0].get("from")) not in
        ("assistant", "gpt")))


def _same_prompt(conversation: list[dict], prompt: list[dict]) -> bool:
    """The turns before a conversation's reply are the prompt: the same messages, or, for a
    text prompt, the same final user message."""
    strip = lambda ms: [(m["role"], m["content"].strip()) for m in ms]
    return strip(conversation) == strip(prompt) or (len(prompt) == 1 and strip(conversation[-1:]) == strip(prompt))


def _side(row: dict, name: str, prompt: list[dict], style: _Style) -> str:
    """The rejected reply: text, one assistant message, or a whole conversation whose turns
    before its reply are the prompt."""
    if not _whole_conversation(row.get(name)):
        return _completion(row, name, style)
    before, reply = _last_reply(_plain(row[name], name, style), name)
    if not _same_prompt(before, prompt):
        raise _RowError(name, "differs from 'chosen' before the final assistant message")
    return _nonempty(reply, name)


def _parse_hh(row: dict, need: str, style: _Style) -> _Parsed:
    prompt, chosen = _hh(row, "chosen")
    if need == "prompt":
        return _Parsed(prompt)
    if need == "demo":
        return _Parsed(prompt, _nonempty(chosen, "chosen"))
    other, rejected = _hh(row, "rejected")
    if other != prompt:
        raise _RowError("rejected", "differs from 'chosen' before the last Assistant turn")
    return _Parsed(prompt, _nonempty(chosen, "chosen"), _nonempty(rejected, "rejected"))


def _parse_sharegpt_preference(row: dict, need: str, style: _Style) -> _Parsed:
    """LlamaFactory's ShareGPT preference rows: ``conversations`` (the prompt, ending with a
    human turn) and ``chosen`` / ``rejected``, each one {from, value} message or text."""
    prompt = _plain(_get(row, "conversations"), "conversations", style, "turn")
    if prompt[-1]["role"] != "user":
        raise _RowError("conversations", f"must end with a human turn, not {prompt[-1]['role']!r}")
    if need == "prompt":
        return _Parsed(prompt)
    chosen = _sharegpt_reply(row, "chosen", style)
    return _Parsed(prompt, chosen, _sharegpt_reply(row, "rejected", style) if need == "pair" else None)


PARSERS = {
    "sharegpt-preference": _parse_sharegpt_preference,
    "prompt-completion": _parse_prompt_completion,
    "messages": _parse_messages,
    "preference": _parse_preference,
    "hh": _parse_hh,
    "alpaca": _parse_alpaca,
    "sharegpt": _parse_sharegpt,
    "prompt": _parse_prompt,
}


# ---------------------------------------------------------------------------------------------
# Field helpers: each checks one kind of value and raises _RowError naming the field.


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _get(row: dict, name: str) -> Any:
    if row.get(name) is None:
        raise _RowError(name, "is missing")
    return row[name]


def _text(row: dict, name: str) -> str:
    value = _get(row, name)
    if not isinstance(value, str):
        raise _RowError(name, f"must be text, not {_kind(value)}")
    return value


def _nonempty(text: str, name: str, empty_response: bool = True) -> str:
    if not text.strip():
        raise _RowError(name, "is empty", empty=empty_response)
    return text


def _messages(value: Any, name: str, style: _Style, noun: str = "message") -> tuple[list[dict], list]:
    """A validated, non-empty list of {"role", "content"} messages (other keys dropped), and
    each message's per-turn train flag (None where it has none)."""
    if not isinstance(value, list) or not value:
        what = "turns" if noun == "turn" else "messages"
        raise _RowError(name, f"must be a non-empty list of {what}, not {_kind(value)}")
    parsed = [_message(m, name, f"{noun} {i}", style) for i, m in enumerate(value, 1)]
    # chat templates expect turns to alternate (many refuse two in a row, others run them together);
    # a role the user mapped (--roles tool=user) is their choice
    chosen = {speaker for speaker, _ in style.roles}
    for i in range(1, len(parsed)):
        role = parsed[i][0]["role"]
        if role in ("user", "assistant") and parsed[i - 1][0]["role"] == role and \
                not chosen & {_speaker(value[i - 1], style), _speaker(value[i], style)}:
            raise _RowError(name, f"has two {role} turns in a row ({noun}s {i} and {i + 1}); merge them, or put the "
                                  f"{'assistant' if role == 'user' else 'user'}'s turn between them")
    return [m for m, _ in parsed], [f for _, f in parsed]


def _plain(value: Any, name: str, style: _Style, noun: str = "message") -> list[dict]:
    """:func:`_messages` where per-turn train flags mean nothing (a prompt, a preference side)."""
    messages, flags = _messages(value, name, style, noun)
    if any(f is not None for f in flags):
        raise _RowError(name, "has per-turn 'train' flags, which afd reads in conversations to train on "
                              "(messages, conversations) only")
    return messages


def _speaker(m: dict, style: _Style) -> Any:
    """A message's author as the file writes it (before afd reads it as a role)."""
    return m.get(style.role_key or ("role" if "role" in m or "from" not in m else "from"))


def _message(m: Any, name: str, which: str, style: _Style) -> tuple[dict, bool | None]:
    """One message as {"role", "content"}, with its per-turn train flag (Axolotl's ``train``, or
    ``weight`` 0/1)."""
    if not isinstance(m, dict):
        raise _RowError(name, f"{which} must be an object with a role and content, not {_kind(m)}")
    role_key = style.role_key or ("role" if "role" in m or "from" not in m else "from")
    content_key = style.content_key or ("content" if "content" in m or "value" not in m else "value")
    if m.get("tool_calls"):
        raise _RowError(name, f"{which} is a tool call ('tool_calls'), which afd does not train on (it trains on "
                              f"text conversations without tool use); remove the row")
    if role_key not in m or content_key not in m:
        if (role_key, content_key) == ("from", "value"):
            raise _RowError(name, f"{which} needs 'from' and a text 'value'")
        raise _RowError(name, f"{which} needs '{role_key}' and '{content_key}' (other keys: map them with "
                              f"--message-keys role=KEY,content=KEY)")
    speaker, noun = m[role_key], "speaker" if role_key == "from" else "role"
    mapped = dict(style.roles)
    role = mapped.get(speaker, KNOWN_ROLES.get(speaker.lower()) if isinstance(speaker, str) else None)
    if role is None:
        if isinstance(speaker, str) and speaker.lower() in TOOL_ROLES:
            raise _RowError(name, f"{which} has role {speaker!r} (a tool's output), which afd does not train on; "
                                  f"read it as a user turn with --roles {speaker}=user, or remove the row")
        raise _RowError(name, f"{which} has unknown {noun} {speaker!r} (known: {', '.join(ROLES)}, human, gpt and "
                              f"ShareGPT's others; map it with --roles NAME=ROLE)")
    flag = m.get("train", m.get("weight"))
    if m.get("train_detail") is not None:
        raise _RowError(name, f"{which} has 'train_detail' (spans to train inside a turn); afd trains whole "
                              f"assistant turns, so remove it or flag the turn with 'train'")
    if flag is not None and flag not in (True, False, 0, 1):
        raise _RowError(name, f"{which} has a per-turn 'train' (or 'weight') flag of {flag!r}; use true or false")
    return {"role": role, "content": _content(m[content_key], name, which)}, None if flag is None else bool(flag)


def _content(value: Any, name: str, which: str) -> str:
    """Text, or TRL's typed content parts when all of them are text (joined)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(p, dict) for p in value):
        kinds = [str(p.get("type")) for p in value]
        other = [k for k in kinds if k != "text"]
        if other:
            raise _RowError(name, f"{which} has a content part of type '{other[0]}', which afd cannot use: it "
                                  f"trains text-only models (images, audio and video are not read); remove the row")
        if all(isinstance(p.get("text"), str) for p in value):
            return "".join(p["text"] for p in value)
    raise _RowError(name, f"{which} content must be text, not {_kind(value)}")


def _prompt(row: dict, name: str, style: _Style) -> list[dict]:
    """Text (one user message) or a message list ending with a user turn."""
    value = _get(row, name)
    if isinstance(value, str):
        return [{"role": "user", "content": _nonempty(value, name, empty_response=False)}]
    if not isinstance(value, list):
        raise _RowError(name, f"must be text or a list of messages, not {_kind(value)}")
    messages = _plain(value, name, style)
    if messages[-1]["role"] != "user":
        raise _RowError(name, f"must end with a user message, not {messages[-1]['role']!r}")
    return messages


def _completion(row: dict, name: str, style: _Style) -> str:
    """Non-empty text, or a list holding exactly one assistant message."""
    value = _get(row, name)
    if isinstance(value, list):
        messages = _plain(value, name, style)
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            raise _RowError(name, "must hold exactly one assistant message")
        value = messages[0]["content"]
    elif not isinstance(value, str):
        raise _RowError(name, f"must be text or a list of messages, not {_kind(value)}")
    return _nonempty(value, name)


def _last_reply(messages: list[dict], name: str) -> tuple[list[dict], str]:
    """(prompt, reply) from a conversation ending with an assistant message after a user one."""
    if messages[-1]["role"] != "assistant":
        raise _RowError(name, f"must end with an assistant message, not {messages[-1]['role']!r}")
    if len(messages) < 2 or messages[-2]["role"] != "user":
        raise _RowError(name, "needs a user message before the final assistant message")
    return messages[:-1], messages[-1]["content"]


def _conversation(messages: list[dict], flags: list, name: str, need: str) -> _Parsed:
    """A conversation as (prompt, reply): the reply is its last assistant turn, or, with per-turn
    train flags, its last assistant turn not flagged false (the turns after it train nothing)."""
    if need == "prompt" and messages[-1]["role"] == "user":  # prompts train nothing: flags do not matter
        return _Parsed(messages)
    flagged = any(f is not None for f in flags)
    if flagged:
        trained = [i for i, (m, f) in enumerate(zip(messages, flags)) if f is not False and m["role"] == "assistant"]
        if not trained:
            raise _RowError(name, "flags every assistant turn train: false, so it has nothing to train on")
        wrong = [i for i, (m, f) in enumerate(zip(messages, flags)) if f and m["role"] != "assistant"]
        if wrong:
            raise _RowError(name, f"flags turn {wrong[0] + 1} ({messages[wrong[0]]['role']}) train: true; afd "
                                  f"trains assistant turns only")
        messages, flags = messages[:trained[-1] + 1], flags[:trained[-1] + 1]
    prompt, reply = _last_reply(messages, name)
    if need == "prompt":
        return _Parsed(prompt)
    return _Parsed(prompt, _nonempty(reply, name), flags=tuple(flags[:-1]) if flagged else ())


def _hh(row: dict, name: str) -> tuple[list[dict], str]:
    try:
        return parse_hh_transcript(_text(row, name))
    except DataError as e:
        raise _RowError(name, f"is not a well-formed HH transcript: {e}") from None


_HH_MARKER = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_HH_STRAY_MARKER = re.compile(r"\b(?:Human|Assistant):")


def parse_hh_transcript(text: str) -> tuple[list[dict], str]:
    """Split "\\n\\nHuman: ...\\n\\nAssistant: ..." into (prompt messages, final assistant reply).

    Turns must alternate, starting with Human and ending with Assistant. A speaker marker anywhere
    else ("Assistant: Human: ...", or "...  Human: ..." without the blank line) means the turn
    boundaries are lost. Either problem raises DataError saying which turn is wrong. Contents are
    stripped; the final reply may be empty (the loaders treat that as an empty response).
    """
    parts = _HH_MARKER.split(text)
    if parts[0].strip() or len(parts) < 3 or parts[1] != "Human":
        raise DataError("it does not start with 'Human:'")
    speakers, contents = parts[1::2], [c.strip() for c in parts[2::2]]
    for i, (speaker, content) in enumerate(zip(speakers, contents), 1):
        if i > 1 and speaker == speakers[i - 2]:
            raise DataError(f"turns {i - 1} and {i} are both {speaker} turns")
        stray = _HH_STRAY_MARKER.search(content)
        if stray:
            raise DataError(f"turn {i} ({speaker}) has a stray '{stray.group()}' in its text")
        if not content and i < len(contents):
            raise DataError(f"turn {i} ({speaker}) is empty")
    if speakers[-1] != "Assistant":
        raise DataError("it does not end with an Assistant turn")
    roles = {"Human": "user", "Assistant": "assistant"}
    messages = [{"role": roles[s], "content": c} for s, c in zip(speakers, contents)]
    return messages[:-1], messages[-1]["content"]


# ---------------------------------------------------------------------------------------------
# Readers: (row number, dict), or (row number, _RowError) for an unreadable row.


def _is_local(path: str) -> bool:
    return os.path.exists(os.path.expanduser(path))


def _looks_like_path(path: str) -> bool:
    return (path.endswith(EXTENSIONS) or path.startswith(("/", ".", "~"))
            or path.count("/") > 1 or "\\" in path)


def _rows(path: str, split: str, split_flag: str) -> Iterator[tuple[int, dict | _RowError]]:
    if not _is_local(path):
        if _looks_like_path(path):
            raise DataError(f"file not found: {path}")
        return _hub_rows(path, split, split_flag)
    local = Path(path).expanduser()
    if local.is_dir():  # a dataset folder: a hub dataset's files (`hf download --repo-type dataset`), or save_to_disk
        return _hub_rows(str(local), split, split_flag)
    readers = {".jsonl": _jsonl_rows, ".jsonl.gz": _jsonl_rows, ".json": _json_rows,
               ".csv": _csv_rows, ".parquet": _parquet_rows}
    ext = next((e for e in EXTENSIONS if local.name.endswith(e)), None)
    if ext is None or not local.is_file():
        raise DataError(f"{path} is not a supported data file; use {', '.join(EXTENSIONS)}, "
                        "or a Hugging Face hub dataset id")
    return _guard(path, readers[ext](local))


def _guard(path: str, rows: Iterator) -> Iterator:
    """Turn a failure to read the file at all into one DataError sentence."""
    try:
        yield from rows
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {path}: {e}") from None


def _check_object(value: Any) -> dict | _RowError:
    if isinstance(value, dict):
        return value
    return _RowError(None, f"holds a {_kind(value)}, not a JSON object")


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict | _RowError]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as e:
                yield n, _RowError(None, f"is not valid JSON ({e})")
                continue
            yield n, _check_object(value)


def _json_rows(path: Path) -> Iterator[tuple[int, dict | _RowError]]:
    try:
        data = json.loads(path.read_bytes())
    except ValueError as e:
        raise DataError(f"{path} is not valid JSON ({e})") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path} must hold a list of objects, or an object with one list in it")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path} must hold a list of objects, not {_kind(data)}")
    for n, value in enumerate(data, 1):
        yield n, _check_object(value)


def _csv_rows(path: Path) -> Iterator[tuple[int, dict]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        for n, row in enumerate(csv.DictReader(f), 1):
            row.pop(None, None)  # cells beyond the header
            yield n, row


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    n = 0
    for batch in pq.ParquetFile(path).iter_batches():
        for row in batch.to_pylist():
            n += 1
            yield n, row


def _hub_rows(name: str, split: str, split_flag: str) -> Iterator[tuple[int, dict]]:
    """A hub dataset's split (or a dataset folder's: the hub's file layout, or save_to_disk's)."""
    import datasets

    folder = Path(name).expanduser()
    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        try:
            loaded = datasets.load_from_disk(str(folder))
        except Exception as e:  # a damaged folder
            raise DataError(f"cannot read the dataset folder {name}: {str(e).splitlines()[0][:200]}") from None
        if isinstance(loaded, datasets.DatasetDict):
            _check_split(name, split, list(loaded), split_flag)
            loaded = loaded[split]
        return enumerate(loaded, 1)
    try:  # offline, a hub id cannot be asked; the split is then checked by load_dataset below
        splits = datasets.get_dataset_split_names(name)
    except Exception:
        splits = None
    if splits:
        _check_split(name, split, splits, split_flag)
    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, unknown id, unknown split, ...: all one message
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DataError(f"{name!r} is not a local file and could not be loaded from the Hugging "
                        f"Face hub (split {split!r}): {reason}") from None
    return enumerate(dataset, 1)


def _check_split(name: str, split: str, splits: list[str], split_flag: str) -> None:
    if split not in splits:
        raise DataError(f"dataset {name} has no split {split!r}; its splits are {', '.join(map(repr, splits))}: "
                        f"choose one with {split_flag}")
