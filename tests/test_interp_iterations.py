"""The iterations toolkit (mathllm.interp.iterations): slot batches, states after every layer of every iteration, the
lens by depth and its summaries, probe labels, carry-flip pairs and patching across iterations, drift past L."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mathllm.chains import carry_chain
from mathllm.interp.iterations import (IterationLens, carry_flip_pairs, carry_labels, chain_end_column,
                                       chain_problem_sets, depth_labels, depth_states, fit_steps, iteration_lens,
                                       iteration_probes, patch_iterations, probe_grid, slot_batch, state_drift)
from mathllm.model import MathTransformer, ModelConfig
from mathllm.training_mode import get_mode

pytestmark = pytest.mark.usefixtures("one_thread")
MODE = get_mode("answer-slots", pad_operands=3)


@pytest.fixture(scope="module")
def looped():
    torch.manual_seed(0)
    return MathTransformer(ModelConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64, n_loops=3, n_ctx=32)).eval()


def test_a_slot_batch_lines_up_positions_and_columns():
    batch = slot_batch(MODE, [(12, 345), (999, 1)])
    assert batch.lines == ["012+345=0357<end>", "999+001=1000<end>"]
    assert batch.input_lines[1] == "999+001=" + "<pause>" * 5
    assert batch.first_slot == 8 and batch.columns == 4 and batch.chains == [0, 3]
    assert batch.kinds[batch.slot_of_column(0)] == "ans0" and batch.kinds[batch.slot_of_column(3)] == "ans3"
    assert (batch.inputs[:, 8:] == 19).all() and batch.targets[0, 8:].tolist() == [0, 3, 5, 7, 15]
    with pytest.raises(ValueError, match="do not line up"):
        slot_batch(get_mode("answer-slots"), [(1, 2), (12, 34)])
    with pytest.raises(ValueError, match="reads answer-slots models"):
        slot_batch(get_mode("teacher"), [(1, 2)])


@pytest.mark.parametrize("operands, column", [([4999, 5001], 4), ([99, 1], 2), ([12, 34], None), ([909, 91], 3),
                                               ([1909, 91], 3), ([5, 5], 1)])
def test_the_chain_ends_where_its_last_carry_arrives(operands, column):
    assert chain_end_column(operands) == column


def test_depth_states_are_every_layer_of_every_iteration(looped):
    batch = slot_batch(MODE, [(12, 345), (999, 1), (500, 500)])
    states = depth_states(looped, batch.inputs, 3)
    assert states.shape == (6, 3, 13, 32) and depth_labels(2, 3)[:3] == ["it1.L0", "it1.L1", "it2.L0"]
    _, cache = looped.run_with_cache(batch.inputs)
    for i in range(3):
        torch.testing.assert_close(states[2 * i + 1], cache[f"loops.{i}.hook_resid_post"])
    past = depth_states(looped, batch.inputs, 5, positions=[8, 9])
    assert past.shape == (10, 3, 2, 32) and looped.n_loops == 3
    torch.testing.assert_close(past[:6], states[:, :, [8, 9]])


def test_the_lens_summaries_read_when_each_answer_settles():
    # 2 problems (k = 1 and k = 3), 2 columns, 3 iterations x 1 layer, trained L = 3
    right = np.zeros((4, 2, 2), dtype=bool)
    right[1:, 0, :] = True          # problem 0 right from step 2 on
    right[2:, 1, 0] = True          # problem 1: both columns from step 3 on
    right[2:, 1, 1] = True
    right[0, 1, 1] = True           # ... column 1 also at step 1, then wrong again: not settled there
    lens = IterationLens(["it1.L0", "it2.L0", "it3.L0", "it4.L0"], 1, 3, np.array([1, 3]), right,
                         np.ones((4, 2), dtype=bool), {"chain_end_columns": [1, 1]})
    assert lens.first_settled().tolist() == [[2, 2], [3, 3]]
    assert lens.steps_to_answer() == {1: {"mean_step": 2.0, "max_step": 2.0, "settled": 1.0, "count": 1},
                                      3: {"mean_step": 3.0, "max_step": 3.0, "settled": 1.0, "count": 1}}
    assert lens.chain_end_steps() == {1: 2.0, 3: 3.0}
    assert lens.accuracy_by_depth() == {1: [0.0, 1.0, 1.0, 1.0], 3: [0.0, 0.0, 1.0, 1.0]}
    assert lens.exact[:, 1].tolist() == [False, False, True, True]
    assert lens.iteration_rows() == [0, 1, 2, 3] and "k=3: mean 3.00" in lens.summary()
    with pytest.raises(ValueError, match="not recorded"):
        lens.digit_steps()
    lens.digits = np.array([[0, 5], [7, 0]])  # problem 0 writes 50, problem 1 writes 07
    assert lens.steps_by_digit() == {0: 2.5, 5: 2.0, 7: 3.0}
    assert lens.digit_steps() == {1: 2.0, 3: 3.0} and lens.digit_steps(exclude=()) == {1: 2.0, 3: 3.0}
    only_seven = lens.digit_steps(exclude=(0, 5))
    assert np.isnan(only_seven[1]) and only_seven[3] == 3.0


@pytest.mark.parametrize("steps, best", [
    ({1: 2.0, 2: 4.0, 3: 6.0, 4: 8.0, 5: 10.0}, "linear"),
    ({1: 1.0, 3: 2.0, 7: 3.0, 15: 4.0}, "log"),
    ({0: 5.0, 1: 5.2, 2: 5.1, 3: 5.3, 4: 5.0}, "flat"),
])
def test_the_fit_names_ripple_lookahead_or_flat(steps, best):
    assert fit_steps(steps)["best"] == best


def test_the_lens_runs_on_a_model_past_its_trained_count(looped):
    problems = chain_problem_sets(3, per_k=6)
    lens = iteration_lens(looped, problems, max_loops=5, mode=MODE)
    assert lens.right.shape == (10, 24, 4) and lens.trained_loops == 3
    assert sorted(lens.steps_to_answer()) == [0, 1, 2, 3]
    flat = [p for group in problems.values() for p in group]
    assert lens.digits.shape == (24, 4)
    assert all(lens.digits[i, c] == sum(p) // 10**c % 10 for i, p in enumerate(flat) for c in range(4))
    assert all(carry_chain(p) == k for k, group in problems.items() for p in group)


def test_probe_labels_are_the_carry_quantities():
    labels = carry_labels([(658, 189), (12, 34)], 3)
    assert labels["digit_sum[0]"].tolist() == [17, 6] and labels["generate[1]"].tolist() == [1, 0]
    assert labels["propagate[2]"].tolist() == [0, 0] and labels["carry_in[1]"].tolist() == [1, 0]
    assert labels["carry_in[3]"].tolist() == [0, 0] and labels["carry_in[2]"].tolist() == [1, 0]
    assert labels["propagate[0]"].tolist() == [0, 0]
    assert carry_labels([(45, 54)], 2)["propagate[0]"].tolist() == [1]
    assert [labels[f"answer[{c}]"].tolist() for c in range(4)] == [[7, 6], [4, 4], [8, 0], [0, 0]]


def test_probes_per_iteration_and_position_have_their_controls(looped):
    problems = [p for group in chain_problem_sets(3, per_k=40).values() for p in group]
    results = iteration_probes(looped, problems, mode=MODE)
    assert results.streams == ["embed", "it1", "it2", "it3"] and "carry_in[2]" in results.quantities
    assert np.isfinite(results.control).any() and np.isfinite(results.majority).any()
    grid = probe_grid(results)
    assert grid["carry_in"]["columns"] == [1, 2, 3] and grid["carry_in"]["accuracy"].shape == (4, 3)
    answers = probe_grid(results, families=("answer",))["answer"]
    assert answers["columns"] == [0, 1, 2, 3] and answers["accuracy"].shape == (4, 4)
    best = probe_grid(results, at="best")
    assert (np.nan_to_num(best["digit_sum"]["accuracy"]) >= np.nan_to_num(grid["digit_sum"]["accuracy"])).all()


def test_carry_flip_pairs_remove_the_chain_with_one_digit():
    pairs = carry_flip_pairs(MODE, 3, 2, n=12, start=0, seed=1)
    assert pairs.column == 2 and len(pairs.clean.operands) == 12
    for (a, b), (a2, b2) in zip(pairs.clean.operands, pairs.corrupted.operands):
        assert a == a2 and carry_chain([a, b]) == 2 and chain_end_column([a, b]) == 2 and carry_chain([a, b2]) < 2
        assert len(str(b2)) == len(str(b)) == 3 and str(b)[:-1] == str(b2)[:-1]
    slot = pairs.clean.slot_of_column(2)
    assert (pairs.clean.targets[:, slot] != pairs.corrupted.targets[:, slot]).all()
    assert ((pairs.clean.inputs != pairs.corrupted.inputs).sum(1) == 1).all()


def test_patching_the_last_state_at_the_measured_slot_restores_everything(looped):
    pairs = carry_flip_pairs(MODE, 3, 2, n=16, seed=2)
    result = patch_iterations(looped, pairs, mode=MODE)
    slot = pairs.clean.slot_of_column(2)
    assert result.values.shape == (3, 13) and result.iterations == ["it1", "it2", "it3"]
    assert result.values[-1, slot] == pytest.approx(1.0, abs=1e-4)
    assert np.allclose(result.values[:, slot + 1 :], 0.0, atol=1e-4)  # later positions cannot reach it (causal)
    assert np.allclose(result.values[-1, :slot], 0.0, atol=1e-4)  # after the last iteration only the slot counts
    assert result.at("ans2") == result.values[:, slot].tolist() and len(result.at("b0")) == 3
    with pytest.raises(KeyError, match="no position"):
        result.at("s0.=")
    one = MathTransformer(ModelConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, n_ctx=32)).eval()
    with pytest.raises(ValueError, match="needs a looped model"):
        patch_iterations(one, pairs, loops=1, mode=MODE)


def test_the_drift_past_the_trained_count_is_measured_per_iteration(looped):
    drift = state_drift(looped, [(12, 345), (999, 1)], 6, mode=MODE)
    assert len(drift["relative_change"]) == len(drift["exact_match"]) == len(drift["norm"]) == 6
    assert np.isnan(drift["relative_change"][0]) and all(c >= 0 for c in drift["relative_change"][1:])
    assert len(drift["change"]) == 6 and np.isnan(drift["change"][0]) and all(c >= 0 for c in drift["change"][1:])
