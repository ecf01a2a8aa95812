#!/usr/bin/env python
"""Train a model (the seed's flags and defaults), in any training mode.

    python scripts/train.py --model-size small --data-dir data --output-dir checkpoints/run1 --no-wandb
    python scripts/train.py --mode answer-only ...                    # no think block
    python scripts/train.py --mode pause --think-tokens 8 ...         # 8 <pause> tokens, loss on the answer
    python scripts/train.py --mode gumbel --think-alphabet latent --think-tokens 8 \\
        --gumbel-temperature 2 --gumbel-temperature-end 0.5 ...      # free thinking (--use-gumbel: the same)
    python scripts/train.py --mode internalize --internalize-end 0.75 --internalize-smoothing 4 ...
    python scripts/train.py --mode gumbel --init-from checkpoints/run1 --mix-teacher 0.5 --mix-teacher-end 0 ...

Modes (mathllm.modes): teacher (the human trace, the default), answer-only, pause, gumbel, internalize.

Running the same command again on the same --output-dir resumes from the newest checkpoint.
Ctrl-C saves a checkpoint and exits. Every flag is a field of mathllm.train.TrainConfig.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mathllm.cli import build_parser_from_dataclass, run_cli  # noqa: E402
from mathllm.train import TrainConfig, train  # noqa: E402


def main(argv=None) -> int:
    parser = build_parser_from_dataclass(TrainConfig, description=__doc__)
    parser.add_argument("--overwrite", action="store_true", help="delete --output-dir and train from scratch")
    args = parser.parse_args(argv)
    overwrite = args.__dict__.pop("overwrite")
    cfg = TrainConfig(**vars(args))
    result = train(cfg, overwrite=overwrite)
    if result.interrupted:
        return 130
    if result.test_results:
        from mathllm.evaluate import format_report

        print(format_report(result.test_results))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
