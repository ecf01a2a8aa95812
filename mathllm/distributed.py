"""Training on several processes: ``torch.distributed`` with DistributedDataParallel, launched by ``torchrun``.

    torchrun --standalone --nproc_per_node 2 scripts/train.py --config configs/main.json
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        scripts/train.py ...                                          # two machines; node_rank 1 on the other

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` for every worker; ``Distributed.from_env()`` reads
them (one process without them) and joins the process group: gloo on a CPU, NCCL on CUDA (one GPU per process,
``cuda:LOCAL_RANK``). The trainer splits every global batch across the processes (``--batch-size`` is per
process), normalises the loss by the token count over all of them, and lets only rank 0 write.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass
class Distributed:
    """This process's place in the job: ``rank`` of ``world_size`` (one process: 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun (even with one process: DDP is then used, for comparison)

    @classmethod
    def from_env(cls) -> "Distributed":
        """The job ``torchrun`` started (and the process group joined), or one process."""
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return cls()
        world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(local)
            dist.init_process_group(backend=backend)
        return cls(rank, world, local, launched=True)

    @property
    def enabled(self) -> bool:
        """Whether this process is part of a torchrun job (batches split, gradients averaged by DDP)."""
        return self.launched

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes logs, checkpoints, W&B and test results."""
        return self.rank == 0

    def device(self, requested: torch.device) -> torch.device:
        """``cuda:LOCAL_RANK`` when the job runs on GPUs, else ``requested``."""
        if self.enabled and requested.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return requested

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of ``value`` over every process (differentiable: the gradient stays this process's own)."""
        if not self.enabled:
            return value
        total = value.detach().clone()
        dist.all_reduce(total)
        return value + (total - value).detach()

    def normalizer(self):
        """A token count -> the divisor of this process's share of the global mean (see ``StepContext``)."""
        world = self.world_size

        def normalize(count: torch.Tensor) -> torch.Tensor:
            return (self.sum(count.detach().float()) / world).clamp_min(1.0 / world)

        return normalize

    def split(self, index: torch.Tensor) -> tuple[torch.Tensor, slice]:
        """This process's contiguous share of a global batch's rows, and its slice of them."""
        sizes = [len(part) for part in torch.arange(len(index)).tensor_split(self.world_size)]
        start = sum(sizes[: self.rank])
        rows = slice(start, start + sizes[self.rank])
        return index[rows], rows

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's ``value`` on every process."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model as the training step sees it: wrapped for gradient averaging when there are several processes."""
        if not self.enabled:
            return model
        device_ids = [self.local_rank] if next(model.parameters()).is_cuda else None
        return _ModelDDP(model, device_ids=device_ids)

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


class _ModelDDP(DistributedDataParallel):
    """DistributedDataParallel that also answers the wrapped model's attributes (``W_E``, ``cfg``, ``embed``...),
    so a training mode's step runs unchanged on it."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


__all__ = ["Distributed"]
