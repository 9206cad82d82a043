"""bench/sampling.py's pure parts and bench/peer_worker.py's protocol, without any engine."""

import io
import json
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import peer_worker  # noqa: E402
import sampling as bench  # noqa: E402  (bench/sampling.py, not afd.sampling)

# What `llama-batched-bench -m smollm2-135m-instruct-fp32.gguf -c 4096 -b 512 -ub 512 -npp 48 -ntg 16
# -npl 16 -pps -t 1 -tb 1 -ctk f32 -ctv f32 --output-format jsonl` printed here (llama.cpp 0.5.0-dev,
# commit 0c1e570, vendored by llama-cpp-python 0.3.36; stderr was empty)
BATCHED_BENCH_OUTPUT = """\
{"n_kv_max": 4096, "n_batch": 512, "n_ubatch": 512, "flash_attn": -1, "is_pp_shared": 1, "n_gpu_layers": -1, "n_threads": 1, "n_threads_batch": 1, "pp": 48, "tg": 16, "pl": 16, "n_kv": 1024, "t_pp": 0.544564, "speed_pp": 88.143906, "t_tg": 4.254192, "speed_tg": 60.175941, "t": 4.798756, "speed": 63.349754}
"""


def test_parse_batched_bench_reads_its_result_line():
    fig = peer_worker.parse_batched_bench(BATCHED_BENCH_OUTPUT)
    assert (fig["pp"], fig["tg"], fig["pl"], fig["is_pp_shared"]) == (48, 16, 16, 1)
    assert fig["t_tg"] == pytest.approx(4.254192) and fig["speed_tg"] == pytest.approx(16 * 16 / 4.254192, rel=1e-5)
    # in markdown mode it logs lines like these first; the result line is still found
    logged = "main: n_kv_max = 4096, n_batch = 512, n_ubatch = 512, flash_attn = -1\n\n" + BATCHED_BENCH_OUTPUT
    assert peer_worker.parse_batched_bench(logged) == fig
    with pytest.raises(ValueError, match="no llama-batched-bench result"):
        peer_worker.parse_batched_bench("llama_context: n_ctx_seq = 256\nerror: failed to load model\n")


def test_summary_medians_shares_ratios_and_absent_peers():
    rates = {"afd_fp32": [100.0, 200.0, 600.0], "afd_bf16": [400.0, 600.0], "naive_fp32": [50.0],
             "vllm_fp32": [80.0, 120.0, 100.0]}
    meta = {"vllm_fp32": {"startup_seconds": 61.0, "version": "vllm 0.32.0"}}
    absent = {"vllm_bf16": "not installed", "llamacpp_fp32": "no GGUF file x.gguf"}
    # 2 x 1e8 FLOPs per token against 100 and 200 GFLOP/s: 500 and 1000 tokens/s at the ceiling
    s = bench.summarise(rates, meta, absent, {"fp32": 100.0, "bf16": 200.0}, 2e8)
    e = s["engines"]
    assert e["afd_fp32"]["tokens_per_second"] == 200.0  # median of 3 rounds, not the mean (300) nor the last
    assert e["afd_bf16"]["tokens_per_second"] == 500.0  # median of 2: their mean
    assert e["afd_fp32"]["share_of_ceiling"] == pytest.approx(200 / 500)
    assert e["afd_bf16"]["share_of_ceiling"] == pytest.approx(500 / 1000)  # against the bf16 ceiling
    assert e["vllm_fp32"]["startup_seconds"] == 61.0 and e["vllm_fp32"]["version"] == "vllm 0.32.0"
    assert s["afd_vs_vllm_fp32"] == pytest.approx(2.0)
    # a peer that did not run: null figures, its reason, and null ratios
    assert e["vllm_bf16"] == {"tokens_per_second": None, "per_round": [], "share_of_ceiling": None,
                              "startup_seconds": None, "version": None, "reason": "not installed"}
    assert s["afd_vs_vllm_bf16"] is None and s["afd_vs_llamacpp_fp32"] is None and s["afd_vs_llamacpp_bf16"] is None
    assert json.loads(json.dumps(s)) == s  # goes into the results file as it is


def test_paired_delta_and_its_standard_error_over_prompts():
    fp32 = [[0.0, 0.2], [0.5, 0.5], [1.0, 0.0]]
    bf16 = [[0.2, 0.4], [0.5, 0.3], [1.0, 0.3]]
    # per-prompt mean differences 0.2, -0.1, 0.15: mean 0.25 / 3, sd over 3 prompts
    d = bench.paired_delta(fp32, bf16)
    per = [0.2, -0.1, 0.15]
    mean = sum(per) / 3
    sd = (sum((x - mean) ** 2 for x in per) / 2) ** 0.5
    assert d["mean"] == pytest.approx(mean) and d["se"] == pytest.approx(sd / 3 ** 0.5) and d["prompts"] == 3
    assert bench.paired_delta([[0.1]], [[0.4]])["se"] is None


def test_first_stop_cuts_before_the_first_stop_token():
    assert bench.first_stop([5, 6, 2, 7, 2], {2}) == [5, 6]
    assert bench.first_stop([5, 6, 7], {2, 3}) == [5, 6, 7]
    assert bench.first_stop([3, 5], {2, 3}) == []


def test_worker_protocol_times_each_request_and_stops_on_quit():
    class Engine:
        def __init__(self):
            self.calls = []

        def generate(self, prompts, k, new_tokens, seed):
            self.calls.append((prompts, k, new_tokens, seed))
            return len(prompts) * k * new_tokens

    engine, out = Engine(), io.StringIO()
    requests = [json.dumps({"prompts": [[1, 2], [3]], "k": 4, "new_tokens": 8, "seed": 7}), "",
                json.dumps({"quit": True}), json.dumps({"prompts": [[1]], "k": 1, "new_tokens": 1})]
    peer_worker.serve(engine, iter(line + "\n" for line in requests), out)
    replies = [json.loads(line) for line in out.getvalue().splitlines()]
    assert engine.calls == [([[1, 2], [3]], 4, 8, 7)]  # nothing after quit
    assert len(replies) == 1 and replies[0]["tokens"] == 64 and replies[0]["seconds"] >= 0


def test_absent_peers_have_reasons(tmp_path, monkeypatch):
    class Args:
        peers, threads, batch_size, new_tokens = "all", 1, 16, 8
        vllm_python, llamacpp_python = None, None
        llamacpp_bin, gguf_dir = None, str(tmp_path)

    # no .venv-vllm, no GGUF files, no built binary: nothing starts and each arm says why
    monkeypatch.setattr(bench, "REPO", tmp_path)
    monkeypatch.setattr(bench, "PEERS_DIR", tmp_path / ".peers")
    arms, absent = bench.start_peers(Args, None, [[1, 2]], 10, tmp_path)
    assert arms == {}
    assert set(absent) == {f"{p}_{d}" for p in bench.PEERS for d in bench.DTYPES}
    assert absent["vllm_fp32"].startswith("not installed") and "no GGUF file" in absent["llamacpp_bf16"]
    assert absent["llamacpp-bench_fp32"].startswith("not built")


def test_batched_bench_arm_counts_decoded_tokens_over_decode_time(monkeypatch):
    fig = {**peer_worker.parse_batched_bench(BATCHED_BENCH_OUTPUT), "wall_seconds": 5.2}
    monkeypatch.setattr(bench, "batched_bench", lambda *a: fig)
    arm = {"startup_seconds": None, "bench": ()}
    assert bench.run_arm(arm, [], 4, 16) == (16 * 16, 4.254192)
    assert arm["startup_seconds"] == pytest.approx(5.2 - 0.544564 - 4.254192)  # loading, outside its timings


def test_results_table_has_a_row_per_engine_that_ran_and_says_why_others_did_not():
    class Args:
        prompts, k, new_tokens, rounds, threads, batch_size, naive_prompts = 4, 4, 16, 1, 1, 16, 1

    rates = {"afd_fp32": [40.0], "afd_bf16": [80.0], "naive_fp32": [10.0], "llamacpp_bf16": [100.0],
             "llamacpp-bench_fp32": [60.0]}
    meta = {"llamacpp_bf16": {"startup_seconds": 1.5, "version": "llama-cpp-python 0.3.36"},
            "llamacpp-bench_fp32": {"startup_seconds": 0.4, "version": "llama.cpp 0.5.0-dev"}}
    s = bench.summarise(rates, meta, {"vllm_fp32": "not installed"}, {"fp32": 40.0, "bf16": 100.0}, 2.69e8)
    result = {**{k: v for k, v in s.items() if k != "engines"}, "engines": s["engines"], "params": 134.5e6,
              "machine": {"cpu": "AMD EPYC", "cores": 2, "torch": "2.13.0+cpu"},
              "loadavg_start": (1.0, 1.0, 1.0), "loadavg_end": (2.0, 2.0, 2.0),
              "matmul_gflops_fp32": 40.0, "matmul_gflops_bf16": 100.0, "ceiling_tokens_per_second": 148.7,
              "ceiling_tokens_per_second_bf16": 371.7, "afd_bf16_vs_fp32_gold_delta": -0.01,
              "afd_bf16_vs_fp32_gold_delta_se": None,
              "gold": {"fp32_mean": 0.1, "bf16_mean": 0.09, "prompts": 1, "samples": 4, "identical_samples": 0}}
    table = bench.results_table(result, Args)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split(" | ")[1] for r in rows] == ["fp32", "bf16", "fp32", "bf16", "fp32"]
    assert rows[3].startswith("| llama.cpp (C API") and " | 0.80 | " in rows[3]  # afd bf16 80 / llama.cpp 100
    assert "Not run: vllm_fp32: not installed." in table
    assert "afd_vs_llamacpp_bf16 0.80" in table and "afd_vs_vllm_fp32 –" in table


def test_peers_not_asked_for_are_recorded_as_such(tmp_path):
    class Args:
        peers, threads, batch_size, new_tokens = "none", 1, 16, 8
        vllm_python = llamacpp_python = llamacpp_bin = None
        gguf_dir = str(tmp_path)

    arms, absent = bench.start_peers(Args, None, [[1, 2]], 10, tmp_path)
    assert arms == {} and len(absent) == len(bench.PEERS) * len(bench.DTYPES)
    assert set(absent.values()) == {"not asked for (--peers)"}


def test_vllm_preload_takes_intel_openmp_from_the_vllm_venv(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "lib").mkdir()
    python = tmp_path / "bin" / "python"
    python.symlink_to(sys.executable)  # as in a venv: a link to the system's python
    assert "libiomp5" not in bench.vllm_preload(str(python))  # not in that venv: not preloaded
    (tmp_path / "lib" / "libiomp5.so").write_text("")
    libs = bench.vllm_preload(str(python)).split(":")
    assert str(tmp_path / "lib" / "libiomp5.so") in libs
    assert sum("tcmalloc" in x for x in libs) <= 1 and len(libs) == len(set(libs))


def test_length_controls_pick_the_longest_and_shortest_sample(tmp_path):
    import common

    good, bad = "a wonderful, delightful, brilliant film", "an awful, terrible film"
    rows = [{"prompt_id": pid, "sample_index": i, "prompt": [{"role": "user", "content": "review"}],
             "response": text, "token_ids": list(range(n))}
            for pid in ("a", "b") for i, (text, n) in enumerate([(good, 9), (bad, 3), (bad, 3)])]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = common.length_controls(pool, [1, 2, 3])
    from afd import rewards

    g, b = rewards.load("vader").score(["r", "r"], [good, bad])
    assert out["length (longest)"]["gold"] == pytest.approx([(g + 2 * b) / 3, (g * 2 / 3 + b / 3), g])
    assert out["length (shortest)"]["gold"][-1] == pytest.approx(b)  # the two short ones tie; both are bad
    ev = {"bon": {"rm": {"n": [1, 2, 3], "gold": [(g + 2 * b) / 3, 0.0, 0.0]}}}
    assert set(common.with_length_controls(ev, pool)["bon"]) == {"rm", *common.LENGTH_CONTROLS}
    with pytest.raises(AssertionError, match="is not the one"):
        common.with_length_controls({"bon": {"rm": {"n": [1], "gold": [0.9]}}}, pool)
