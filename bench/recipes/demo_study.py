"""Recipe `demo`: ``afd demo``'s pipeline as a study over seeds, to say how often its result holds.

``afd demo`` is one seed of this study (afd/demo.py's ``demo_study``): the IMDB gold planted as
the hidden reward r*, demonstrations from pi* at beta 1, SFT, init-sft, the density ratio, BT on
r*-labelled pairs, Best-of-N judged by r*. Here the same pipeline runs over ``--seeds``, each
seed its own split of the 72 prompts whose pi_0 candidates are drawn once (48 to plant on, 24
held out), its own acceptance draws, training and samples; the claims of ``demo_study`` are
decided by afd study's rule (bootstrap over seeds and prompts).

    python bench/recipes/demo_study.py --seeds 0-9        # ~5 min a seed on 2 CPU cores

Results: bench/results/demo/ (study.json, claims.md, gold_vs_sqrt_kl.png) and the summary that
``afd demo`` prints, afd/recipes/demo_study.json. (bench/results/demo-vader/ is the record of the
demo before it planted its reward: VADER as the judge, demonstrations from an instructed model.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from common import save_study, saves_result, seeds_arg  # noqa: E402

from afd.demo import STUDY, demo_study  # noqa: E402


def write_demo_summary(summary: dict) -> None:
    """What ``afd demo`` quotes of the recorded study: each claim's mean, interval and verdict,
    with its controls beside it."""
    keep = ("figure", "mean", "ci95")
    STUDY.parent.mkdir(parents=True, exist_ok=True)
    STUDY.write_text(json.dumps({"seeds": summary["seeds"], "claims": [
        {**{k: c.get(k) for k in ("claim", *keep, "verdict")},
         "controls": [{k: x.get(k) for k in keep} for x in c.get("controls", [])]} for c in summary["claims"]]},
        indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=seeds_arg, default=list(range(10)))
    ap.add_argument("--out", default="runs/demo-study")
    args = ap.parse_args()
    from afd.study import run_study, table

    summary = run_study(demo_study(args.out, args.seeds))
    print(table(summary["claims"], summary["seeds"]))
    if not saves_result(args.seeds, False):
        return
    dest = save_study(summary, args.out, "demo")
    write_demo_summary(summary)
    print("saved", dest, "and", STUDY)


if __name__ == "__main__":
    main()
