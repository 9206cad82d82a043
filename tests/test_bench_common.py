"""The recipes' across-seed figures (bench/common.py): mean and 95% t interval by hand."""

import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from common import across_seeds, aggregate, seeds_arg  # noqa: E402


def test_across_seeds_by_hand():
    got = across_seeds([1.0, 2.0, 3.0])
    # sd 1, t(0.975, 2 df) = 4.303: half-width 4.303 / sqrt(3)
    assert got["mean"] == 2.0 and got["ci95"] == pytest.approx([2 - 4.303 / 3 ** 0.5, 2 + 4.303 / 3 ** 0.5])
    assert across_seeds([0.5]) == {"mean": 0.5, "ci95": None, "per_seed": [0.5]}
    assert across_seeds([None, 1.0, 3.0])["mean"] == 2.0


def test_aggregate_keeps_the_shape():
    agg = aggregate([{"a": {"x": 1.0, "n": [1, 2]}, "s": "v"}, {"a": {"x": 3.0, "n": [1, 2]}, "s": "v"}])
    assert agg["a"]["x"]["mean"] == 2.0 and [e["mean"] for e in agg["a"]["n"]] == [1, 2] and agg["s"] == "v"
    assert seeds_arg("0-2") == [0, 1, 2] and seeds_arg("3,5") == [3, 5]
