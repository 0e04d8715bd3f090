"""The non-finite guard kept on the device: each step's verdict accumulates in tensors that the host reads every N steps, so that a GPU step never waits for the host."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Steps between the host's reads of the guard, by device type. On a CPU the host reads it every step (as it always
# has: no wait to save, and results stay exactly as they were); on an accelerator one read per step (a device sync)
# can halve a small model's throughput.
HOST_READ_EVERY = {"cpu": 1, "default": 32}


def read_every(device: torch.device) -> int:
    return HOST_READ_EVERY.get(device.type, HOST_READ_EVERY["default"])


@dataclass
class Settled:
    """What the device counted since the last read: non-finite steps, steps skipped for a huge gradient, images the
    applied steps trained on, the current run of non-finite steps in a row, and the longest run seen."""

    bad: int
    large: int
    seen: int
    in_row: int
    worst: int


class DeviceGuard:
    """Per step: whether to apply it (finite loss and gradient, gradient not above the skip threshold), as a device
    tensor the fused optimiser reads (`found_inf`, as torch.amp's GradScaler hands it over), and the tallies of the
    host's guard (StepCore.guard), kept on the device until read(). The run of non-finite steps in a row carries over
    reads and epochs, as the host's does."""

    def __init__(self, device: torch.device, in_row: int = 0, every: int = 32):
        self.every, self.since = every, 0
        zero = torch.zeros((), dtype=torch.int64, device=device)
        self.in_row = zero + in_row
        self.worst, self.bad, self.large, self.seen = zero + in_row, zero.clone(), zero.clone(), zero.clone()

    def step(self, finite: torch.Tensor, large: torch.Tensor, images: int) -> torch.Tensor:
        """Count one step; returns `apply` (a bool tensor: update with this step)."""
        apply = finite & ~large
        self.in_row = (self.in_row + 1) * (~finite)
        self.worst = torch.maximum(self.worst, self.in_row)
        self.bad += ~finite
        self.large += large
        self.seen += apply * images
        self.since += 1
        return apply

    def due(self) -> bool:
        return self.since >= self.every

    def read(self) -> Settled:
        """One host read of everything counted since the last; the counts start again (the run in a row goes on)."""
        bad, large, seen, in_row, worst = torch.stack(
            [self.bad, self.large, self.seen, self.in_row, self.worst]
        ).tolist()
        self.bad.zero_(), self.large.zero_(), self.seen.zero_()
        self.worst = self.in_row.clone()
        self.since = 0
        return Settled(bad, large, seen, in_row, worst)
