"""Looking inside: attention maps, linear probes, the logit lens, activation patching, trace faithfulness.

One submodule per tool; the notebooks call them (05 attention, 06 probes and the logit lens, 07 patching and
faithfulness) and ``mathllm.plots`` draws their results.

* ``positions``: names every token by its role (``a0``, ``=``, ``s1.r0``, ``ans2``, ...) so positions line up
  across problems; the quantities the reasoning needs (carries, column sums, answer digits); problems to use.
* ``attention``: attention patterns for one expression or averaged over problems that line up.
* ``probes``: residual streams cached over a dataset, linear probes per layer x position kind, with a
  shuffled-label control and a majority baseline.
* ``lens``: the logit lens, for one expression or as accuracy over a dataset.
* ``patching``: clean/corrupted pairs and ``transformer_lens.patching`` sweeps, plus a hand-written check.
* ``faithfulness``: edit one step of the think block; does the answer follow?

``hook_names(cfg)`` lists every hook the toolkit reads, so a test can check they all exist in the model's cache.
"""

from __future__ import annotations

from mathllm.interp.attention import (AttentionPatterns, attention_patterns, circuitsvis_attention,
                                      mean_attention, pattern_hook_names)
from mathllm.interp.faithfulness import EDITS, FaithfulnessResult, edit_trace, implied_answer, trace_faithfulness
from mathllm.interp.lens import LensAccuracy, LogitLens, logit_lens, logit_lens_accuracy
from mathllm.interp.patching import (PatchingPairs, PatchingResult, carry_flip_pairs, digit_change_pairs,
                                     manual_patch, patch_blocks, patch_heads, patch_residual, patching_hook_names)
from mathllm.interp.positions import (describe_quantity, heldout_problems, label_table, position_kinds,
                                      quantities, same_template_problems, sample_problems, template_of)
from mathllm.interp.probes import Activations, ProbeResults, cache_activations, fit_probes, residual_streams


def hook_names(cfg) -> list[str]:
    """Every hook point the toolkit reads or patches, for a model config (no duplicates, in a stable order)."""
    names = [hook for _, hook in residual_streams(cfg)] + pattern_hook_names(cfg) + patching_hook_names(cfg)
    return list(dict.fromkeys(names))


__all__ = [
    "hook_names", "position_kinds", "quantities", "label_table", "describe_quantity", "sample_problems",
    "heldout_problems", "same_template_problems", "template_of", "AttentionPatterns", "attention_patterns",
    "mean_attention", "circuitsvis_attention", "Activations", "ProbeResults", "cache_activations", "fit_probes",
    "residual_streams", "LogitLens", "LensAccuracy", "logit_lens", "logit_lens_accuracy", "PatchingPairs",
    "PatchingResult", "digit_change_pairs", "carry_flip_pairs", "patch_residual", "patch_blocks", "patch_heads",
    "manual_patch", "EDITS", "FaithfulnessResult", "edit_trace", "implied_answer", "trace_faithfulness",
]
