"""How a model does by carry-chain length, and after each number of loop iterations.

    trained = load("checkpoints/looped_add4")
    results = evaluate_chains(trained, max_digits=4)          # uniform set + one set per chain length k
    print(format_chains(results))
    curves = iteration_curves(trained, max_digits=4, max_loops=8)   # exact match after 1..8 iterations
    print(format_curves(curves, trained=4))                          # one row per set, one column per iteration

The sets are ``mathllm.chains.chain_test_sets`` (fixed seed, so every model meets the same problems); the model
is used the way its training mode says (``TrainedModel``), at any number of iterations (``loops``: running a
looped model past its trained count, or a one-pass model looped, is allowed and measured, not assumed to work).
For tasks without carry chains (multiplication), ``stratum_sets`` cuts a test split into the first ``n_uniform``
problems and up to ``per_stratum`` of each stratum (operand lengths, ``3*3``), and ``evaluate_strata`` /
``iteration_curves(..., sets=...)`` measure those the same way.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Sequence

from tqdm.auto import tqdm

from mathllm.chains import TEST_SEED, chain_examples, chain_test_sets
from mathllm.evaluate import evaluate_examples, model_and_mode, stratum_name, worst


def _exact_by_set(net, mode, sets: Mapping[str, Sequence[Any]], batch_size: int,
                  keep_failures: int = 10) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Exact match per set; a set holds operand pairs (addition: rendered by ``chain_examples``) or example dicts."""
    names = list(sets)
    examples = [ex for name in names for ex in _examples(sets[name])]
    results = evaluate_examples(net, examples, batch_size=batch_size, mode=mode, predictions=True,
                                plain_speed_examples=0, keep_failures=keep_failures)
    right = [r["correct"] for r in results["predictions"]]
    out, start = {}, 0
    for name in names:
        n = len(sets[name])
        out[name] = sum(right[start : start + n]) / max(n, 1)
        start += n
    return out, results["failures"]


def _examples(items: Sequence[Any]) -> list[dict[str, Any]]:
    return list(items) if items and isinstance(items[0], Mapping) else chain_examples(items)


def stratum_sets(examples: Sequence[Mapping[str, Any]], per_stratum: int = 300,
                 n_uniform: int = 2000) -> dict[str, list[Mapping[str, Any]]]:
    """``{"uniform": the first n_uniform examples, "1*1": the first per_stratum of that stratum, ...}`` in file order
    (a test split of ``mathllm.data``: fixed, so every model meets the same problems); strata sorted by operand
    lengths.

    >>> ex = [{"text": t, "prompt": t.split("=")[0] + "="} for t in ("12*3=36<end>", "4*5=20<end>", "7*8=56<end>")]
    >>> {k: len(v) for k, v in stratum_sets(ex, per_stratum=1, n_uniform=2).items()}
    {'uniform': 2, '1*1': 1, '2*1': 1}
    """
    by: dict[str, list[Mapping[str, Any]]] = {}
    for ex in examples:
        group = by.setdefault(stratum_name(ex["prompt"]), [])
        if len(group) < per_stratum:
            group.append(ex)
    order = sorted(by, key=lambda name: [int(part) for part in re.split(r"\D", name) if part])
    return {"uniform": list(examples[:n_uniform]), **{name: by[name] for name in order}}


def evaluate_strata(model, sets: Mapping[str, Sequence[Mapping[str, Any]]], batch_size: int = 256,
                    loops: Optional[int] = None, mode=None) -> dict[str, Any]:
    """Exact match on ``stratum_sets``: ``uniform``, ``by_stratum`` ``{"3*3": {"exact_match", "count"}}`` and the
    ``worst_stratum`` (among those with at least 20 problems), at ``loops`` iterations (default: the model's own)."""
    net, mode = model_and_mode(model, mode)
    with net.looping(loops):
        exact, failures = _exact_by_set(net, mode, sets, batch_size)
        used = net.n_loops
    out: dict[str, Any] = {"loops": used, "mode": mode.name, "by_stratum": {}}
    for name, value in exact.items():
        cell = {"exact_match": value, "count": len(sets[name])}
        if name == "uniform":
            out[name] = cell
        else:
            out["by_stratum"][name] = cell
    cell = worst(out["by_stratum"])  # among the strata with at least MIN_STRATUM_COUNT problems, as evaluate.py
    out["worst_stratum"] = None if cell is None else {"stratum": cell["name"], "exact_match": cell["exact_match"],
                                                      "count": cell["count"]}
    out["failures"] = failures
    return out


def evaluate_chains(model, max_digits: int, per_k: int = 300, n_uniform: int = 2000, seed: int = TEST_SEED,
                    batch_size: int = 256, loops: Optional[int] = None, mode=None,
                    sets: Optional[Mapping[str, Sequence[Sequence[int]]]] = None) -> dict[str, Any]:
    """Exact match on ``chain_test_sets(max_digits, per_k, n_uniform, seed)`` (or ``sets``): ``uniform``, and
    ``by_carry_chain`` ``{k: {"exact_match", "count"}}``, with the worst k. ``model`` is a ``TrainedModel`` (its mode
    renders the problems) or a bare model with ``mode``; ``loops`` runs that many iterations (default: its own)."""
    net, mode = model_and_mode(model, mode)
    sets = chain_test_sets(max_digits, per_k, n_uniform, seed) if sets is None else sets
    with net.looping(loops):
        exact, failures = _exact_by_set(net, mode, sets, batch_size)
        used = net.n_loops
    out: dict[str, Any] = {"loops": used, "max_digits": max_digits, "seed": seed, "mode": mode.name,
                           "by_carry_chain": {}}
    for name, value in exact.items():
        cell = {"exact_match": value, "count": len(sets[name])}
        if name.startswith("k") and name[1:].isdigit():
            out["by_carry_chain"][name[1:]] = cell
        else:
            out[name] = cell
    chains = out["by_carry_chain"]
    if chains:
        k = min(chains, key=lambda key: (chains[key]["exact_match"], int(key)))
        out["worst_carry_chain"] = {"k": int(k), **chains[k]}
    out["failures"] = failures
    return out


def iteration_curves(model, max_digits: int, max_loops: int, per_k: int = 300, n_uniform: int = 2000,
                     seed: int = TEST_SEED, batch_size: int = 256, mode=None,
                     sets: Optional[Mapping[str, Sequence[Any]]] = None,
                     progress: bool = True) -> dict[str, list[float]]:
    """``{set name: [exact match after 1, 2, ..., max_loops iterations]}`` (``uniform``, ``k0``, ``k1``, ...; or the
    ``stratum_sets`` given as ``sets``)."""
    net, mode = model_and_mode(model, mode)
    sets = chain_test_sets(max_digits, per_k, n_uniform, seed) if sets is None else sets
    curves: dict[str, list[float]] = {name: [] for name in sets}
    for loops in tqdm(range(1, max_loops + 1), desc="iterations", disable=not progress):
        with net.looping(loops):
            exact, _ = _exact_by_set(net, mode, sets, batch_size, keep_failures=0)
        for name, value in exact.items():
            curves[name].append(value)
    return curves


def format_strata(results: Mapping[str, Any]) -> str:
    """``evaluate_strata`` in a few lines.

    >>> print(format_strata({"loops": 1, "uniform": {"exact_match": 0.5, "count": 4},
    ...                      "by_stratum": {"1*1": {"exact_match": 1.0, "count": 2}},
    ...                      "worst_stratum": {"stratum": "1*1", "exact_match": 1.0, "count": 20}}))
    loops 1
    uniform         0.5000 (n=4)
    by stratum      1*1: 1.000
    worst stratum   1*1: 1.0000 (n=20)
    """
    cells = "  ".join(f"{k}: {v['exact_match']:.3f}" for k, v in results["by_stratum"].items())
    lines = [f"loops {results['loops']}",
             f"uniform         {results['uniform']['exact_match']:.4f} (n={results['uniform']['count']})",
             f"by stratum      {cells}"]
    w = results.get("worst_stratum")
    if w:
        lines.append(f"worst stratum   {w['stratum']}: {w['exact_match']:.4f} (n={w['count']})")
    return "\n".join(lines)


def format_chains(results: Mapping[str, Any]) -> str:
    """A few lines: the uniform set, each chain length, the worst one.

    >>> print(format_chains({"loops": 4, "uniform": {"exact_match": 1.0, "count": 2000},
    ...                      "by_carry_chain": {"0": {"exact_match": 1.0, "count": 300}}}))
    loops 4
    uniform         1.0000 (n=2000)
    by carry chain  k=0: 1.000
    """
    lines = [f"loops {results['loops']}"]
    if "uniform" in results:
        lines.append(f"uniform         {results['uniform']['exact_match']:.4f} (n={results['uniform']['count']})")
    cells = "  ".join(f"k={k}: {v['exact_match']:.3f}" for k, v in results["by_carry_chain"].items())
    lines.append(f"by carry chain  {cells}")
    if results.get("worst_carry_chain"):
        w = results["worst_carry_chain"]
        lines.append(f"worst chain     k={w['k']}: {w['exact_match']:.4f} (n={w['count']})")
    return "\n".join(lines)


def format_curves(curves: Mapping[str, Sequence[float]], trained: Optional[int] = None) -> str:
    """``iteration_curves`` as a table: one row per set, one column per number of iterations (``*`` marks the trained
    count), exact match in percent.

    >>> print(format_curves({"uniform": [0.0, 0.5, 1.0], "k1": [0.0, 0.25, 0.995]}, trained=3))
    iterations       1       2      3*
    uniform       0.0%   50.0%  100.0%
    k1            0.0%   25.0%   99.5%
    """
    width = max(len(values) for values in curves.values())
    head = "".join(f"{str(i) + ('*' if i == trained else ''):>8}" for i in range(1, width + 1))
    lines = [f"{'iterations':<10}{head}"]
    for name, values in curves.items():
        lines.append(f"{name:<10}" + "".join(f"{v:>8.1%}" for v in values))
    return "\n".join(lines)


def curves_table(curves: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """``iteration_curves`` in the shape of a looped experiment's summary (``{"table": {row: {set: cell}}}``, one row
    per number of iterations, ``L=1``, ``L=2``, ...), so that ``mathllm.plots.save_chain_table_png`` draws it; one
    model, so each cell's mean, min and max are its value.

    >>> curves_table({"uniform": [0.5, 1.0], "k0": [0.25, 1.0]})["table"]["L=1"]["k0"]
    {'mean': 0.25, 'min': 0.25, 'max': 0.25}
    """
    width = max(len(values) for values in curves.values())
    table = {f"L={i + 1}": {name: {"mean": values[i], "min": values[i], "max": values[i]}
                            for name, values in curves.items() if i < len(values)}
             for i in range(width)}
    return {"table": table}


def format_experiment(summary: Mapping[str, Any]) -> str:
    """A looped experiment's table (``scripts/looped_experiment.py``'s summary) as text: one row per run, with its
    seeds, parameters, iterations, steps, seconds per step, and exact match on the uniform set and on the worst
    carry-chain length (mean over the seeds, the worst seed in brackets), and the same weights run once (``L=1``);
    for a task measured by strata (``evaluate_strata``), the worst stratum instead of the worst k.

    >>> row = {"seeds": [0, 1], "parameters": 406272, "loops": 4, "train_steps": 2500, "seconds_per_step": 0.18,
    ...        "uniform": {"mean": 0.95, "min": 0.94, "max": 0.96}, "min_k": {"mean": 0.9, "min": 0.86, "max": 0.94},
    ...        "same_weights_L1_uniform": {"mean": 0.0, "min": 0.0, "max": 0.0}}
    >>> print(format_experiment({"table": {"looped-chains": row}}))
    run                    seeds     params  L  steps  s/step  uniform           worst k           same weights L=1
    looped-chains          0,1      406,272  4   2500   0.180  95.0% (94.0%)     90.0% (86.0%)      0.0%
    """
    def cell(value: Optional[Mapping[str, float]]) -> str:
        if not value:
            return "-"
        return f"{value['mean']:.1%}" + (f" ({value['min']:.1%})" if value["min"] != value["mean"] else "")

    by_strata = any("worst_stratum" in row for row in summary["table"].values())
    worst_key, worst_label = ("worst_stratum", "worst stratum") if by_strata else ("min_k", "worst k")
    lines = [f"{'run':<22} {'seeds':<6} {'params':>9} {'L':>2} {'steps':>6} {'s/step':>7}  {'uniform':<17} "
             f"{worst_label:<17} same weights L=1"]
    for name, row in summary["table"].items():
        seeds = ",".join(str(s) for s in row.get("seeds", []))
        params = f"{row['parameters']:,}" if row.get("parameters") else "-"
        sps = f"{row['seconds_per_step']:.3f}" if row.get("seconds_per_step") else "-"
        same = cell(row.get("same_weights_L1_uniform")) if (row.get("loops") or 1) > 1 else ""
        lines.append(f"{name:<22} {seeds:<6} {params:>9} {row.get('loops') or 1:>2} {row.get('train_steps') or 0:>6} "
                     f"{sps:>7}  {cell(row.get('uniform')):<17} {cell(row.get(worst_key)):<17} {same:>5}".rstrip())
    return "\n".join(lines)


__all__ = ["curves_table", "evaluate_chains", "evaluate_strata", "format_chains", "format_curves", "format_experiment",
           "format_strata", "iteration_curves", "stratum_sets"]
