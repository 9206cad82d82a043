"""afd.sampling: the exact sampler, logit warping, the HF engine and the ``sample`` stage."""

import json
import math
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from afd import cli, models
from afd.errors import AfdError
from afd.sampling import POOL, HFEngine, SampleConfig, draw, read_pool, row_seed, sample, warp_logits
from conftest import prompt_rows, user

# ---------------------------------------------------------------------------------------------
# draw: inverse-CDF sampling over 256-token blocks

VOCAB = 600  # not a multiple of 256: the last block is padded with zeros
N_DRAWS = 100_000
# Impossible tokens at the first and last ids and on both sides of block boundaries.
NEG_A = [0, 255, 256, 300, 599]
NEG_B = [1, 2, 511, 512, 598]


def two_distributions():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(VOCAB, generator=g) * 2, torch.randn(VOCAB, generator=g) * 2
    a[NEG_A] = -math.inf
    b[NEG_B] = -math.inf
    return a, b


def draw_rows(logits_a, logits_b, uniforms, chunk=25_000):
    """Draw with rows alternating between two distributions; (tokens, log-probs) of each."""
    tokens, logps = [], []
    for start in range(0, len(uniforms), chunk):
        u = uniforms[start:start + chunk]
        logits = torch.stack([logits_a, logits_b]).repeat(len(u) // 2, 1)  # chunk and total are even
        tok, lp = draw(logits, u, greedy=False)
        tokens.append(tok)
        logps.append(lp)
    tokens, logps = torch.cat(tokens), torch.cat(logps)
    return (tokens[0::2], logps[0::2]), (tokens[1::2], logps[1::2])


def test_draw_is_exact_on_a_stratified_grid():
    """Fed the evenly spaced uniforms (i + 1/2) / n, an exact inverse-CDF sampler gives token t
    every grid point in [F(t-1), F(t)): its count is n * p_t rounded up or down, so within 1;
    float32 rounding of a CDF boundary (~1e-7, against a grid step of 2e-5) can move at most one
    more point. Any per-token error over 2/n = 4e-5 in probability fails this test."""
    a, b = two_distributions()
    n = N_DRAWS // 2  # per distribution
    grid = ((torch.arange(n, dtype=torch.float64) + 0.5) / n).float().repeat_interleave(2)
    for logits, (tokens, logps), neg in zip((a, b), draw_rows(a, b, grid), (NEG_A, NEG_B)):
        p = logits.double().softmax(-1)
        counts = torch.bincount(tokens, minlength=VOCAB).double()
        assert len(counts) == VOCAB  # never a padding id
        assert counts[neg].sum() == 0
        assert (counts - n * p).abs().max() <= 2
        torch.testing.assert_close(logps, logits.log_softmax(-1)[tokens], atol=1e-5, rtol=0)


def test_draw_matches_softmax_in_total_variation():
    """With independent uniforms, E|c_t/n - p_t| <= sqrt(p_t (1 - p_t) / n) (Jensen), so
    E[TV] <= 1/2 sum_t sqrt(p_t (1 - p_t) / n) (about 0.02 here). One draw moves TV by at most
    1/n, so by McDiarmid P(TV > E[TV] + s) <= exp(-2 n s^2) = 1e-6 for the s below. The bound is
    far below the TV to a sampler that ignored the logits (about 0.7)."""
    a, b = two_distributions()
    n = N_DRAWS // 2
    uniforms = torch.rand(2 * n, generator=torch.Generator().manual_seed(1))
    s = math.sqrt(math.log(1e6) / (2 * n))
    for logits, (tokens, logps), neg in zip((a, b), draw_rows(a, b, uniforms), (NEG_A, NEG_B)):
        p = logits.double().softmax(-1)
        bound = 0.5 * (p * (1 - p) / n).sqrt().sum().item() + s
        assert bound < 0.05 < 0.5 * (p - 1 / VOCAB).abs().sum().item()
        counts = torch.bincount(tokens, minlength=VOCAB).double()
        assert counts[neg].sum() == 0
        tv = 0.5 * (counts / n - p).abs().sum().item()
        assert tv < bound
        torch.testing.assert_close(logps, logits.log_softmax(-1)[tokens], atol=1e-5, rtol=0)


def test_draw_extreme_uniforms_stay_on_possible_tokens():
    a, _ = two_distributions()
    below_one = torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)).item()
    u = torch.tensor([0.0, 1e-12, below_one, 1.0])  # 1.0 happens: float64 uniforms cast to float32
    tokens, logps = draw(a.expand(4, -1), u, greedy=False)
    assert tokens.tolist() == [1, 1, 598, 598]  # first and last tokens with positive probability
    assert torch.isfinite(logps).all()


def test_draw_greedy_is_argmax():
    logits = torch.randn(8, VOCAB, generator=torch.Generator().manual_seed(2))
    logits[:, :10] = -math.inf
    tokens, _ = draw(logits, torch.rand(8), greedy=True)
    assert tokens.tolist() == logits.argmax(-1).tolist()


# ---------------------------------------------------------------------------------------------
# warp_logits


def random_logits(rows=4, vocab=50, seed=3):
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float() * 2


def test_warp_top_k_keeps_exactly_k():
    logits = random_logits()
    for k in (1, 5, 49):
        warped = warp_logits(logits, 1.0, k, 1.0)
        kept = torch.isfinite(warped)
        assert (kept.sum(-1) == k).all()
        top = logits.topk(k, -1).indices
        assert kept.gather(1, top).all()
        assert torch.equal(warped[kept], logits[kept])  # kept logits unchanged
    assert torch.equal(warp_logits(logits, 1.0, 0, 1.0), logits)  # 0 = off
    assert torch.equal(warp_logits(logits, 1.0, 50, 1.0), logits)  # k >= vocab = off


def smallest_prefix(logits_row, p):
    """Brute force: how many of the likeliest tokens make the smallest set with mass >= p."""
    probs = logits_row.double().softmax(-1).sort(descending=True).values
    cum = probs.cumsum(-1)
    assert ((cum - p).abs() > 1e-4).all(), "test data too close to a boundary"
    return int((cum < p).sum()) + 1


@pytest.mark.parametrize("top_p", [0.1, 0.3, 0.5, 0.8, 0.95])
def test_warp_top_p_keeps_the_smallest_prefix_reaching_p(top_p):
    logits = random_logits()
    warped = warp_logits(logits, 1.0, 0, top_p)
    for row, out in zip(logits, warped):
        k = smallest_prefix(row, top_p)
        kept = torch.isfinite(out)
        assert kept.sum() == k
        assert kept[row.topk(k).indices].all()
        assert torch.equal(out[kept], row[kept])


def test_warp_top_p_exact_boundary():
    warped = warp_logits(torch.zeros(1, 4), 1.0, 0, 0.5)  # probabilities exactly 0.25 each
    assert torch.isfinite(warped).sum() == 2


def test_warp_temperature_scales_then_filters():
    logits = random_logits()
    torch.testing.assert_close(warp_logits(logits, 0.5, 0, 1.0), logits / 0.5)
    torch.testing.assert_close(warp_logits(logits, 2.0, 0, 1.0), logits / 2.0)
    warped = warp_logits(logits, 2.0, 0, 0.5)  # top-p of the tempered distribution
    for row, out in zip(logits, warped):
        assert torch.isfinite(out).sum() == smallest_prefix(row / 2.0, 0.5)
    assert (torch.isfinite(warp_logits(logits, 2.0, 3, 0.99)).sum(-1) <= 3).all()


# ---------------------------------------------------------------------------------------------
# HFEngine

EOS_BONUS = 3.0  # makes <|im_end|> ~7% likely per step, so both finish reasons occur


@pytest.fixture(scope="module")
def eos_model(afd_cache):
    """A fresh tiny-random whose EOS logit is raised by a forward hook (in sampling and scoring)."""
    model, tok = models.load_causal_lm("tiny-random", device="cpu")

    def bonus(module, inputs, logits):
        logits = logits.clone()
        logits[..., tok.eos_token_id] += EOS_BONUS
        return logits

    model.lm_head.register_forward_hook(bonus)
    return model, tok


def engine_for(model, tok):
    return HFEngine(model, tok, models.stop_token_ids(model, tok))


def encoded_prompts(tok, texts):
    return [models.encode_prompt(tok, [user(t)]) for t in texts]


TEXTS = ["Hi", "Tell me a very long story about a dragon and a knight, please.", "What is 2+2?"]


def seeds_for(ids, k, base=0):
    return [[row_seed(base, pid, j) for j in range(k)] for pid in ids]


def test_engine_rows_do_not_depend_on_batching(eos_model):
    model, tok = eos_model
    engine = engine_for(model, tok)
    prompts = encoded_prompts(tok, TEXTS)
    assert len({len(p) for p in prompts}) == 3  # left padding is exercised
    seeds = seeds_for(["a", "b", "c"], 4)
    together = engine.generate(prompts, seeds, max_new_tokens=12)
    reasons = {c.finish_reason for row in together for c in row}
    assert reasons == {"stop", "length"}  # rows leave the batch early while others go on
    for i in range(3):
        alone = engine.generate([prompts[i]], [seeds[i]], max_new_tokens=12)[0]
        assert [c.token_ids for c in alone] == [c.token_ids for c in together[i]]
        assert [c.finish_reason for c in alone] == [c.finish_reason for c in together[i]]
        for x, y in zip(alone, together[i]):
            assert x.logprob == pytest.approx(y.logprob, abs=1e-4)
    reordered = engine.generate(prompts[::-1], seeds[::-1], max_new_tokens=12)[::-1]
    assert [[c.token_ids for c in r] for r in reordered] == [[c.token_ids for c in r] for r in together]


def test_engine_warm_up_leaves_the_samples_identical(eos_model):
    model, tok = eos_model
    prompts = encoded_prompts(tok, TEXTS)
    seeds = seeds_for(["a", "b", "c"], 3)
    cold = HFEngine(model, tok, models.stop_token_ids(model, tok), warm_up=False)
    warm = HFEngine(model, tok, models.stop_token_ids(model, tok), warm_up=True)
    calls = []
    real = warm._generate
    warm._generate = lambda *a, **kw: calls.append(a[2]) or real(*a, **kw)
    for _ in range(2):
        a = cold.generate(prompts, seeds, max_new_tokens=12)
        b = warm.generate(prompts, seeds, max_new_tokens=12)
        assert [[(c.token_ids, c.logprob, c.finish_reason) for c in r] for r in a] == \
            [[(c.token_ids, c.logprob, c.finish_reason) for c in r] for r in b]
    assert calls == [HFEngine.WARM_UP_TOKENS, 12, 12]  # one warm-up, on the first call only


def test_engine_seeds_control_randomness(tiny):
    model, tok = tiny
    engine = engine_for(model, tok)
    prompts = encoded_prompts(tok, TEXTS[:2])

    def tokens(base):
        out = engine.generate(prompts, seeds_for(["a", "b"], 3, base), max_new_tokens=10)
        return [[c.token_ids for c in row] for row in out]

    first = tokens(0)
    assert tokens(0) == first
    other = tokens(1)
    assert all(x != y for row_x, row_y in zip(first, other) for x, y in zip(row_x, row_y))
    assert len({tuple(t) for row in first for t in row}) == 6  # each sample its own stream


def teacher_forced_logprob(model, prompt, response_ids):
    ids = torch.tensor([prompt + response_ids])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].double().log_softmax(-1)
    positions = torch.arange(len(prompt) - 1, ids.shape[1] - 1)
    return logp[positions, ids[0, len(prompt):]].sum().item()


def test_engine_logprob_is_the_models_logprob_of_the_response(eos_model):
    model, tok = eos_model
    engine = engine_for(model, tok)
    prompts = encoded_prompts(tok, TEXTS)
    max_new = 10
    out = engine.generate(prompts, seeds_for(["a", "b", "c"], 4), max_new_tokens=max_new)
    seen = set()
    for prompt, row in zip(prompts, out):
        for c in row:
            seen.add(c.finish_reason)
            if c.finish_reason == "length":
                assert len(c.token_ids) == max_new
                scored = c.token_ids
            else:
                assert len(c.token_ids) < max_new
                scored = c.token_ids + [tok.eos_token_id]  # the sampled EOS counts
            assert tok.eos_token_id not in c.token_ids
            assert c.logprob == pytest.approx(teacher_forced_logprob(model, prompt, scored), abs=1e-3)
    assert seen == {"stop", "length"}


def test_engine_ignore_eos_runs_to_max_new_tokens(eos_model):
    model, tok = eos_model
    engine = engine_for(model, tok)
    prompts = encoded_prompts(tok, TEXTS)
    out = engine.generate(prompts, seeds_for(["a", "b", "c"], 4), max_new_tokens=10, ignore_eos=True)
    completions = [c for row in out for c in row]
    assert all(len(c.token_ids) == 10 and c.finish_reason == "length" for c in completions)
    assert any(tok.eos_token_id in c.token_ids for c in completions)  # it really went past EOS
    for prompt, row in zip(prompts, out):
        for c in row:
            assert c.logprob == pytest.approx(teacher_forced_logprob(model, prompt, c.token_ids), abs=1e-3)


def test_engine_greedy_matches_step_by_step_argmax(tiny):
    model, tok = tiny
    engine = engine_for(model, tok)
    prompts = encoded_prompts(tok, TEXTS)
    out = engine.generate(prompts, seeds_for(["a", "b", "c"], 2), max_new_tokens=8, temperature=0)
    other = engine.generate(prompts, seeds_for(["a", "b", "c"], 2, base=9), max_new_tokens=8, temperature=0)
    assert [[c.token_ids for c in r] for r in out] == [[c.token_ids for c in r] for r in other]
    for prompt, row in zip(prompts, out):
        ids = list(prompt)
        with torch.no_grad():  # no cache, no padding: the plain definition of greedy decoding
            for _ in range(8):
                nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
                if nxt == tok.eos_token_id:
                    break
                ids.append(nxt)
        assert all(c.token_ids == ids[len(prompt):] for c in row)


# ---------------------------------------------------------------------------------------------
# The sample stage

ROW_FIELDS = {"prompt_id", "prompt", "sample_index", "response", "num_tokens", "finish_reason", "seed", "logprob",
              "token_ids"}


def sample_config(out, data, **options):
    base = dict(out=str(out), data=str(data), model="tiny-random", num_samples=3, max_new_tokens=6,
                batch_size=6, device="cpu")
    return SampleConfig(**{**base, **options})


def test_sample_writes_a_pool_and_metrics(tmp_path, prompts_file):
    cfg = sample_config(tmp_path / "run", prompts_file, seed=5)
    metrics = sample(cfg)
    stage = tmp_path / "run" / "sample"
    rows = read_pool(stage / POOL)
    expected_prompts = {r["id"]: [user(r["prompt"])] for r in prompt_rows()}
    assert len(rows) == len(expected_prompts) * 3
    assert len({(r["prompt_id"], r["sample_index"]) for r in rows}) == len(rows)
    for r in rows:
        assert set(r) == ROW_FIELDS
        assert r["prompt"] == expected_prompts[r["prompt_id"]]
        assert r["sample_index"] in (0, 1, 2)
        assert len(r["token_ids"]) == r["num_tokens"] + (r["finish_reason"] == "stop")  # the stop token last
        assert r["seed"] == row_seed(5, r["prompt_id"], r["sample_index"])
        assert isinstance(r["response"], str)
        assert r["finish_reason"] in ("stop", "length")
        assert 0 <= r["num_tokens"] <= 6
        assert (r["num_tokens"] == 6) == (r["finish_reason"] == "length")
        assert math.isfinite(r["logprob"]) and r["logprob"] < 0
    assert json.loads((stage / "metrics.json").read_text()) == metrics
    assert metrics["stage"] == "sample"
    assert (metrics["prompts"], metrics["samples"], metrics["num_samples"]) == (6, 18, 3)
    assert metrics["resumed_rows"] == 0 and metrics["prompts_dropped_too_long"] == 0
    assert metrics["new_tokens"] == sum(r["num_tokens"] for r in rows)
    assert metrics["mean_logprob"] == pytest.approx(sum(r["logprob"] for r in rows) / len(rows))
    assert yaml.safe_load((stage / "config.yaml").read_text())["seed"] == 5


def test_finished_sample_stage_is_reused_and_changes_need_force(tmp_path, prompts_file, monkeypatch):
    cfg = sample_config(tmp_path / "run", prompts_file)
    first = sample(cfg)
    stage = tmp_path / "run" / "sample"
    pool_before = read_pool(stage / POOL)
    stamps = {f: (stage / f).stat().st_mtime_ns for f in (POOL, "metrics.json")}

    def no_engine(cfg):
        raise AssertionError("a finished stage must not load a model")

    with monkeypatch.context() as m:
        m.setattr("afd.sampling.make_engine", no_engine)
        assert sample(cfg) == first
        assert sample(sample_config(tmp_path / "run", prompts_file, force=False)) == first
    assert {f: (stage / f).stat().st_mtime_ns for f in stamps} == stamps

    with pytest.raises(AfdError, match=r"different options \(temperature\).*--force"):
        sample(sample_config(tmp_path / "run", prompts_file, temperature=0.5))
    assert read_pool(stage / POOL) == pool_before  # untouched

    redone = sample(sample_config(tmp_path / "run", prompts_file, temperature=0.5, force=True))
    assert yaml.safe_load((stage / "config.yaml").read_text())["temperature"] == 0.5
    assert redone["samples"] == first["samples"]
    assert read_pool(stage / POOL) != pool_before


def kill_test_prompts(n=30):
    return [{"id": f"p-{i:02d}", "prompt": f"Question {i}: why" + " and why" * (i % 4)} for i in range(n)]


def test_killed_sample_run_resumes_to_the_uninterrupted_pool(tmp_path, make_jsonl):
    """SIGKILL `afd sample` mid-run, tear its last line, rerun: the pool equals an uninterrupted run's."""
    data = make_jsonl("prompts.jsonl", kill_test_prompts())
    args = ["sample", "--data", data, "--num-samples", "4", "--batch-size", "4", "--max-new-tokens", "24",
            "--device", "cpu"]
    out = tmp_path / "killed"
    pool = out / "sample" / POOL
    command = [sys.executable, "-m", "afd", *args, "--out", str(out)]
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.time() + 120
        # One prompt per batch (batch_size 4 // K 4): kill once the first prompts are written.
        while time.time() < deadline and proc.poll() is None:
            if pool.exists() and pool.read_bytes().count(b"\n") >= 8:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert not (out / "sample" / "metrics.json").exists(), "the run finished before it was killed"
    assert pool.exists(), (tmp_path / "stderr.txt").read_text()[-2000:]

    at_kill = read_pool(pool, tolerate_truncation=True)
    counts = {}
    for r in at_kill:
        counts[r["prompt_id"]] = counts.get(r["prompt_id"], 0) + 1
    complete_rows = sum(c for c in counts.values() if c == 4)
    assert 0 < complete_rows < 30 * 4
    with pool.open("a") as f:  # a torn write: half a line, no newline
        f.write('{"prompt_id": "p-29", "prompt": [{"role": "user", "con')

    rerun = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert cli.main([*args, "--out", str(tmp_path / "uninterrupted")]) == 0

    resumed = read_pool(pool)
    reference = read_pool(tmp_path / "uninterrupted" / "sample" / POOL)
    assert len(reference) == 30 * 4
    assert resumed == reference  # same rows, same order
    metrics = json.loads((out / "sample" / "metrics.json").read_text())
    assert metrics["resumed_rows"] == complete_rows
    assert metrics["samples"] == 30 * 4


@pytest.mark.parametrize("dropped_lines", [2, 6], ids=["last-prompt-partial", "batch-partial"])
def test_partially_written_prompt_is_dropped_and_regenerated(tmp_path, make_jsonl, dropped_lines):
    data = make_jsonl("prompts.jsonl", kill_test_prompts(4))
    cfg = sample_config(tmp_path / "run", data, num_samples=4, batch_size=8)  # 2 prompts per batch
    sample(cfg)
    stage = tmp_path / "run" / "sample"
    reference = read_pool(stage / POOL)
    # A kill in the middle of writing the last batch: its rows are only partly on disk.
    lines = (stage / POOL).read_text().splitlines(keepends=True)
    (stage / POOL).write_text("".join(lines[:-dropped_lines]))
    (stage / "metrics.json").unlink()
    kept_ids = [r["prompt_id"] for r in reference[:-dropped_lines]]
    complete = sum(1 for pid in set(kept_ids) if kept_ids.count(pid) == 4)

    metrics = sample(cfg)
    assert metrics["resumed_rows"] == complete * 4 < len(reference) - dropped_lines
    assert read_pool(stage / POOL) == reference


def test_parquet_pool_has_the_same_rows(tmp_path, prompts_file):
    sample(sample_config(tmp_path / "run", prompts_file, output_format="parquet"))
    stage = tmp_path / "run" / "sample"
    assert (stage / "pool.parquet").is_file()
    from_jsonl = read_pool(stage / POOL)
    assert read_pool(stage / "pool.parquet") == from_jsonl
    assert read_pool(stage) == from_jsonl  # a stage folder means its pool.jsonl
    assert len(from_jsonl) == 18


def test_read_pool_errors(tmp_path):
    with pytest.raises(AfdError, match="does not exist"):
        read_pool(tmp_path / "nothing.jsonl")
    bad = tmp_path / "bad.jsonl"
    row = {"prompt_id": "a", "prompt": [], "sample_index": 0, "response": "x"}
    bad.write_text(json.dumps(row) + '\n{"a": \n' + json.dumps(row) + "\n")
    with pytest.raises(AfdError, match="line 2: not valid JSON"):
        read_pool(bad, tolerate_truncation=True)  # only a last line may be torn
    bad.write_text(json.dumps(row) + '\n{"a": ')
    with pytest.raises(AfdError, match="line 2"):
        read_pool(bad)
    assert read_pool(bad, tolerate_truncation=True) == [row]
    # a row without a field every consumer reads: one sentence naming it, not a KeyError later
    bad.write_text(json.dumps(row) + "\n" + json.dumps({k: v for k, v in row.items() if k != "response"}) + "\n")
    with pytest.raises(AfdError, match=r"bad.jsonl, row 2: field 'response' is missing"):
        read_pool(bad)


def long_prompt_data(make_jsonl):
    rows = [{"id": "short-1", "prompt": "Hi"}, {"id": "long-1", "prompt": "word " * 40},
            {"id": "short-2", "prompt": "Yo"}, {"id": "long-2", "prompt": "more " * 50}]
    return make_jsonl("prompts.jsonl", rows)


def test_long_prompts_are_dropped_and_counted(tmp_path, make_jsonl, tiny):
    _, tok = tiny
    limit = len(models.encode_prompt(tok, [user("Hi")])) + 5
    metrics = sample(sample_config(tmp_path / "run", long_prompt_data(make_jsonl), max_prompt_length=limit))
    assert metrics["prompts_dropped_too_long"] == 2
    assert metrics["prompts"] == 2 and metrics["rows_read"] == 4
    assert {r["prompt_id"] for r in read_pool(tmp_path / "run" / "sample")} == {"short-1", "short-2"}


def test_long_prompts_can_be_an_error(tmp_path, make_jsonl):
    data = long_prompt_data(make_jsonl)
    message = r"prompt 'long-1' in .*prompts\.jsonl has \d+ tokens, over max_prompt_length=30"
    with pytest.raises(AfdError, match=message):
        sample(sample_config(tmp_path / "run", data, max_prompt_length=30, long_prompts="error"))
    with pytest.raises(AfdError, match="no prompt .* within max_prompt_length=3"):
        sample(sample_config(tmp_path / "other", data, max_prompt_length=3))


def test_duplicate_prompt_ids_are_an_error(tmp_path, make_jsonl):
    data = make_jsonl("prompts.jsonl", [{"id": "x", "prompt": "a"}, {"id": "y", "prompt": "b"},
                                        {"id": "x", "prompt": "c"}])
    with pytest.raises(AfdError, match="prompt id 'x' appears twice"):
        sample(sample_config(tmp_path / "run", data))


@pytest.mark.parametrize("option, value", [("num_samples", 0), ("max_new_tokens", 0), ("batch_size", 0),
                                           ("long_prompts", "skip"), ("output_format", "csv")])
def test_sample_config_rejects_bad_values(tmp_path, option, value):
    with pytest.raises(AfdError, match=f"option '{option}'"):
        sample_config(tmp_path, "x.jsonl", **{option: value}).validate()
