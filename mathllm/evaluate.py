"""Evaluation: exact match by greedy generation, token accuracy by teacher forcing, and breakdowns.

For a test line ``658+189=<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>`` the model is given the
prompt ``658+189=`` and completes it the way its training mode is used (``TrainingMode.generate``; plain greedy
generation with a KV cache for teacher forcing) until ``<end>``:

* **exact match**: the answer the model writes after ``</think>`` (or after ``=`` when there is no think
  block) equals the true one (for the reversed format, read least-significant digit first);
* **think exact**: the generated think block equals the human trace, character for character
  (over the examples that have one, for modes trained to write it);
* **token accuracy**: under teacher forcing, the share of completion tokens (in the mode's own format) whose
  argmax prediction is the true next token.

Results are also broken down by operation (``add``, ``sub``, ``mul``), number of digits, number of carries (of
borrows, for subtraction), number of operands and *stratum* (the operation and the operand lengths, ``"3+1"`` for
``658+7``, ``"3*3"`` for ``123*456``), and the worst stratum is reported beside the overall figure with its n,
because an average over a test split dominated by one stratum hides the rest. Where a file mixes operations that
both count carries (addition and multiplication), the carry cells are keyed by the operator too (``"*4"``). Every function
takes a bare model (used as a teacher-forcing one) or a ``TrainedModel`` from ``mathllm.checkpoints.load``,
whose mode says how it is used::

    trained = load("checkpoints/add3_cot")
    results = evaluate_examples(trained, load_split("data/test.jsonl"))
    print(format_report(results))

``evaluate_file`` reads a user's own list of problems (lines holding only ``prompt`` and ``answer``, any
operation) and renders each in the format the checkpoint was trained on.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from typing import Any, Iterable, Optional, Sequence

import torch

from mathllm.batches import LengthGroupedData
from mathllm.checkpoints import TrainedModel
from mathllm.data import example_operation, load_problems, load_split
from mathllm.text import parse_answer, parse_completion, parse_prompt, split_prompt
from mathllm.tokenizer import END_THINK_ID, EQUALS_ID, PAUSE_ID, TOKENIZER
from mathllm.training_mode import TrainingMode
from mathllm.utils import atomic_write_json

BREAKDOWNS = (("by_num_digits", "num_digits"), ("by_num_carries", "num_carries"), ("by_num_operands", "num_operands"),
              ("by_stratum", "stratum"), ("by_operation", "operation"), ("by_num_borrows", "num_borrows"))
OPERATION_ORDER = {"add": 0, "sub": 1, "mul": 2}
MIN_STRATUM_COUNT = 20  # strata with fewer problems are listed but not ranked as the worst


def stratum_name(prompt: str) -> str:
    """``"658+7="`` -> ``"3+1"``: the operand lengths joined by the operator (the problem's stratum)."""
    op, operands = parse_prompt(prompt)
    return op.join(str(len(str(x))) for x in operands)


def worst(table: dict[str, dict[str, Any]], min_count: int = MIN_STRATUM_COUNT) -> Optional[dict[str, Any]]:
    """The cell of a breakdown with the lowest exact match among those with at least ``min_count`` problems."""
    cells = [(v["exact_match"], k, v["count"]) for k, v in table.items() if v["count"] >= min_count]
    if not cells:
        return None
    em, key, count = min(cells)
    return {"name": key, "exact_match": em, "count": count}


def model_and_mode(model, mode: Optional[TrainingMode] = None):
    """``(model, mode)`` from a bare model (teacher forcing unless ``mode`` says otherwise) or a ``TrainedModel``."""
    if isinstance(model, TrainedModel):
        if mode is not None and mode.to_dict() != model.mode.to_dict():
            raise ValueError(f"the model was trained in mode {model.mode.to_dict()}, not {mode.to_dict()}")
        return model.model, model.mode
    return model, mode if mode is not None else TrainingMode()


@torch.inference_mode()
def generate_completions(model, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 64,
                         references: Optional[Sequence[str]] = None, mode: Optional[TrainingMode] = None) -> list[str]:
    """Greedy completions (the text after each prompt, up to and including ``<end>``), as the mode uses the model.

    ``references`` (the true completions) only make it faster: each is verified in one teacher-forced pass
    and decoding resumes at the first token where greedy decoding disagrees (``generate(drafts=...)``), so
    the result is plain greedy decoding's. Modes whose output cannot be guessed ignore them.
    """
    model, mode = model_and_mode(model, mode)
    return mode.generate(model, list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size,
                         drafts=list(references) if references is not None else None)


def exact_match_texts(model, texts: Sequence[str], batch_size: int = 64, mode: Optional[TrainingMode] = None) -> float:
    """Share of rendered lines whose greedy completion has the right answer."""
    if not texts:
        return float("nan")
    prompts, completions = zip(*(split_prompt(t) for t in texts))
    max_new = max(len(TOKENIZER.encode(c)) for c in completions) + 4
    generated = generate_completions(model, prompts, max_new, batch_size, references=completions, mode=mode)
    right = 0
    for truth, got in zip(completions, generated):
        true_answer = parse_answer(truth)
        right += true_answer is not None and parse_answer(got) == true_answer
    return right / len(texts)


@torch.inference_mode()
def token_accuracy(model, texts: Sequence[str], batch_size: int = 64, answer_only: bool = False) -> float:
    """Teacher-forced argmax accuracy on completion tokens (after the first '=', think included).

    ``answer_only``: score only the tokens after the think block (after ``</think>``, or after ``=`` when
    there is none), never ``<pause>`` (for modes whose think tokens are not targets).
    """
    device = next(model.parameters()).device
    data = LengthGroupedData.from_texts(texts, max_length=model.cfg.n_ctx)
    right = total = 0
    for length, ids in data.groups.items():
        if answer_only:
            has_think = (ids == END_THINK_ID).any(1, keepdim=True)
            end_think = (ids == END_THINK_ID).int().argmax(1, keepdim=True)
            start = torch.where(has_think, end_think, (ids == EQUALS_ID).int().argmax(1, keepdim=True))
            masks = (torch.arange(1, length)[None, :] > start) & (ids[:, 1:] != PAUSE_ID)
        else:
            masks = data.loss_masks[length]
        for i in range(0, len(ids), batch_size):
            batch = ids[i : i + batch_size].to(device)
            mask = masks[i : i + batch_size].to(device)
            pred = model(batch[:, :-1]).argmax(-1)
            right += ((pred == batch[:, 1:]) & mask).sum().item()
            total += mask.sum().item()
    return right / max(total, 1)


def evaluate_examples(model, examples: Sequence[dict[str, Any]], batch_size: int = 64,
                      max_new_tokens: Optional[int] = None, keep_failures: int = 20,
                      mode: Optional[TrainingMode] = None, predictions: bool = False,
                      plain_speed_examples: int = 1024) -> dict[str, Any]:
    """All metrics for a list of examples as read by ``mathllm.data.load_split``.

    For a model of another training mode, think exact is None unless the mode writes the human trace, and
    token accuracy is taken in the mode's own format (``TrainingMode.scoring_texts``). ``predictions``: also return,
    under ``"predictions"``, one record per problem (prompt, the model's raw completion, its parsed answer, the true
    answer, whether it is right, stratum, carries) for error analysis.

    Speed is reported twice: ``examples_per_s_verified`` for the whole evaluation (the true completions are
    verified as drafts, which gives plain greedy decoding's output faster) and ``examples_per_s_plain`` for
    plain greedy decoding of the first ``plain_speed_examples`` prompts (0: not measured).
    """
    model, mode = model_and_mode(model, mode)
    model.eval()
    texts = [ex["text"] for ex in examples]
    prompts, completions = zip(*(split_prompt(t) for t in texts)) if texts else ((), ())
    longest = max((len(TOKENIZER.encode(c)) for c in completions), default=1)
    if max_new_tokens is None:
        max_new_tokens = longest + 4
    prompt_room = model.cfg.n_ctx - max(len(TOKENIZER.encode(p)) for p in prompts) if prompts else max_new_tokens
    max_new_tokens = max(1, min(max_new_tokens, prompt_room))

    start = time.perf_counter()
    generated = generate_completions(model, prompts, max_new_tokens, batch_size, references=completions, mode=mode)
    gen_seconds = time.perf_counter() - start
    plain = list(prompts[:plain_speed_examples])
    plain_seconds = None
    if plain:
        start = time.perf_counter()
        generate_completions(model, plain, max_new_tokens, batch_size, mode=mode)
        plain_seconds = time.perf_counter() - start

    buckets: dict[str, dict[Any, list[int]]] = {key: defaultdict(lambda: [0, 0]) for key, _ in BREAKDOWNS}
    right = think_right = think_total = 0
    failures, records = [], []
    operations = [example_operation(ex) for ex in examples]
    carry_keyed = len({op.symbol for op in operations if op.count_field == "num_carries"}) > 1
    for ex, op, prompt, truth, got in zip(examples, operations, prompts, completions, generated):
        fmt = ex.get("format", "cot")
        true_answer = ex.get("answer", parse_answer(truth, fmt))
        answer = parse_answer(got, fmt)
        ok = answer == true_answer
        right += ok
        true_think = parse_completion(truth)[0]
        if true_think is not None:
            think_total += 1
            think_right += parse_completion(got)[0] == true_think
        labels = {**ex, "stratum": stratum_name(prompt), "operation": (OPERATION_ORDER[op.name], op.name)}
        if carry_keyed and "num_carries" in labels:  # addition's and multiplication's carries are different things
            labels["num_carries"] = (OPERATION_ORDER[op.name], f"{op.symbol}{labels['num_carries']}",
                                     labels["num_carries"])
        for key, name in BREAKDOWNS:
            if name in labels:
                cell = buckets[key][labels[name]]
                cell[0] += ok
                cell[1] += 1
        if not ok and len(failures) < keep_failures:
            failures.append({"prompt": prompt, "expected": truth, "generated": got})
        if predictions:
            records.append({"prompt": prompt, "completion": got, "answer": answer, "expected_answer": true_answer,
                            "correct": ok, "stratum": labels["stratum"], "operation": op.name,
                            **{k: ex[k] for k in ("num_carries", "num_borrows", "num_operands", "num_digits")
                               if k in ex}})
    n = len(examples)
    scoring, answer_only = mode.scoring_texts(texts, generated) if texts else ([], False)
    tables = {key: {_cell_name(k): {"exact_match": v[0] / v[1], "count": v[1]} for k, v in sorted(table.items())}
              for key, table in buckets.items()}
    results = {
        "num_examples": n,
        "exact_match": right / n if n else float("nan"),
        "mode": mode.name,
        "think_exact": think_right / think_total if think_total and mode.writes_human_trace else None,
        "num_with_think": think_total,
        "token_accuracy": _token_accuracy(model, mode, texts, scoring, batch_size, answer_only),
        "token_accuracy_format": mode.description,
        **tables,
        "worst_stratum": worst(tables["by_stratum"]),
        "worst_carries": worst(tables["by_num_carries"]),
        "min_stratum_count": MIN_STRATUM_COUNT,
        "examples_per_s_verified": n / gen_seconds if gen_seconds > 0 else None,
        "examples_per_s_plain": len(plain) / plain_seconds if plain_seconds else None,
        "examples_timed_plain": len(plain),
        "failures": failures,
    }
    if predictions:
        results["predictions"] = records
    return results


def _token_accuracy(model, mode: TrainingMode, texts: Sequence[str], scoring: Sequence[str], batch_size: int,
                    answer_only: bool) -> float:
    """The mode's own token accuracy when it has one, else teacher-forced next-token accuracy on ``scoring``."""
    if not texts:
        return float("nan")
    own = mode.token_accuracy(model, texts, batch_size)
    return own if own is not None else token_accuracy(model, scoring, batch_size, answer_only)


def _cell_name(key: Any) -> str:
    """A breakdown cell's name: ``3`` -> ``"3"``; the sortable tuples of operations and keyed carries -> their
    name (``(2, "mul")`` -> ``"mul"``, ``(2, "*4", 4)`` -> ``"*4"``)."""
    return str(key[1]) if isinstance(key, tuple) else str(key)


def evaluate_split(model, path: str | os.PathLike, batch_size: int = 64, device: torch.device | str | None = None,
                   limit: Optional[int] = None, mode: Optional[TrainingMode] = None,
                   predictions: bool = False) -> dict[str, Any]:
    """``evaluate_examples`` on a JSONL split file, recording which file was used."""
    model, mode = model_and_mode(model, mode)
    if device is not None:
        model = model.to(device)
    examples = load_split(path)
    if limit is not None:
        examples = examples[:limit]
    results = evaluate_examples(model, examples, batch_size=batch_size, mode=mode, predictions=predictions)
    results["data_path"] = str(path)
    return results


def evaluate_file(model, path: str | os.PathLike, batch_size: int = 64, fmt: Optional[str] = None,
                  limit: Optional[int] = None, mode: Optional[TrainingMode] = None,
                  predictions: bool = False) -> dict[str, Any]:
    """``evaluate_examples`` on a JSONL list of problems whose lines need only ``prompt`` and ``answer``
    (``mathllm.data.load_problems``), each rendered in ``fmt``: by default the format of the data the model was
    trained on (a ``TrainedModel``'s record), else each line's own ``format``, else cot."""
    if fmt is None and isinstance(model, TrainedModel):
        fmt = model.data_arguments.get("fmt")
    examples = load_problems(path, fmt)
    if limit is not None:
        examples = examples[:limit]
    results = evaluate_examples(model, examples, batch_size=batch_size, mode=mode, predictions=predictions)
    results["data_path"] = str(path)
    results["rendered_format"] = fmt
    return results


def format_report(results: dict[str, Any]) -> str:
    """A short human-readable table of ``evaluate_examples`` results."""
    lines = [
        f"mode            {results.get('mode', 'teacher')}",
        f"examples        {results['num_examples']}",
        f"exact match     {results['exact_match']:.4f}",
        f"token accuracy  {results['token_accuracy']:.4f}  (teacher forcing on "
        f"{results.get('token_accuracy_format', 'the completion tokens')})",
    ]
    if results.get("think_exact") is not None:
        lines.append(f"think exact     {results['think_exact']:.4f}  ({results['num_with_think']} with a think block)")
    for key, label in (("worst_stratum", "worst stratum"), ("worst_carries", "worst carries")):
        cell = results.get(key)
        if cell:
            lines.append(f"{label:<16}{cell['name']}: {cell['exact_match']:.4f} (n={cell['count']}; strata with "
                         f"n >= {results.get('min_stratum_count', MIN_STRATUM_COUNT)})")
    if results.get("examples_per_s_verified"):
        lines.append(f"speed           {results['examples_per_s_verified']:.0f} examples/s (greedy, verifying the "
                     "reference completions as drafts)")
    if results.get("examples_per_s_plain"):
        lines.append(f"                {results['examples_per_s_plain']:.0f} examples/s (plain greedy decoding, "
                     f"{results['examples_timed_plain']} examples)")
    for key, _ in BREAKDOWNS:
        if key == "by_operation" and set(results.get(key) or {}) <= {"add"}:
            continue  # additions only: nothing to break down
        if results.get(key):
            cells = "  ".join(f"{k}: {v['exact_match']:.3f} (n={v['count']})" for k, v in results[key].items())
            lines.append(f"{key:<16}{cells}")
    return "\n".join(lines)


def save_results(results: dict[str, Any], path: str | os.PathLike) -> None:
    atomic_write_json(path, results)


def iter_failures(results: dict[str, Any]) -> Iterable[str]:
    for f in results.get("failures", []):
        yield f"{f['prompt']}  expected {f['expected']}  got {f['generated']}"


__all__ = ["evaluate_examples", "evaluate_file", "evaluate_split", "exact_match_texts", "format_report", "generate_completions",
           "iter_failures", "model_and_mode", "save_results", "token_accuracy"]
