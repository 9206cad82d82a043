"""Two processes on the CPU (torchrun or accelerate launch, gloo): one writer, one summary, summed counts, and
the pool of a one-process run row for row."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, WORDS, prompt_rows, say_demos, user, write_jsonl


TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# the README's accelerate command for several CPU processes (--cpu would start one)
ACCELERATE = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "0"]


def torchrun(args, cwd, launcher=TORCHRUN, timeout=300, ok=True):
    """Two processes (gloo, one thread each) running ARGS; returns the finished process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.pathsep.join(
        [str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    done = subprocess.run([sys.executable, *launcher, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert (done.returncode == 0) == ok, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def summaries(stdout: str, name: str) -> list[dict]:
    return [json.loads(line[len(name) + 3:]) for line in stdout.splitlines() if line.startswith(f"[{name}] ")]


def same(metrics: dict, printed: dict) -> bool:
    """The printed summary is metrics.json with floats rounded to 4 places."""
    return metrics.keys() == printed.keys() and all(
        round(v, 4) == printed[k] if isinstance(v, float) else v == printed[k] for k, v in metrics.items())


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*.tmp")]


HELPERS = """
import json
from afd import dist
from afd.errors import AfdError

def boom():
    raise AfdError("stopped on the main process")

from afd.rewards import Function
from afd.rl import reward_function

# each rank scores its own share of the batch: rank 0 the rewards 1, 2 and rank 1 the rewards 3, 4
scorer = Function(lambda prompts, responses: [float(r) for r in responses])
store = {}
scaled = reward_function(scorer, 8, "standardize", store)([], [str(2 * dist.rank() + 1), str(2 * dist.rank() + 2)],
                                                         ["[]", "[]"])
try:
    dist.on_main(boom)
    error = None
except AfdError as e:
    error = str(e)
open(f"rank{dist.rank()}.json", "w").write(json.dumps({"rank": dist.rank(), "world": dist.world(), "sum": dist.reduce_sum(dist.rank() + 1),
                  "mean": dist.reduce_mean(float(dist.rank())), "gathered": dist.gather(10 * dist.rank()),
                  "broadcast": dist.broadcast("main" if dist.is_main() else "other"), "error": error,
                  "alone": dist.on_main(lambda: dist.reduce_sum(5)),
                  "mapped": dist.map_sharded(lambda part: [10 * x + dist.rank() for x in part], list(range(5))),
                  "scaled": scaled, "raw_mean": store["mean"], "raw_std": store["std"]}))
"""


def test_helpers_reduce_and_share_the_main_process_decisions(tmp_path):
    (tmp_path / "helpers.py").write_text(HELPERS)
    torchrun(["helpers.py"], tmp_path)
    out = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in out] == [0, 1] and all(r["world"] == 2 for r in out)
    assert all(r["sum"] == 3 and r["mean"] == 0.5 for r in out)
    assert out[0]["gathered"] == [0, 10] and out[1]["gathered"] is None
    assert all(r["broadcast"] == "main" for r in out)
    assert all(r["error"] == "stopped on the main process" for r in out)  # no rank left waiting
    assert all(r["alone"] == 5 for r in out)  # inside on_main the main process works alone
    assert all(r["mapped"] == [0, 11, 20, 31, 40] for r in out)  # items dealt round-robin, results in order
    # RL's reward scale and reward_scaling=standardize are of the whole batch, not a rank's share
    std = (5 / 3) ** 0.5  # rewards 1, 2, 3, 4: mean 2.5, sample variance 5/3
    assert all(r["raw_mean"] == [2.5] and r["raw_std"] == [pytest.approx(std)] for r in out)
    assert out[0]["scaled"] == pytest.approx([-1.5 / std, -0.5 / std])
    assert out[1]["scaled"] == pytest.approx([0.5 / std, 1.5 / std])


def test_sft_on_two_processes_writes_once_and_sums_tokens(tmp_path):
    from afd.sft import SFTConfig, sft

    data = write_jsonl(tmp_path / "demos.jsonl", say_demos())
    opts = ["--data", data, "--epochs", "1", "--batch-size", "4", "--eval-fraction", "0.25", "--lr", "1e-3",
            "--save-steps", "1000", "--device", "cpu"]
    done = torchrun(["-m", "afd", "sft", "--out", "two", *opts], tmp_path)
    printed = summaries(done.stdout, "sft")
    assert len(printed) == 1, done.stdout  # one summary, from the main process
    stage = tmp_path / "two" / "sft"
    m = json.loads((stage / "metrics.json").read_text())
    assert same(m, printed[0]) and m["processes"] == 2
    assert (stage / "model" / "config.json").is_file() and not leftovers(stage)

    one = sft(SFTConfig(out=str(tmp_path / "one"), data=data, epochs=1, batch_size=4, eval_fraction=0.25,
                        lr=1e-3, save_steps=1000, device="cpu"))
    # 24 training demonstrations: 6 steps of 4 in one process, 3 steps of 2 x 4 in two
    assert (one["train_examples"], one["steps"], m["steps"]) == (24, 6, 3)
    assert m["train_tokens"] == one["train_tokens"]  # summed over the ranks, not one rank's
    assert m["response_tokens"] == one["response_tokens"]
    assert 0 < m["train_loss"] < 10 and m["eval_loss_after"] < m["eval_loss_before"]


def test_reward_on_two_processes_of_accelerate_launch_writes_once(tmp_path):
    def pool(name, response):
        return write_jsonl(tmp_path / name, [
            {"prompt_id": w, "prompt": [user(f"Talk about {w}")], "sample_index": i, "response": response(w, i)}
            for w in WORDS[:16] for i in range(2)])

    sft_pool = pool("sft.jsonl", lambda w, i: f"Thank you, the {w} is lovely.")
    init_pool = pool("init.jsonl", lambda w, i: f"{w} {w} ugh bad {i}")
    done = torchrun(["-m", "afd", "reward", "--variant", "init-sft", "--sft-pool", sft_pool, "--init-pool", init_pool,
                     "--out", "run", "--epochs", "4", "--lr", "3e-3", "--batch-size", "8", "--eval-fraction", "0.25",
                     "--max-length", "96", "--max-prompt-length", "64", "--save-steps", "1000", "--device", "cpu"],
                    tmp_path, launcher=ACCELERATE)
    printed = summaries(done.stdout, "reward")
    assert len(printed) == 1, done.stdout
    stage = tmp_path / "run" / "reward"
    m = json.loads((stage / "metrics.json").read_text())
    assert same(m, printed[0]) and not leftovers(stage)
    assert m["train_examples"] == 48 and m["steps"] == 4 * 48 // (2 * 8)  # each rank a half of every epoch
    assert m["eval_auc"] >= 0.9
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(stage / "model").config.num_labels == 1


def test_sample_on_two_processes_is_the_one_process_pool(tmp_path):
    from afd.sampling import SampleConfig, read_pool, sample

    data = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(9))
    opts = dict(data=data, num_samples=3, batch_size=6, max_new_tokens=6, seed=7, device="cpu")
    sample(SampleConfig(out=str(tmp_path / "one"), **opts))
    expected = read_pool(tmp_path / "one" / "sample")

    argv = ["-m", "afd", "sample", "--out", "two"] + [
        a for k, v in opts.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    done = torchrun(argv, tmp_path)
    printed = summaries(done.stdout, "sample")
    assert len(printed) == 1, done.stdout
    stage = tmp_path / "two" / "sample"
    rows = read_pool(stage)
    assert rows == expected and len(rows) == 9 * 3  # row for row, prompts x K
    assert len({(r["prompt_id"], r["sample_index"]) for r in rows}) == len(rows)
    m = json.loads((stage / "metrics.json").read_text())
    assert m["processes"] == 2 and m["new_tokens"] == sum(r["num_tokens"] for r in rows) and not leftovers(stage)

    # rerun with another option: every rank stops (none waits for ever), one says why
    done = torchrun(argv + ["--max-new-tokens", "5"], tmp_path, ok=False)
    assert done.stderr.count("was made with different options (max_new_tokens)") == 1
    assert read_pool(stage) == expected


def test_sample_killed_on_two_processes_resumes_to_the_one_process_pool(tmp_path):
    """SIGKILL both ranks (and torchrun) mid-run; a rerun on two processes completes the pool."""
    from afd.sampling import SampleConfig, read_pool, sample

    data = write_jsonl(tmp_path / "prompts.jsonl", [{"id": f"p-{i:02d}", "prompt": f"Question {i}" + " why" * (i % 4)}
                                                    for i in range(24)])
    opts = dict(data=data, num_samples=2, batch_size=2, max_new_tokens=32, ignore_eos=True, device="cpu")
    argv = ["-m", "afd", "sample", "--out", "two", "--data", data, "--num-samples", "2", "--batch-size", "2",
            "--max-new-tokens", "32", "--ignore-eos", "--device", "cpu"]
    pool = tmp_path / "two" / "sample" / "pool.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, *TORCHRUN, *argv], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # one prompt a batch, two batches a round
        if pool.exists() and pool.read_bytes().count(b"\n") >= 6:
            break
        time.sleep(0.005)
    import psutil

    ranks = psutil.Process(proc.pid).children(recursive=True)  # torchrun gives them sessions of their own
    for p in [*ranks, psutil.Process(proc.pid)]:
        p.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    psutil.wait_procs(ranks, timeout=30)
    assert not (pool.parent / "metrics.json").exists(), "the run finished before it was killed"
    at_kill = read_pool(pool, tolerate_truncation=True)

    sample(SampleConfig(out=str(tmp_path / "one"), **opts))
    expected = read_pool(tmp_path / "one" / "sample")
    assert 0 < len(at_kill) < len(expected) and at_kill == expected[:len(at_kill)]  # a prefix, in order
    torchrun(argv, tmp_path)
    assert read_pool(pool) == expected and len(expected) == 24 * 2
    complete = len(at_kill) - len(at_kill) % 2
    assert json.loads((pool.parent / "metrics.json").read_text())["resumed_rows"] == complete


# torchrun's way of starting a worker, in a session of its own (torch.distributed.elastic's
# SubprocessHandler: start_new_session=True), out of reach of a kill of the launcher's group
LAUNCHER = """
import os, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-m", "afd", *sys.argv[1:]], start_new_session=True,
                          env={**os.environ, "LOCAL_RANK": "0"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(worker.pid, flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has ended: its parent (init, here) has not yet reaped it


def test_workers_end_when_their_launcher_is_killed(tmp_path, make_jsonl):
    """kill -9 of the launcher's process group: its worker, in another session, notices its
    launcher is gone and ends (otherwise it would sample on to the end)."""
    data = make_jsonl("prompts.jsonl", [{"id": f"p-{i}", "prompt": f"Question {i}"} for i in range(64)])
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, "sample", "--data", data, "--device", "cpu",
                                 "--num-samples", "2", "--batch-size", "2", "--max-new-tokens", "200",
                                 "--out", str(tmp_path / "run")],
                                cwd=tmp_path, stdout=subprocess.PIPE, text=True, start_new_session=True)
    worker = int(launcher.stdout.readline())
    pool = tmp_path / "run" / "sample" / "pool.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (pool.exists() and pool.stat().st_size):  # the worker is at work
        time.sleep(0.05)
    assert alive(worker), "the worker ended before its launcher was killed"
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait(timeout=30)
    deadline = time.time() + 20
    while time.time() < deadline and alive(worker):
        time.sleep(0.1)
    if alive(worker):
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the worker outlived its launcher")
    assert not (tmp_path / "run" / "sample" / "metrics.json").exists()  # it stopped, it did not finish
