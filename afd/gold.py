"""``afd gold``: a golden scorer learned once from labelled data that no method sees.

A planted study (``../shared/docs/VERIFICATION.md`` §3) needs a reward ``r*`` that is not a proxy
of the methods under test and not the judge we distrust (VADER rises with length). The gold is
a sentiment classifier trained on labelled texts, frozen, and hidden from every method:

    r*(x, y) = log P(positive | y) - log P(negative | y)          (the classifier's logit)

of the response text ``y`` alone (the prompt is not scored). It is TF-IDF over word 1- and
2-grams with logistic regression (scikit-learn, as in the pilot of VERIFICATION §5): it shares
no checkpoint and no feature with afd's proxy reward models, which are neural backbones
(SmolLM2, MiniLM). It is deterministic in its seed and saved as one JSON file (the
vectoriser's vocabulary and idf, the classifier's weights), so any tool can read it.

The stage writes ``OUT/gold/``:

- ``gold.json``: the scorer; ``gold:OUT/gold`` names it wherever afd takes a reward;
- ``prompts.jsonl``: continuation prompts from the rows the gold never saw (the first
  ``prompt_words`` words of each, after ``prompt_prefix``), so that the evaluation prompts are
  drawn like the training prompts and the gold was never fit on them;
- ``metrics.json``: the gold's accuracy on held-out labelled rows, and, given a ``pool`` of pi_0
  samples, its mean and standard deviation on them (for Gao et al.'s standardisation: the
  reward name ``z:POOL:gold:OUT/gold`` has mean 0 and sd 1 on that pool) and its Spearman
  correlation with response length (its own length bias).

``gold:imdb-sentiment`` is built in: the stage's defaults on IMDB reviews (the first 1,500 rows
of ``imdb_subset.csv`` train and hold out the gold; prompts come from the other 1,000), read
from ``$AFD_IMDB_CSV`` or ``../shared/data/imdb_subset.csv`` and cached in
``$AFD_CACHE/golds/imdb-sentiment`` on first use; it is never downloaded.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

from afd import models
from afd.config import opt
from afd.errors import AfdError
from afd.runs import StageDir, StageOptions, atomic_write_text, restore_on_failure, write_jsonl

GOLD_FILE = "gold.json"
C_GRID = (0.25, 1.0, 4.0, 16.0, 64.0)
BUILTIN = {"imdb-sentiment": {}}  # name -> options over GoldConfig's defaults (IMDB)
IMDB_FILE = "imdb_subset.csv"


@dataclass
class GoldConfig(StageOptions):
    data: str = opt("", "labelled texts (.csv, .jsonl or .parquet; default: IMDB reviews, see afd.gold)")
    text_column: str = opt("review", "column holding the text")
    label_column: str = opt("sentiment", "column holding the label")
    positive_label: str = opt("positive", "the label value that is positive (reward up); every other is negative")
    gold_rows: int = opt(1500, "the first N rows train (and hold out) the gold; the rest give prompts")
    held_out_fraction: float = opt(0.2, "share of the gold's rows held out to measure its accuracy")
    ngram_max: int = opt(2, "TF-IDF word n-grams from 1 to this")
    min_df: int = opt(2, "TF-IDF: ignore n-grams in fewer rows than this")
    c: float = opt(0.0, "inverse L2 regularisation strength of the logistic regression (0: chosen from "
                        "0.25, 1, 4, 16, 64 by 5-fold cross-validation on the training rows, never the held-out ones)")
    prompt_words: int = opt(10, "a prompt is the first N words of a text the gold never saw")
    prompt_prefix: str = opt("Continue this movie review: ", "text before those words")
    pool: str = opt("", "pi_0 samples (a pool or sample stage folder): the gold's mean, sd and length bias on them")
    seed: int = opt(0, "seed of the held-out split")

    def validate(self) -> None:
        if self.gold_rows < 10:
            raise AfdError(f"option 'gold_rows' must be at least 10; got {self.gold_rows}")
        if not 0 < self.held_out_fraction < 1:
            raise AfdError(f"option 'held_out_fraction' must be in (0, 1); got {self.held_out_fraction}")
        if self.ngram_max < 1 or self.min_df < 1 or self.prompt_words < 1:
            raise AfdError("options 'ngram_max', 'min_df' and 'prompt_words' must be at least 1")
        if self.c < 0:
            raise AfdError(f"option 'c' must be positive, or 0 to choose it by cross-validation; got {self.c}")


def clean(text: str) -> str:
    """IMDB's HTML line breaks as spaces, whitespace collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"<br\s*/?>", " ", str(text))).strip()


def default_imdb_file() -> Path:
    """The IMDB reviews of the built-in gold: ``$AFD_IMDB_CSV``, else ``../shared/data`` beside
    the current folder or beside afd's own checkout."""
    candidates = [os.environ.get("AFD_IMDB_CSV", "")] + [str(Path(base) / ".." / "shared" / "data" / IMDB_FILE)
                                                         for base in (Path.cwd(), Path(__file__).resolve().parents[1])]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c).resolve()
    raise AfdError(f"the IMDB gold needs the labelled reviews: set AFD_IMDB_CSV to a CSV with 'review' and "
                   f"'sentiment' columns (e.g. ../shared/data/{IMDB_FILE}), or give afd gold --data")


def read_labelled(cfg: GoldConfig) -> list[tuple[str, bool]]:
    """(text, is positive) of every row, in file order."""
    import pandas as pd

    path = Path(cfg.data) if cfg.data else default_imdb_file()
    if not path.is_file():
        raise AfdError(f"labelled data {path} does not exist")
    try:
        frame = (pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path) if path.suffix == ".parquet"
                 else pd.read_json(path, lines=path.suffix == ".jsonl"))
    except (ValueError, OSError) as e:
        raise AfdError(f"cannot read labelled data {path}: {str(e).splitlines()[0]}") from None
    for column in (cfg.text_column, cfg.label_column):
        if column not in frame.columns:
            raise AfdError(f"labelled data {path} has no column '{column}' (columns: {', '.join(map(str, frame.columns))})")
    rows = [(clean(t), str(label) == cfg.positive_label) for t, label in zip(frame[cfg.text_column], frame[cfg.label_column])]
    if len(rows) <= cfg.gold_rows:
        raise AfdError(f"labelled data {path} has {len(rows)} rows; gold_rows={cfg.gold_rows} leaves none for prompts")
    labels = {pos for _, pos in rows[:cfg.gold_rows]}
    if len(labels) < 2:
        raise AfdError(f"the first {cfg.gold_rows} rows of {path} have one label only; the gold needs both "
                       f"(positive_label is {cfg.positive_label!r})")
    return rows


class GoldScorer:
    """A trained gold: the logit of positive sentiment of each text (``afd.rewards`` serves it
    as a reward model under the name ``gold:NAME``)."""

    def __init__(self, saved: dict):
        import numpy as np
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(ngram_range=(1, saved["ngram_max"]), vocabulary=saved["vocabulary"],
                                          sublinear_tf=True, dtype=np.float64)
        self.vectorizer.idf_ = np.asarray(saved["idf"])
        self.coef, self.intercept = np.asarray(saved["coef"]), float(saved["intercept"])

    def score(self, texts: list[str]) -> list[float]:
        return (self.vectorizer.transform([clean(t) for t in texts]) @ self.coef + self.intercept).tolist()


def load_gold(name: str) -> GoldScorer:
    """``gold:NAME``'s scorer: an ``afd gold`` stage folder (or its gold.json), or a built-in name."""
    if name in BUILTIN:
        folder = builtin_folder(name)
    else:
        folder = Path(name)
        if folder.is_file():
            folder = folder.parent
    path = folder / GOLD_FILE
    if not path.is_file():
        raise AfdError(f"gold '{name}' is neither a built-in ({', '.join(BUILTIN)}) nor an afd gold folder "
                       f"(no {path}); make one with afd gold")
    return GoldScorer(json.loads(path.read_text()))


def builtin_folder(name: str) -> Path:
    """The built-in gold ``name``, trained on first use into the afd cache (atomically)."""
    folder = models.cache_dir() / "golds" / name
    if not (folder / GOLD_FILE).is_file():
        from afd import dist

        dist.on_main(gold, GoldConfig(out=str(folder.parent), stage_name=name, **BUILTIN[name]))
    return folder


def fit(cfg: GoldConfig, rows: list[tuple[str, bool]]) -> tuple[dict, dict]:
    """(the saved gold, its held-out figures)."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    gold_rows = rows[:cfg.gold_rows]
    held = set(random.Random(cfg.seed).sample(range(len(gold_rows)), round(len(gold_rows) * cfg.held_out_fraction)))
    train = [r for i, r in enumerate(gold_rows) if i not in held]
    test = [r for i, r in enumerate(gold_rows) if i in held]
    vectorizer = TfidfVectorizer(ngram_range=(1, cfg.ngram_max), min_df=cfg.min_df, sublinear_tf=True,
                                 dtype=np.float64)
    x = vectorizer.fit_transform([t for t, _ in train])
    y = [int(p) for _, p in train]
    c, cv = cfg.c, None
    if not c:
        from sklearn.model_selection import StratifiedKFold, cross_val_score

        folds = StratifiedKFold(5, shuffle=True, random_state=cfg.seed)
        cv = {grid: float(cross_val_score(LogisticRegression(C=grid, max_iter=2000), x, y, cv=folds).mean())
              for grid in C_GRID}
        c = max(cv, key=lambda grid: (cv[grid], -grid))  # the best; the smallest C among equals
    clf = LogisticRegression(C=c, max_iter=2000)
    clf.fit(x, y)
    saved = {"kind": "tfidf-logistic-regression", "ngram_max": cfg.ngram_max,
             "vocabulary": {k: int(v) for k, v in vectorizer.vocabulary_.items()},
             "idf": vectorizer.idf_.tolist(), "coef": clf.coef_[0].tolist(), "intercept": float(clf.intercept_[0])}
    scored = GoldScorer(saved).score([t for t, _ in test])
    accuracy = sum((s > 0) == p for s, (_, p) in zip(scored, test)) / len(test)
    return saved, {"held_out_accuracy": accuracy, "train_rows": len(train), "held_out_rows": len(test),
                   "features": len(saved["vocabulary"]), "positive_share_train": sum(p for _, p in train) / len(train),
                   "c": c, "cv_accuracy": cv}


def calibration(scorer: GoldScorer, pool: str) -> dict:
    """The gold's mean, sd and Spearman with response length over a pool of pi_0 samples."""
    from afd.sampling import read_pool
    from afd.stats import spearman

    rows = read_pool(pool)
    values = scorer.score([r["response"] for r in rows])
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)) ** 0.5
    lengths = [r.get("num_tokens", len(r["response"].split())) for r in rows]
    return {"pool": pool, "pool_samples": len(rows), "pool_mean": mean, "pool_sd": sd,
            "pool_spearman_with_length": spearman(values, lengths)}


@restore_on_failure
def gold(cfg: GoldConfig) -> dict:
    """Run the stage; returns its metrics."""
    stage = StageDir(cfg, "gold")
    if not stage.begin():
        return stage.metrics()
    rows = read_labelled(cfg)
    saved, figures = fit(cfg, rows)
    atomic_write_text(stage.path / GOLD_FILE, json.dumps(saved))
    # each prompt keeps its source row's label (source_positive): a study can balance or stratify on it
    prompts = [{"id": f"row-{cfg.gold_rows + i + 1}", "prompt": cfg.prompt_prefix + " ".join(t.split()[:cfg.prompt_words]),
                "source_positive": p} for i, (t, p) in enumerate(rows[cfg.gold_rows:])]
    write_jsonl(stage.path / "prompts.jsonl", prompts)
    metrics = {"data": cfg.data or str(default_imdb_file()), "kind": saved["kind"], **figures,
               "prompts": len(prompts), "prompt_source_positive_share": sum(p["source_positive"] for p in prompts)
               / len(prompts)}
    if cfg.pool:
        metrics.update(calibration(GoldScorer(saved), cfg.pool))
    return stage.finish(metrics)
