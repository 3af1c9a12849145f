"""Training under torchrun: who this process is, its device, and the few collectives the training loop needs.

Why a module of its own: `torchrun --nproc-per-node N -m curation.train_on_clean ...` starts N copies of the same
command; everything that depends on being one of N lives here, so the training loop reads as the single-process one
with a handful of calls that are no-ops when there is no torchrun (WORLD_SIZE unset or 1). torchrun sets RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; `init` reads them, picks cuda:LOCAL_RANK with the NCCL backend
when the device is CUDA and gloo on the CPU, and wraps nothing else.

Two process groups: the default one (NCCL or gloo) carries DistributedDataParallel's gradient all-reduce with torch's
default timeout, so a real hang is caught in minutes. A second, gloo group with a long timeout (`WAIT`) carries Python
objects (the prepared data, validation embeddings, RNG states) and the waits for rank 0 while it aligns photos or writes
checkpoints, which can take hours on a large dataset. A rank that dies does not leave the others waiting that long:
torchrun stops every worker as soon as one exits with an error.

Example (what train_on_clean does):
    >>> world, device = init("auto")            # World(rank=0, local_rank=0, size=1) outside torchrun
    >>> data = from_main(lambda: prepare_data(cfg), "preparing the data")   # rank 0 aligns, the others receive
    >>> net = wrap(model, device)               # DistributedDataParallel under torchrun, the model itself otherwise
    >>> cleanup()
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from embeddings.device import pick_device
from labels.cli import UserError

T = TypeVar("T")

# How long the object group waits (for rank 0 aligning a dataset, say); see the module docstring.
WAIT = timedelta(hours=48)

_objects: Any = None  # the gloo group for objects and long waits, while a run is distributed
_owned = False  # whether `init` created the default group (and `cleanup` must destroy it)


class MainFailed(UserError):
    """Raised on the other ranks when rank 0 failed at something they were waiting for. Rank 0 reports the cause
    (a one-line error or its traceback); the others only say that they stopped because of it."""


@dataclass(frozen=True)
class World:
    """This process's place among the training processes: global rank, rank on its node, number of processes."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, shows progress and writes the run folder."""
        return self.rank == 0


def world() -> World:
    """What torchrun set in the environment (RANK, LOCAL_RANK, WORLD_SIZE); World() when not launched by torchrun."""
    try:
        return World(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                     int(os.environ.get("WORLD_SIZE", 1)))
    except ValueError:
        raise UserError("RANK, LOCAL_RANK and WORLD_SIZE must be integers (they are set by torchrun)") from None


def init(device_spec: str = "auto") -> tuple[World, torch.device]:
    """Join the torchrun process group (when there is one) and pick this process's device.

    Outside torchrun this is `pick_device(device_spec)` and nothing else. Under torchrun, 'auto' or 'cuda' means
    cuda:LOCAL_RANK with NCCL when torch sees GPUs, 'cpu' (or 'auto' without GPUs) means the CPU with gloo. A process
    group someone already initialised is reused (and left for them to destroy).

    Example:
        >>> world, device = init("auto")    # under `torchrun --nproc-per-node 4` on a 4-GPU node: cuda:LOCAL_RANK
    """
    global _objects, _owned
    w = world()
    if w.size <= 1:
        return w, pick_device(device_spec)
    device = _rank_device(device_spec, w)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        _owned = True
    _objects = dist.new_group(backend="gloo", timeout=WAIT)
    return w, device


def _rank_device(spec: str, w: World) -> torch.device:
    spec = (spec or "auto").lower()
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if spec not in ("auto", "cuda"):
        raise UserError(f"--device {spec}: under torchrun each process takes cuda:LOCAL_RANK; use --device cuda or auto")
    pick_device("cuda")  # the clear error when there is no GPU
    if w.local_rank >= torch.cuda.device_count():
        raise UserError(f"LOCAL_RANK {w.local_rank}, but torch sees {torch.cuda.device_count()} GPU(s) on this node: "
                         "--nproc-per-node must not exceed the GPUs of a node")
    torch.cuda.set_device(w.local_rank)
    return torch.device("cuda", w.local_rank)


def active() -> bool:
    """True while this process is one of several joined by `init`."""
    return _objects is not None


def cleanup() -> None:
    """Leave the process group (destroying it only if `init` created it); a no-op outside torchrun."""
    global _objects, _owned
    if _objects is None:
        return
    dist.destroy_process_group(_objects)
    if _owned:
        dist.destroy_process_group()
    _objects, _owned = None, False


def barrier() -> None:
    """Wait until every rank gets here, on the patient group (rank 0 may be writing checkpoints meanwhile)."""
    if active():
        dist.barrier(group=_objects)


def broadcast(value: T, src: int = 0) -> T:
    """Rank `src`'s `value` on every rank (any picklable object); the value itself outside torchrun."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src, group=_objects)
    return box[0]


def gather(value: T) -> list[T] | None:
    """Every rank's `value`, in rank order, on rank 0 (None on the others); [value] outside torchrun."""
    if not active():
        return [value]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, out, dst=0, group=_objects)
    return out


def all_gather(value: T) -> list[T]:
    """Every rank's `value`, in rank order, on every rank; [value] outside torchrun."""
    if not active():
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value, group=_objects)
    return out


def from_main(make: Callable[[], T], what: str) -> T:
    """`make()` run on rank 0 only, its result sent to every rank.

    Why: preparing the data aligns photos into the embedding pass's crop cache; N ranks doing it at once would align
    every photo N times and write the same cache concurrently. Rank 0 does it, and the others receive the very same
    table, so every rank indexes the same pairs. If rank 0 fails, the others raise MainFailed instead of waiting.
    """
    if not active():
        return make()
    if dist.get_rank() == 0:
        try:
            value = make()
        except BaseException:
            broadcast((False, None))
            raise
        return broadcast((True, value))[1]
    ok, value = broadcast(None)
    if not ok:
        raise MainFailed(f"rank 0 failed while {what} (its error is printed above)")
    return value


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `module` under torchrun (it averages gradients over ranks at each backward and
    broadcasts rank 0's buffers at each forward); the module itself otherwise. Keep the unwrapped module for saving,
    so checkpoints have the same keys as single-process ones."""
    if not active():
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def mean(value: torch.Tensor) -> float:
    """A scalar averaged over ranks (the loss of the global batch, so every rank logs and checks the same number)."""
    if not active():
        return float(value)
    total = value.detach().float().reshape(1).clone()
    dist.all_reduce(total)
    return float(total) / dist.get_world_size()


def total(value: torch.Tensor) -> float:
    """A scalar summed over ranks (e.g. how many real photos the global batch holds); the value outside torchrun."""
    if not active():
        return float(value)
    out = value.detach().float().reshape(1).clone()
    dist.all_reduce(out)
    return float(out)


def sync_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    Why: DDP broadcasts them at the start of each forward, so after a step every rank holds running statistics updated
    from its own slice of the batch. Before validating or saving, every rank must hold rank 0's (the ones saved).
    """
    if not active():
        return
    for buf in module.buffers():
        dist.broadcast(buf, src=0)


def fingerprint(module: torch.nn.Module) -> str:
    """sha256 of a module's state_dict (names, dtypes, shapes and bytes, in order): equal iff the weights are equal.

    Used to check that every rank holds the same weights at each checkpoint, and printed at the end of a run so a
    checkpoint file can be matched to the run that wrote it.

    Example:
        >>> fingerprint(load_backbone("RUN/last.pt")) == fingerprint(model)
    """
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
