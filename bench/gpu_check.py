"""The GPU check (issue 26): afd's GPU paths verified by one prepared command, in under 8 minutes.

    make gpu-wheels     # here, once (PyPI): the wheels a bare GPU machine may lack -> .gpu-wheels/
    make gpu-check      # on the GPU machine, with the working tree and .gpu-wheels/ only

``make gpu-check`` runs ``python3 bench/gpu_check.py``: four steps, each in a child process with its
own time limit (LIMITS_S, together under BUDGET_S), each recorded whether it worked or not:

1. install: afd (editable) and whatever of its dependencies the machine lacks, from .gpu-wheels/
   alone (``pip --no-index``), with torch and transformers held at the machine's own versions;
2. tests: ``pytest -m gpu`` (tests/test_gpu.py): each test's outcome and what it measured;
3. figures: the matmul ceiling in fp32 and bf16; afd's sampler against a plain ``generate`` on the
   same batch, in bf16 and fp32, on a model of SmolLM2-135M's shape with random weights; and
   ``afd sft``'s tokens/s on that model;
4. report: ``gpu-<gpu>.json`` and ``.md`` in ``--out`` ($OUT if set, else bench/results), the
   table printed.

``--dry-run`` runs the same steps on the CPU with tiny sizes (the gpu tests then all skip);
tests/test_gpu_check.py runs it in ``make test``, installing into a throwaway venv from a folder
of one made-up wheel, so that the command cannot rot.

The wheels travel packed, ``NAME.whl.xz``: each wheel rewritten with its files stored
uncompressed (the same files, RECORD included, so pip checks the same hashes), then
xz-compressed; about a third smaller than the wheel's own deflate, which is what keeps the folder
under the 64 MiB a device call carries. Only the standard library is imported before the install.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".gpu-wheels"
PINS = Path(__file__).resolve().with_name("gpu-wheels.txt")
CARRY_LIMIT = 64 * 2 ** 20  # what one device call carries: the working tree and the wheels together
# the GPU machine: CPython 3.12, glibc 2.28 or later (torch 2.11's own wheels need it), x86-64
TARGET = ["--only-binary", ":all:", "--python-version", "3.12", "--implementation", "cp",
          "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64"]
BUDGET_S = 480
LIMITS_S = {"install": 60, "tests": 240, "figures": 150}
HELD = ("torch", "transformers")  # on the machine; never replaced by the install
# what the GPU machine has besides (numpy, pyyaml and tqdm come with transformers, psutil with
# accelerate): afd's dependencies that are none of these must be in PINS
ON_THE_MACHINE = (*HELD, "accelerate", "peft", "scikit-learn", "pytest", "numpy", "pyyaml", "tqdm", "psutil")

# SmolLM2-135M(-Instruct)'s config.json shape; the weights are random (nothing is downloaded)
SMOLLM2_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0,
                     rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
TINY_SHAPE = dict(SMOLLM2_SHAPE, vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
SIZES = {
    # sampling: P prompts x K samples x T new tokens, EOS ignored, one batch of P x K sequences;
    # SFT: STEPS steps of BATCH sequences of LENGTH tokens
    "full": dict(shape=SMOLLM2_SHAPE, matmul_n=8192, prompts=16, k=16, prompt_tokens=64, new_tokens=128, rounds=2,
                 sft_batch=8, sft_length=512, sft_steps=10),
    "tiny": dict(shape=TINY_SHAPE, matmul_n=128, prompts=2, k=2, prompt_tokens=8, new_tokens=4, rounds=1,
                 sft_batch=2, sft_length=64, sft_steps=2),
}


# --------------------------------------------------------------------------- wheels

def pack(wheel: Path, folder: Path) -> Path:
    """``wheel`` as ``folder/NAME.whl.xz``: its members stored uncompressed, then xz (kept if there)."""
    out = folder / f"{wheel.name}.xz"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        stored = Path(tmp) / wheel.name
        with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as dst:
            for info in src.infolist():
                member = zipfile.ZipInfo(info.filename, info.date_time)
                member.external_attr, member.create_system = info.external_attr, info.create_system
                dst.writestr(member, src.read(info), zipfile.ZIP_STORED)
        part = out.with_name(out.name + ".part")
        with open(stored, "rb") as f, lzma.open(part, "wb", preset=9) as xz:
            shutil.copyfileobj(f, xz, 1 << 20)
        os.replace(part, out)
    return out


def unpack(folder: Path, dest: Path) -> list[str]:
    """The wheels of ``folder`` (packed ``*.whl.xz`` or plain ``*.whl``) as plain wheels in ``dest``."""
    names = []
    for path in sorted(folder.glob("*.whl.xz")):
        with lzma.open(path) as src, open(dest / path.name[:-3], "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        names.append(path.name[:-3])
    for path in sorted(folder.glob("*.whl")):
        shutil.copy(path, dest / path.name)
        names.append(path.name)
    return names


def tracked_bytes() -> int:
    """Size of the working tree's tracked files: what travels with the wheels."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True).stdout.split("\0")
    return sum((REPO / n).stat().st_size for n in names if n and (REPO / n).is_file())


def prepare(pins: Path = PINS, folder: Path = WHEELS) -> int:
    """``make gpu-wheels``: download the pinned wheels for the GPU machine and pack them into ``folder``."""
    folder.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, "-r", str(pins),
                        *TARGET], check=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        packed = [pack(w, folder) for w in wheels]
        rows = [(w.name, w.stat().st_size, p.stat().st_size) for w, p in zip(wheels, packed)]
    for old in set(folder.glob("*.whl.xz")) - set(packed):
        old.unlink()
    total, tree = sum(r[2] for r in rows), tracked_bytes()
    for name, size, xz in rows:
        print(f"{xz / 2 ** 20:7.2f} MiB  (wheel {size / 2 ** 20:6.2f})  {name}")
    print(f"{total / 2 ** 20:7.2f} MiB in {folder} ({len(rows)} wheels), + {tree / 2 ** 20:.2f} MiB of tracked files: "
          f"{(total + tree) / 2 ** 20:.2f} of the {CARRY_LIMIT // 2 ** 20} MiB a device call carries")
    if total + tree > CARRY_LIMIT:
        print(f"{folder} and the working tree are over the {CARRY_LIMIT // 2 ** 20} MiB a device call carries: "
              f"drop wheels from {pins}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- the steps

PROBE = """import importlib.metadata as m, json, os, sys, sysconfig
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return None
print(json.dumps({"venv": sys.prefix != sys.base_prefix,
                  "managed": os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")),
                  "writable": os.access(sysconfig.get_paths()["purelib"], os.W_OK),
                  "versions": {n: version(n) for n in %r}}))
"""


def bounded(cmd: list[str], log: Path, limit: float, env: dict | None = None) -> tuple[int | None, float]:
    """Run ``cmd`` (its output appended to ``log``) for at most ``limit`` seconds: (exit code, or
    None when it was stopped at the limit; seconds). A stopped command's process group is killed."""
    start = time.time()
    with open(log, "a") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        try:
            rc = proc.wait(timeout=max(limit, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    return rc, time.time() - start


def pip_command(python: str) -> list[str]:
    """pip acting on ``python``'s environment (this pip, pointed at it, when it is another interpreter)."""
    if Path(python).resolve() == Path(sys.executable).resolve():
        return [python, "-m", "pip"]
    return [sys.executable, "-m", "pip", "--python", python]


def install(python: str, wheels: Path, extra: list[str], log: Path, limit: float) -> dict:
    """afd (editable) and whatever ``python`` lacks of its dependencies and of ``extra``, offline
    from ``wheels``; the held packages stay at the versions ``python`` has."""
    start = time.time()
    env = json.loads(subprocess.run([python, "-c", PROBE % (HELD,)], capture_output=True, text=True,
                                    check=True).stdout)
    if not env["versions"]["torch"]:
        return {"ok": False, "seconds": 0.0, "detail": f"{python} has no torch: point --python (make gpu-check "
                                                       f"GPU_PY=...) at the interpreter that has the GPU's torch"}
    if not wheels.is_dir():
        return {"ok": False, "seconds": 0.0, "detail": f"wheel folder {wheels} does not exist: run `make gpu-wheels` "
                                                       f"before the GPU machine is started"}
    with tempfile.TemporaryDirectory() as tmp:
        found = unpack(wheels, Path(tmp))
        constraints = Path(tmp) / "held.txt"
        constraints.write_text("".join(f"{n}=={v}\n" for n, v in env["versions"].items() if v))
        flags = ["install", "--no-index", "--find-links", tmp, "-c", str(constraints), "--no-build-isolation",
                 "--disable-pip-version-check"]
        if env["managed"] and not env["venv"]:
            flags.append("--break-system-packages")
        if not env["writable"]:
            flags.append("--user")
        rc = 0
        # setuptools first: the editable build below uses the machine's own (--no-build-isolation),
        # and before 70.1 it would also need the wheel package
        for args in (["setuptools>=70.1"], ["-e", str(REPO), *extra]):
            left = limit - (time.time() - start)
            rc, _ = bounded([*pip_command(python), *flags, *args], log, left)
            if rc != 0:
                break
    text = log.read_text()
    installed = [w for line in re.findall(r"^Successfully installed (.+)$", text, re.M) for w in line.split()]
    detail = f"{len(found)} wheels in {wheels.name}; installed: {', '.join(installed) or 'nothing'}"
    if rc != 0:
        last = [x for x in text.splitlines() if x.startswith("ERROR")] or text.splitlines()[-1:]
        detail = ("stopped at its limit" if rc is None else f"pip failed: {last[-1] if last else rc}") + f" ({detail})"
    return {"ok": rc == 0, "seconds": round(time.time() - start, 1), "limit": limit, "installed": installed,
            "held": {n: v for n, v in env["versions"].items()}, "detail": detail}


OUTCOME = re.compile(r"^tests/(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)", re.M)


def run_tests(python: str, out: Path, limit: float) -> dict:
    """``pytest -m gpu``: each test's outcome, the summary line, and what the tests measured."""
    log, facts = out / "gpu-tests.log", out / "gpu-facts.jsonl"
    for f in (log, facts):
        f.unlink(missing_ok=True)
    # a test module that fails to import (a dev-only package missing there) is reported, and the
    # gpu tests still run
    rc, seconds = bounded([python, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider",
                           "--continue-on-collection-errors", "tests"], log, limit, {"AFD_GPU_FACTS": str(facts)})
    text = log.read_text()
    outcomes = dict(OUTCOME.findall(text))
    counts = {k: sum(v == k for v in outcomes.values()) for k in ("PASSED", "FAILED", "ERROR", "SKIPPED")}
    summary = re.findall(r"^=+ (.+ in [\d.]+s.*?) =+$", text, re.M)
    return {"ok": rc == 0 and not counts["FAILED"] and not counts["ERROR"], "seconds": round(seconds, 1),
            "limit": limit, "exit_code": rc, "counts": {k.lower(): v for k, v in counts.items()}, "outcomes": outcomes,
            "summary": summary[-1] if summary else ("stopped at its limit" if rc is None else f"exit code {rc}"),
            "facts": [json.loads(x) for x in facts.read_text().splitlines()] if facts.exists() else []}


def run_figures(python: str, out: Path, device: str, size: str, limit: float) -> dict:
    """The figures, taken in a child process that saves what it has after each part."""
    path = out / "gpu-figures.json"
    path.unlink(missing_ok=True)
    rc, seconds = bounded([python, str(Path(__file__).resolve()), "figures", "--json", str(path), "--device", device,
                           "--size", size], out / "gpu-figures.log", limit, {"HF_HUB_OFFLINE": "1"})
    figs = json.loads(path.read_text()) if path.exists() else {}
    done = all(k in figs for k in ("matmul_tflops", "sampler", "sft"))
    return {"ok": rc == 0 and done, "seconds": round(seconds, 1), "limit": limit, "exit_code": rc,
            "detail": "" if rc == 0 else ("stopped at its limit" if rc is None else f"exit code {rc}: see gpu-figures.log"),
            "figures": figs}


# --------------------------------------------------------------------------- the figures (in the child)

def random_model(shape: dict, device: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**shape))
    return model.eval()


def timed(fn, rounds: int, device: str) -> dict:
    """fn() -> tokens; one warm-up call on the same shapes, then the median tokens/s of ``rounds``."""
    import torch

    fn()
    rates, tokens = [], 0
    for _ in range(rounds):
        if device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        tokens = fn()
        if device != "cpu":
            torch.cuda.synchronize()
        rates.append(tokens / (time.perf_counter() - t))
    return {"tokens": tokens, "tokens_per_second": sorted(rates)[len(rates) // 2], "rounds": rounds}


def sampler_figures(model, size: dict, device: str, ceiling: dict) -> list[dict]:
    """afd's HFEngine and a plain ``generate`` (the prompts left-padded in one batch,
    ``num_return_sequences=K``), the same prompts, K and T, EOS ignored, in fp32 and then bf16."""
    from types import SimpleNamespace

    import torch

    from afd import models
    from afd.sampling import HFEngine, row_seed

    g = torch.Generator().manual_seed(0)
    p, k, t = size["prompts"], size["k"], size["new_tokens"]
    lengths = torch.randint(size["prompt_tokens"] // 2, size["prompt_tokens"] + 1, (p,), generator=g).tolist()
    prompts = [torch.randint(3, size["shape"]["vocab_size"], (n,), generator=g).tolist() for n in lengths]
    seeds = [[row_seed(0, str(i), j) for j in range(k)] for i in range(p)]
    params = sum(x.numel() for x in model.parameters())

    def afd_engine(m):
        engine = HFEngine(m, SimpleNamespace(pad_token_id=0), [2], warm_up=False)
        return lambda: sum(len(c.token_ids) for row in engine.generate(prompts, seeds, t, ignore_eos=True) for c in row)

    @torch.inference_mode()
    def plain(m):
        ids, mask, _ = models.left_padded(prompts, 0, device)
        out = m.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                         max_new_tokens=t, min_new_tokens=t, num_return_sequences=k, pad_token_id=0)
        return (out.shape[1] - ids.shape[1]) * out.shape[0]

    rows = []
    for dtype, torch_dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model.to(torch_dtype)
        for engine, fn in (("afd", afd_engine(model)), ("generate", lambda: plain(model))):
            r = timed(fn, size["rounds"], device)
            r["share_of_matmul_ceiling"] = 2 * params * r["tokens_per_second"] / (ceiling[dtype] * 1e12)
            rows.append({"engine": engine, "dtype": dtype, **r})
    return rows


def sft_figures(folder: str, size: dict, device: str, ceiling: dict, params: int) -> list[dict]:
    """``afd sft`` on the random model: its own train_tokens_per_second (the whole train() call)."""
    import torch

    from afd import models
    from afd.sft import SFTConfig, sft

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        text = " ".join(f"word{i % 97}" for i in range(size["sft_length"]))  # longer than max_length: cut
        data = Path(tmp) / "demos.jsonl"
        data.write_text("".join(json.dumps({"prompt": f"Write {i}", "completion": text}) + "\n"
                                for i in range(size["sft_batch"] * size["sft_steps"])))
        for dtype in ("auto", "float32"):
            m = sft(SFTConfig(out=f"{tmp}/{dtype}", model=folder, data=str(data), max_steps=size["sft_steps"],
                              batch_size=size["sft_batch"], max_length=size["sft_length"], max_prompt_length=40,
                              eval_fraction=0.0, save_steps=10 ** 6, logging_steps=1, lr=1e-4, device=device,
                              dtype=dtype))
            mixed = dtype == "auto" and models.pick_dtype("auto", torch.device(device)) == torch.bfloat16
            rate = m["train_tokens_per_second"]
            rows.append({"dtype": dtype, "precision": "bf16 mixed" if mixed else "fp32", "steps": m["steps"],
                         "batch_size": size["sft_batch"], "max_length": size["sft_length"], "tokens": m["train_tokens"],
                         "tokens_per_second": rate,
                         "share_of_matmul_ceiling": 6 * params * rate / (ceiling["bf16" if mixed else "fp32"] * 1e12)})
    return rows


def figures(path: Path, device: str, size_name: str) -> None:
    import torch
    from transformers.utils import logging as hf_logging

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import machine, matmul_gflops

    hf_logging.set_verbosity_error()
    size = SIZES[size_name]
    result = {"size": size_name, "device": device, "machine": machine()}
    if device == "cuda":
        result["machine"].update(cuda=torch.version.cuda, gpu_memory_gib=round(
            torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1))

    def save():
        path.write_text(json.dumps(result, indent=1) + "\n")

    save()
    ceiling = {name: matmul_gflops(size["matmul_n"], dtype=dt, device=device) / 1000
               for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    result["matmul_tflops"] = {**ceiling, "n": size["matmul_n"]}
    save()
    model = random_model(size["shape"], device)
    params = sum(x.numel() for x in model.parameters())
    result["model"] = {"shape": "SmolLM2-135M" if size_name == "full" else "tiny-random", "parameters": params,
                       "weights": "random", **{k: size["shape"][k] for k in ("num_hidden_layers", "hidden_size",
                                                                             "vocab_size")}}
    with tempfile.TemporaryDirectory() as folder:
        from afd import models

        model.save_pretrained(folder)  # fp32, for afd sft (with tiny-random's byte-level tokenizer)
        models.load_tokenizer("tiny-random").save_pretrained(folder)
        workload = {k: size[k] for k in ("prompts", "k", "prompt_tokens", "new_tokens")}
        result["sampler"] = {"workload": workload, "arms": sampler_figures(model, size, device, ceiling)}
        save()
        del model
        result["sft"] = sft_figures(folder, size, device, ceiling, params)
    save()


# --------------------------------------------------------------------------- the report

def check_report(r: dict) -> list[str]:
    """What is missing or mistyped in a report (empty when it has the documented shape)."""
    problems = []

    def need(obj, key, kind, where):
        if not isinstance(obj, dict) or not isinstance(obj.get(key), kind):
            problems.append(f"{where}.{key} is not a {kind.__name__ if isinstance(kind, type) else kind}")
            return None
        return obj[key]

    num = (int, float)
    for key, kind in (("schema", int), ("dry_run", bool), ("machine", dict), ("steps", dict), ("figures", dict),
                      ("total_seconds", num), ("budget_seconds", int), ("limits_seconds", dict)):
        need(r, key, kind, "report")
    for step in LIMITS_S:
        s = need(r.get("steps"), step, dict, "steps")
        if s is not None:
            need(s, "ok", bool, f"steps.{step}")
            need(s, "seconds", num, f"steps.{step}")
    tests = r.get("steps", {}).get("tests", {})
    need(tests, "counts", dict, "steps.tests")
    need(tests, "facts", list, "steps.tests")
    figs = r.get("figures", {})
    mm = need(figs, "matmul_tflops", dict, "figures")
    for dtype in ("fp32", "bf16"):
        if mm is not None and not (isinstance(mm.get(dtype), num) and mm[dtype] > 0):
            problems.append(f"figures.matmul_tflops.{dtype} is not a positive number")
    sampler = need(figs, "sampler", dict, "figures")
    arms = need(sampler, "arms", list, "figures.sampler") if sampler is not None else None
    if arms is not None and sorted((a.get("engine"), a.get("dtype")) for a in arms) != sorted(
            (e, d) for e in ("afd", "generate") for d in ("fp32", "bf16")):
        problems.append("figures.sampler.arms are not afd and generate, each in fp32 and bf16")
    for row in (arms or []) + (figs.get("sft") if isinstance(figs.get("sft"), list) else []):
        for key in ("tokens_per_second", "share_of_matmul_ceiling"):
            if not (isinstance(row.get(key), num) and row[key] > 0):
                problems.append(f"a figure's {key} is not a positive number: {row}")
    if not isinstance(figs.get("sft"), list) or len(figs["sft"]) != 2:
        problems.append("figures.sft is not a list of two runs (auto, float32)")
    return problems


def slug(machine: dict, dry_run: bool) -> str:
    if dry_run:
        return "gpu-dry-run"
    found = re.search(r"\b([A-Z]+\d+[A-Za-z]*)\b", machine.get("gpu", ""))
    return f"gpu-{found.group(1).lower() if found else 'cuda'}"


def fmt(x, spec: str = ".1f") -> str:
    return "–" if x is None else format(x, spec)


def markdown(r: dict) -> str:
    m, figs, steps = r["machine"], r["figures"], r["steps"]
    where = m.get("gpu") or (f"CPU ({m['cpu']})" if m.get("cpu") else "a machine the figures did not describe")
    where += ", dry run" if r["dry_run"] else ""
    lines = [f"# GPU check: {where}", "",
             f"`make gpu-check` (bench/gpu_check.py{' --dry-run' if r['dry_run'] else ''}) on {where}: torch "
             f"{m.get('torch')}" + (f" (CUDA {m['cuda']})" if m.get("cuda") else "") + f", transformers "
             f"{m.get('transformers')}, Python {m.get('python')}; {r['date']}. Total {r['total_seconds']:.0f} s of the "
             f"{r['budget_seconds']} s budget.", "",
             "| step | worked | seconds | limit | detail |", "|---|---|---|---|---|"]
    for name, s in steps.items():
        detail = s.get("summary") or s.get("detail") or ""
        lines.append(f"| {name} | {'yes' if s.get('ok') else 'no'} | {fmt(s.get('seconds'), '.0f')} | "
                     f"{r['limits_seconds'][name]} | {detail} |")
    failed = [t for t, o in steps.get("tests", {}).get("outcomes", {}).items() if o in ("FAILED", "ERROR")]
    if failed:
        lines += ["", "Failed: " + ", ".join(f"`{t}`" for t in failed) + " (gpu-tests.log)."]
    mm = figs.get("matmul_tflops")
    if mm:
        lines += ["", f"Matmul ceiling ({mm['n']}^2, best of 3): fp32 {mm['fp32']:.1f} TFLOP/s, "
                      f"bf16 {mm['bf16']:.1f} TFLOP/s."]
    sampler = figs.get("sampler")
    if sampler:
        w, model = sampler["workload"], figs.get("model", {})
        lines += ["", f"Sampling: {model.get('shape')}'s shape ({model.get('parameters', 0) / 1e6:.1f}M parameters, "
                      f"random weights), {w['prompts']} prompts of {w['prompt_tokens'] // 2} to {w['prompt_tokens']} tokens "
                      f"x K={w['k']} x {w['new_tokens']} new tokens (EOS ignored), one batch; median of "
                      f"{sampler['arms'][0]['rounds']} round(s) after a warm-up. Share of ceiling: 2 x parameters "
                      f"FLOPs a token against the matmul rate of the dtype.", "",
                  "| engine | dtype | tokens/s | share of matmul ceiling |", "|---|---|---|---|"]
        for a in sampler["arms"]:
            name = "afd HFEngine" if a["engine"] == "afd" else "plain `generate` (num_return_sequences=K)"
            lines.append(f"| {name} | {a['dtype']} | {a['tokens_per_second']:,.0f} | "
                         f"{a['share_of_matmul_ceiling']:.2%} |")
    if figs.get("sft"):
        s0 = figs["sft"][0]
        lines += ["", f"`afd sft` on the same model: {s0['steps']} steps of {s0['batch_size']} x {s0['max_length']} "
                      f"tokens; afd's train_tokens_per_second (the whole train() call, first step included). Share of "
                      f"ceiling: 6 x parameters FLOPs a token.", "",
                  "| dtype | precision | tokens/s | share of matmul ceiling |", "|---|---|---|---|"]
        for s in figs["sft"]:
            lines.append(f"| {s['dtype']} | {s['precision']} | {s['tokens_per_second']:,.0f} | "
                         f"{s['share_of_matmul_ceiling']:.2%} |")
    facts = steps.get("tests", {}).get("facts", [])
    if facts:
        lines += ["", "What the gpu tests measured (tests/test_gpu.py):", ""]
        lines += [f"- `{f['test']}`: " + json.dumps({k: v for k, v in f.items() if k not in ("test", "device")})
                  for f in facts]
    return "\n".join(lines) + "\n"


def check(args) -> int:
    """install, tests, figures, report: the whole command."""
    started = time.time()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    device, size = ("cpu", "tiny") if args.dry_run else ("cuda", "full")
    python = args.python or sys.executable
    (out / "gpu-install.log").unlink(missing_ok=True)
    steps = {"install": install(python, Path(args.wheels), args.extra, out / "gpu-install.log", LIMITS_S["install"])}
    print(f"[gpu-check] install: {steps['install']['detail']} ({steps['install']['seconds']:.0f} s)", flush=True)
    steps["tests"] = run_tests(python, out, LIMITS_S["tests"])
    print(f"[gpu-check] tests: {steps['tests']['summary']} ({steps['tests']['seconds']:.0f} s)", flush=True)
    figs = run_figures(python, out, device, size, LIMITS_S["figures"])
    steps["figures"] = {k: v for k, v in figs.items() if k != "figures"}
    print(f"[gpu-check] figures: {'done' if figs['ok'] else figs['detail']} ({figs['seconds']:.0f} s)", flush=True)
    figures_ = figs["figures"]
    report = {"schema": 1, "dry_run": args.dry_run, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": figures_.pop("machine", {"python": sys.version.split()[0]}), "budget_seconds": BUDGET_S,
              "limits_seconds": LIMITS_S, "steps": steps, "figures": figures_,
              "total_seconds": round(time.time() - started, 1)}
    name = slug(report["machine"], args.dry_run)
    (out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / f"{name}.md").write_text(markdown(report))
    print(markdown(report))
    problems = check_report(report)
    for p in problems:
        print(f"[gpu-check] report: {p}", file=sys.stderr)
    print(f"[gpu-check] wrote {out / name}.json and .md in {report['total_seconds']:.0f} s", flush=True)
    return 0 if all(s["ok"] for s in steps.values()) and not problems else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", nargs="?", default="check", choices=("check", "wheels", "figures"),
                    help="check (default): install, tests, figures, report; wheels: fill .gpu-wheels (here)")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "bench" / "results"),
                    help="folder for the report (default: $OUT if set, else bench/results)")
    ap.add_argument("--wheels", default=str(WHEELS), help="the wheel folder make gpu-wheels filled")
    ap.add_argument("--python", default=None, help="the interpreter to install into and test with (default: this one)")
    ap.add_argument("--extra", nargs="*", default=["pytest", "psutil"], help="packages the check needs beside afd")
    ap.add_argument("--dry-run", action="store_true", help="on the CPU with tiny sizes: everything but CUDA")
    ap.add_argument("--json", help="(figures) where the child writes its figures")
    ap.add_argument("--device", default="cuda", help="(figures) cuda or cpu")
    ap.add_argument("--size", default="full", choices=tuple(SIZES), help="(figures) full or tiny")
    args = ap.parse_args(argv)
    if args.command == "wheels":
        return prepare(folder=Path(args.wheels))
    if args.command == "figures":
        figures(Path(args.json), args.device, args.size)
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
