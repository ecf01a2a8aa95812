"""Evaluation: exact match by greedy generation, token accuracy by teacher forcing, and breakdowns.

For a test line ``658+189=<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>`` the model is given the
prompt ``658+189=`` and generates greedily (batched, with a KV cache) until ``<end>``:

* **exact match**: the answer the model writes after ``</think>`` (or after ``=`` when there is no think
  block) equals the true sum (for the reversed format, read least-significant digit first);
* **think exact**: the generated think block equals the human trace, character for character
  (over the examples that have one);
* **token accuracy**: under teacher forcing, the share of completion tokens (everything after the first
  ``=``, think block included) whose argmax prediction is the true next token.

Results are also broken down by number of digits, number of carries and number of operands.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import torch

from mathllm.tokenizer import TOKENIZER


def answer_from_completion(completion: str, fmt: str = "cot") -> int | None:
    """The integer answer in a completion, or None when it is malformed.

    >>> answer_from_completion("<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>")
    847
    >>> answer_from_completion("64<end>", fmt="reversed")
    46
    """
    from mathllm.generate import split_completion

    _, answer = split_completion(completion)
    if answer is None or not answer.isdigit():
        return None
    return int(answer[::-1]) if fmt == "reversed" else int(answer)


def think_from_completion(completion: str) -> str | None:
    from mathllm.generate import split_completion

    return split_completion(completion)[0]


def _prompt_and_completion(text: str) -> tuple[str, str]:
    eq = text.index("=")
    return text[: eq + 1], text[eq + 1 :]


def _format_of(example: dict[str, Any]) -> str:
    return example.get("format", "cot")


@torch.inference_mode()
def generate_completions(model, prompts: list[str], max_new_tokens: int, batch_size: int = 64,
                         references: list[str] | None = None) -> list[str]:
    """Greedy completions (the text after each prompt, up to and including ``<end>``).

    ``references`` (the true completions) only make it faster: each is verified in one teacher-forced pass
    and decoding resumes at the first token where greedy decoding disagrees (``generate(drafts=...)``), so
    the result is plain greedy decoding's. Without them every token is decoded one step at a time.

    A model trained in another mode (``model.training_meta``) is run the way that mode is used
    (``mathllm.modes.generate_for_mode``: pauses appended, a gumbel model's own think tokens); the references
    are then not used.
    """
    from mathllm.generate import generate
    from mathllm.modes import generate_for_mode, mode_settings

    settings = mode_settings(model)
    if settings.mode != "teacher":
        return generate_for_mode(model, prompts, settings, max_new_tokens=max_new_tokens, batch_size=batch_size)

    return generate(model, prompts, max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size,
                    drafts=references)


def exact_match_texts(model, texts: list[str], batch_size: int = 64) -> float:
    """Share of rendered lines whose greedy completion has the right answer (format read from the text)."""
    if not texts:
        return float("nan")
    prompts, completions = zip(*(_prompt_and_completion(t) for t in texts))
    max_new = max(len(TOKENIZER.encode(c)) for c in completions) + 4
    generated = generate_completions(model, list(prompts), max_new, batch_size)
    right = 0
    for truth, got in zip(completions, generated):
        true_answer = answer_from_completion(truth)
        right += true_answer is not None and answer_from_completion(got) == true_answer
    return right / len(texts)


@torch.inference_mode()
def token_accuracy(model, texts: list[str], batch_size: int = 64, answer_only: bool = False) -> float:
    """Teacher-forced argmax accuracy on completion tokens (after the first '=', think included).

    ``answer_only``: score only the tokens after the think block (after ``</think>``, or after ``=`` when
    there is none), never ``<pause>`` (for modes whose think tokens are not targets).
    """
    from mathllm.tokenizer import END_THINK_ID, PAUSE_ID
    from mathllm.train import LengthGroupedData

    device = next(model.parameters()).device
    data = LengthGroupedData.from_texts(texts, max_length=model.cfg.n_ctx)
    right = total = 0
    for length, ids in data.groups.items():
        if answer_only:
            has_think = (ids == END_THINK_ID).any(1, keepdim=True)
            end_think = (ids == END_THINK_ID).int().argmax(1, keepdim=True)
            start = torch.where(has_think, end_think, (ids == TOKENIZER.token_to_id["="]).int().argmax(1, keepdim=True))
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


def evaluate_examples(model, examples: list[dict[str, Any]], batch_size: int = 64,
                      max_new_tokens: int | None = None, keep_failures: int = 20) -> dict[str, Any]:
    """All metrics for a list of examples as read by ``mathllm.data.load_split``.

    For a model of another training mode (``mathllm.modes``) think exact is None unless the mode writes the
    human trace (teacher, internalize), and token accuracy is taken in the mode's own format (answer-only:
    the answer; pause: the answer after the pauses; gumbel: the answer after the model's own think tokens;
    internalize: the fully internalized line).
    """
    from mathllm.modes import mode_settings

    settings = mode_settings(model)
    model.eval()
    texts = [ex["text"] for ex in examples]
    prompts, completions = zip(*(_prompt_and_completion(t) for t in texts)) if texts else ((), ())
    longest = max((len(TOKENIZER.encode(c)) for c in completions), default=1)
    if max_new_tokens is None:
        max_new_tokens = longest + 4
    prompt_room = model.cfg.n_ctx - max(len(TOKENIZER.encode(p)) for p in prompts) if prompts else max_new_tokens
    max_new_tokens = max(1, min(max_new_tokens, prompt_room))

    start = time.perf_counter()
    generated = generate_completions(model, list(prompts), max_new_tokens, batch_size, references=list(completions))
    gen_seconds = time.perf_counter() - start

    buckets: dict[str, dict[Any, list[int]]] = {k: defaultdict(lambda: [0, 0]) for k in
                                                ("by_num_digits", "by_num_carries", "by_num_operands")}
    right = think_right = think_total = 0
    failures = []
    for ex, truth, got in zip(examples, completions, generated):
        fmt = _format_of(ex)
        true_answer = ex.get("answer", answer_from_completion(truth, fmt))
        ok = answer_from_completion(got, fmt) == true_answer
        right += ok
        true_think = think_from_completion(truth)
        if true_think is not None:
            think_total += 1
            think_right += think_from_completion(got) == true_think
        for key, field in (("by_num_digits", "num_digits"), ("by_num_carries", "num_carries"),
                           ("by_num_operands", "num_operands")):
            if field in ex:
                cell = buckets[key][ex[field]]
                cell[0] += ok
                cell[1] += 1
        if not ok and len(failures) < keep_failures:
            failures.append({"prompt": ex["text"][: ex["text"].index("=") + 1], "expected": truth, "generated": got})
    n = len(examples)
    return {
        "num_examples": n,
        "exact_match": right / n if n else float("nan"),
        "mode": settings.mode,
        "think_exact": think_right / think_total if think_total and settings.writes_human_trace else None,
        "num_with_think": think_total,
        "token_accuracy": _mode_token_accuracy(model, texts, generated, settings, batch_size) if texts else float("nan"),
        **{key: {str(k): {"exact_match": v[0] / v[1], "count": v[1]} for k, v in sorted(table.items())}
           for key, table in buckets.items()},
        "examples_per_s": n / gen_seconds if gen_seconds > 0 else None,
        "failures": failures,
    }


def _mode_token_accuracy(model, texts: list[str], generated: list[str], settings, batch_size: int) -> float:
    """``token_accuracy`` in the format the model's mode trains on (see ``evaluate_examples``)."""
    from mathllm.modes import mode_texts, split_text

    if settings.mode == "teacher":
        return token_accuracy(model, texts, batch_size)
    if settings.mode == "gumbel":
        lines = []
        for text, got in zip(texts, generated):
            prompt, _, answer = split_text(text)
            think = got[: got.index("</think>") + len("</think>")] if got.startswith("<think>") and "</think>" in got else ""
            lines.append(prompt + think + answer)
        return token_accuracy(model, lines, batch_size, answer_only=True)
    return token_accuracy(model, mode_texts(texts, settings), batch_size, answer_only=settings.mode == "pause")


def evaluate_checkpoint_on_split(model, path: str | os.PathLike, batch_size: int = 64,
                                 device: torch.device | str | None = None, limit: int | None = None) -> dict[str, Any]:
    """``evaluate_examples`` on a JSONL split file, recording which file and model were used."""
    from mathllm.data import load_split

    if device is not None:
        model = model.to(device)
    examples = load_split(path)
    if limit is not None:
        examples = examples[:limit]
    results = evaluate_examples(model, examples, batch_size=batch_size)
    results["data_path"] = str(path)
    return results


def load_model(checkpoint: str | os.PathLike, model_size: str | None = None, device: str = "auto"):
    """Load a checkpoint file or directory (config read from it; ``model_size`` is checked against it).

    When the run's ``training_config.json`` lies beside the weights it is attached as ``model.training_meta``
    (the playground reads the digits and operands the model was trained on from it).
    """
    from mathllm.model import MathTransformer
    from mathllm.utils import resolve_device

    model = MathTransformer.from_pretrained(checkpoint, model_size=model_size)
    run_record = training_record(checkpoint)
    if run_record is None:  # a lone model.safetensors still names its training mode in its metadata
        from mathllm.modes import read_mode_metadata

        mode = read_mode_metadata(checkpoint)
        run_record = {"config": mode} if mode else None
    model.training_meta = run_record
    return model.to(resolve_device(device)).eval()


def training_record(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """The ``training_config.json`` of the run a checkpoint came from, or None when there is none."""
    path = Path(checkpoint)
    folder = path if path.is_dir() else path.parent
    for candidate in (folder / "training_config.json", folder.parent / "training_config.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    return None


def dataset_for_checkpoint(checkpoint: str | os.PathLike):
    """Regenerate, exactly, the dataset a checkpoint was trained on (from its recorded data arguments).

    >>> # dataset_for_checkpoint("checkpoints/add3_cot")["test"][0]["text"]
    """
    from mathllm.data import generate_dataset

    record = training_record(checkpoint)
    args = ((record or {}).get("data_meta") or {}).get("arguments")
    if not args:
        raise ValueError(f"{checkpoint}: no training_config.json with the data's arguments beside it; "
                         "load the data with mathllm.data.load_split instead")
    return generate_dataset(**args)


def format_report(results: dict[str, Any]) -> str:
    """A short human-readable table of ``evaluate_examples`` results."""
    lines = [
        *([f"mode            {results['mode']}"] if results.get("mode", "teacher") != "teacher" else []),
        f"examples        {results['num_examples']}",
        f"exact match     {results['exact_match']:.4f}",
        f"token accuracy  {results['token_accuracy']:.4f}  (teacher forcing, "
        + ("completion tokens incl. think)" if results.get("mode", "teacher") == "teacher"
           else f"in the {results['mode']} format: see evaluate_examples)"),
    ]
    if results.get("think_exact") is not None:
        lines.append(f"think exact     {results['think_exact']:.4f}  ({results['num_with_think']} with a think block)")
    if results.get("examples_per_s"):
        lines.append(f"speed           {results['examples_per_s']:.0f} examples/s (greedy generation)")
    for key in ("by_num_digits", "by_num_carries", "by_num_operands"):
        if results.get(key):
            cells = "  ".join(f"{k}: {v['exact_match']:.3f} (n={v['count']})" for k, v in results[key].items())
            lines.append(f"{key:<16}{cells}")
    return "\n".join(lines)


def save_results(results: dict[str, Any], path: str | os.PathLike) -> None:
    from mathllm.utils import atomic_write_json

    atomic_write_json(path, results)


def iter_failures(results: dict[str, Any]) -> Iterable[str]:
    for f in results.get("failures", []):
        yield f"{f['prompt']}  expected {f['expected']}  got {f['generated']}"


__all__ = ["answer_from_completion", "evaluate_examples", "evaluate_checkpoint_on_split", "exact_match_texts",
           "format_report", "load_model", "token_accuracy", "save_results"]
