"""Endless, resumable, shardable random minibatches of a uint8 image tensor (in memory, or memory-mapped from disk
by :func:`ddpm.data.datasets.open_images`: a batch reads just its images), in [-1, 1], with the
images' class labels beside them when there are any.

Every batch is a function of (seed, epoch, position) alone, so a run resumes from three integers and the
ranks of a distributed run read disjoint shards of one permutation per epoch.  On an accelerator the whole
uint8 dataset is copied there once when it fits, so no batch crosses the host-device link.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .datasets import DataError, to_model_range

__all__ = ["Batches", "fits_on_device", "mix_seed", "DEVICE_FRACTION", "OTHER_DEVICE_BYTES"]

#: on a CUDA device the dataset is held there when it takes at most this fraction of the free memory
DEVICE_FRACTION = 0.1
#: on other accelerators (no free-memory query) when it takes at most this many bytes
OTHER_DEVICE_BYTES = 1 << 30


def fits_on_device(nbytes: int, device: torch.device) -> bool:
    """Whether a dataset of ``nbytes`` should live on ``device`` (never needed on the CPU)."""
    if device.type == "cpu":
        return False
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return nbytes <= DEVICE_FRACTION * free
    return nbytes <= OTHER_DEVICE_BYTES


def mix_seed(*words: int) -> int:
    """A 63-bit torch seed mixed from integers by NumPy's SeedSequence (each word taken mod 2^64), so distinct
    word tuples (a seed and an epoch, a rank, a stream ...) give unrelated streams."""
    return int(np.random.SeedSequence([w % 2**64 for w in words]).generate_state(1, np.uint64)[0] >> 1)


class Batches:
    """Endless random minibatches of an in-memory uint8 image tensor, scaled to float32 [-1, 1].

    Epoch e uses the permutation ``randperm(N)`` of a torch.Generator seeded from (seed, e), and (with
    ``hflip``) one coin per position of that permutation from the same generator; so every batch is a
    function of (seed, epoch, position) alone and resuming needs only three integers.  ``seed`` is an
    int, or a torch.Generator from which one 63-bit seed is drawn at construction.

    Sharding: the permutation is cut to a multiple of ``world_size`` and rank r takes positions
    r, r + world_size, ...; ranks built with the same seed see disjoint shards of the same permutation.
    ``batch_size`` is per rank.  ``drop_last`` drops a final short batch of the rank's shard.

    ``device``: where batches are delivered.  ``hold_on_device``: also keep the uint8 images (and each
    epoch's order) there, so a batch is a gather on the device; None (default) does so when
    :func:`fits_on_device`.

    ``labels``: an optional int64 (N,) tensor of class labels; then every batch is a pair (images, labels), the
    labels taken with the same indices (so they follow the images through the shuffling, the sharding and a
    resume) and delivered to ``device`` too; without labels a batch is the image tensor alone.

    ``next(batches)`` (or iterating) never stops; ``len(batches)`` is the number of batches per epoch.
    ``state_dict()`` gives plain ints (JSON-friendly); ``load_state_dict`` resumes with the same batches.
    """

    def __init__(self, images: torch.Tensor, batch_size: int, seed: int | torch.Generator, *,
                 hflip: bool = False, device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                 drop_last: bool = True, hold_on_device: bool | None = None, labels: torch.Tensor | None = None):
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            raise TypeError("Batches needs a uint8 tensor of shape (N, C, H, W)")
        if labels is not None and (not isinstance(labels, torch.Tensor) or labels.shape != (len(images),)
                                   or labels.is_floating_point() or labels.dtype == torch.bool):
            raise TypeError(f"labels must be an integer tensor of shape ({len(images)},), one per image")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        if isinstance(seed, torch.Generator):
            seed = int(torch.randint(0, 2**62, (), generator=seed))
        self.device = torch.device(device)
        if hold_on_device is None:
            hold_on_device = fits_on_device(images.numel(), self.device)
        self.images = images.to(self.device) if hold_on_device else images
        self.labels = None if labels is None else labels.to(self.images.device, torch.long)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.hflip = bool(hflip)
        self.rank, self.world_size = int(rank), int(world_size)
        self.drop_last = bool(drop_last)
        self.shard_size = len(images) // self.world_size
        full, rest = divmod(self.shard_size, self.batch_size)
        self.batches_per_epoch = full + (1 if rest and not drop_last else 0)
        if self.batches_per_epoch == 0:
            raise DataError(f"the dataset has {len(images)} images, too few for one batch of {batch_size} "
                            f"on each of {world_size} rank(s); lower the batch size or add images")
        self.epoch = 0
        self.position = 0
        self._cached: tuple[int, torch.Tensor, torch.Tensor | None] | None = None

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        return self

    def epoch_order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(this rank's example indices for ``epoch``, its flip flags or None), before batching."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1], self._cached[2]
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        n = len(self.images)
        perm = torch.randperm(n, generator=g)
        flips = torch.rand(n, generator=g) < 0.5 if self.hflip else None
        keep = slice(self.rank, self.shard_size * self.world_size, self.world_size)
        order = perm[keep].to(self.images.device)
        flips = flips[keep].to(self.images.device) if flips is not None else None
        self._cached = (epoch, order, flips)
        return order, flips

    def __next__(self) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.position >= self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
        order, flips = self.epoch_order(self.epoch)
        sl = slice(self.position * self.batch_size, (self.position + 1) * self.batch_size)
        idx = order[sl]
        x = self.images[idx].contiguous()  # a memory-mapped NHWC array gathers to NCHW like an in-memory one
        if flips is not None:
            x = torch.where(flips[sl][:, None, None, None], x.flip(-1), x)
        self.position += 1
        if self.labels is None:
            return to_model_range(x, self.device)
        return to_model_range(x, self.device), self.labels[idx].to(self.device, non_blocking=True)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position, "batch_size": self.batch_size,
                "world_size": self.world_size, "num_images": len(self.images), "hflip": self.hflip,
                "drop_last": self.drop_last}

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict`; refuses a state made with other data, batch size or world size."""
        for key, mine in (("num_images", len(self.images)), ("batch_size", self.batch_size),
                          ("world_size", self.world_size), ("hflip", self.hflip), ("drop_last", self.drop_last)):
            if key in state and state[key] != mine:
                raise DataError(f"cannot resume the batch order: it was saved with {key} {state[key]!r}, "
                                f"this run has {mine!r}; use the original settings or start afresh")
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])
        self._cached = None
