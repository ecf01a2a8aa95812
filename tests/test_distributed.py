"""Data parallelism (mathllm.distributed): ``torchrun`` with 2 CPU processes (gloo) x 16 examples reaches the weights
of 1 process x 32; only rank 0 writes; a job whose worker is killed resumes when the same command runs again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mathllm.distributed import Distributed

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def flags(data: Path, out: Path, batch: int, *extra: str) -> list[str]:
    return [str(ROOT / "scripts" / "train.py"), "--model-size", "tiny", "--data-dir", str(data), "--output-dir",
            str(out), "--batch-size", str(batch), "--max-steps", "20", "--save-steps", "5", "--logging-steps", "5",
            "--eval-steps", "1000", "--eval-examples", "8", "--learning-rate", "3e-3", "--warmup-steps", "5",
            "--prompt-loss-weight", "0.1", "--no-wandb", "--no-progress", "--no-evaluate-test", "--seed", "11",
            "--threads", "1", *extra]


def max_difference(a: Path, b: Path) -> float:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert x.keys() == y.keys()
    return max((x[k] - y[k]).abs().max().item() for k in x)


def test_one_process_is_rank_0_of_1_and_keeps_the_local_mean():
    d = Distributed()
    assert (d.rank, d.world_size, d.enabled, d.is_main) == (0, 1, False, True)
    model = torch.nn.Linear(2, 2)
    assert d.wrap(model) is model
    index, rows = d.split(torch.arange(5))
    assert index.tolist() == [0, 1, 2, 3, 4] and rows == slice(0, 5)
    assert d.normalizer()(torch.tensor(8.0)).item() == 8.0


def test_a_global_batch_is_split_into_contiguous_shares():
    index = torch.arange(10, 15)
    shares = [Distributed(rank=r, world_size=2).split(index) for r in (0, 1)]
    assert [s[0].tolist() for s in shares] == [[10, 11, 12], [13, 14]]
    assert [s[1] for s in shares] == [slice(0, 3), slice(3, 5)]
    assert Distributed(rank=2, world_size=3).split(torch.arange(2))[0].tolist() == []  # a share may be empty


@pytest.mark.slow
@pytest.mark.parametrize("mode", [[], ["--mode", "gumbel", "--think-tokens", "4", "--prompt-loss-weight", "0"]],
                         ids=["teacher", "gumbel"])
def test_two_processes_of_16_reach_the_weights_of_one_of_32(tiny_dataset, tmp_path, mode):
    one = subprocess.run([sys.executable, *flags(tiny_dataset, tmp_path / "one", 32, *mode)], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([*TORCHRUN, *flags(tiny_dataset, tmp_path / "two", 16, *mode)], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "data parallel: 2 processes (world size 2), 16 examples per process, global batch 32" in two.stderr
    assert max_difference(tmp_path / "one", tmp_path / "two") <= 1e-5
    log = (tmp_path / "two" / "logs" / "training.log").read_text()
    assert log.count("step 20/20") == 1  # only rank 0 writes


def worker_pids(parent: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(parent)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.slow
def test_a_job_whose_worker_is_killed_resumes_with_the_same_command(tiny_dataset, tmp_path):
    straight = subprocess.run([*TORCHRUN, *flags(tiny_dataset, tmp_path / "straight", 16)], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]
    run = tmp_path / "killed"
    job = subprocess.Popen([*TORCHRUN, *flags(tiny_dataset, run, 16)], cwd=ROOT, env=ENV,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not list(run.glob("checkpoint-*/trainer_state.json")) and time.time() < deadline and job.poll() is None:
        time.sleep(0.05)
    workers = worker_pids(job.pid)
    assert workers and job.poll() is None, "the job ended before a worker could be killed"
    os.kill(workers[-1], signal.SIGKILL)
    assert job.wait(timeout=120) != 0  # torchrun stops the whole job
    assert not (run / "trainer_state.json").exists()
    again = subprocess.run([*TORCHRUN, *flags(tiny_dataset, run, 16)], cwd=ROOT, env=ENV, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr
    assert max_difference(tmp_path / "straight", run) <= 1e-6
