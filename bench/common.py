"""Shared helpers for benchmarks: the machine they ran on, the compute ceiling, results files."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SHARED_DATA = REPO.parent / "shared" / "data"


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def matmul_gflops(n: int = 2048, repeats: int = 10, dtype=torch.float32, device: str = "cpu") -> float:
    """Best-of-3 dense matmul rate: this machine's practical compute ceiling."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    best = 0.0
    for _ in range(3):
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(repeats):
            a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = max(best, 2 * n ** 3 * repeats / (time.perf_counter() - t) / 1e9)
    return best


def save(name: str, result: dict, table: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(table)
    return RESULTS / f"{name}.md"


# ---------------------------------------------------------------------------------------------
# Seeds: a recipe runs once per seed (seed = data split, sampling and training) and reports
# each seed's figures and, across seeds, their mean with a 95% t interval.

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def seeds_arg(text: str) -> list[int]:
    """``--seeds 0,1,2`` (or ``0-2``) as a list of ints."""
    if "-" in text and "," not in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(x) for x in text.split(",") if x.strip()]


def across_seeds(values: list) -> dict:
    """Mean of one figure across seeds and its 95% t interval (over seeds: None when fewer
    than 2 seeds have the figure); ``per_seed`` keeps every seed's value."""
    xs = [float(v) for v in values if v is not None]
    out = {"mean": sum(xs) / len(xs) if xs else None, "ci95": None, "per_seed": list(values)}
    if len(xs) >= 2:
        sd = (sum((x - out["mean"]) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5
        half = T975.get(len(xs) - 1, 1.96) * sd / len(xs) ** 0.5
        out["ci95"] = [out["mean"] - half, out["mean"] + half]
    return out


def aggregate(per_seed: list):
    """Per-seed results of one shape -> the same shape with every number replaced by
    :func:`across_seeds` of its values (lists of numbers element by element); other leaves are
    kept when all seeds agree, else listed per seed."""
    first = per_seed[0]
    if isinstance(first, dict):
        keys = [k for k in first if all(isinstance(p, dict) and k in p for p in per_seed)]
        return {k: aggregate([p[k] for p in per_seed]) for k in keys}
    if isinstance(first, (int, float)) and not isinstance(first, bool) or first is None and \
            any(isinstance(p, (int, float)) and not isinstance(p, bool) for p in per_seed):
        return across_seeds(per_seed)
    if isinstance(first, list) and all(isinstance(p, list) and len(p) == len(first) for p in per_seed) and \
            all(isinstance(x, (int, float)) or x is None for p in per_seed for x in p):
        return [across_seeds([p[i] for p in per_seed]) for i in range(len(first))]
    return first if all(p == first for p in per_seed) else {"per_seed": per_seed}


def ci(entry: dict | None, digits: int = 3) -> str:
    """``mean [lo, hi]`` of an :func:`across_seeds` entry, for tables."""
    if not entry or entry.get("mean") is None:
        return "–"
    if entry.get("ci95") is None:
        return f"{entry['mean']:.{digits}f}"
    lo, hi = entry["ci95"]
    return f"{entry['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def fmt(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def rm_figures(m: dict) -> dict:
    """A reward model's held-out figures beside the length-only and EOS-only controls on the
    same split (afd.reward.controls), and its human-pair accuracy when it has one."""
    keys = ("eval_accuracy", "eval_auc", "eval_pair_accuracy", "length_only_accuracy", "length_only_auc",
            "length_only_pair_accuracy", "eos_only_accuracy", "eval_truncated_share_positive",
            "eval_truncated_share_negative", "pair_accuracy", "pair_accuracy_untied", "pairs_tied",
            "longer_chosen_accuracy", "prefers_longer")
    return {k: m.get(k) for k in keys}


def rm_table(rms: dict, seeds: int) -> list[str]:
    """Markdown rows: each reward model's held-out accuracy beside its controls (across seeds)."""
    lines = [f"Reward models on held-out prompts (mean [95% interval] over {seeds} seed(s)); the controls are "
             "one-feature classifiers fitted on the same training split: response length in tokens, and "
             "ended-with-EOS (where it varies).", "",
             "| reward model | accuracy | length-only accuracy | EOS-only accuracy | same-prompt pair accuracy | "
             "length-only pair accuracy | cut share (pos / neg) |", "|---|---|---|---|---|---|---|"]
    for name, m in rms.items():
        lines.append(f"| {name} | {ci(m.get('eval_accuracy'))} | {ci(m.get('length_only_accuracy'))} | "
                     f"{ci(m.get('eos_only_accuracy'))} | {ci(m.get('eval_pair_accuracy'))} | "
                     f"{ci(m.get('length_only_pair_accuracy'))} | {ci(m.get('eval_truncated_share_positive'), 2)} / "
                     f"{ci(m.get('eval_truncated_share_negative'), 2)} |")
    return lines


MIN_SEEDS = 3


def saves_result(seeds: list, quick: bool) -> bool:
    """Whether a run's figures go to bench/results: a result needs at least MIN_SEEDS seeds
    and the real settings (not --quick / --smoke); says so when they do not."""
    if quick:
        return False
    if len(seeds) < MIN_SEEDS:
        print(f"not saved to bench/results: {len(seeds)} seed(s); a result needs at least {MIN_SEEDS} "
              f"(--seeds 0,1,2)")
        return False
    return True


def _in_repo(where: str) -> str:
    """A study's YAML path as the record names it: relative to the repository when inside it, so
    that a record does not carry the path of the machine that ran it."""
    try:
        return str(Path(where).resolve().relative_to(REPO))
    except ValueError:
        return where


def save_study(summary: dict, out: str, name: str, **extra) -> Path:
    """An ``afd study`` run's record in bench/results/NAME: study.json (the summary, the machine
    and ``extra``), claims.md and the gold-vs-sqrt(KL) plot copied from where the study wrote them
    (``summary["folder"]``: OUT or OUT/SUMMARY), and each seed's metrics from its folder OUT."""
    import shutil

    dest = RESULTS / name
    dest.mkdir(parents=True, exist_ok=True)
    files = shared_files(out)
    old = json.loads((dest / "study.json").read_text()) if (dest / "study.json").exists() else {}
    earlier = old.get("pools") or {str(s): pools_digest(old.get("shared_files")) for s in old.get("seeds", [])}
    recorded = {str(s) for s in summary.get("recorded_seeds", [])}
    # which draw of the shared files each seed drew on (more than one only with --other-pools)
    pools = {str(s): earlier.get(str(s), "unrecorded") if str(s) in recorded else pools_digest(files)
             for s in summary["seeds"]}
    where = _in_repo(summary["study"])
    record = {**summary, "study": where, "machine": machine(), "shared_files": files, "pools": pools, **extra}
    (dest / "study.json").write_text(json.dumps(record, indent=1) + "\n")
    written = Path(summary.get("folder") or out)
    claims = (written / "claims.md").read_text()
    if claims.startswith(f"# {summary['study']}:"):
        claims = f"# {where}:" + claims[len(f"# {summary['study']}:"):]
    (dest / "claims.md").write_text(claims)
    if len(set(pools.values())) > 1:
        draws = {}
        for seed, digest in pools.items():
            draws.setdefault(digest, []).append(seed)
        with (dest / "claims.md").open("a") as f:
            f.write("\nThe seeds drew on " + str(len(draws)) + " draws of the shared pools (same options, other "
                    "machines: --other-pools): " + "; ".join(f"seeds {', '.join(v)}: {k}" for k, v in draws.items())
                    + ". Within a seed every method shares its pools.\n")
    if (written / "gold_vs_sqrt_kl.png").exists():
        shutil.copy(written / "gold_vs_sqrt_kl.png", dest / "gold_vs_sqrt_kl.png")
    # each seed's metrics of the stages the claims read (per-prompt figures included): the record
    # a claim can be recomputed from without the run folder
    from afd.study import stages_read

    figures = [x["figure"] for c in summary["claims"] for x in [c, *c.get("controls", [])]]
    for seed in summary["seeds"]:
        folder = Path(out) / f"seed-{seed}"
        if str(seed) in recorded:
            continue  # taken from this record: its files are already here
        for stage in sorted(stages_read(figures, (p.name for p in folder.iterdir() if p.is_dir()))):
            src = folder / stage / "metrics.json"
            if src.exists():
                (dest / "seeds" / f"seed-{seed}").mkdir(parents=True, exist_ok=True)
                shutil.copy(src, dest / "seeds" / f"seed-{seed}" / f"{stage}.json")
    return dest


# a shared stage's bookkeeping, not what it made
_NOT_MADE = {"metrics.json", "inputs.json", "config.yaml"}


def shared_files(out: str) -> dict[str, str]:
    """SHA-256 of each file the study's shared stages made (OUT/shared: the gold, the pools), so
    that seeds run in two run folders are decided together only when they drew on the same ones."""
    from afd.runs import file_sha256

    root = Path(out) / "shared"
    found = {}
    for path in sorted(root.rglob("*")) if root.is_dir() else []:
        rel = path.relative_to(root)
        if (path.is_file() and path.name not in _NOT_MADE and not path.name.endswith(".meta.json")
                and not any(part.startswith(".") for part in rel.parts)):
            found[str(rel)] = file_sha256(path)
    return found


def pools_digest(files: dict | None) -> str:
    """One short name for a draw of the shared files (their hashes'), "unrecorded" without any."""
    import hashlib

    if not files:
        return "unrecorded"
    return hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()[:12]


def seeds_on_record(name: str) -> list[int]:
    """The seeds bench/results/NAME/study.json holds (none without one)."""
    path = RESULTS / name / "study.json"
    return [int(s) for s in json.loads(path.read_text()).get("seeds", [])] if path.exists() else []


def recorded_seeds(name: str, skip, other_pools: bool = False) -> callable:
    """For ``afd.study.run_study(recorded=...)``: the seeds bench/results/NAME records (each seed's
    stage metrics, as :func:`save_study` keeps them) except those in ``skip``, checked once the run
    folder's shared stages are made: decided beside new seeds only if every shared file the record
    hashed is the same. Sampling is seeded, but its floating point follows the CPU: another kind
    of machine draws other pools from the same options. A record without hashes, or with other
    pools, is then an error, not a silent mix, unless ``other_pools``: each seed is still its own
    split, draws and training with every method on its pools, so seeds on two draws of pi_0 are
    two honest samples of the same study (their spread in the interval); the record says which
    seed drew on which (``pools``) and claims.md says so."""
    dest = RESULTS / name

    def load(out_dir: Path) -> dict:
        if not (dest / "study.json").exists():
            return {}
        record = json.loads((dest / "study.json").read_text())
        seeds = [s for s in record.get("seeds", []) if str(s) not in {str(x) for x in skip}]
        if not seeds:
            return {}
        old, now = record.get("shared_files"), shared_files(str(out_dir))
        differ = sorted(k for k in set(old or {}) | set(now) if (old or {}).get(k) != now.get(k))
        if other_pools and (not old or differ):
            print(f"seeds {seeds} from {dest}: drawn on other shared pools (--other-pools)")
        elif not old:
            raise SystemExit(f"{dest}/study.json does not say which shared pools its seeds drew on; rerun its "
                             f"seeds ({seeds}) here (--rerun-recorded), or take them anyway (--other-pools)")
        elif differ:
            raise SystemExit(f"the run folder's shared file {differ[0]} is not the one the seeds recorded in {dest} "
                             f"drew on (another machine draws other pools); rerun those seeds ({seeds}) here "
                             f"(--rerun-recorded), or decide them beside these, on other pools (--other-pools)")
        seconds = record.get("seconds", {})
        return {str(s): {"results": {p.stem: json.loads(p.read_text())
                                     for p in sorted((dest / "seeds" / f"seed-{s}").glob("*.json"))},
                         "seconds": seconds.get(str(s))} for s in seeds}

    return load


def run_seeds(out: str, seeds: list[int], data, pipeline, figures) -> dict[str, dict]:
    """Each seed's run in OUT/seed-S (seed = data split, sampling and training): its data
    files ``data(seed_out, seed)``, its stages ``pipeline(seed_out, files, seed)`` run by afd's
    pipeline runner, and its figures ``figures(results, seed_out)``; returns seed -> figures."""
    from afd.pipeline import run

    per_seed = {}
    for seed in seeds:
        seed_out = str(Path(out) / f"seed-{seed}")
        results = run(pipeline(seed_out, data(seed_out, seed), seed),
                      report=lambda name, m: print(f"[seed {seed}: {name}] done in {m.get('seconds', 0):.0f} s",
                                                   flush=True))
        per_seed[str(seed)] = figures(results, Path(seed_out))
    return per_seed


LENGTH_CONTROLS = ("length (longest)", "length (shortest)")


def length_controls(pool_path, ns: list[int]) -> dict:
    """Best-of-N from a pool with the response's length (its token count) as the reward,
    longest first and shortest first (ties share their weight), with the golden reward VADER as
    the eval stage scores it: the control that would explain a reward model's Best-of-N away if
    that model only tracked length. Entries shaped like an eval stage's ``bon`` ones."""
    from afd.bon import bon_curve
    from afd.sampling import read_pool
    from afd import rewards

    rows = read_pool(pool_path)
    golds = rewards.load("vader").score([r["prompt"] for r in rows], [r["response"] for r in rows])
    for r, g in zip(rows, golds):
        r["gold"], r["longest"], r["shortest"] = g, len(r["token_ids"]), -len(r["token_ids"])
    out = {}
    for name, key in zip(LENGTH_CONTROLS, ("longest", "shortest")):
        curve = bon_curve(rows, key, "gold", ns)
        out[name] = {"n": ns, "gold": [curve[n] for n in ns]}
    return out


def with_length_controls(ev: dict, pool_path) -> dict:
    """An eval stage's figures with the length controls added to its ``bon``, on the pool its
    Best-of-N was drawn from, at the same N; checked against the stage (same judge and pool:
    N = 1 is the pool's mean golden reward either way)."""
    proxy = next(iter(ev["bon"]))
    ns = list(ev["bon"][proxy]["n"])
    controls = length_controls(pool_path, ns)
    assert abs(controls[LENGTH_CONTROLS[0]]["gold"][0] - ev["bon"][proxy]["gold"][0]) < 1e-6, \
        f"the length control's pool {pool_path} is not the one the eval's Best-of-N came from"
    return {**ev, "bon": {**ev["bon"], **controls}}


def cut_shares(agg: dict) -> str:
    """The table line: each pool's share of samples cut at max_new_tokens, across seeds."""
    return "Share of samples cut at max_new_tokens: " + ", ".join(
        f"{k} {ci(v, 2)}" for k, v in agg["cut_at_max_new_tokens"].items())
