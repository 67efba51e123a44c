"""Data-parallel training over several processes with ``torch.distributed``.

A run is distributed when the environment says so: ``torchrun`` (and launchers that imitate it, such as
``srun`` with the variables exported by hand) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` in every worker.  With ``WORLD_SIZE`` unset or 1 nothing here does anything and training is the
plain single-process loop.

What this module owns:

* :func:`setup` / :func:`teardown`: pick the device (``cuda:LOCAL_RANK`` on GPUs), start the process group
  (NCCL on CUDA, gloo on CPU) with a timeout, and destroy it at the end;
* the few collectives the trainer needs (:func:`barrier`, :func:`mean_over_ranks`, :func:`gather_objects`);
* the rules that keep a run well defined across ranks and across world sizes: :func:`rank_seed` (each rank's
  own random streams) and :func:`reshard_data_state` (where the data order resumes when the world size changes);
* :class:`DistributedError` and :func:`failure_message`, so a rank that crashes or stalls makes the others stop
  with a message instead of hanging.

The timeout (seconds, default :data:`DEFAULT_TIMEOUT_S`) bounds every wait on another rank: a collective that
has not completed by then fails on the ranks that are waiting.  Set it with the environment variable
``DDPM_DIST_TIMEOUT``.  It must exceed the longest time rank 0 spends alone (writing a checkpoint or a preview
grid) while the others wait for it.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from ..data.batches import mix_seed

__all__ = ["World", "DistributedError", "DeviceError",
           "setup", "teardown", "barrier", "mean_over_ranks", "gather_objects",
           "rank_seed", "reshard_data_state", "timeout_seconds", "is_communication_error", "failure_message",
           "TIMEOUT_ENV", "DEFAULT_TIMEOUT_S", "env_world", "pick_device", "resolve_device"]

TIMEOUT_ENV = "DDPM_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0

#: names of the independent random streams :func:`rank_seed` derives
_STREAMS = {"noise": 1, "dropout": 2}


class DistributedError(RuntimeError):
    """The process group could not start, or a rank lost contact with the others; the message says which."""


@dataclass(frozen=True)
class World:
    """This process's place in the run: its rank among ``world_size`` processes and the device it trains on.

    ``backend`` is None for a single-process run (no process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def enabled(self) -> bool:
        """True when there is more than one process (and so a process group)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes every file of the run."""
        return self.rank == 0

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world_size}"


# ------------------------------------------------------------------------------------------- environment

def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"environment variable {name}={value!r} is not an integer") from None


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the environment; (0, 1, 0) when it describes no distributed run."""
    world_size = _env_int("WORLD_SIZE")
    if world_size is None or world_size == 1:
        return 0, 1, _env_int("LOCAL_RANK") or 0
    rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK")
    if world_size < 1 or rank is None or not 0 <= rank < world_size:
        raise DistributedError(f"WORLD_SIZE={world_size} needs RANK in [0, {world_size}), got RANK={rank}; "
                               "launch with torchrun, or export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and "
                               "MASTER_PORT for every process")
    return rank, world_size, rank if local_rank is None else local_rank


def timeout_seconds() -> float:
    """The collective timeout: ``$DDPM_DIST_TIMEOUT`` seconds, else :data:`DEFAULT_TIMEOUT_S`."""
    value = os.environ.get(TIMEOUT_ENV)
    if value is None or value == "":
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not math.isfinite(seconds) or seconds <= 0:
        raise DistributedError(f"{TIMEOUT_ENV}={value!r}: expected a positive number of seconds")
    return seconds


class DeviceError(ValueError):
    """A device that does not exist here (``--device cuda`` without a GPU, a misspelt name)."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; any other name is taken as it is, and a CUDA device must
    exist (:class:`DeviceError` otherwise, before any model is built)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"--device {name}: not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"--device {name}: no CUDA GPU is visible to this torch build; use --device cpu "
                              "(or auto)")
        if device.index is not None and device.index >= count:
            raise DeviceError(f"--device {name}: only {count} CUDA GPU(s) are visible (cuda:0 to cuda:{count - 1})")
    return device


def pick_device(name: str, local_rank: int, world_size: int) -> torch.device:
    """The device of this process.

    ``auto`` and ``cuda`` mean ``cuda:LOCAL_RANK`` when there are several processes (``cuda:0`` when each
    process sees a single GPU, as with ``CUDA_VISIBLE_DEVICES`` set per task); an explicit ``cuda:K`` is
    refused with several processes, since they would all share GPU K."""
    if world_size > 1 and name.startswith("cuda:"):
        raise DistributedError(f"--device {name} with {world_size} processes would put every rank on one GPU; "
                               "use --device cuda (each rank then takes cuda:LOCAL_RANK)")
    device = resolve_device(name)
    if device.type != "cuda" or world_size == 1:
        return device
    count = torch.cuda.device_count()
    if count == 1:
        return torch.device("cuda", 0)
    if local_rank >= count:
        raise DistributedError(f"LOCAL_RANK {local_rank} but this node shows only {count} GPUs; "
                               f"start at most {count} processes per node")
    return torch.device("cuda", local_rank)


# ------------------------------------------------------------------------------------------- process group

def setup(device: str = "auto") -> World:
    """Read the environment, choose the device, and start the process group when there are several processes.

    Idempotent: when a process group already exists (a test, or a caller that set one up), it is used as is."""
    rank, world_size, local_rank = env_world()
    dev = pick_device(device, local_rank, world_size)
    if world_size == 1:
        return World(device=dev)
    timeout = timeout_seconds()
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # NCCL and the object collectives use the current device
    if dist.is_initialized():
        if dist.get_world_size() != world_size or dist.get_rank() != rank:
            raise DistributedError(f"a process group of rank {dist.get_rank()} of {dist.get_world_size()} already "
                                   f"exists, but the environment says rank {rank} of {world_size}")
        backend = dist.get_backend()
    else:
        extra = {"device_id": dev} if backend == "nccl" else {}
        try:
            dist.init_process_group(backend, rank=rank, world_size=world_size,
                                    timeout=timedelta(seconds=timeout), **extra)
        except Exception as e:  # rendezvous failures come as several exception types
            where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            raise DistributedError(f"rank {rank} of {world_size}: could not join the process group at {where} "
                                   f"within {timeout:g} s ({type(e).__name__}: {_first_line(e)})") from e
    return World(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, backend=backend,
                 timeout_s=timeout)


def teardown() -> None:
    """Destroy the process group, if there is one (safe to call twice)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------- collectives

def barrier(world: World) -> None:
    """Wait until every rank gets here (at most the timeout)."""
    if not world.enabled:
        return
    if world.backend == "nccl":
        dist.barrier(device_ids=[world.device.index])
    else:
        dist.barrier()


def mean_over_ranks(value: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of ``value`` over ranks (a new tensor; ``value`` is left alone).  Identity for one process."""
    if not world.enabled:
        return value.clone()
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)  # gloo has no AVG; divide after
    return out / world.world_size


def gather_objects(obj, world: World) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects; small ones only)."""
    if not world.enabled:
        return [obj]
    out = [None] * world.world_size
    dist.all_gather_object(out, obj)
    return out


# ------------------------------------------------------------------------------------------- rules

def rank_seed(seed: int, rank: int, stream: str, step: int = 0) -> int:
    """A 63-bit seed for one rank's random ``stream`` ("noise": t and eps; "dropout": the global torch RNG),
    mixed from (seed, stream, rank, step) by NumPy's SeedSequence, so no two ranks, streams or restart steps
    share a stream."""
    return mix_seed(seed, _STREAMS[stream], rank, step)


def reshard_data_state(state: dict, *, batch_size: int, world_size: int, batches_per_epoch: int) -> dict:
    """Translate a :class:`ddpm.data.batches.Batches` state saved with another world size (or per-rank batch size).

    Every rank reads a strided share of the same per-epoch permutation, so after ``position`` batches of
    ``batch_size`` on each of ``world_size`` ranks the run has consumed exactly the first
    ``c = position * batch_size * world_size`` entries of that epoch's permutation, whatever the world size.
    The new run continues the same epoch at the first multiple of its own global batch at or after ``c``:
    ``position' = ceil(c / (batch_size' * world_size'))``.  No sample of the epoch is used twice; fewer than one
    global batch of them may be skipped.  When that position is past the epoch's last full batch the next
    epoch starts at position 0.  ``seed`` and ``epoch`` carry over, so the data order stays a function of
    (seed, epoch) alone.
    """
    consumed = int(state["position"]) * int(state["batch_size"]) * int(state["world_size"])
    global_batch = batch_size * world_size
    epoch, position = int(state["epoch"]), -(-consumed // global_batch)
    if position >= batches_per_epoch:
        epoch, position = epoch + 1, 0
    return {**state, "epoch": epoch, "position": position, "batch_size": batch_size, "world_size": world_size}


# ------------------------------------------------------------------------------------------- failures

def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


_COMM_WORDS = ("gloo", "nccl", "connection closed", "connection reset", "timed out", "timeout", "broken pipe",
               "socket", "peer")


def is_communication_error(e: BaseException) -> bool:
    """Whether ``e`` is a failed or timed-out exchange with another rank (rather than an error of this rank)."""
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    if isinstance(e, RuntimeError):
        text = str(e).lower()
        return any(w in text for w in _COMM_WORDS)
    return False


def failure_message(e: BaseException, world: World, run_dir) -> str:
    """One paragraph for a rank that stopped: what happened, and that the last checkpoint can be resumed."""
    resume = f"the last checkpoint in {run_dir} is intact; resume with: ddpm train --resume {run_dir}"
    if is_communication_error(e):
        return (f"{world.describe()}: lost contact with the other ranks: another rank crashed, was killed, or "
                f"did not answer within the {world.timeout_s:g} s timeout (set {TIMEOUT_ENV} to change it). "
                f"[{type(e).__name__}: {_first_line(e)}]; {resume}")
    return f"{world.describe()}: stopped by {type(e).__name__}: {_first_line(e)}; {resume}"

