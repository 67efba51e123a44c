"""What a checkpoint holds besides the weights, and putting it back on resume: the step, the optimizer and
gradient-scaler state, the data order, and every rank's random streams (so that a resumed run on the same
machine repeats the uninterrupted run's losses exactly, and a run saved on N ranks resumes on M)."""
from __future__ import annotations

import json

import torch

from ..runs.checkpoint import CheckpointError, load_checkpoint, mismatch_summary
from ..runtime import distributed
from .ema import restore_extra_emas

__all__ = ["rank_state", "trainer_state", "restore"]


def rank_state(trainer) -> dict:
    """This rank's own random state: its t/eps generator, the torch RNG (dropout), and the VLB history."""
    state = {"generator": trainer.gen.get_state(), "torch_rng": torch.get_rng_state()}
    if trainer.device.type == "cuda":  # the training GPU's only: a run resumes on a machine with fewer GPUs
        state["cuda_rng"] = torch.cuda.get_rng_state(trainer.device)
    if trainer.loss_fn.importance is not None:  # the key older versions wrote
        state["vlb"] = trainer.loss_fn.state_dict()
    return state


def trainer_state(trainer) -> dict:
    """Everything but the weights.  Collective when distributed: every rank must call it, since it gathers
    each rank's random state into ``ranks`` (rank 0's is also kept at the top level, as in a 1-rank run)."""
    ranks = distributed.gather_objects(rank_state(trainer), trainer.world)
    state = {"step": trainer.step, "optimizer": trainer.optimizer.state_dict(), "data": trainer.batches.state_dict(),
             "world_size": trainer.world.world_size, "best": trainer.best, **ranks[0]}
    if trainer.scaler.is_enabled():
        state["grad_scaler"] = trainer.scaler.state_dict()
    if trainer.world.enabled:
        state["ranks"] = ranks
    return state


def restore(trainer) -> None:
    """Load the newest intact checkpoint of ``trainer.run_dir`` into ``trainer`` (weights, optimizer, step, data
    order, random streams); a config that differs from the saved one in what it trains is refused."""
    ck = load_checkpoint(trainer.run_dir, fallback=True)
    saved = ck["config"]
    for key in ("model", "schedule", "variance", "loss"):
        if json.dumps(saved.get(key), sort_keys=True) != json.dumps(trainer.config.to_dict()[key], sort_keys=True):
            raise CheckpointError(f"{ck['path']}: saved {key} config differs from the requested one; "
                                  "resume with the run's own config.json")
    try:
        trainer.model.load_state_dict(ck["model"])
        trainer.ema.load_state_dict(ck["ema"])
        restore_extra_emas(trainer, ck)
    except RuntimeError as e:
        raise CheckpointError(f"{ck['path']}: weights do not fit this model ({mismatch_summary(e)})") from None
    tr = ck["trainer"]
    missing = [k for k in ("step", "optimizer", "data") if k not in tr]
    if missing:
        raise CheckpointError(f"{ck['path']}/trainer.pt: no {', '.join(missing)} in the trainer state; not a "
                              "checkpoint ddpm train wrote")
    try:
        trainer.optimizer.load_state_dict(tr["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{ck['path']}: optimizer state does not fit this model ({e})") from None
    if trainer.scaler.is_enabled() and "grad_scaler" in tr:
        trainer.scaler.load_state_dict(tr["grad_scaler"])
    trainer.step = int(tr["step"])
    trainer.best = tr.get("best")  # the best FD measured so far (None: none yet, or saved by an older version)
    if trainer.world.is_main and trainer.step < trainer.config.steps:
        print(f"resuming {trainer.run_dir} from step {trainer.step} of {trainer.config.steps}", flush=True)
    world, seed = trainer.world, trainer.config.seed
    data_state = tr["data"]
    if int(data_state.get("world_size", 1)) != world.world_size:
        data_state = distributed.reshard_data_state(data_state, batch_size=trainer.batches.batch_size,
                                                    world_size=world.world_size,
                                                    batches_per_epoch=len(trainer.batches))
    trainer.batches.load_state_dict(data_state)
    if int(tr.get("world_size", 1)) == world.world_size:
        # same world size: every rank continues its own streams exactly
        mine = tr["ranks"][world.rank] if world.enabled else tr
        trainer.gen.set_state(mine["generator"])
        torch.set_rng_state(mine["torch_rng"])
        if "cuda_rng" in mine and trainer.device.type == "cuda":
            rng, index = mine["cuda_rng"], trainer.device.index or 0
            if isinstance(rng, (list, tuple)):  # saved by an older version: one state per visible GPU
                rng = rng[index] if index < len(rng) else None
            if rng is not None:
                torch.cuda.set_rng_state(rng, trainer.device)
        if "vlb" in mine:
            trainer.loss_fn.load_state_dict(mine["vlb"])
    else:
        # another world size: fresh streams per rank, a function of (seed, rank, step); the t-sampling
        # history of rank 0 seeds every rank's
        trainer.gen.manual_seed(distributed.rank_seed(seed, world.rank, "noise", trainer.step))
        torch.manual_seed(distributed.rank_seed(seed, world.rank, "dropout", trainer.step))
        if "vlb" in tr:
            trainer.loss_fn.load_state_dict(tr["vlb"])
