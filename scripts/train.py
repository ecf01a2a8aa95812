#!/usr/bin/env python
"""Train a model with teacher forcing (the seed's flags and defaults).

    python scripts/train.py --model-size small --data-dir data --output-dir checkpoints/run1 --no-wandb

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
