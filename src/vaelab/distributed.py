"""Data-parallel training over several processes with PyTorch's DistributedDataParallel.

Launch with torchrun (any number of nodes)::

    torchrun --nproc-per-node 4 -m vaelab train --preset mnist-mlp --out runs/a

or on one machine with ``vaelab train --nproc 4 ...``, which starts the same workers with
the same environment contract (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).

What each rank does, and why the result equals one process with the same global batch:

- ``train.batch_size`` is the global batch. Every rank draws the same permutation and the
  same dynamic binarization and reparameterization noise for the whole global batch (from
  identically seeded generators), then keeps its contiguous shard of it. So the images and
  the noise each example sees do not depend on the number of ranks.
- Each rank's loss is the mean over its shard; it is weighted by shard / (global / world)
  before backward, so DDP's gradient average is exactly the global batch mean even when
  the last batch splits unevenly. A semi-supervised batch (unlabelled images, then the
  labelled ones) is sharded the same way; M2 takes the whole batch's counts of each kind,
  so its means are the whole batch's whichever mix a shard holds.
- Training sums are all-reduced at the end of each epoch; validation runs on every rank
  and rank 0's result is broadcast, so early stopping and LR schedules decide the same
  everywhere. Only rank 0 writes the run directory.
- Model, optimizer and RNG states are identical on every rank, so a checkpoint does not
  depend on the world size: a run resumes on any number of processes.

Not rank-invariant: dropout masks and batch-norm statistics are per rank, and free bits
clamp the per-rank batch average of the KL.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .errors import VaelabError
from .objective import noise_shape, training_loss


@dataclass(frozen=True)
class Context:
    rank: int
    world: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """True inside a worker started by torchrun or ``vaelab train --nproc`` (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def context() -> Context | None:
    """The process group this process belongs to, or None when training alone."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def init(device: str = "auto") -> Context | None:
    """Join the process group described by torchrun's environment (env:// rendezvous).

    nccl on CUDA, gloo on CPU. Returns None (and does nothing) when not launched.
    """
    if not launched():
        return None
    if not dist.is_available():
        raise VaelabError("this PyTorch build has no torch.distributed: train with one process")
    if not dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
        global _joined
        _joined = True
    return context()


_joined = False  # whether init() created the process group (a caller's own group is left alone)


def leave(finished: bool) -> None:
    """Leave the process group that init() joined, if it did.

    After a barrier when this rank finished, so that no rank tears down its connections while
    another still uses them; without an explicit destroy, gloo's threads are torn down at
    interpreter exit, and a worker could abort there (SIGABRT, "terminate called without an
    active exception") after its run was written. On an error: at once, without waiting.
    """
    global _joined
    if not _joined or not (dist.is_available() and dist.is_initialized()):
        return
    _joined = False
    try:
        if finished:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def barrier(ctx: Context | None) -> None:
    if ctx is not None:
        dist.barrier()


def shard(n: int, ctx: Context) -> slice:
    """This rank's contiguous part of a global batch of n (sizes differ by at most one)."""
    base, extra = divmod(n, ctx.world)
    start = ctx.rank * base + min(ctx.rank, extra)
    return slice(start, start + base + (1 if ctx.rank < extra else 0))


def all_reduce_sum(values: torch.Tensor, ctx: Context | None) -> torch.Tensor:
    if ctx is not None:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast(obj, ctx: Context | None):
    """Rank 0's ``obj`` (any picklable value) on every rank."""
    if ctx is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _Objective(nn.Module):
    """The VAE's training objective as a forward(), so DDP can hook its backward."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, x, beta: float, train, noise, labels=None, weights=None, counts=None):
        return training_loss(self.vae, x, beta, train, noise=noise, labels=labels, weights=weights, counts=counts)


class DataParallel:
    """One training step's forward on this rank's shard of a global batch, through DDP."""

    def __init__(self, model: nn.Module, ctx: Context, device: torch.device):
        self.ctx, self.model, self.device = ctx, model, device
        ids = [device.index if device.index is not None else ctx.local_rank] if device.type == "cuda" else None
        self.ddp = nn.parallel.DistributedDataParallel(_Objective(model), device_ids=ids)

    def loss(self, x: torch.Tensor, beta: float, t, labels: torch.Tensor | None = None,
             weights: tuple[float, float, float] | None = None):
        """(local x, LossOutput on the shard, the tensor to call backward on). A semi-supervised
        model's ``labels`` (-1: unlabelled) are sharded with the images; it is told the whole
        batch's counts, and returns its values per image of the shard as every model does."""
        batch = x.shape[0]
        # the noise of the whole global batch, drawn as one process would, then sliced
        noise = torch.randn(noise_shape(self.model, t, batch), device=x.device, dtype=torch.float32)
        part = shard(batch, self.ctx)
        local = x[part]
        noise = noise[:, part] if t.objective == "iwae" else noise[part]
        if labels is None:
            out = self.ddp(local, beta, t, noise)
        else:
            n_l = t.labelled_batch  # every step appends this many labelled images (no device sync)
            out = self.ddp(local, beta, t, noise, labels[part], weights, (batch - n_l, n_l))
        # DDP averages over ranks; this weight turns that into the mean over the global batch
        weight = local.shape[0] * self.ctx.world / batch
        return local, out, out.loss * weight


# -- vaelab train --nproc N ----------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(argv: list[str], nproc: int) -> int:
    """Run ``python -m vaelab <argv>`` in nproc local workers with torchrun's environment.

    Returns the first non-zero exit status (the other workers are then stopped), else 0.
    """
    if nproc < 1:
        raise VaelabError(f"--nproc must be at least 1, got {nproc}")
    port = _free_port()
    threads = max(1, (os.cpu_count() or 1) // nproc)
    procs = []
    for rank in range(nproc):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc),
                   LOCAL_WORLD_SIZE=str(nproc), GROUP_RANK="0", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
        # as torchrun does: do not let N processes each start one thread per core
        env.setdefault("OMP_NUM_THREADS", str(threads))
        procs.append(subprocess.Popen([sys.executable, "-m", "vaelab", *argv], env=env))
    status = 0
    try:
        while procs:
            for p in list(procs):
                code = p.poll()
                if code is None:
                    continue
                procs.remove(p)
                if code != 0 and status == 0:
                    status = code
                    _stop(procs)
            time.sleep(0.1)
    except KeyboardInterrupt:  # the workers got the same SIGINT: let them save and stop
        for p in procs:
            p.wait()
        return 130
    return status


def _stop(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    for p in procs:
        p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
