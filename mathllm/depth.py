"""How a model does by carry-chain length, and after each number of loop iterations.

    trained = load("checkpoints/looped_add4")
    results = evaluate_chains(trained, max_digits=4)          # uniform set + one set per chain length k
    print(format_chains(results))
    curves = iteration_curves(trained, max_digits=4, max_loops=8)   # exact match after 1..8 iterations
    print(format_curves(curves, trained=4))                          # one row per set, one column per iteration

The sets are ``mathllm.chains.chain_test_sets`` (fixed seed, so every model meets the same problems); the model
is used the way its training mode says (``TrainedModel``), at any number of iterations (``loops``: running a
looped model past its trained count, or a one-pass model looped, is allowed and measured, not assumed to work).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from tqdm.auto import tqdm

from mathllm.chains import TEST_SEED, chain_examples, chain_test_sets
from mathllm.evaluate import evaluate_examples, model_and_mode


def _exact_by_set(net, mode, sets: Mapping[str, Sequence[Sequence[int]]], batch_size: int,
                  keep_failures: int = 10) -> tuple[dict[str, float], list[dict[str, Any]]]:
    names = list(sets)
    examples = [ex for name in names for ex in chain_examples(sets[name])]
    results = evaluate_examples(net, examples, batch_size=batch_size, mode=mode, predictions=True,
                                plain_speed_examples=0, keep_failures=keep_failures)
    right = [r["correct"] for r in results["predictions"]]
    out, start = {}, 0
    for name in names:
        n = len(sets[name])
        out[name] = sum(right[start : start + n]) / max(n, 1)
        start += n
    return out, results["failures"]


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
                     sets: Optional[Mapping[str, Sequence[Sequence[int]]]] = None,
                     progress: bool = True) -> dict[str, list[float]]:
    """``{set name: [exact match after 1, 2, ..., max_loops iterations]}`` (``uniform``, ``k0``, ``k1``, ...)."""
    net, mode = model_and_mode(model, mode)
    sets = chain_test_sets(max_digits, per_k, n_uniform, seed) if sets is None else sets
    curves: dict[str, list[float]] = {name: [] for name in sets}
    for loops in tqdm(range(1, max_loops + 1), desc="iterations", disable=not progress):
        with net.looping(loops):
            exact, _ = _exact_by_set(net, mode, sets, batch_size, keep_failures=0)
        for name, value in exact.items():
            curves[name].append(value)
    return curves


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
    carry-chain length (mean over the seeds, the worst seed in brackets), and the same weights run once (``L=1``).

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

    lines = [f"{'run':<22} {'seeds':<6} {'params':>9} {'L':>2} {'steps':>6} {'s/step':>7}  {'uniform':<17} "
             f"{'worst k':<17} same weights L=1"]
    for name, row in summary["table"].items():
        seeds = ",".join(str(s) for s in row.get("seeds", []))
        params = f"{row['parameters']:,}" if row.get("parameters") else "-"
        sps = f"{row['seconds_per_step']:.3f}" if row.get("seconds_per_step") else "-"
        same = cell(row.get("same_weights_L1_uniform")) if row.get("loops", 1) and row.get("loops", 1) > 1 else ""
        lines.append(f"{name:<22} {seeds:<6} {params:>9} {row.get('loops') or 1:>2} {row.get('train_steps') or 0:>6} "
                     f"{sps:>7}  {cell(row.get('uniform')):<17} {cell(row.get('min_k')):<17} {same:>5}".rstrip())
    return "\n".join(lines)


__all__ = ["curves_table", "evaluate_chains", "format_chains", "format_curves", "format_experiment",
           "iteration_curves"]
