"""One model on several processes and machines: PyTorch's DistributedDataParallel, launched by `torchrun` or by
`vaelab train --nproc N` (vaelab.training.processes: torchrun's own launcher, torch.distributed.launcher, in-process).

Each process takes its shard of every global batch: the batch order comes from one generator seeded alike in every
process, each process keeps rows [start, stop) of each batch, draws the reparameterisation noise of the whole batch
and keeps its rows (models.noise), and scales its mean loss by its share of the batch so that the gradients
DistributedDataParallel averages are the one-process gradient of the whole batch. The global batch size, learning
rate and schedules therefore mean what they mean in one process. Rank 0 writes every file; decisions that depend on a
clock (time budgets) are rank 0's, broadcast; counts are the same everywhere by construction."""

from __future__ import annotations

import logging
import os
import signal
import sys
import uuid
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from vaelab.core.errors import Terminated, VaelabError


@dataclass(frozen=True)
class Dist:
    """This process's place: its rank among `world` processes and its rank on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def on(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes the run's files and evaluates it."""
        return self.rank == 0


def from_env() -> Dist:
    """The place torchrun gives this process (RANK, WORLD_SIZE, LOCAL_RANK), or a single process."""
    try:
        return Dist(
            int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
        )
    except ValueError:
        raise VaelabError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None


def current() -> Dist:
    """This process's place once the process group is up (a single process otherwise)."""
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), from_env().local_rank)
    return Dist()


def init(device: str) -> Dist:
    """Join the process group torchrun describes (gloo on the CPU, NCCL on CUDA); a no-op for one process. On CUDA
    each process takes the GPU of its local rank."""
    d = from_env()
    if not d.on or dist.is_initialized():
        return current()
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(d.local_rank % torch.cuda.device_count())
    dist.init_process_group("nccl" if cuda else "gloo")
    return current()


def barrier(d: Dist) -> None:
    if d.on:
        dist.barrier()


def finish() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(n: int, d: Dist) -> tuple[int, int]:
    """Rows [start, stop) of a batch of n that process d takes: contiguous, sizes differing by at most one."""
    base, extra = divmod(n, d.world)
    start = d.rank * base + min(d.rank, extra)
    return start, start + base + (1 if d.rank < extra else 0)


def total(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """The sum of t over all processes (t itself for one)."""
    if d.on:
        t = t.clone()
        dist.all_reduce(t)
    return t


def from_main(value: float, d: Dist, device: torch.device) -> float:
    """Rank 0's value, in every process (a clock reading, so that a time budget stops every process together)."""
    if not d.on:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, 0)
    return float(t.item())


def average_grads(params, d: Dist) -> None:
    """Average gradients over the processes by hand (the FactorVAE critic, which is not wrapped in DDP)."""
    if not d.on:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= d.world


def wrap(model: torch.nn.Module, d: Dist, device: torch.device) -> torch.nn.Module:
    """The model as DistributedDataParallel when there are several processes (the model itself otherwise)."""
    if not d.on:
        return model
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def check_nproc(nproc: int, device: str) -> None:
    """Refuse more processes than this machine has places for: GPUs when training on CUDA, else CPU cores (each
    process needs at least one; more only wait on each other)."""
    cuda = device != "cpu" and torch.cuda.is_available()
    have, what = (torch.cuda.device_count(), "GPUs") if cuda else (os.cpu_count() or 1, "CPU cores")
    if nproc > have:
        raise VaelabError(
            f"--nproc {nproc} is more than this machine's {have} {what}: use at most {have} (several machines: torchrun)"
        )


def failure_text(failures: dict) -> str:
    """Which process stopped the others: one that died of anything but SIGTERM (the launcher stops the survivors with
    SIGTERM: -15, or 143 through vaelab's handler) first, then one killed by a signal before one that exited with an
    error (a peer's death makes the others' collectives fail too), the earlier before the later, then by rank."""

    def said(rank, f) -> str:
        how = f"was killed by signal {-f.exitcode}" if f.exitcode < 0 else f"exited with code {f.exitcode}"
        return f"process {rank} {how}"

    order = sorted(
        failures.items(), key=lambda kv: (kv[1].exitcode in (-15, 143), kv[1].exitcode >= 0, kv[1].timestamp, kv[0])
    )
    rest = ", ".join(said(*kv) for kv in order[1:])
    return said(*order[0]) + (f" (then {rest})" if rest else "")


def run_processes(argv: list[str], nproc: int, threads: int | None = None) -> None:
    """Run `python ARGV` in nproc processes on this machine, as `torchrun --standalone --nproc-per-node NPROC` does
    (vaelab.training.processes.launch says what runs); any process that fails ends all of them, and this raises one
    line naming it."""
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"vaelab-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.2,
        start_method="spawn",
    )
    # each process's CPU threads: given, or as set, or the cores shared among the processes
    omp = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads or omp or max(1, (os.cpu_count() or 1) // nproc))
    # the failure (or Ctrl-C) is reported below, in one line: elastic's loggers each set their own level
    quiet = [
        logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith("torch.distributed.elastic")
    ]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.CRITICAL)
    try:
        elastic_launch(config, entrypoint=sys.executable)(*argv)
    except ChildFailedError as e:
        raise VaelabError(
            f"training on {nproc} processes stopped: {failure_text(e.failures)} (its message, if any, is above); "
            "the run resumes with --resume"
        ) from None
    except SignalException as e:  # Ctrl-C or SIGTERM reached the launcher: the same answer as one process gives
        raise (KeyboardInterrupt() if e.sigval == signal.SIGINT else Terminated()) from None
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp
