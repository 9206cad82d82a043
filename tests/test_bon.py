"""Best-of-N: the one-pool estimator against brute-force subset enumeration, and the stage."""

import itertools
import json
import math
import random

import pytest

from afd.bon import BonConfig, bon, bon_curve, bon_expectation, bon_kl, bon_weights


def brute_force(proxy, gold, n):
    """Average over every n-subset of the gold of its proxy-best, ties split evenly."""
    total, count = 0.0, 0
    for subset in itertools.combinations(range(len(proxy)), n):
        top = max(proxy[i] for i in subset)
        best = [i for i in subset if proxy[i] == top]
        total += sum(gold[i] for i in best) / len(best)
        count += 1
    return total / count


@pytest.mark.parametrize("seed", range(6))
def test_estimator_equals_subset_enumeration(seed):
    rng = random.Random(seed)
    m = rng.randint(1, 9)
    # coarse proxy values so that ties occur
    proxy = [rng.choice([0.0, 0.5, 1.0, 1.5, 2.0]) if seed % 2 else rng.random() for _ in range(m)]
    gold = [rng.gauss(0, 1) for _ in range(m)]
    for n in range(1, m + 1):
        assert bon_expectation(proxy, gold, n) == pytest.approx(brute_force(proxy, gold, n), abs=1e-12)


def test_estimator_endpoints():
    proxy, gold = [3.0, 1.0, 2.0], [10.0, 20.0, 30.0]
    assert bon_expectation(proxy, gold, 1) == pytest.approx(20.0)  # N=1 is the plain mean
    assert bon_expectation(proxy, gold, 3) == pytest.approx(10.0)  # N=M is the proxy's argmax


def test_weights_sum_to_one_and_kl():
    for m, n in [(1, 1), (5, 2), (50, 10), (200, 200)]:
        assert sum(bon_weights(m, n)) == pytest.approx(1.0)
    assert bon_kl(1) == 0.0
    assert bon_kl(16) == pytest.approx(math.log(16) - 15 / 16)
    with pytest.raises(ValueError):
        bon_weights(3, 4)


def test_curve_averages_prompts():
    rows = [{"prompt_id": p, "sample_index": i, "proxy": float(i), "gold": float(i + 10 * p)}
            for p in range(2) for i in range(4)]
    curve = bon_curve(rows, "proxy", "gold")
    assert list(curve) == [1, 2, 4]
    assert curve[1] == pytest.approx(6.5)   # mean gold
    assert curve[4] == pytest.approx(8.0)   # best sample (index 3) of each prompt: 3 and 13


def judge(prompts, responses):
    """A python:MODULE:FUNCTION scorer for the stage test: longer is better."""
    return [float(len(r)) for r in responses]


def test_bon_stage_picks_the_best_of_the_first_n(tmp_path):
    pool = tmp_path / "pool.jsonl"
    rows = [{"prompt_id": f"p{p}", "prompt": [{"role": "user", "content": f"q{p}"}], "sample_index": i,
             "response": "x" * ((i * 7 + p) % 5 + 1)} for p in range(3) for i in range(4)]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = bon(BonConfig(out=str(tmp_path / "run"), pool=str(pool), scorer="python:test_bon:judge", n=2))
    chosen = [json.loads(x) for x in (tmp_path / "run" / "bon" / "chosen.jsonl").read_text().splitlines()]
    assert len(chosen) == 3 and m["n"] == 2
    for c in chosen:
        first_two = [r for r in rows if r["prompt_id"] == c["prompt_id"] and r["sample_index"] < 2]
        assert c["response"] == max(first_two, key=lambda r: len(r["response"]))["response"]
    assert m["kl_bon_nats"] == pytest.approx(bon_kl(2))


def test_win_rate_against_its_own_pool_leaves_the_sample_itself_out():
    from afd.eval import win_values

    # one prompt, golds 1, 2, 3 (proxy = gold): the best sample beats both others
    rows = [{"prompt_id": "p", "sample_index": i, "gold": g, "proxy": g} for i, g in enumerate([1.0, 2.0, 3.0])]
    win_values(rows, rows, same_pool=True)
    assert [r["win"] for r in rows] == [0.0, 0.5, 1.0]
    curve = bon_curve(rows, "proxy", "win", [1, 2, 3])
    assert curve[1] == pytest.approx(0.5) and curve[3] == pytest.approx(1.0)
    # BoN_2 = the max of a random pair: {1,2} -> 2 (0.5), {1,3} -> 3 (1), {2,3} -> 3 (1)
    assert curve[2] == pytest.approx(2.5 / 3)
    # against a different pool every baseline sample counts
    other = [{"prompt_id": "p", "sample_index": i, "gold": g} for i, g in enumerate([3.0, 0.0])]
    win_values(rows, other)
    assert [r["win"] for r in rows] == [0.5, 0.5, 0.75]


class Counting:
    """A stand-in for a trained reward-model folder: scores by the response's length plus an
    offset, and counts the rows it is asked to score."""

    def __init__(self, offset):
        from afd.rewards import RewardModel

        outer = self

        class _RM(RewardModel):
            name = f"counting+{offset}"

            def _score(self, prompts, responses, token_ids=None):
                outer.rows += len(responses)
                return [len(r) + offset for r in responses]

        self.rows, self.rm = 0, _RM()


def test_ensembles_and_z_average_their_members_and_a_memo_scores_each_row_once(tmp_path, monkeypatch):
    from afd import rewards

    folders = {name: tmp_path / name for name in ("a", "b")}
    for f in folders.values():
        f.mkdir()
    counters = {str(f): Counting(offset) for f, offset in zip(folders.values(), (0.0, 10.0))}
    monkeypatch.setattr(rewards, "load_trained", lambda path, *a, **k: counters[path].rm)
    a, b = (str(f) for f in folders.values())
    prompts = [[{"role": "user", "content": "q"}]] * 4
    responses = ["x", "xx", "xxx", "xxx"]
    ensemble = f"ensemble:z:1,2:{a};{b}"
    plain = rewards.load(ensemble).score(prompts, responses)
    # the mean of (len - 1) / 2 and len + 10
    assert plain == pytest.approx([((n - 1) / 2 + n + 10) / 2 for n in (1, 2, 3, 3)])
    assert counters[a].rows == counters[b].rows == 4

    memo: dict = {}
    assert rewards.load(a, memo=memo).score(prompts, responses) == [1.0, 2.0, 3.0, 3.0]
    assert counters[a].rows == 8
    assert rewards.load(ensemble, memo=memo).score(prompts, responses) == plain
    assert counters[a].rows == 8 and counters[b].rows == 8  # a's rows came from the memo, b's were new
    # a new row, or the same text under other sampled tokens, is scored
    rm = rewards.load(a, memo=memo)
    assert rm.score(prompts[:2], ["xxxx", "x"], [[1, 2, 3, 4], [9]]) == [4.0, 1.0]
    assert counters[a].rows == 10
    assert rm.score(prompts[:1], ["xxxx"], [[1, 2, 3, 4]]) == [4.0] and counters[a].rows == 10
