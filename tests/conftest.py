"""Shared fixtures: offline, one built ``tiny-random`` for the whole session, small data files.

The environment is set when this file is imported, before any test module imports torch,
transformers or huggingface_hub (they read these variables at import time). Subprocesses the
tests start inherit it, including ``AFD_CACHE``, so they reuse the same built model.
"""

import json
import os
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


# --- no deprecation warnings from afd's own calls --------------------------------------------
AFD_DIR = str(Path(__file__).resolve().parent.parent / "afd") + os.sep


class DeprecationGuard:
    """Records every FutureWarning / DeprecationWarning raised while a frame under afd/ is on
    the stack (afd called the deprecated thing, directly or through a library); third-party
    warnings not reached from afd's code pass. Used as a context manager."""

    def __init__(self):
        import warnings

        self.warnings, self.caught = warnings, []
        self._ctx = warnings.catch_warnings()

    def __enter__(self):
        import sys

        self._ctx.__enter__()
        original = self.warnings.showwarning
        self.warnings.simplefilter("always", FutureWarning)
        self.warnings.simplefilter("always", DeprecationWarning)

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, (FutureWarning, DeprecationWarning)):
                frame = sys._getframe(1)
                while frame is not None:
                    if frame.f_code.co_filename.startswith(AFD_DIR):
                        self.caught.append(f"{category.__name__} at {filename}:{lineno} (via "
                                           f"{frame.f_code.co_filename}:{frame.f_lineno}): {message}")
                        return  # recorded here, not passed on to an enclosing guard
                    frame = frame.f_back
            original(message, category, filename, lineno, file, line)

        self.warnings.showwarning = show
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    with DeprecationGuard() as guard:
        outcome = yield
    if guard.caught and outcome.excinfo is None:
        pytest.fail("deprecation warnings from afd's own calls:\n" + "\n".join(guard.caught), pytrace=False)
