"""Shared fixtures: offline, one built ``tiny-random`` for the whole session, small data files.

The environment is set when this file is imported, before any test module imports torch,
transformers or huggingface_hub (they read these variables at import time). Subprocesses the
tests start inherit it, including ``AFD_CACHE``, so they reuse the same built model.
"""

import json
import os
import sys
import sysconfig
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# A 90k-parameter model gains nothing from a second thread, and OpenMP threads spinning on a
# shared 2-core machine can make every step many times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]

WORDS = ("apple river cat moon song tree bird cloud stone fire lamp road glass sand wind rain "
         "snow leaf seed wave hill door bell coin rope milk salt wolf bear frog ship star").split()


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


def write_jsonl(path, rows):
    path = Path(path)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def say_demos(n=32):
    """A task tiny-random can learn in a few steps: "Say X" -> "X!"."""
    return [{"id": f"d-{i}", "prompt": f"Say {w}", "completion": f"{w}!"} for i, w in enumerate(WORDS[:n])]


def prompt_rows(n=6):
    """Prompts of different lengths (so batches need padding), with unique ids."""
    return [{"id": f"p-{i}", "prompt": f"Tell me about the {WORDS[i]}" + " please" * (i % 3)} for i in range(n)]


AFD_SOURCE = str(REPO / "afd") + os.sep


# `python -c KILLED_WHILE_WRITING SUFFIX afd ARGS...`: runs `afd ARGS...` and SIGKILLs it halfway
# through writing the first file whose path ends with SUFFIX (torch.save's archives: optimizer,
# scheduler, RNG; safetensors weights, as save_pretrained writes them): the file is cut short, as
# a kill mid-write leaves it, and nothing after it is written
KILLED_WHILE_WRITING = r"""
import os, signal, sys
import torch
import transformers.modeling_utils as modeling_utils

target = sys.argv[1]

def cut(write):
    def cut_write(obj, path, *args, **kwargs):
        write(obj, path, *args, **kwargs)
        if str(path).endswith(target):
            os.truncate(path, os.path.getsize(path) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
    return cut_write

torch.save = cut(torch.save)
modeling_utils.safe_save_file = cut(modeling_utils.safe_save_file)
from afd.cli import main
sys.exit(main(sys.argv[2:]))
"""


def killed_while_writing(suffix, argv, cwd):
    """Run ``afd ARGV`` in a subprocess killed (SIGKILL) halfway through writing the file whose
    path ends with ``suffix``; returns its stderr."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", KILLED_WHILE_WRITING, suffix, *map(str, argv)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, f"not killed while writing {suffix}: {done.stderr[-3000:]}"
    return done.stderr


# frames passed over to find who called a deprecated API: the libraries that define and
# dispatch such APIs (transformers' deprecation wrappers run under torch's Module.__call__) and
# the standard library (warnings, contextlib, functools)
PASSED_OVER = tuple(os.sep + name + os.sep for name in ("transformers", "torch")) + (sysconfig.get_paths()["stdlib"],)


@contextmanager
def afd_deprecations():
    """Collects (as strings) the deprecation warnings of afd's own calls: those whose caller, the
    first frame outside transformers, torch and the standard library, is in afd/ (a deprecated
    call inside PEFT or TRL is theirs). Every warning still goes on to pytest's report."""
    found, previous = [], warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, (DeprecationWarning, FutureWarning)):
            frame = sys._getframe(1)
            while frame is not None and (frame.f_code.co_filename == __file__ or
                                         any(p in frame.f_code.co_filename for p in PASSED_OVER)):
                frame = frame.f_back
            if frame is not None and frame.f_code.co_filename.startswith(AFD_SOURCE):
                found.append(f"{category.__name__}: {message} (reached from "
                             f"{os.path.relpath(frame.f_code.co_filename, REPO)}:{frame.f_lineno})")
        previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield found
    finally:
        warnings.showwarning = previous


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A test fails when afd's own calls raise a deprecation warning (issue 13): under the pinned
    transformers / TRL / PEFT none does, so a new one is a call to update, not noise."""
    with afd_deprecations() as found:
        result = yield
    if found:
        pytest.fail("afd's own calls raised deprecation warnings:\n" + "\n".join(dict.fromkeys(found)), pytrace=False)
    return result


@pytest.fixture(scope="session", autouse=True)
def afd_cache(tmp_path_factory):
    """Every test (and subprocess) shares one AFD_CACHE, so tiny-random is built once."""
    cache = tmp_path_factory.mktemp("afd-cache")
    os.environ["AFD_CACHE"] = str(cache)
    import torch

    torch.set_num_threads(1)
    return cache


@pytest.fixture(scope="session")
def tiny(afd_cache):
    """(model, tokenizer) of tiny-random on the CPU. Tests must not modify the model."""
    from afd import models

    return models.load_causal_lm("tiny-random", device="cpu")


@pytest.fixture
def make_jsonl(tmp_path):
    """make_jsonl(name, rows) writes rows into tmp_path/name and returns its path (a str)."""
    return lambda name, rows: write_jsonl(tmp_path / name, rows)


@pytest.fixture
def demos_file(make_jsonl):
    return make_jsonl("demos.jsonl", say_demos())


@pytest.fixture
def prompts_file(make_jsonl):
    return make_jsonl("prompts.jsonl", prompt_rows())
