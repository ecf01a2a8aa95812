"""Notebook 09's plots (mathllm.plots, section "latent reasoning in depth"): each draws what it is given, in plotly
and as a PNG."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from mathllm.plots import (chain_table_rows, plot_chain_table, plot_iteration_lens, plot_iteration_patching,
                           plot_past_loops, plot_probe_grid, save_chain_table_png, save_iteration_lens_png,
                           save_iteration_patching_png, save_past_loops_png, save_probe_grid_png)

SUMMARY = {"table": {
    "looped-uniform": {"uniform": {"mean": 0.99, "min": 0.98, "max": 1.0}, "k0": {"mean": 1.0, "min": 1.0, "max": 1.0},
                       "k1": {"mean": 0.5, "min": 0.25, "max": 0.75},
                       "same_weights_L1_uniform": {"mean": 0.01, "min": 0.0, "max": 0.02}},
    "one-pass-uniform": {"uniform": {"mean": 0.9, "min": 0.9, "max": 0.9}, "k0": {"mean": 0.8, "min": 0.7, "max": 0.9}},
    "broken": {"error": "x"},
}}


def test_the_chain_table_has_a_row_per_finished_run_and_a_column_per_set(tmp_path):
    names, columns, mean, low = chain_table_rows(SUMMARY)
    assert names == ["looped-uniform", "one-pass-uniform"] and columns == ["uniform", "k0", "k1"]
    assert mean[0].tolist() == [0.99, 1.0, 0.5] and low[0, 2] == 0.25 and np.isnan(mean[1, 2])
    assert chain_table_rows(SUMMARY, "same_weights_L1_")[0] == ["looped-uniform"]
    fig = plot_chain_table(SUMMARY)
    assert fig.data[0].z.shape == (2, 3) and "25.0%" in fig.data[0].text[0][2]
    assert fig.data[0].text[0][1] == "100.0%" and fig.data[0].text[1][2] == ""  # one seed: no bracket; no cell
    assert save_chain_table_png(SUMMARY, tmp_path / "t.png").stat().st_size > 1000


def test_the_lens_plot_draws_a_line_per_chain_length(tmp_path):
    acc = {0: [0.0, 0.5, 1.0, 1.0], 2: [0.0, 0.1, 0.9, 1.0]}
    steps = {0: {"mean_step": 2.5, "max_step": 3.0}, 2: {"mean_step": 3.0, "max_step": 4.0}}
    fig = plot_iteration_lens(acc, ["it1.L0", "it1.L1", "it2.L0", "it2.L1"], 4, steps)
    assert [t.name for t in fig.data] == ["k=0", "k=2", "mean step"] and list(fig.data[2].y) == [2.5, 3.0]
    assert save_iteration_lens_png(acc, ["a", "b", "c", "d"], 4, steps, tmp_path / "l.png").is_file()


def test_the_probe_grid_has_a_panel_per_family_and_the_untrained_control(tmp_path):
    g = {"carry_in": {"columns": [1, 2], "streams": ["embed", "it1"], "accuracy": np.array([[0.5, 0.6], [1.0, 0.9]]),
                      "baseline": np.array([[0.5, 0.5], [0.5, 0.5]])}}
    fig = plot_probe_grid(g, control=g)
    assert len(fig.data) == 2 and fig.data[0].z.tolist() == [[0.5, 0.6], [1.0, 0.9]]
    assert save_probe_grid_png(g, g, tmp_path / "p.png").is_file()


def test_the_patching_and_past_loops_plots(tmp_path):
    result = SimpleNamespace(values=np.array([[0.0, 0.5], [0.0, 1.0]]), labels=["1 a0", "<pause> ans0"],
                             iterations=["it1", "it2"], column=1, k=1)
    fig = plot_iteration_patching(result)
    assert fig.data[0].z.tolist() == [[0.0, 0.5], [0.0, 1.0]] and "column 1" in fig.layout.title.text
    assert save_iteration_patching_png([result, result], tmp_path / "x.png").is_file()
    curves = {"uniform": [0.1, 0.9, 1.0, 0.5], "k4": [0.0, 0.5, 1.0, 0.2]}
    drift = {"relative_change": [float("nan"), 0.5, 0.3, 0.2]}
    fig = plot_past_loops(curves, 3, drift)
    assert len(fig.data) == 3
    assert save_past_loops_png(curves, 3, drift, tmp_path / "y.png").is_file()
    drift["change"] = [float("nan"), 2.0, 2.0, 2.1]  # the change itself, on a second axis
    fig = plot_past_loops(curves, 3, drift)
    assert len(fig.data) == 4 and list(fig.data[3].y)[1:] == [2.0, 2.0, 2.1] and fig.data[3].yaxis == "y3"
    assert save_past_loops_png(curves, 3, drift, tmp_path / "z.png").is_file()
    with pytest.raises(KeyError):
        chain_table_rows({})


def test_the_trace_map_has_a_row_per_task_and_the_gap_between_the_worst_trace_and_best_answer_only_seed(tmp_path):
    from mathllm.plots import plot_trace_map, save_trace_map_png, trace_map_rows

    def run(mode, seed, score):
        return {"name": mode, "mode": mode, "seed": seed, "test_exact_match": score}

    summaries = {"sub3": {"max_steps": 1000, "batch_size": 64,
                          "runs": [run("teacher", 1, 0.99), run("teacher", 2, 0.97), run("answer-only", 1, 0.6),
                                   run("answer-only", 2, 0.5)]},
                 "mul2": {"max_steps": 1500, "batch_size": 64,
                          "runs": [run("teacher", 1, 0.4), run("answer-only", 1, 0.45),
                                   {"name": "answer-only", "mode": "answer-only", "seed": 2, "test_exact_match": None}]}}
    rows = trace_map_rows(summaries)
    assert [r["task"] for r in rows] == ["sub3", "mul2"]
    assert rows[0]["teacher"]["mean"] == pytest.approx(0.98) and rows[0]["gap"] == pytest.approx(0.97 - 0.6)
    assert rows[1]["answer-only"]["seeds"] == [0.45] and rows[1]["gap"] == pytest.approx(-0.05)
    fig = plot_trace_map(summaries)
    assert [t.name for t in fig.data][:2] == ["with the trace", "with the trace: seeds"]
    assert list(fig.data[0].y) == pytest.approx([0.98, 0.4]) and list(fig.data[3].y) == [0.6, 0.5, 0.45]
    assert save_trace_map_png(summaries, tmp_path / "m.png").stat().st_size > 1000
