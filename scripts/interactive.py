#!/usr/bin/env python
"""Talk to a trained model in the terminal.

    python scripts/interactive.py --checkpoint checkpoints/main

Type a problem (``658+189``, ``658-189=``, ``12*34``: the operations the model was trained on) to see the model's
chain of thought and its answer beside the true one, or the start of one (``7+``) to let the model write the rest.
What the model cannot do is named (``3-7``: a subtraction needs a >= b; ``12+3*4``: one operation at a time;
``12*34`` for a model trained on addition only). ``quit``, ``exit``, Ctrl-C or Ctrl-D leave.
"""

import argparse
import sys

from mathllm.checkpoints import load
from mathllm.cli import non_negative_float, positive_int, run_cli
from mathllm.playground import ExpressionError, describe_checkpoint, run_expression

BANNER = """mathllm interactive: the model solves arithmetic problems and shows its reasoning.
  Enter an expression like 658+189, 658-189 or 12*34 (an '=' at the end is optional), or the start of one like 7+
  for the model to finish. Type 'quit' or 'exit' (or press Ctrl-D) to leave."""
PROMPT = "expression> "


def render(result, use_colour: bool) -> str:
    green, red, dim, reset = ("\033[32m", "\033[31m", "\033[2m", "\033[0m") if use_colour else ("", "", "", "")
    lines = [f"  model:  {result.full_text}"]
    if result.think_steps:
        lines.append("  chain of thought:")
        lines.extend(f"    {dim}step {i}:{reset} {s}" for i, s in enumerate(result.think_steps, 1))
    shown = "?" if result.model_answer is None else str(result.model_answer)
    if result.correct is None:
        lines.append(f"  answer: {shown}")
    elif result.correct:
        lines.append(f"  answer: {shown}   true: {result.true_answer}   {green}✓ correct{reset}")
    else:
        lines.append(f"  answer: {shown}   true: {result.true_answer}   {red}✗ WRONG{reset}")
    lines.extend(f"  {dim}note: {w}{reset}" for w in result.warnings)
    return "\n".join(lines)


def repl(model, temperature: float, max_new_tokens: int | None, input_fn=input, out=print,
         use_colour: bool = False) -> int:
    """Read expressions until quit/exit/EOF/Ctrl-C. Bad input prints a message and the session goes on."""
    out(BANNER)
    out(f"  model: {describe_checkpoint(model)}")
    while True:
        try:
            line = input_fn(PROMPT)
        except (EOFError, KeyboardInterrupt):
            out("\nbye")
            return 0
        if line.strip().lower() in ("quit", "exit", "q"):
            out("bye")
            return 0
        if not line.strip():
            continue
        try:
            result = run_expression(model, line, temperature=temperature, max_new_tokens=max_new_tokens)
        except ExpressionError as err:
            out(f"  error: {err}")
            continue
        out(render(result, use_colour))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="model.safetensors or a directory holding one")
    p.add_argument("--model-size", default=None, help="checked against the checkpoint's config when given")
    p.add_argument("--temperature", type=non_negative_float, default=0.1, help="0 = greedy (default: 0.1)")
    p.add_argument("--max-new-tokens", type=positive_int, default=None, help="default: up to the context length")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--loops", type=positive_int, default=None,
                   help="loop iterations of a looped model (default: the trained count; more or fewer is allowed)")
    args = p.parse_args(argv)

    trained = load(args.checkpoint, model_size=args.model_size, device=args.device, loops=args.loops)
    return repl(trained, args.temperature, args.max_new_tokens, use_colour=sys.stdout.isatty())


if __name__ == "__main__":
    sys.exit(run_cli(main))
