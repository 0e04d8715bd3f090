"""Latent-space tools: encode a split, interpolate (linear and spherical), traverse dimensions, the 2-D manifold."""

from __future__ import annotations

import numpy as np
import torch

from . import data as vdata
from .models import VAE


@torch.no_grad()
def encode_split(model: VAE, split: vdata.Split, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and log-variances of every image in a split."""
    model.eval()
    mus, logvars = [], []
    for idx in vdata.minibatches(len(split), batch_size, device=split.x.device, shuffle=False):
        mu, logvar = model.encode(split.x[idx], split.y[idx] if model.num_classes else None)
        mus.append(mu)
        logvars.append(logvar)
    return torch.cat(mus), torch.cat(logvars)


def lerp(z0: torch.Tensor, z1: torch.Tensor, steps: int) -> torch.Tensor:
    t = torch.linspace(0, 1, steps, device=z0.device)[:, None]
    return (1 - t) * z0 + t * z1


def slerp(z0: torch.Tensor, z1: torch.Tensor, steps: int) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985; White 2016 for Gaussian latents): keeps the norm typical of N(0, I)."""
    t = torch.linspace(0, 1, steps, device=z0.device)[:, None]
    cos = torch.dot(z0, z1) / (z0.norm() * z1.norm()).clamp(min=1e-12)
    omega = torch.arccos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    if so.abs() < 1e-6:  # (anti)parallel: the great circle is undefined, fall back to a straight line
        return lerp(z0, z1, steps)
    return (torch.sin((1 - t) * omega) / so) * z0 + (torch.sin(t * omega) / so) * z1


def traverse(z: torch.Tensor, dims: list[int], values: torch.Tensor) -> torch.Tensor:
    """For each dim, copies of z with that coordinate set to each value: (len(dims) * len(values), latent_dim)."""
    out = z.repeat(len(dims) * len(values), 1)
    for i, d in enumerate(dims):
        out[i * len(values):(i + 1) * len(values), d] = values
    return out


def manifold_grid(n: int, device="cpu") -> torch.Tensor:
    """An n x n grid over the latent plane at Gaussian quantiles (Kingma & Welling 2014, fig. 4), row-major, z2 down."""
    from scipy.stats import norm

    q = torch.tensor(norm.ppf(np.linspace(0.05, 0.95, n)), dtype=torch.float32, device=device)
    z2, z1 = torch.meshgrid(q.flip(0), q, indexing="ij")
    return torch.stack([z1.reshape(-1), z2.reshape(-1)], 1)


@torch.no_grad()
def decode_mean(model: VAE, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    return model.likelihood.mean(model.decode(z, y).float())
