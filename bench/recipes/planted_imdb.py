"""Recipe `planted-imdb`: the planted studies (examples/study-planted-imdb*.yaml) over seeds.

The hidden reward r* is the IMDB gold; demonstrations come from pi* = pi_0 exp(r*/beta) / Z at
beta 1; every reward afd learns from them (init-sft, init-demo, sft-demo, the density ratio,
AVA-d), BT and AVA-p on as many r*-labelled pairs, their ensemble, the oracle and the floors are
judged against r* on held-out prompts. The claims and their decision rule are fixed in the YAML
before the runs. Each seed resumes from its folder, so the study can be run a few seeds at a
time; what is recorded says how many of the planned seeds it holds. A seed recorded in
bench/results but absent from the run folder (a new machine) is taken from the record, not run
again, when the run folder's shared pools are byte for byte the ones it drew on (another kind of
CPU draws other samples from the same seeds: --rerun-recorded runs such seeds again,
--other-pools decides them beside the new ones and records which seed drew on which pools). ``--study`` picks the
study: ``main`` (Best-of-N, 10 seeds), ``iterated`` (irl's 3 iterations, SPIN and IRFT, 5 seeds)
or ``variants`` (demonstrations at beta 0.5, from Best-of-4, and with 25% of pi_0; 10 seeds).

    python bench/recipes/planted_imdb.py --seeds 0-9                   # ~22 min a seed on 2 CPU cores
    python bench/recipes/planted_imdb.py --study iterated --seeds 0-4

Results: bench/results/planted-imdb[-iterated|-variants]/ (study.json, claims.md,
gold_vs_sqrt_kl.png); bench/claims.py puts their rows on top of the claims table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from common import recorded_seeds, save_study, seeds_on_record, saves_result, seeds_arg  # noqa: E402

EXAMPLES = HERE.parent.parent / "examples"
STUDIES = {"main": "study-planted-imdb", "iterated": "study-planted-imdb-iterated",
           "variants": "study-planted-imdb-variants"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", choices=sorted(STUDIES), default="main")
    ap.add_argument("--seeds", type=seeds_arg, default=None, help="default: the study's planned seeds")
    ap.add_argument("--out", default=None, help="run folder (default: the study's 'out')")
    ap.add_argument("--rerun-recorded", action="store_true",
                    help="run seeds the record holds but the run folder lacks, instead of taking them from the record")
    ap.add_argument("--other-pools", action="store_true",
                    help="take recorded seeds even if they drew on other shared pools (another kind of CPU "
                         "draws other samples from the same seed); the record says which seed drew on which")
    args = ap.parse_args()
    from afd.study import load_study, run_study, table

    name = STUDIES[args.study]
    study = EXAMPLES / f"{name}.yaml"
    loaded = load_study(str(study))
    planned = loaded["seeds"]
    seeds = planned if args.seeds is None else args.seeds
    out = args.out or loaded["out"]
    record = name.removeprefix("study-")
    finished = {s for s in seeds if (Path(out) / f"seed-{s}" / "seed.json").exists()}
    recorded = None
    if not args.rerun_recorded:
        on_record = set(seeds_on_record(record)) - finished
        seeds = [s for s in seeds if s not in on_record]
        recorded = recorded_seeds(record, skip=seeds, other_pools=args.other_pools)
        if on_record:
            print(f"seeds {sorted(on_record)}: taken from bench/results/{record} (not in {out})")
    summary = run_study(str(study), out=out, seeds=seeds, recorded=recorded,
                        report=lambda where, stage, m: print(f"[{where}: {stage}] done in {m.get('seconds') or 0:.0f} s",
                                                             flush=True))
    every = summary["seeds"]
    print(table(summary["claims"], every))
    if not saves_result(every, False):
        return
    dest = save_study(summary, out, record, planned_seeds=planned, complete=sorted(every) == sorted(planned))
    print("saved", dest, f"({len(every)} of the {len(planned)} planned seeds)")


if __name__ == "__main__":
    main()
