"""Where a computation runs: the device a name means, and the memory it has free (checked before allocating)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from vaelab.core.errors import VaelabError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise VaelabError("device 'cuda' requested but CUDA is not available here (use --device cpu or auto)")
    return torch.device(name)


def bf16_native(device: torch.device) -> bool:
    """Whether bf16 matrix products run natively here: a CUDA GPU that supports them, or a CPU with avx512_bf16 or
    AMX. Elsewhere (e.g. an AVX2-only CPU) bf16 is emulated: a training step of the reference conv VAE took 10-17x
    its fp32 time on a 2-core AMD EPYC with AVX2 only (2026-12-08)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def available_bytes(device: str | torch.device = "cpu") -> int:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(nbytes: int, what: str, device: str | torch.device = "cpu") -> None:
    """Refuse, before allocating, sizes whose tensors cannot fit in the device's free memory."""
    free = available_bytes(device)
    if nbytes > free:
        raise VaelabError(
            f"{what} needs about {nbytes / 2**30:,.1f} GiB but {torch.device(device).type} has "
            f"{free / 2**30:,.1f} GiB free; use smaller sizes"
        )
