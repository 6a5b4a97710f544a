"""The order and the arithmetic of benchmarks/throughput.py's rounds (no case is run here)."""

import itertools
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from throughput import round_order, summary_table  # noqa: E402


@pytest.mark.parametrize("num_cases", [2, 3, 4, 6])
def test_twice_as_many_rounds_as_cases_put_every_case_in_every_position_and_on_both_sides_of_its_neighbours(num_cases):
    cases = [f"case{i}" for i in range(num_cases)]
    orders = [round_order(cases, r) for r in range(2 * num_cases)]
    assert all(sorted(order) == cases for order in orders), "every round runs every case once"
    for position in range(num_cases):
        counts = {case: sum(order[position] == case for order in orders) for case in cases}
        assert set(counts.values()) == {2}, f"position {position}: {counts}"
    pairs = {(a, b) for order in orders for a, b in itertools.pairwise(order)}
    for i in range(num_cases):  # each cyclic neighbour pair, in both orders
        a, b = cases[i], cases[(i + 1) % num_cases]
        assert (a, b) in pairs and (b, a) in pairs, (a, b)
    if num_cases == 3:
        assert {tuple(order) for order in orders} == set(itertools.permutations(cases)), "three cases: all six orders"


def _row(case, round_index, speed, memory=1.0):
    return {"case": case, "round": round_index, "train_samples_per_s": speed, "peak_mem_gib": memory,
            "inference_samples_per_s": {"all": 10.0}, "precision": "32-true"}  # fmt: skip


def test_ratios_are_taken_within_each_round_before_the_median():
    # The machine is twice as fast in round 1: within-round ratios stay 0.5, the ratio of medians would not.
    rows = [_row("backprop", 0, 10), _row("noprop_dt joint", 0, 5, 0.5),
            _row("backprop", 1, 20), _row("noprop_dt joint", 1, 10, 0.5),
            _row("backprop", 2, 30), _row("noprop_dt joint", 2, 15, 0.5)]  # fmt: skip
    table = summary_table(rows, ["backprop", "noprop_dt joint"]).splitlines()
    assert table[2].split(" | ")[3] == "1.00", "the baseline's own ratio is 1"
    cells = table[3].split(" | ")
    assert cells[2] == "10" and cells[3] == "0.50 (0.50-0.50)" and cells[5] == "0.50 (0.50-0.50)", table[3]
