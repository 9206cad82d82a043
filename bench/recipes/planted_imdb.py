"""Recipe `planted-imdb`: the planted Best-of-N study (examples/study-planted-imdb.yaml) over seeds.

The hidden reward r* is the IMDB gold; demonstrations come from pi* = pi_0 exp(r*/beta) / Z at
beta 1; every reward afd learns from them (init-sft, init-demo, sft-demo, the density ratio,
AVA-d), BT and AVA-p on as many r*-labelled pairs, their ensemble, the oracle and the floors are
judged against r* on held-out prompts. The claims and their decision rule are fixed in the YAML
before the runs. Each seed resumes from its folder, so the study can be run a few seeds at a
time; what is recorded says how many of the planned seeds it holds.

    python bench/recipes/planted_imdb.py --seeds 0-9        # ~15 min a seed on 2 CPU cores

Results: bench/results/planted-imdb/ (study.json, claims.md, gold_vs_sqrt_kl.png); bench/claims.py
puts its rows on top of the claims table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from common import save_study, saves_result, seeds_arg  # noqa: E402

STUDY = HERE.parent.parent / "examples" / "study-planted-imdb.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=seeds_arg, default=list(range(10)))
    ap.add_argument("--out", default="runs/study-planted-imdb")
    args = ap.parse_args()
    from afd.study import load_study, run_study, table

    planned = load_study(str(STUDY))["seeds"]
    summary = run_study(str(STUDY), out=args.out, seeds=args.seeds)
    print(table(summary["claims"], summary["seeds"]))
    if not saves_result(args.seeds, False):
        return
    dest = save_study(summary, args.out, "planted-imdb", planned_seeds=planned,
                      complete=sorted(args.seeds) == sorted(planned))
    print("saved", dest, f"({len(args.seeds)} of the {len(planned)} planned seeds)")


if __name__ == "__main__":
    main()
