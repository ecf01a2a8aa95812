"""What does a free-thinking model write? Its think traces, their token statistics, and how much each think
position tells about the true carries and column sums (plug-in mutual information, in bits, beside the same
estimate on shuffled labels)::

    traces = collect_think_traces(load("checkpoints/free_gumbel_add4"), load_split("data/test.jsonl")[:2000])
    stats = token_statistics(traces)                 # counts [position, token], entropy per position
    table = think_label_information(traces)          # MI(position's token; carry_j / column_sum_j / ...)
    table.excess()                                   # MI minus the shuffled-label baseline

Labels (``column_labels``), per column j of the sum, least significant first: ``carry_in_j`` (0 for j = 0),
``column_sum_j`` (the column's digits plus the carry in: what the human trace writes after ``=``),
``carry_out_j`` (``column_sum_j // 10``) and ``sum_digit_j`` (the answer's digit, ``column_sum_j % 10``).
Columns beyond a problem's longest operand hold only the carry in, so every problem has every column.

The plug-in estimate ``H(X) + H(Y) - H(X, Y)`` from counts is biased upwards by roughly
``(|X| - 1)(|Y| - 1) / (2 n ln 2)`` bits for independent variables; the shuffled baseline (the same
estimate after permuting the labels, which destroys any dependence but keeps both marginals) measures that
bias on the data at hand, so read ``mi - baseline`` and compare it with ``H(label)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from mathllm.arithmetic import addition_columns, count_carries
from mathllm.evaluate import model_and_mode
from mathllm.text import parse_answer, split_text, think_block
from mathllm.tokenizer import TOKENIZER, VOCAB
from mathllm.training_mode import TrainingMode


# ----------------------------------------------------------------------------------------------
# Collecting traces
# ----------------------------------------------------------------------------------------------

@dataclass
class ThinkTraces:
    """The think tokens a model wrote for each problem, with the problem and whether the answer was right."""

    prompts: list[str]
    operands: list[list[int]]
    think_ids: list[list[int]]  # token ids between <think> and </think> ([] when the model wrote no block)
    completions: list[str]
    model_answers: list[Optional[int]]
    correct: list[bool]
    mode: str = "teacher"

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.correct)) if self.correct else float("nan")

    def examples(self, n: int = 10, only: Optional[bool] = None) -> list[str]:
        """``n`` lines ``prompt + completion`` (only right ones, only wrong ones, or any)."""
        rows = [i for i in range(len(self)) if only is None or self.correct[i] == only]
        return [self.prompts[i] + self.completions[i] for i in rows[:n]]

    def token_matrix(self, pad: int = -1) -> np.ndarray:
        """``[n, K_max]`` think token ids, ``pad`` where a trace is shorter."""
        width = max((len(t) for t in self.think_ids), default=0)
        out = np.full((len(self), width), pad, dtype=np.int64)
        for i, t in enumerate(self.think_ids):
            out[i, : len(t)] = t
        return out


def collect_think_traces(model, examples: Sequence[dict[str, Any]], batch_size: int = 128,
                         max_new_tokens: Optional[int] = None, mode: Optional[TrainingMode] = None) -> ThinkTraces:
    """Greedy completions of ``examples`` (dicts from ``mathllm.data.load_split``) the way the model's mode is
    used (a ``TrainedModel`` from ``mathllm.checkpoints.load``: a gumbel model writes its own think tokens), parsed."""
    model, mode = model_and_mode(model, mode)
    prompts = [split_text(ex["text"]).prompt for ex in examples]
    if max_new_tokens is None:
        max_new_tokens = max((len(TOKENIZER.encode(ex["text"])) for ex in examples), default=8) + 4
    completions = mode.generate(model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    think_ids, answers, correct = [], [], []
    for ex, c in zip(examples, completions):
        think_ids.append(think_tokens(c))
        got = parse_answer(c, ex.get("format", "cot"))
        answers.append(got)
        correct.append(got == ex["answer"])
    return ThinkTraces(prompts, [list(ex["operands"]) for ex in examples], think_ids, completions, answers, correct,
                       mode.name)


def think_tokens(completion: str) -> list[int]:
    """Token ids between ``<think>`` and ``</think>`` in a completion ([] when there is no closed block)."""
    block = think_block(completion)
    return TOKENIZER.encode(block) if block else []


# ----------------------------------------------------------------------------------------------
# Labels: carries and column sums
# ----------------------------------------------------------------------------------------------

def column_labels(operands: Sequence[Sequence[int]], n_columns: Optional[int] = None) -> dict[str, np.ndarray]:
    """Per problem and column j (least significant first): ``carry_in_j``, ``column_sum_j``, ``carry_out_j``,
    ``sum_digit_j``, plus ``num_carries``. ``n_columns`` defaults to the widest sum.

    >>> {k: v.tolist() for k, v in column_labels([[658, 189]], 3).items() if k.startswith("column_sum")}
    {'column_sum_0': [17], 'column_sum_1': [14], 'column_sum_2': [8]}
    """
    if n_columns is None:
        n_columns = max((len(str(sum(ops))) for ops in operands), default=1)
    n = len(operands)
    out = {f"{name}_{j}": np.zeros(n, dtype=np.int64) for j in range(n_columns)
           for name in ("carry_in", "column_sum", "carry_out", "sum_digit")}
    carries = np.zeros(n, dtype=np.int64)
    for i, ops in enumerate(operands):
        for c in addition_columns(ops, n_columns):
            out[f"carry_in_{c.index}"][i] = c.carry_in
            out[f"column_sum_{c.index}"][i] = c.total
            out[f"carry_out_{c.index}"][i] = c.carry_out
            out[f"sum_digit_{c.index}"][i] = c.result_digit
        carries[i] = count_carries(ops)
    out["num_carries"] = carries
    return out


# ----------------------------------------------------------------------------------------------
# Token statistics
# ----------------------------------------------------------------------------------------------

def entropy_bits(values: np.ndarray) -> float:
    """Plug-in entropy (bits) of a sample of discrete values."""
    _, counts = np.unique(np.asarray(values), return_counts=True, axis=0)
    p = counts / counts.sum()
    return float(max(0.0, -(p * np.log2(p)).sum()))


def token_statistics(traces: ThinkTraces) -> dict[str, Any]:
    """Token frequencies per think position.

    Returns ``counts`` ``[K_max, vocab]`` (how often each token id sits at each position), ``frequencies``
    (counts / traces that reach the position), ``entropy_bits`` per position, ``n`` per position, the
    ``tokens_used`` (ids seen anywhere), ``top`` (per position, the 3 most common tokens and their shares),
    ``lengths`` (trace length histogram) and ``distinct_traces`` (how many different traces were written).
    """
    matrix = traces.token_matrix()
    width = matrix.shape[1]
    counts = np.zeros((width, len(VOCAB)), dtype=np.int64)
    for k in range(width):
        col = matrix[:, k]
        col = col[col >= 0]
        np.add.at(counts[k], col, 1)
    n = counts.sum(1)
    freq = counts / np.maximum(n[:, None], 1)
    ent = np.array([entropy_bits(matrix[matrix[:, k] >= 0, k]) if n[k] else 0.0 for k in range(width)])
    top = []
    for k in range(width):
        order = np.argsort(-counts[k])[:3]
        top.append([(VOCAB[t], float(freq[k, t])) for t in order if counts[k, t]])
    lengths = np.bincount([len(t) for t in traces.think_ids]) if len(traces) else np.zeros(1, dtype=np.int64)
    return {"counts": counts, "frequencies": freq, "entropy_bits": ent, "n": n,
            "tokens_used": sorted({int(t) for t in matrix[matrix >= 0].tolist()}), "top": top,
            "lengths": lengths, "distinct_traces": len({tuple(t) for t in traces.think_ids})}


# ----------------------------------------------------------------------------------------------
# Mutual information
# ----------------------------------------------------------------------------------------------

def mutual_information(x: Sequence[int], y: Sequence[int]) -> float:
    """Plug-in mutual information (bits) between two discrete samples of equal length:
    ``H(X) + H(Y) - H(X, Y)`` from the empirical counts.

    >>> round(mutual_information([0, 1, 0, 1], [0, 1, 0, 1]), 6), round(mutual_information([0, 0, 1, 1], [0, 1, 0, 1]), 6)
    (1.0, 0.0)
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-d and equally long, got {x.shape} and {y.shape}")
    if len(x) == 0:
        return float("nan")
    _, xi = np.unique(x, return_inverse=True)
    _, yi = np.unique(y, return_inverse=True)
    joint = np.zeros((xi.max() + 1, yi.max() + 1))
    np.add.at(joint, (xi, yi), 1)
    joint /= joint.sum()
    px, py = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log2(joint[nz] / (px @ py)[nz])).sum())


@dataclass
class InformationTable:
    """MI (bits) between the token at each think position and each label, with a shuffled-label baseline."""

    positions: list[int]
    labels: list[str]
    mi: np.ndarray  # [positions, labels]
    baseline: np.ndarray  # mean MI over `shuffles` permutations of the labels
    baseline_std: np.ndarray
    label_entropy: np.ndarray  # [labels] H(label) in bits over the problems used
    n: np.ndarray  # [positions] problems whose trace reaches the position
    shuffles: int = 0
    notes: list[str] = field(default_factory=list)

    def excess(self) -> np.ndarray:
        """MI above the shuffled baseline, ``[positions, labels]``."""
        return self.mi - self.baseline

    def best(self, top: int = 10) -> list[dict[str, Any]]:
        """The (position, label) pairs with the most excess information, as a fraction of H(label) too."""
        ex = self.excess()
        order = np.dstack(np.unravel_index(np.argsort(-ex, axis=None), ex.shape))[0][:top]
        return [{"position": self.positions[i], "label": self.labels[j], "mi_bits": float(self.mi[i, j]),
                 "baseline_bits": float(self.baseline[i, j]), "excess_bits": float(ex[i, j]),
                 "fraction_of_label_entropy": float(ex[i, j] / self.label_entropy[j]) if self.label_entropy[j] else None}
                for i, j in order]

    def to_dict(self) -> dict[str, Any]:
        return {"positions": self.positions, "labels": self.labels, "mi": self.mi.tolist(),
                "baseline": self.baseline.tolist(), "baseline_std": self.baseline_std.tolist(),
                "label_entropy": self.label_entropy.tolist(), "n": self.n.tolist(), "shuffles": self.shuffles,
                "notes": self.notes}


def think_label_information(traces: ThinkTraces, labels: Optional[dict[str, np.ndarray]] = None,
                            shuffles: int = 10, seed: int = 0, min_count: int = 20) -> InformationTable:
    """MI between the token at each think position and each label (default: ``column_labels`` of the
    problems, constant labels dropped), over the problems whose trace reaches that position (at least
    ``min_count`` of them). The baseline is the mean of the same estimate over ``shuffles`` random
    permutations of the labels among those problems."""
    if labels is None:
        labels = column_labels(traces.operands)
    labels = {name: np.asarray(v) for name, v in labels.items() if len(np.unique(v)) > 1}
    matrix = traces.token_matrix()
    positions = [k for k in range(matrix.shape[1]) if (matrix[:, k] >= 0).sum() >= min_count]
    names = list(labels)
    mi = np.zeros((len(positions), len(names)))
    base = np.zeros_like(mi)
    base_std = np.zeros_like(mi)
    counts = np.zeros(len(positions), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for a, k in enumerate(positions):
        rows = matrix[:, k] >= 0
        tokens = matrix[rows, k]
        counts[a] = rows.sum()
        for b, name in enumerate(names):
            y = labels[name][rows]
            mi[a, b] = mutual_information(tokens, y)
            if shuffles:
                samples = [mutual_information(tokens, rng.permutation(y)) for _ in range(shuffles)]
                base[a, b], base_std[a, b] = float(np.mean(samples)), float(np.std(samples))
    label_h = np.array([entropy_bits(labels[name]) for name in names])
    notes = []
    if len(positions) < matrix.shape[1]:
        notes.append(f"positions reached by fewer than {min_count} traces left out")
    return InformationTable(positions, names, mi, base, base_std, label_h, counts, shuffles, notes)


def summarize(traces: ThinkTraces, table: Optional[InformationTable] = None, examples: int = 8) -> str:
    """A short text report: accuracy, example traces, token use, the most informative positions."""
    stats = token_statistics(traces)
    lines = [f"{len(traces)} problems, mode {traces.mode}, exact match {traces.accuracy:.4f}, "
             f"{stats['distinct_traces']} distinct traces, tokens used: "
             + " ".join(VOCAB[t] for t in stats["tokens_used"])]
    lines += ["  " + e for e in traces.examples(examples)]
    for k, (h, top) in enumerate(zip(stats["entropy_bits"], stats["top"])):
        lines.append(f"  position {k}: H = {h:.2f} bits; " + ", ".join(f"{t!r} {p:.0%}" for t, p in top))
    if table is not None:
        lines.append("most informative (position, label): MI - shuffled baseline, bits (share of H(label))")
        for row in table.best(8):
            share = row["fraction_of_label_entropy"]
            lines.append(f"  pos {row['position']:>2} {row['label']:<14} {row['excess_bits']:.3f}"
                         + (f" ({share:.0%})" if share is not None else ""))
    return "\n".join(lines)


__all__ = ["ThinkTraces", "collect_think_traces", "think_tokens", "column_labels", "entropy_bits",
           "token_statistics", "mutual_information", "InformationTable", "think_label_information", "summarize"]
