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
- ``sharegpt``: ``conversations`` of ``{"from", "value"}`` turns.
- ``prompt``: ``prompt`` only.

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

from afd.errors import DataError

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
            raise DataError(f"data option 'limit' must be a positive whole number, "
                            f"not {self.limit!r}")
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise DataError(f"data option 'system_prompt' must be text, not {self.system_prompt!r}")

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


# ---------------------------------------------------------------------------------------------
# Loaders


def load_demos(cfg: DataConfig) -> tuple[list[Demo], LoadStats]:
    """Demonstrations from any format with responses (preference data: its chosen replies;
    labelled data: the rows labelled true, the false ones counted in ``stats.undesirable``)."""
    parsed, stats = _load(cfg, "demo")
    return [Demo(key, p.prompt, p.chosen, p.ended) for key, p in parsed], stats


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
    rows = _rows(cfg.path, cfg.split)
    head = list(itertools.islice(rows, DETECT_ROWS))
    rows = itertools.chain(head, rows)
    fmt = None if cfg.format == "auto" else cfg.format
    objects = [_rename(row, cfg.columns) for _, row in head if isinstance(row, dict)]
    if fmt is None:
        fmt = _detect(cfg.path, objects) if objects else None
    if fmt is not None:
        _check_format_fits(cfg.path, fmt, need)
    _check_label_columns(cfg.path, objects, need, set(cfg.columns.values()))

    source = _source_name(cfg.path, cfg.split)
    out = []
    for n, row in rows:
        stats.rows += 1
        try:
            if isinstance(row, _RowError):
                raise row
            row = _rename(row, cfg.columns)
            if fmt is None:  # every row before this one was unreadable
                fmt = _detect(cfg.path, [row])
                _check_format_fits(cfg.path, fmt, need)
            parsed = PARSERS[fmt](row, "demo" if need == "negative" else need)
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
        prompt = _with_system_prompt(parsed.prompt, cfg.system_prompt)
        out.append((_row_id(row, source, n), parsed._replace(prompt=prompt)))
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


def _detect(path: str, rows: list[dict]) -> str:
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
    raise DataError(f"cannot tell the format of {path} from its columns ({found}); known formats: "
                    f"{', '.join(FORMATS)}; set 'format', or map your columns with 'columns' "
                    f"(e.g. {{\"prompt\": \"question\", \"response\": \"answer\"}})")


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


def _where(path: str, n: int) -> str:
    return f"{path}, {'data row' if path.endswith('.csv') else 'row'} {n}"


def _source_name(path: str, split: str) -> str:
    return Path(path).name if _is_local(path) else f"{path}[{split}]"


def _row_id(row: dict, source: str, n: int) -> str:
    own = row.get("id")
    return f"{source}:{n}" if own is None or own == "" else str(own)


def _with_system_prompt(prompt: list[dict], system_prompt: str | None) -> list[dict]:
    if system_prompt is None or prompt[0]["role"] == "system":
        return prompt
    return [{"role": "system", "content": system_prompt}, *prompt]


# ---------------------------------------------------------------------------------------------
# One parser per format: row (canonical column names) -> _Parsed, or _RowError.
# `need` is "demo" (prompt + chosen), "pair" (prompt + chosen + rejected) or "prompt".


def _parse_prompt_completion(row: dict, need: str) -> _Parsed:
    prompt = _prompt(row, "prompt")
    if need == "prompt":
        return _Parsed(prompt)
    name = "response" if "response" in row and "completion" not in row else "completion"
    return _Parsed(prompt, _completion(row, name))


def _parse_prompt(row: dict, need: str) -> _Parsed:
    return _Parsed(_prompt(row, "prompt"))


def _parse_messages(row: dict, need: str) -> _Parsed:
    return _conversation(_messages(_get(row, "messages"), "messages"), "messages", need)


def _parse_sharegpt(row: dict, need: str) -> _Parsed:
    return _conversation(_sharegpt_turns(row, "conversations"), "conversations", need)


def _sharegpt_turns(row: dict, name: str) -> list[dict]:
    turns = _get(row, name)
    if not isinstance(turns, list) or not turns:
        raise _RowError(name, f"must be a non-empty list of turns, not {_kind(turns)}")
    return [_sharegpt_turn(turn, name, f"turn {i}") for i, turn in enumerate(turns, 1)]


def _sharegpt_turn(turn: Any, name: str, which: str) -> dict:
    if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
        raise _RowError(name, f"{which} needs 'from' and a text 'value'")
    speaker = turn.get("from")
    if not isinstance(speaker, str) or speaker.lower() not in SHAREGPT_ROLES:
        raise _RowError(name, f"{which} has unknown speaker {speaker!r}")
    return {"role": SHAREGPT_ROLES[speaker.lower()], "content": turn["value"]}


def _sharegpt_reply(row: dict, name: str) -> str:
    """One assistant reply: a {from, value} message (LlamaFactory) or text."""
    value = _get(row, name)
    if isinstance(value, str):
        return _nonempty(value, name)
    message = _sharegpt_turn(value, name, "the reply")
    if message["role"] != "assistant":
        raise _RowError(name, f"must be an assistant ('gpt') message, not from {value.get('from')!r}")
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


def _parse_alpaca(row: dict, need: str) -> _Parsed:
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


def _parse_preference(row: dict, need: str) -> _Parsed:
    if row.get("prompt") is not None:  # explicit prompt
        prompt = _prompt(row, "prompt")
        if need == "prompt":
            return _Parsed(prompt)
        chosen = _completion(row, "chosen")
        return _Parsed(prompt, chosen, _completion(row, "rejected") if need == "pair" else None)
    # implicit prompt: whole conversations sharing everything but the final assistant turn
    if isinstance(row.get("chosen"), str):
        raise _RowError("prompt", "is missing (chosen is plain text, so the prompt must be given)")
    prompt, chosen = _last_reply(_messages(_get(row, "chosen"), "chosen"), "chosen")
    if need == "prompt":
        return _Parsed(prompt)
    if need == "demo":
        return _Parsed(prompt, _nonempty(chosen, "chosen"))
    other, rejected = _last_reply(_messages(_get(row, "rejected"), "rejected"), "rejected")
    if other != prompt:
        raise _RowError("rejected", "differs from 'chosen' before the final assistant message")
    return _Parsed(prompt, _nonempty(chosen, "chosen"), _nonempty(rejected, "rejected"))


def _parse_hh(row: dict, need: str) -> _Parsed:
    prompt, chosen = _hh(row, "chosen")
    if need == "prompt":
        return _Parsed(prompt)
    if need == "demo":
        return _Parsed(prompt, _nonempty(chosen, "chosen"))
    other, rejected = _hh(row, "rejected")
    if other != prompt:
        raise _RowError("rejected", "differs from 'chosen' before the last Assistant turn")
    return _Parsed(prompt, _nonempty(chosen, "chosen"), _nonempty(rejected, "rejected"))


def _parse_sharegpt_preference(row: dict, need: str) -> _Parsed:
    """LlamaFactory's ShareGPT preference rows: ``conversations`` (the prompt, ending with a
    human turn) and ``chosen`` / ``rejected``, each one {from, value} message or text."""
    prompt = _sharegpt_turns(row, "conversations")
    if prompt[-1]["role"] != "user":
        raise _RowError("conversations", f"must end with a human turn, not {prompt[-1]['role']!r}")
    if need == "prompt":
        return _Parsed(prompt)
    chosen = _sharegpt_reply(row, "chosen")
    return _Parsed(prompt, chosen, _sharegpt_reply(row, "rejected") if need == "pair" else None)


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


def _messages(value: Any, name: str) -> list[dict]:
    """A validated, non-empty list of {"role", "content"} messages (other keys dropped)."""
    if not isinstance(value, list) or not value:
        raise _RowError(name, f"must be a non-empty list of messages, not {_kind(value)}")
    messages = []
    for i, m in enumerate(value, 1):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise _RowError(name, f"message {i} needs 'role' and 'content'")
        if m["role"] not in ROLES:
            raise _RowError(name, f"message {i} has unknown role {m['role']!r} "
                                  f"(known: {', '.join(ROLES)})")
        if not isinstance(m["content"], str):
            raise _RowError(name, f"message {i} content must be text, not {_kind(m['content'])}")
        messages.append({"role": m["role"], "content": m["content"]})
    return messages


def _prompt(row: dict, name: str) -> list[dict]:
    """Text (one user message) or a message list ending with a user turn."""
    value = _get(row, name)
    if isinstance(value, str):
        return [{"role": "user", "content": _nonempty(value, name, empty_response=False)}]
    if not isinstance(value, list):
        raise _RowError(name, f"must be text or a list of messages, not {_kind(value)}")
    messages = _messages(value, name)
    if messages[-1]["role"] != "user":
        raise _RowError(name, f"must end with a user message, not {messages[-1]['role']!r}")
    return messages


def _completion(row: dict, name: str) -> str:
    """Non-empty text, or a list holding exactly one assistant message."""
    value = _get(row, name)
    if isinstance(value, list):
        messages = _messages(value, name)
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


def _conversation(messages: list[dict], name: str, need: str) -> _Parsed:
    if need == "prompt" and messages[-1]["role"] == "user":
        return _Parsed(messages)
    prompt, reply = _last_reply(messages, name)
    return _Parsed(prompt) if need == "prompt" else _Parsed(prompt, _nonempty(reply, name))


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


def _rows(path: str, split: str) -> Iterator[tuple[int, dict | _RowError]]:
    if not _is_local(path):
        if _looks_like_path(path):
            raise DataError(f"file not found: {path}")
        return _hub_rows(path, split)
    local = Path(path).expanduser()
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


def _hub_rows(name: str, split: str) -> Iterator[tuple[int, dict]]:
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, unknown id, unknown split, ...: all one message
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DataError(f"{name!r} is not a local file and could not be loaded from the Hugging "
                        f"Face hub (split {split!r}): {reason}") from None
    return enumerate(dataset, 1)
