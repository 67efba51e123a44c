"""Minibatches: every example once per epoch, exact resume, flips, rank shards, the dataset held on the device."""
import json
import math

import pytest
import torch

from ddpm.data.batches import Batches, fits_on_device
from ddpm.data.datasets import DataError, to_uint8


def _toy(n=10):
    return torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1, 1).expand(n, 1, 2, 3).contiguous()


def _ids(batch):
    return to_uint8(batch)[:, 0, 0, 0].tolist()


def test_batches_cover_each_example_once_per_epoch():
    b = Batches(_toy(12), 4, seed=3)
    assert len(b) == 3
    first = [i for _ in range(3) for i in _ids(next(b))]
    assert sorted(first) == list(range(12))
    second = [i for _ in range(3) for i in _ids(next(b))]
    assert sorted(second) == list(range(12)) and second != first
    assert b.epoch == 1


def test_batches_output_scaled_float():
    x = next(Batches(_toy(4), 4, seed=0))
    assert x.dtype == torch.float32 and x.shape == (4, 1, 2, 3)
    assert sorted(x[:, 0, 0, 0].tolist()) == pytest.approx([i / 127.5 - 1 for i in range(4)], abs=1e-7)


def test_batches_drop_last_and_too_small():
    b = Batches(_toy(10), 4, seed=0)
    assert len(b) == 2
    seen = [i for _ in range(2) for i in _ids(next(b))]
    assert len(set(seen)) == 8
    assert len(Batches(_toy(10), 4, seed=0, drop_last=False)) == 3
    with pytest.raises(DataError, match="too few"):
        Batches(_toy(3), 4, seed=0)


def test_batches_deterministic_for_seed_and_generator():
    a = [_ids(next(Batches(_toy(), 5, seed=7))) for _ in range(2)]
    assert a[0] == a[1]
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    b1, b2 = Batches(_toy(), 5, g1), Batches(_toy(), 5, g2)
    assert [_ids(next(b1)) for _ in range(6)] == [_ids(next(b2)) for _ in range(6)]
    s7, s8 = Batches(_toy(), 5, seed=7), Batches(_toy(), 5, seed=8)
    assert [_ids(next(s7)) for _ in range(4)] != [_ids(next(s8)) for _ in range(4)]


def test_batches_resume_exactly_mid_epoch():
    imgs = torch.randint(0, 256, (10, 1, 3, 4), dtype=torch.uint8)
    ref = Batches(imgs, 3, seed=11, hflip=True)
    expected = [next(ref) for _ in range(8)]
    a = Batches(imgs, 3, seed=11, hflip=True)
    for _ in range(4):  # 3 batches per epoch: stop one batch into epoch 1
        next(a)
    state = json.loads(json.dumps(a.state_dict()))
    assert state["epoch"] == 1 and state["position"] == 1
    b = Batches(imgs, 3, seed=999, hflip=True)
    next(b)
    b.load_state_dict(state)
    for k in range(4, 8):
        assert torch.equal(next(b), expected[k])
    with pytest.raises(DataError, match="batch_size"):
        Batches(imgs, 2, seed=11, hflip=True).load_state_dict(state)


def test_batches_hflip_mirrors_some_images():
    imgs = torch.arange(6, dtype=torch.uint8).reshape(1, 1, 2, 3).repeat(16, 1, 1, 1)
    b = Batches(imgs, 16, seed=0, hflip=True)
    x = to_uint8(next(b))
    plain, mirrored = imgs[0], imgs[0].flip(-1)
    is_plain = (x == plain).flatten(1).all(1)
    is_mirror = (x == mirrored).flatten(1).all(1)
    assert bool((is_plain | is_mirror).all()) and is_plain.any() and is_mirror.any()
    assert torch.equal(to_uint8(next(Batches(imgs, 16, seed=0))), imgs)


@pytest.mark.parametrize("world_size", [2, 3])
def test_batches_rank_shards_disjoint_and_cover_epoch(world_size):
    n = 12
    shards = []
    for r in range(world_size):
        b = Batches(_toy(n), 2, seed=5, rank=r, world_size=world_size)
        shards.append([i for _ in range(len(b)) for i in _ids(next(b))])
    flat = [i for s in shards for i in s]
    assert sorted(flat) == list(range(n))
    # the shards interleave the single-rank permutation of the same seed and epoch
    order, _ = Batches(_toy(n), 2, seed=5).epoch_order(0)
    for r, s in enumerate(shards):
        assert s == order[r::world_size].tolist()
    with pytest.raises(ValueError):
        Batches(_toy(n), 2, seed=5, rank=2, world_size=2)


def test_dataset_held_on_the_device_when_asked_or_when_it_fits():
    """The meta device stands in for an accelerator: held there, the images, each epoch's order and flips and
    every batch live on it (so no batch crosses the host-device link); not held, the images stay on the host."""
    held = Batches(_toy(12), 4, seed=3, hflip=True, device="meta", hold_on_device=True)
    assert held.images.device.type == "meta"
    order, flips = held.epoch_order(0)
    assert order.device.type == "meta" and flips.device.type == "meta"
    assert next(held).device.type == "meta"
    kept = Batches(_toy(12), 4, seed=3, device="meta", hold_on_device=False)
    assert kept.images.device.type == "cpu" and next(kept).device.type == "meta"
    # on the CPU, auto never copies; elsewhere it copies what fits
    assert Batches(_toy(12), 4, seed=3).images.device.type == "cpu"
    assert not fits_on_device(10, torch.device("cpu"))
    assert fits_on_device(10, torch.device("meta")) and not fits_on_device(2 << 30, torch.device("meta"))


def test_batches_apply_each_positions_flip_coin_on_every_rank():
    """Rank r's (order, flips) are positions r, r + W, ... of the one-rank (order, flips) of the same seed and epoch,
    and every delivered image is images[order[k]] mirrored exactly when flips[k] (checked over two epochs)."""
    n, W = 24, 3
    imgs = (torch.arange(n, dtype=torch.uint8) * 10).reshape(n, 1, 1, 1) + torch.tensor([0, 1, 2], dtype=torch.uint8)
    one = Batches(imgs, 2, seed=4, hflip=True)
    for r in range(W):
        b = Batches(imgs, 2, seed=4, hflip=True, rank=r, world_size=W)
        for epoch in (0, 1):
            ref_order, ref_flips = one.epoch_order(epoch)
            order, flips = b.epoch_order(epoch)
            assert order.tolist() == ref_order[r::W].tolist() and flips.tolist() == ref_flips[r::W].tolist()
            got = torch.cat([to_uint8(next(b)) for _ in range(len(b))])
            want = torch.stack([imgs[i].flip(-1) if f else imgs[i] for i, f in zip(order.tolist(), flips.tolist())])
            assert torch.equal(got, want)
            assert 0 < int(flips.sum()) < len(flips)  # both cases occur


def test_batches_hflip_is_a_fair_coin():
    """Each image is mirrored with probability 1/2: over n = 4000 images the fraction has binomial SE
    sqrt(0.25 / n) = 0.0079; tolerance 5 SE (a coin of 0.4 or 0.6 would sit 12 SE away)."""
    n = 4000
    imgs = torch.tensor([[[[0, 255]]]], dtype=torch.uint8).repeat(n, 1, 1, 1)
    x = to_uint8(next(Batches(imgs, n, seed=1, hflip=True)))
    mirrored = (x[:, 0, 0, 0] == 255).double().mean().item()
    assert abs(mirrored - 0.5) < 5 * math.sqrt(0.25 / n)


def test_shards_stay_equal_when_the_dataset_does_not_divide_by_the_world_size():
    """13 images on 2 ranks: the permutation is cut to 12, so both ranks have 6 positions and, without drop_last,
    the same batch sizes (4 then 2) and the same number of batches; the 13th position goes unused this epoch."""
    n = 13
    order, _ = Batches(_toy(n), 4, seed=2, drop_last=False).epoch_order(0)
    seen = []
    for r in (0, 1):
        b = Batches(_toy(n), 4, seed=2, rank=r, world_size=2, drop_last=False)
        sizes = [len(_ids(next(b))) for _ in range(len(b))]
        assert len(b) == 2 and sizes == [4, 2]
        b = Batches(_toy(n), 4, seed=2, rank=r, world_size=2, drop_last=False)
        ids = [i for _ in range(len(b)) for i in _ids(next(b))]
        assert ids == order[r:12:2].tolist()
        seen += ids
    assert sorted(seen) == sorted(order[:12].tolist())


def test_loading_a_state_discards_the_epoch_order_cached_under_another_seed():
    """A Batches that already built epoch 0 for its own seed must, after load_state_dict of a state with another
    seed and epoch 0, deliver that seed's batches (the order is a function of (seed, epoch) alone)."""
    imgs = torch.randint(0, 256, (12, 1, 2, 2), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ref = Batches(imgs, 3, seed=11, hflip=True)
    expected = [next(ref) for _ in range(4)]
    state = Batches(imgs, 3, seed=11, hflip=True).state_dict()
    other = Batches(imgs, 3, seed=12, hflip=True)
    next(other)  # caches epoch 0 of seed 12
    other.load_state_dict(state)
    for k in range(4):
        assert torch.equal(next(other), expected[k])
