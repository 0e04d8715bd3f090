"""The reparameterisation noise of a training forward pass. One process draws it from torch's global stream for its
batch. When one global batch is split over processes (DistributedDataParallel, vaelab.training.distributed), each process
draws the noise of the *whole* global batch from the same stream (every process seeds it alike) and keeps the rows of
its shard, so N processes give each image the noise one process would: that, with gradients averaged over the
shards, is what makes an N-process run match a one-process run within float rounding."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

_SHARD: tuple[int, int, int] | None = None  # (global batch size, start, stop) of this process's rows


@contextmanager
def batch_shard(global_batch: int, start: int, stop: int) -> Iterator[None]:
    """Within this block, noise for a batch of stop - start rows is the rows [start, stop) of the global batch's."""
    global _SHARD
    before, _SHARD = _SHARD, (global_batch, start, stop)
    try:
        yield
    finally:
        _SHARD = before


def _global_rows(shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    if _SHARD is None or not shape or shape[0] != _SHARD[2] - _SHARD[1]:
        return None
    return _SHARD


def normal(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Standard-normal noise of `shape` (first dimension the batch) on `like`'s device and dtype."""
    shard = _global_rows(tuple(shape))
    if shard is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    total, start, stop = shard
    return torch.randn((total, *shape[1:]), device=like.device, dtype=like.dtype)[start:stop]


def normal_like(t: torch.Tensor) -> torch.Tensor:
    """torch.randn_like(t), or its rows of the global batch's noise inside batch_shard."""
    shard = _global_rows(tuple(t.shape))
    if shard is None:
        return torch.randn_like(t)
    total, start, stop = shard
    return torch.randn((total, *t.shape[1:]), device=t.device, dtype=t.dtype)[start:stop]
