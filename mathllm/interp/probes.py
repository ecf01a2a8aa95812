"""Linear probes: what can be read, linearly, from the residual stream, at which layer and position.

    acts = cache_activations(model, examples)          # residual streams at every position kind
    results = fit_probes(acts)                         # every quantity x stream x position kind
    print(results.format_summary())

``cache_activations`` runs the model over a list of problems and keeps, for every residual stream (``embed``,
then ``L0`` ... ``L{n-1}``: after each block) and every position kind (``a0``, ``=``, ``s1.r0``, ``ans2``, ...;
see ``mathllm.interp.positions``), the activation vector of each problem that has that kind.

``fit_probes`` fits one linear classifier per (quantity, stream, kind) on a train split *of the problems*
and reports, on the held-out problems:

* ``accuracy``: the probe's accuracy;
* ``control``: the same probe fit on the same features with the labels shuffled across problems (a control
  task in the sense of Hewitt & Liang 2019: a probe that does as well here is memorising, not reading);
* ``majority``: always guessing the most common training label.

Only accuracy clearly above both baselines means the stream holds the quantity. A second control is to run the
same probes on a randomly initialised model of the same shape (``MathTransformer(model.cfg)``): what it also
finds (an operand digit read at its own position, say) says nothing about what training taught.

The classifier is linear discriminant analysis on standardised features, the shared within-class covariance
shrunk slightly towards the identity (``shrinkage=1e-4``). It is closed form (one Gram matrix per cell, one
batched Cholesky solve for all quantities and their controls), because the full grid is hundreds of cells times
~20 quantities and must fit in seconds on a CPU. ``method="logistic"`` fits multinomial logistic regression with
full-batch L-BFGS instead (the same family of linear classifiers, about 100x slower); ``fit_logistic_probe``
does one cell. On the shipped model the two agree to within a few points, LDA a little higher on average
(notebook 06 compares them); with much more shrinkage (0.05) LDA fell up to 19 points behind on some cells.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mathllm.interp.positions import describe_quantity, kind_counts, label_table, position_kinds
from mathllm.tokenizer import PAD_ID, TOKENIZER
from mathllm.utils import eval_mode


def residual_streams(cfg) -> list[tuple[str, str]]:
    """``[(label, hook name)]``: ``embed`` (the input to block 0), then ``L{l}`` = the stream after block l."""
    n = cfg.n_layers
    return [("embed", "blocks.0.hook_resid_pre")] + [
        (f"L{l}", f"blocks.{l + 1}.hook_resid_pre" if l + 1 < n else f"blocks.{l}.hook_resid_post")
        for l in range(n)
    ]


@dataclass
class Activations:
    """Residual-stream vectors at named positions, for a list of problems."""

    examples: list[dict[str, Any]]
    streams: list[str]  # labels: "embed", "L0", ...
    hook_names: list[str]  # the hook each stream was read from
    kinds: list[str]  # position kinds, in sequence order
    acts: torch.Tensor  # [stream, example, kind, d_model] float32; zeros where the kind is absent
    present: torch.Tensor  # [example, kind] bool
    positions: torch.Tensor  # [example, kind] long token index; -1 where absent

    def cell(self, stream: str, kind: str) -> tuple[torch.Tensor, np.ndarray]:
        """``(vectors [n, d_model], example indices [n])`` of the problems that have ``kind``."""
        s, k = self.streams.index(stream), self.kinds.index(kind)
        rows = self.present[:, k].nonzero().flatten()
        return self.acts[s, rows, k], rows.numpy()


def _tokenize(examples: Sequence[Mapping[str, Any] | str]) -> list[list[int]]:
    return [TOKENIZER.encode(ex if isinstance(ex, str) else ex["text"]) for ex in examples]


@torch.inference_mode()
def cache_activations(model, examples: Sequence[Mapping[str, Any]], kinds: Sequence[str] | None = None,
                      min_fraction: float = 0.05, batch_size: int = 256,
                      streams: Sequence[tuple[str, str]] | None = None) -> Activations:
    """Run ``model`` over the problems' texts and keep the residual streams at each position kind.

    ``kinds`` defaults to every kind that occurs in at least ``min_fraction`` of the problems. Sequences are
    right-padded within a batch, which changes nothing at the real positions (attention is causal).
    """
    examples = list(examples)
    if not examples:
        raise ValueError("cache_activations needs at least one example")
    streams = list(streams) if streams is not None else residual_streams(model.cfg)
    labels, hooks = [s[0] for s in streams], [s[1] for s in streams]
    if kinds is None:
        counts = kind_counts(examples)
        kinds = [k for k, c in counts.items() if c >= max(1, min_fraction * len(examples)) and k != "<pad>"]
    kinds = list(kinds)
    column = {k: i for i, k in enumerate(kinds)}
    ids = _tokenize(examples)
    n, K, d = len(examples), len(kinds), model.cfg.d_model
    positions = torch.full((n, K), -1, dtype=torch.long)
    for row, seq in enumerate(ids):
        for pos, kind in enumerate(position_kinds(TOKENIZER.str_tokens(seq))):
            if kind in column:
                positions[row, column[kind]] = pos
    present = positions >= 0
    acts = torch.zeros((len(hooks), n, K, d), dtype=torch.float32)
    device = model.W_E.device
    hook_set = set(hooks)
    with eval_mode(model):
        order = sorted(range(n), key=lambda i: len(ids[i]))  # similar lengths together: little padding
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            width = max(len(ids[i]) for i in rows)
            batch = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
            for r, i in enumerate(rows):
                batch[r, : len(ids[i])] = torch.tensor(ids[i])
            _, cache = model.run_with_cache(batch.to(device), names_filter=lambda name: name in hook_set,
                                            return_cache_object=False)
            index = torch.tensor(rows)
            pos = positions[index].clamp(min=0).to(device)  # [b, K]
            mask = present[index].to(device).unsqueeze(-1)
            for s, hook in enumerate(hooks):
                resid = cache[hook]  # [b, width, d]
                picked = resid.gather(1, pos.unsqueeze(-1).expand(-1, -1, d)) * mask
                acts[s, index] = picked.float().cpu()
    return Activations(examples, labels, hooks, kinds, acts, present, positions)


# ----------------------------------------------------------------------------------------------
# Fitting
# ----------------------------------------------------------------------------------------------

@dataclass
class ProbeResults:
    """Held-out accuracies of probes for each quantity x stream x position kind (NaN: not fit)."""

    quantities: list[str]
    streams: list[str]
    kinds: list[str]
    accuracy: np.ndarray  # [quantity, stream, kind]
    control: np.ndarray  # [quantity, stream, kind] shuffled-label control
    majority: np.ndarray  # [quantity, stream, kind] majority-class baseline
    n_train: np.ndarray  # [kind] problems in the train split that have the kind
    n_test: np.ndarray  # [kind] held-out problems that have the kind
    method: str = "lda"
    meta: dict[str, Any] = field(default_factory=dict)

    def describe(self, quantity: str) -> str:
        """What a quantity is, in words: ``"carry_in[1]"`` -> ``"carry into column 1"``."""
        return describe_quantity(quantity)

    def _index(self, quantity: str, stream: str, kind: str) -> tuple[int, int, int]:
        return self.quantities.index(quantity), self.streams.index(stream), self.kinds.index(kind)

    def cell(self, quantity: str, stream: str, kind: str) -> dict[str, Any]:
        q, s, k = self._index(quantity, stream, kind)
        return {"quantity": quantity, "stream": stream, "kind": kind, "accuracy": float(self.accuracy[q, s, k]),
                "control": float(self.control[q, s, k]), "majority": float(self.majority[q, s, k]),
                "n_train": int(self.n_train[k]), "n_test": int(self.n_test[k])}

    def baseline(self) -> np.ndarray:
        """``max(control, majority)`` per cell: what a probe must beat."""
        return np.fmax(self.control, self.majority)

    def standard_error(self) -> np.ndarray:
        """Binomial standard error of each held-out accuracy, ``[quantity, stream, kind]``."""
        n = np.maximum(self.n_test, 1)[None, None, :]
        p = np.nan_to_num(self.accuracy)
        return np.sqrt(p * (1 - p) / n)

    def meaningful(self, margin: float = 0.05, num_se: float = 3.0) -> np.ndarray:
        """Cells whose accuracy beats the baseline by ``margin`` and by ``num_se`` standard errors."""
        gap = self.accuracy - self.baseline()
        se = np.sqrt(np.maximum(self.baseline() * (1 - self.baseline()), 1e-4)
                     / np.maximum(self.n_test, 1)[None, None, :])
        return np.nan_to_num(gap) > np.maximum(margin, num_se * se)

    def best(self, quantity: str, meaningful_only: bool = False) -> dict[str, Any] | None:
        """The cell with the highest held-out accuracy for a quantity (ties: earliest stream, then kind)."""
        q = self.quantities.index(quantity)
        acc = np.where(np.isnan(self.accuracy[q]), -1.0, self.accuracy[q])
        if meaningful_only:
            acc = np.where(self.meaningful()[q], acc, -1.0)
        if acc.max() < 0:
            return None
        s, k = np.unravel_index(int(np.argmax(acc)), acc.shape)
        return self.cell(quantity, self.streams[s], self.kinds[k])

    def first_readable(self, quantity: str, threshold: float = 0.95) -> dict[str, Any] | None:
        """The earliest position (then the earliest stream there) where the quantity is read with at least
        ``threshold`` accuracy and meaningfully above its baselines."""
        q = self.quantities.index(quantity)
        ok = (np.nan_to_num(self.accuracy[q]) >= threshold) & self.meaningful()[q]
        for k in range(len(self.kinds)):
            for s in range(len(self.streams)):
                if ok[s, k]:
                    return self.cell(quantity, self.streams[s], self.kinds[k])
        return None

    def summary(self) -> list[dict[str, Any]]:
        """Per quantity: the best cell among those that beat the baselines (``meaningful``; when none does, the
        best cell of all), and where the quantity is first read with >= 95 % accuracy."""
        rows = []
        for name in self.quantities:
            best = self.best(name, meaningful_only=True) or self.best(name)
            if best is None:
                continue
            first = self.first_readable(name)
            best["first_95"] = f"{first['stream']} @ {first['kind']}" if first else "never"
            rows.append(best)
        return rows

    def format_summary(self) -> str:
        lines = [f"{'quantity':<13} {'best cell':<18} {'held-out':>8} {'control':>8} {'majority':>8} "
                 f"{'n test':>7}   first >= 95 %"]
        for r in self.summary():
            lines.append(f"{r['quantity']:<13} {r['stream'] + ' @ ' + r['kind']:<18} {r['accuracy']:>8.1%} "
                         f"{r['control']:>8.1%} {r['majority']:>8.1%} {r['n_test']:>7}   {r['first_95']}")
        return "\n".join(lines)


def _standardize(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = train.mean(0)
    std = train.std(0, unbiased=False)
    std = torch.where(std > 1e-6 * (std.max() + 1e-12), std, torch.ones_like(std))  # constant features
    return (train - mean) / std, (test - mean) / std


def _lda_predict(z_train: torch.Tensor, labels: torch.Tensor, z_test: torch.Tensor, num_classes: int,
                 shrinkage: float) -> torch.Tensor:
    """Linear discriminant analysis for several label sets at once.

    ``z_train [n, d]`` (standardised: every feature has variance 1), ``labels [q, n]`` (class ids
    < num_classes), ``z_test [m, d]``; returns predictions ``[q, m]``. Shared within-class covariance ``W``,
    shrunk towards the identity (the total covariance's scale after standardising):
    ``(1 - shrinkage) * W + shrinkage * I``; class priors from the training counts.
    """
    q, n = labels.shape
    d = z_train.shape[1]
    z = z_train.float()
    gram = z.T @ z  # [d, d], shared by every label set
    counts = torch.zeros((q, num_classes))
    counts.scatter_add_(1, labels, torch.ones(labels.shape))
    sums = torch.zeros((q, num_classes, d))
    for j in range(q):
        sums[j].index_add_(0, labels[j], z)
    means = sums / counts.clamp(min=1).unsqueeze(-1)
    within = gram.unsqueeze(0) - sums.transpose(1, 2) @ means  # [q, d, d]: the within-class scatter
    present = counts > 0
    dof = (n - present.sum(1)).clamp(min=1)
    cov = within / dof[:, None, None]
    cov = (1 - shrinkage) * 0.5 * (cov + cov.transpose(1, 2)) + shrinkage * torch.eye(d)
    chol, info = torch.linalg.cholesky_ex(cov)
    if bool((info != 0).any()):  # float rounding made a nearly singular W indefinite: lean on the identity
        chol = torch.linalg.cholesky(cov + 1e-3 * torch.eye(d))
    weights = torch.cholesky_solve(means.transpose(1, 2), chol)  # [q, d, C]  W^-1 mu_c
    bias = -0.5 * (means * weights.transpose(1, 2)).sum(-1) + torch.log(counts.clamp(min=1) / n)
    bias = torch.where(present, bias, torch.full_like(bias, -math.inf))
    m = z_test.shape[0]
    logits = (z_test.float() @ weights.permute(1, 0, 2).reshape(d, q * num_classes)).view(m, q, num_classes)
    return (logits + bias).argmax(-1).T  # [q, m]


def fit_logistic_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                       num_classes: int | None = None, l2: float = 1e-3, max_iter: int = 100) -> torch.Tensor:
    """Multinomial logistic regression (standardised features, L2 penalty ``l2`` on the weights, full-batch
    L-BFGS); returns the predicted classes of ``x_test``."""
    z_train, z_test = _standardize(x_train.float(), x_test.float())
    num_classes = int(y_train.max()) + 1 if num_classes is None else num_classes
    d = z_train.shape[1]
    weight = torch.zeros((d, num_classes), requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9)
    y = y_train.long()

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z_train @ weight + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        return (z_test @ weight + bias).argmax(-1)


def split_examples(n: int, test_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """A boolean ``[n]`` mask of held-out problems (a seeded random ``test_fraction`` of them)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    test = np.zeros(n, dtype=bool)
    test[order[: max(1, int(round(test_fraction * n)))]] = True
    return test


def fit_probes(acts: Activations, labels: Mapping[str, np.ndarray] | None = None,
               quantities: Sequence[str] | None = None, test_fraction: float = 0.2, seed: int = 0,
               method: str = "lda", shrinkage: float = 1e-4, min_train: int = 30, min_test: int = 10,
               streams: Sequence[str] | None = None, kinds: Sequence[str] | None = None) -> ProbeResults:
    """Fit and score probes for every quantity x stream x position kind (see the module docstring).

    ``labels`` defaults to ``label_table(acts.examples, seed=seed)`` (every quantity, plus ``random``).
    The split is by problem: a held-out problem is held out at every position. The shuffled-label control
    permutes each quantity's labels across all problems once (seeded), then uses the same split.
    Cells with fewer than ``min_train`` / ``min_test`` problems are left NaN.
    """
    if method not in ("lda", "logistic"):
        raise ValueError(f"method must be 'lda' or 'logistic', got {method!r}")
    labels = label_table(acts.examples, seed=seed) if labels is None else labels
    quantities = list(labels) if quantities is None else list(quantities)
    unknown = [q for q in quantities if q not in labels]
    if unknown:
        raise ValueError(f"no labels for {unknown}; known: {list(labels)}")
    stream_list = list(acts.streams) if streams is None else list(streams)
    kind_list = list(acts.kinds) if kinds is None else list(kinds)
    n = len(acts.examples)
    test_mask = torch.from_numpy(split_examples(n, test_fraction, seed))
    rng = np.random.default_rng(seed + 1)
    true = np.stack([np.asarray(labels[q], dtype=np.int64) for q in quantities])  # [Q, n]
    if true.shape[1] != n:
        raise ValueError(f"labels have {true.shape[1]} entries for {n} examples")
    if true.min() < 0:
        raise ValueError("labels must be non-negative class ids")
    shuffled = np.stack([row[rng.permutation(n)] for row in true])
    all_labels = torch.from_numpy(np.concatenate([true, shuffled]))  # [2Q, n]
    num_classes = int(all_labels.max()) + 1
    Q = len(quantities)
    shape = (Q, len(stream_list), len(kind_list))
    accuracy, control, majority = (np.full(shape, np.nan) for _ in range(3))
    n_train = np.zeros(len(kind_list), dtype=np.int64)
    n_test = np.zeros(len(kind_list), dtype=np.int64)
    for k, kind in enumerate(kind_list):
        kk = acts.kinds.index(kind)
        present = acts.present[:, kk]
        train_rows = (present & ~test_mask).nonzero().flatten()
        test_rows = (present & test_mask).nonzero().flatten()
        n_train[k], n_test[k] = len(train_rows), len(test_rows)
        if len(train_rows) < min_train or len(test_rows) < min_test:
            continue
        y_train, y_test = all_labels[:, train_rows], all_labels[:, test_rows]
        for q in range(Q):
            counts = torch.bincount(y_train[q], minlength=num_classes)
            majority[q, :, k] = (y_test[q] == counts.argmax()).float().mean().item()
        for s, stream in enumerate(stream_list):
            ss = acts.streams.index(stream)
            x_train, x_test = _standardize(acts.acts[ss, train_rows, kk], acts.acts[ss, test_rows, kk])
            if method == "lda":
                pred = _lda_predict(x_train, y_train, x_test, num_classes, shrinkage)
            else:
                pred = torch.stack([fit_logistic_probe(x_train, y_train[j], x_test, num_classes)
                                    for j in range(2 * Q)])
            right = (pred == y_test).float().mean(1).numpy()
            accuracy[:, s, k], control[:, s, k] = right[:Q], right[Q:]
    return ProbeResults(quantities, stream_list, kind_list, accuracy, control, majority, n_train, n_test,
                        method, {"test_fraction": test_fraction, "seed": seed, "shrinkage": shrinkage,
                                 "num_examples": n})


__all__ = ["residual_streams", "Activations", "cache_activations", "ProbeResults", "fit_probes",
           "fit_logistic_probe", "split_examples"]
