#!/usr/bin/env python
"""Train a model (the seed's flags and defaults), in any training mode, from flags or an experiment file.

    python scripts/train.py --config configs/main.json                  # an experiment file; flags override it
    python scripts/train.py --config configs/main.json --max-steps 500 --output-dir checkpoints/short
    python scripts/train.py --model-size small --data-dir data --output-dir checkpoints/run1 --no-wandb
    python scripts/train.py --mode answer-only ...                    # no think block
    python scripts/train.py --mode pause --think-tokens 8 ...         # 8 <pause> tokens, loss on the answer
    python scripts/train.py --mode gumbel --think-alphabet latent --think-tokens 8 \\
        --gumbel-temperature 2 --gumbel-temperature-end 0.5 ...      # free thinking (--use-gumbel: the same)
    python scripts/train.py --mode internalize --internalize-end 0.75 --internalize-smoothing 4 ...
    python scripts/train.py --mode gumbel --init-from checkpoints/run1 --mix-teacher 0.5 --mix-teacher-end 0 ...

Modes (mathllm.modes): teacher (the human trace, the default), answer-only, pause, gumbel, internalize.

Running the same command again on the same --output-dir resumes from the newest checkpoint.
Ctrl-C saves a checkpoint and exits. Every flag is a field of mathllm.train.TrainConfig or a setting of a mode.
"""

import sys

from mathllm.cli import run_cli, training_config, training_parser
from mathllm.evaluate import format_report
from mathllm.train import train


def main(argv=None) -> int:
    cfg, overwrite = training_config(vars(training_parser(__doc__).parse_args(argv)))
    result = train(cfg, overwrite=overwrite)
    if result.interrupted:
        return 130
    if result.test_results:
        print(format_report(result.test_results))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
