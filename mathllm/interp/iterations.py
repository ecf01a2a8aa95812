"""What the iterations of a looped answer-slots model compute: the lens after every layer of every iteration,
probes per (iteration, position), patching across iterations, and the state run past the trained count.

The model reads ``0012+0034=`` then one ``<pause>`` slot per answer digit (``mathllm.modes.slots``); every slot
is scored on its own answer digit, so the state at slot ``ans{c}`` after any number of iterations can be read with
the logit lens (the final LayerNorm and the unembedding, ``mathllm.interp.lens.lens_logits``)::

    trained = load("checkpoints/looped_add4")
    problems = chain_problem_sets(4, per_k=100)                 # {k: [(a, b), ...]} for k = 0..4
    lens = iteration_lens(trained, problems, max_loops=8)        # right/wrong per depth step, problem and digit
    lens.steps_to_answer()                                       # per k: the depth at which the answer settles

* ``iteration_lens``: after every layer of every iteration (``depth`` steps ``it1.L0``, ``it1.L1``, ``it2.L0``, ...),
  is each answer digit right? For each carry-chain length k, the first depth from which the whole answer stays
  right tells the algorithm: growing linearly with k is a ripple carry (one column per step, the human algorithm),
  about log k is a carry lookahead, flat is something else (every chain resolved at once).
* ``iteration_probes``: linear probes (``mathllm.interp.probes.fit_probes``: LDA, shuffled-label control, majority
  baseline) per (iteration, position) for the column sums, the generate and propagate flags (sum >= 10, sum = 9)
  and the carry into each column; run it on an untrained model of the same shape for the second control.
* ``carry_flip_patching``: clean/corrupted pairs differing in one digit so that a whole carry chain disappears;
  the clean state at (iteration, position) is patched into the corrupted run and the logit difference at the slot
  where the chain ends is measured (0: no effect, 1: the clean answer restored).
* ``state_drift``: how much the state moves per iteration, up to well past the trained count (a fixed point would
  move less and less).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mathllm.chains import TEST_SEED, carry_chain, chain_problems, planted_problem
from mathllm.evaluate import model_and_mode
from mathllm.interp.lens import lens_logits
from mathllm.interp.positions import position_kinds, quantities
from mathllm.interp.probes import Activations, ProbeResults, fit_probes
from mathllm.tokenizer import PAUSE_ID, TOKENIZER
from mathllm.utils import eval_mode


# ----------------------------------------------------------------------------------------------
# Inputs: problems of one shape, rendered with their slots
# ----------------------------------------------------------------------------------------------

def _slot_rendering(mode) -> Any:
    """The mode's ``line`` (answer in place of the slots), for answer-slots models only."""
    line = getattr(mode, "line", None)
    if line is None:
        raise ValueError(f"the iterations toolkit reads answer-slots models; this one was trained in mode {mode.name!r}")
    return line


@dataclass
class SlotBatch:
    """Problems rendered in a slots model's format, all of one token length."""

    operands: list[tuple[int, ...]]
    lines: list[str]  # "0012+0034=00046<end>": the answer in place of the slots
    inputs: torch.Tensor  # [n, T] the slots as <pause>
    targets: torch.Tensor  # [n, T] the answer tokens (the lines' ids)
    first_slot: int  # position of the first slot
    kinds: list[str]  # position kinds of the lines (a3 ... b0, =, ans4 ... ans0, <end>)
    chains: list[int] = field(default_factory=list)  # each problem's carry-chain length

    @property
    def input_lines(self) -> list[str]:
        """What the model reads: the problems with their slots (``0012+0034=<pause>...``)."""
        return [TOKENIZER.decode(ids) for ids in self.inputs]

    @property
    def columns(self) -> int:
        """Answer digits (slots minus ``<end>``)."""
        return self.inputs.shape[1] - self.first_slot - 1

    def slot_of_column(self, column: int) -> int:
        """Position of the slot that holds answer digit ``column`` (0 = units)."""
        return self.first_slot + self.columns - 1 - column


def slot_batch(mode, problems: Sequence[Sequence[int]]) -> SlotBatch:
    """Render ``problems`` (operand tuples of additions) with ``mode``'s slots; they must share one token length
    (with zero-padded operands every problem of up to N digits does)."""
    line = _slot_rendering(mode)
    if not problems:
        raise ValueError("no problems")
    lines = [line("+".join(str(x) for x in p) + "=") for p in problems]
    ids = [TOKENIZER.encode(t) for t in lines]
    if len({len(x) for x in ids}) != 1:
        raise ValueError("the problems do not line up: render them with zero-padded operands (pad_operands) or draw "
                         "them of one shape")
    targets = torch.tensor(ids)
    first = lines[0].index("=")
    first_slot = len(TOKENIZER.encode(lines[0][: first + 1]))
    inputs = targets.clone()
    inputs[:, first_slot:] = PAUSE_ID
    return SlotBatch([tuple(p) for p in problems], lines, inputs, targets, first_slot, position_kinds(lines[0]),
                     [carry_chain(p) for p in problems])


def chain_problem_sets(max_digits: int, per_k: int = 100, seed: int = TEST_SEED) -> dict[int, list[tuple[int, int]]]:
    """``{k: problems}`` with a carry chain of exactly k, k = 0..max_digits (``mathllm.chains.chain_problems``)."""
    rng = random.Random(seed)
    return {k: chain_problems(rng, max_digits, k, per_k) for k in range(max_digits + 1)}


# ----------------------------------------------------------------------------------------------
# States after every layer of every iteration
# ----------------------------------------------------------------------------------------------

def depth_labels(n_layers: int, loops: int) -> list[str]:
    """``["it1.L0", "it1.L1", "it2.L0", ...]``: the residual stream after each layer of each iteration."""
    return [f"it{i + 1}.L{l}" for i in range(loops) for l in range(n_layers)]


@torch.inference_mode()
def depth_states(model, inputs: torch.Tensor, loops: int, positions: Sequence[int] | None = None,
                 batch_size: int = 512) -> torch.Tensor:
    """``[depth, n, pos, d_model]``: the residual stream after every layer of every one of ``loops`` iterations
    (``depth_labels``), at ``positions`` (default: all)."""
    n_layers = model.cfg.n_layers
    names = {f"blocks.{l}.hook_resid_post" for l in range(n_layers)}
    out = []
    device = model.W_E.device
    with eval_mode(model), model.looping(loops):
        for start in range(0, len(inputs), batch_size):
            seen: list[torch.Tensor] = []

            def keep(resid, hook):
                seen.append(resid if positions is None else resid[:, list(positions)])
                return resid

            model.run_with_hooks(inputs[start : start + batch_size].to(device), return_type=None,
                                 fwd_hooks=[(lambda name: name in names, keep)])
            out.append(torch.stack(seen).float().cpu())
    return torch.cat(out, dim=1)


# ----------------------------------------------------------------------------------------------
# The logit lens by depth
# ----------------------------------------------------------------------------------------------

@dataclass
class IterationLens:
    """Per depth step (``labels``), problem and answer column: is the lens's digit right?"""

    labels: list[str]  # depth steps: it1.L0, it1.L1, ...
    n_layers: int
    trained_loops: int
    chains: np.ndarray  # [n] each problem's carry-chain length
    right: np.ndarray  # [depth, n, column] bool; column 0 = units
    end_right: np.ndarray  # [depth, n] the <end> slot right
    meta: dict[str, Any] = field(default_factory=dict)
    digits: np.ndarray | None = None  # [n, column] the answer digits (column 0 = units), when known

    @property
    def exact(self) -> np.ndarray:
        """``[depth, n]``: every answer digit and ``<end>`` right."""
        return self.right.all(-1) & self.end_right

    def iteration_rows(self) -> list[int]:
        """The depth steps that end an iteration (what a run with that many iterations outputs)."""
        return [i * self.n_layers + self.n_layers - 1 for i in range(len(self.labels) // self.n_layers)]

    def first_settled(self) -> np.ndarray:
        """``[n, column]``: the first depth step (1-based) from which the digit stays right through the trained
        iterations (``depth + 1``, one more than the last step, when it never settles)."""
        horizon = self.trained_loops * self.n_layers
        right = self.right[:horizon]
        depth = right.shape[0]
        stays = np.flip(np.cumprod(np.flip(right, 0), 0), 0).astype(bool)  # right from here to the horizon
        first = np.where(stays.any(0), stays.argmax(0) + 1, depth + 1)
        return first

    def steps_to_answer(self) -> dict[int, dict[str, float]]:
        """Per chain length k: mean (and max) first depth step from which the whole answer stays right, and the
        share of problems for which that happens within the trained iterations."""
        first = self.first_settled().max(-1)
        horizon = self.trained_loops * self.n_layers
        out = {}
        for k in sorted(set(self.chains.tolist())):
            rows = self.chains == k
            ok = first[rows] <= horizon
            out[int(k)] = {"mean_step": float(first[rows][ok].mean()) if ok.any() else float("nan"),
                           "max_step": float(first[rows][ok].max()) if ok.any() else float("nan"),
                           "settled": float(ok.mean()), "count": int(rows.sum())}
        return out

    def accuracy_by_depth(self) -> dict[int, list[float]]:
        """Per chain length k: the share of problems whose whole answer is right at each depth step."""
        return {int(k): self.exact[:, self.chains == k].mean(1).tolist() for k in sorted(set(self.chains.tolist()))}

    def chain_end_steps(self, batch_columns: Sequence[Sequence[int]] | None = None) -> dict[int, float]:
        """Per k: mean first settled step of the digit where each problem's longest chain ends (the digit that needs
        every carry of the chain), or of ``batch_columns[i]`` when given."""
        first = self.first_settled()
        columns = self.meta.get("chain_end_columns") if batch_columns is None else batch_columns
        out = {}
        for k in sorted(set(self.chains.tolist())):
            values = [first[i, columns[i]] for i in np.flatnonzero(self.chains == k) if columns[i] is not None]
            out[int(k)] = float(np.mean(values)) if values else float("nan")
        return out

    def steps_by_digit(self) -> dict[int, float]:
        """Per answer digit value 0..9: the mean first settled step (``first_settled``) of the digits with that value,
        over every problem and column. A lens that reads one value early by default (a 0, say) makes answers full of
        that value look settled early, whatever computed them."""
        if self.digits is None:
            raise ValueError("the answer digits are not recorded (iteration_lens records them)")
        first = self.first_settled()
        return {d: float(first[self.digits == d].mean()) for d in range(10) if (self.digits == d).any()}

    def digit_steps(self, exclude: Sequence[int] = (0,)) -> dict[int, float]:
        """Per chain length k: the mean first settled step of the answer digits whose value is not in ``exclude``
        (default: every digit but 0), so that chains are compared on the digits that must be computed."""
        if self.digits is None:
            raise ValueError("the answer digits are not recorded (iteration_lens records them)")
        first = self.first_settled()
        keep = ~np.isin(self.digits, list(exclude))
        out = {}
        for k in sorted(set(self.chains.tolist())):
            cells = keep & (self.chains == k)[:, None]
            out[int(k)] = float(first[cells].mean()) if cells.any() else float("nan")
        return out

    def summary(self) -> str:
        """One line per k: mean steps until the whole answer settles (of ``n_layers`` x trained L)."""
        horizon = self.trained_loops * self.n_layers
        lines = [f"depth steps (layer outputs) until the whole answer stays right, of {horizon} "
                 f"({self.trained_loops} iterations x {self.n_layers} layers)"]
        for k, row in self.steps_to_answer().items():
            lines.append(f"  k={k}: mean {row['mean_step']:.2f}, max {row['max_step']:.0f}, settled "
                         f"{row['settled']:.1%} (n={row['count']})")
        return "\n".join(lines)


def chain_end_column(operands: Sequence[int]) -> int | None:
    """The answer column where the problem's longest carry chain ends (the column that receives its last carry)."""
    values, carry, run, best, end, column = list(operands), 0, 0, 0, None, 0
    while any(values) or carry:
        total = sum(x % 10 for x in values) + carry
        carry = total // 10
        run = run + 1 if carry else 0
        if run > best:
            best, end = run, column + 1
        values = [x // 10 for x in values]
        column += 1
    return end


def iteration_lens(model, problems: Mapping[int, Sequence[Sequence[int]]] | Sequence[Sequence[int]],
                   max_loops: int | None = None, mode=None) -> IterationLens:
    """The lens at every depth step of ``max_loops`` iterations (default: twice the trained count) over ``problems``
    (a list, or ``{k: list}`` as ``chain_problem_sets`` gives)."""
    net, mode = model_and_mode(model, mode)
    flat = [p for group in problems.values() for p in group] if isinstance(problems, Mapping) else list(problems)
    batch = slot_batch(mode, flat)
    trained = net.cfg.n_loops
    loops = max_loops or 2 * trained
    states = depth_states(net, batch.inputs, loops, positions=range(batch.first_slot, batch.inputs.shape[1]))
    with torch.inference_mode():
        pred = lens_logits(net, states.to(net.W_E.device)).argmax(-1).cpu()  # [depth, n, slots]
    target = batch.targets[:, batch.first_slot :]
    right = (pred == target).numpy()
    digits = right[:, :, :-1][:, :, ::-1]  # columns from the units
    return IterationLens(depth_labels(net.cfg.n_layers, loops), net.cfg.n_layers, trained, np.array(batch.chains),
                         np.ascontiguousarray(digits), right[:, :, -1],
                         {"chain_end_columns": [chain_end_column(p) for p in batch.operands],
                          "problems": len(flat), "max_loops": loops},
                         np.ascontiguousarray(target[:, :-1].numpy()[:, ::-1] - TOKENIZER.encode("0")[0]))


def fit_steps(steps: Mapping[int, float]) -> dict[str, Any]:
    """Which curve the steps-to-answer follow over k >= 1: least-squares fits of ``a + b k`` (ripple: linear),
    ``a + b log2(k + 1)`` (lookahead) and ``a`` (flat), with their residual sums of squares and the best."""
    ks = np.array([k for k, v in steps.items() if k >= 1 and np.isfinite(v)], dtype=float)
    ys = np.array([steps[int(k)] for k in ks], dtype=float)
    if len(ks) < 3:
        return {"best": None, "fits": {}}
    fits = {}
    for name, x in (("linear", ks), ("log", np.log2(ks + 1))):
        design = np.stack([np.ones_like(x), x], 1)
        coef, *_ = np.linalg.lstsq(design, ys, rcond=None)
        fits[name] = {"intercept": float(coef[0]), "slope": float(coef[1]),
                      "rss": float(((design @ coef - ys) ** 2).sum())}
    fits["flat"] = {"intercept": float(ys.mean()), "slope": 0.0, "rss": float(((ys - ys.mean()) ** 2).sum())}
    spread = float(ys.max() - ys.min())
    # flat when the steps barely move (less than one layer from the shortest to the longest chain)
    best = "flat" if spread < 1.0 else min(("linear", "log"), key=lambda n: fits[n]["rss"])
    return {"best": best, "spread": spread, "fits": fits}


# ----------------------------------------------------------------------------------------------
# Probes per (iteration, position)
# ----------------------------------------------------------------------------------------------

def carry_labels(problems: Sequence[Sequence[int]], width: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Per problem: ``digit_sum[c]``, ``generate[c]`` (sum >= 10), ``propagate[c]`` (sum = 9) for c < width,
    ``carry_in[c]`` for c = 1..width, ``answer[c]`` (digit c of the sum) for c = 0..width, and ``random`` (a label
    the input does not determine: the control)."""
    rows = [quantities(list(p), width) for p in problems]
    out: dict[str, np.ndarray] = {}
    for c in range(width):
        sums = np.array([r[f"digit_sum[{c}]"] for r in rows])
        out[f"digit_sum[{c}]"] = sums
        out[f"generate[{c}]"] = (sums >= 10).astype(np.int64)
        out[f"propagate[{c}]"] = (sums == 9).astype(np.int64)
    for c in range(1, width + 1):
        out[f"carry_in[{c}]"] = np.array([r[f"carry_in[{c}]"] for r in rows])
    for c in range(width + 1):
        out[f"answer[{c}]"] = np.array([r[f"answer[{c}]"] for r in rows])
    out["random"] = np.random.default_rng(seed).integers(0, 10, len(problems))
    return out


def iteration_activations(model, problems: Sequence[Sequence[int]], loops: int | None = None,
                          mode=None) -> Activations:
    """The residual stream at every position after the embedding and after each iteration (streams ``embed``,
    ``it1``, ``it2``, ...), as a ``mathllm.interp.probes.Activations`` for ``fit_probes``."""
    net, mode = model_and_mode(model, mode)
    batch = slot_batch(mode, problems)
    loops = loops or net.cfg.n_loops
    n_layers = net.cfg.n_layers
    states = depth_states(net, batch.inputs, loops)  # [depth, n, T, d]
    ends = states[[i * n_layers + n_layers - 1 for i in range(loops)]]
    with torch.inference_mode(), eval_mode(net):
        embed = net.embed(batch.inputs.to(net.W_E.device)).float().cpu()
    acts = torch.cat([embed[None], ends], 0)  # [stream, n, T, d]
    n, T = batch.inputs.shape
    examples = [{"operands": list(p), "text": line} for p, line in zip(batch.operands, batch.lines)]
    return Activations(examples, ["embed"] + [f"it{i + 1}" for i in range(loops)],
                       ["hook_embed"] + [f"loops.{i}.hook_resid_post" for i in range(loops)], list(batch.kinds),
                       acts, torch.ones((n, T), dtype=torch.bool), torch.arange(T).repeat(n, 1))


def iteration_probes(model, problems: Sequence[Sequence[int]], loops: int | None = None, mode=None,
                     seed: int = 0) -> ProbeResults:
    """Probes for every carry quantity (``carry_labels``) x stream (``embed``, ``it1``...) x position kind."""
    net, mode = model_and_mode(model, mode)
    acts = iteration_activations(net, problems, loops, mode)
    width = max(len(str(x)) for p in problems for x in p)
    width = max(width, getattr(mode.settings, "pad_operands", 0) or 0)
    return fit_probes(acts, carry_labels(problems, width, seed), seed=seed)


def probe_grid(results: ProbeResults, families: Sequence[str] = ("digit_sum", "generate", "propagate", "carry_in"),
               at: str = "slot") -> dict[str, dict[str, Any]]:
    """Per quantity family (``families``; ``"answer"``, the answer digits, is one more on offer): ``accuracy`` and
    ``baseline`` (max of the shuffled control and the majority guess)
    ``[stream, column]``, each column probed at the slot that writes that column's answer digit (``at="slot"``, kind
    ``ans{c}``), or at the best position kind of all (``at="best"``)."""
    grid: dict[str, dict[str, Any]] = {}
    for family in families:
        names = [q for q in results.quantities if q.startswith(family + "[")]
        columns = [int(q[len(family) + 1 : -1]) for q in names]
        acc = np.full((len(results.streams), len(names)), np.nan)
        base = np.full_like(acc, np.nan)
        for j, (q, c) in enumerate(zip(names, columns)):
            qi = results.quantities.index(q)
            if at == "slot":
                kind = f"ans{c}"
                if kind not in results.kinds:
                    continue
                k = results.kinds.index(kind)
                acc[:, j] = results.accuracy[qi, :, k]
                base[:, j] = results.baseline()[qi, :, k]
            else:
                acc[:, j] = np.nanmax(results.accuracy[qi], axis=1)
                base[:, j] = np.nanmax(results.baseline()[qi], axis=1)
        grid[family] = {"columns": columns, "streams": list(results.streams), "accuracy": acc, "baseline": base}
    return grid


# ----------------------------------------------------------------------------------------------
# Patching across iterations
# ----------------------------------------------------------------------------------------------

@dataclass
class FlipPairs:
    """Clean problems with a carry chain and corrupted copies in which one digit change removes the chain."""

    clean: SlotBatch
    corrupted: SlotBatch
    column: int  # the answer column measured: where every clean chain ends
    start: int  # the column where every clean chain starts (the digit that was changed)
    k: int


def carry_flip_pairs(mode, max_digits: int, k: int, n: int = 64, start: int = 0, seed: int = 0) -> FlipPairs:
    """``n`` problems (both operands of ``max_digits`` digits) with a chain of exactly ``k`` starting at column
    ``start``, and copies whose column ``start`` no longer generates (``b``'s digit lowered so the column sums to
    at most 8), so that the carry into columns start+1 .. start+k flips and answer digit start+k changes too."""
    rng = random.Random(seed)
    clean, corrupted = [], []
    tries = 0
    while len(clean) < n and tries < 200 * n:
        tries += 1
        a, b = planted_problem(rng, max_digits, k, (max_digits, max_digits))
        if chain_end_column([a, b]) != start + k or (start and (a // 10**start % 10 + b // 10**start % 10) < 10):
            continue
        da, db = a // 10**start % 10, b // 10**start % 10
        if da + db < 10:
            continue
        low = rng.randint(0, 8 - da) if da <= 8 else None
        if low is None:
            continue
        b2 = b + (low - db) * 10**start
        if len(str(b2)) != len(str(b)) or carry_chain([a, b2]) >= k:
            continue
        clean.append((a, b))
        corrupted.append((a, b2))
    if len(clean) < n:
        raise ValueError(f"made only {len(clean)} of {n} pairs with a chain of {k} from column {start}")
    return FlipPairs(slot_batch(mode, clean), slot_batch(mode, corrupted), start + k, start, k)


@dataclass
class IterationPatching:
    """Normalised patching effect ``[iteration, position]`` (0: nothing, 1: the clean logit difference restored)."""

    values: np.ndarray
    labels: list[str]  # position labels
    iterations: list[str]
    column: int
    k: int
    clean_diff: float
    corrupted_diff: float

    def at(self, kind: str) -> list[float]:
        """The effect after each iteration of patching the position of ``kind`` (``"b0"``, ``"ans3"``, ...)."""
        kinds = [label.rsplit(" ", 1)[-1] for label in self.labels]
        if kind not in kinds:
            raise KeyError(f"no position {kind!r}; positions: {kinds}")
        return self.values[:, kinds.index(kind)].tolist()


@torch.inference_mode()
def patch_iterations(model, pairs: FlipPairs, loops: int | None = None, mode=None) -> IterationPatching:
    """Patch the clean state after iteration i at position p into the corrupted run, for every (i, p), and read the
    logit difference (clean digit minus corrupted digit) at the slot of answer column ``pairs.column``."""
    net, mode = model_and_mode(model, mode)
    loops = loops or net.cfg.n_loops
    device = net.W_E.device
    clean_ids, bad_ids = pairs.clean.inputs.to(device), pairs.corrupted.inputs.to(device)
    slot = pairs.clean.slot_of_column(pairs.column)
    good_tok = pairs.clean.targets[:, slot].to(device)
    bad_tok = pairs.corrupted.targets[:, slot].to(device)
    rows = torch.arange(len(good_tok), device=device)

    def diff(logits: torch.Tensor) -> float:
        out = logits[:, slot]
        return (out[rows, good_tok] - out[rows, bad_tok]).float().mean().item()

    names = [f"loops.{i}.hook_resid_post" for i in range(loops)]
    with eval_mode(net), net.looping(loops):
        if loops == 1 and not len(net.loops):
            raise ValueError("patching across iterations needs a looped model")
        clean_logits, cache = net.run_with_cache(clean_ids, names_filter=lambda n: n in names,
                                                 return_cache_object=False)
        clean = diff(clean_logits)
        corrupted = diff(net(bad_ids))
        T = clean_ids.shape[1]
        values = np.zeros((loops, T))
        for i, name in enumerate(names):
            for p in range(T):
                def hook(resid, hook, p=p, name=name):
                    resid = resid.clone()
                    resid[:, p] = cache[name][:, p]
                    return resid

                values[i, p] = diff(net.run_with_hooks(bad_ids, fwd_hooks=[(name, hook)]))
    scale = clean - corrupted
    normalised = (values - corrupted) / scale if abs(scale) > 1e-6 else np.full_like(values, np.nan)
    labels = [f"{tok} {kind}" for tok, kind in zip(TOKENIZER.str_tokens(pairs.clean.lines[0]), pairs.clean.kinds)]
    return IterationPatching(normalised, labels, [f"it{i + 1}" for i in range(loops)], pairs.column, pairs.k, clean,
                             corrupted)


# ----------------------------------------------------------------------------------------------
# Past the trained count
# ----------------------------------------------------------------------------------------------

@torch.inference_mode()
def state_drift(model, problems: Sequence[Sequence[int]], max_loops: int, mode=None) -> dict[str, list[float]]:
    """Per iteration i = 1..max_loops: the relative change of the state at the slots, ``|h_i - h_{i-1}| / |h_i|``
    (mean over problems and slots), the change itself ``|h_i - h_{i-1}|`` and the state's norm ``|h_i|`` (means), and
    the share of problems whose whole answer is right after i iterations. A fixed point shows as a change that
    shrinks towards 0 while the answers stay right."""
    net, mode = model_and_mode(model, mode)
    batch = slot_batch(mode, problems)
    states = depth_states(net, batch.inputs, max_loops, positions=range(batch.first_slot, batch.inputs.shape[1]))
    n_layers = net.cfg.n_layers
    ends = states[[i * n_layers + n_layers - 1 for i in range(max_loops)]]  # [iteration, n, slots, d]
    change, step = [float("nan")], [float("nan")]
    for i in range(1, max_loops):
        moved = (ends[i] - ends[i - 1]).norm(dim=-1)
        change.append(float((moved / ends[i].norm(dim=-1).clamp_min(1e-9)).mean()))
        step.append(float(moved.mean()))
    pred = lens_logits(net, ends.to(net.W_E.device)).argmax(-1).cpu()
    exact = (pred == batch.targets[:, batch.first_slot :]).all(-1).float().mean(-1)
    return {"relative_change": change, "change": step, "exact_match": exact.tolist(),
            "norm": ends.norm(dim=-1).mean((1, 2)).tolist()}


__all__ = ["FlipPairs", "IterationLens", "IterationPatching", "SlotBatch", "carry_flip_pairs", "carry_labels",
           "chain_end_column", "chain_problem_sets", "depth_labels", "depth_states", "fit_steps",
           "iteration_activations", "iteration_lens", "iteration_probes", "patch_iterations", "probe_grid",
           "slot_batch", "state_drift"]
