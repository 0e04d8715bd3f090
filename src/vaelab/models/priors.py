"""Priors p(z): a log-density and a sampler each (PRIORS)."""

from __future__ import annotations

import math

import torch
from torch import nn

from vaelab.models.losses import log_normal, log_normal_components


class Prior(nn.Module):
    """p(z): a log-density and a sampler. `analytic_kl` says whether KL(q || p) has a closed form for a diagonal
    Gaussian q (then the ELBO uses it; otherwise a one-sample Monte-Carlo estimate)."""

    analytic_kl = False

    def __init__(self, latent_dim: int, components: int = 1, shape: tuple[int, int, int] = (1, 1, 1)):
        super().__init__()
        self.latent_dim = latent_dim

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:  # (..., D) -> (...)
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError


class StandardNormal(Prior):
    """N(0, I), the study's prior."""

    analytic_kl = True

    def __init__(self, latent_dim: int, components: int = 1, shape=(1, 1, 1)):
        super().__init__(latent_dim)
        # follows .to(device), so samples land on the model's device; not saved, so checkpoints stay as they were
        self.register_buffer("anchor", torch.zeros(0), persistent=False)

    def log_prob(self, z):
        return log_normal(z)

    def sample(self, n, generator=None):
        # drawn on the CPU: a seeded torch.Generator is a CPU one, and the same seed then gives the same codes anywhere
        return torch.randn(n, self.latent_dim, generator=generator).to(self.anchor.device)


class MixtureOfGaussians(Prior):
    """A learned K-component mixture of diagonal Gaussians, p(z) = sum_k pi_k N(z; m_k, diag s_k^2)."""

    def __init__(self, latent_dim: int, components: int = 10, shape=(1, 1, 1)):
        super().__init__(latent_dim)
        g = torch.Generator().manual_seed(0)  # a fixed spread of initial means, independent of the run's seed
        self.means = nn.Parameter(torch.randn(components, latent_dim, generator=g))
        self.logvars = nn.Parameter(torch.zeros(components, latent_dim))
        self.logits = nn.Parameter(torch.zeros(components))

    def log_prob(self, z):
        comp = log_normal_components(z, self.means, self.logvars)  # (..., K)
        return torch.logsumexp(comp + torch.log_softmax(self.logits, 0), dim=-1)

    def sample(self, n, generator=None):
        k = torch.multinomial(torch.softmax(self.logits, 0).detach().cpu(), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.latent_dim, generator=generator)
        k = k.to(self.means.device)
        return self.means[k] + torch.exp(0.5 * self.logvars[k]) * eps.to(self.means.device)


class VampPrior(Prior):
    """VampPrior (Tomczak & Welling 2018, eq. 9): p(z) = 1/K sum_k q(z | u_k), the aggregate posterior of K learned
    pseudo-inputs u_k (images in [0, 1], through a sigmoid). The VAE hands it its encoder via `attach`."""

    def __init__(self, latent_dim: int, components: int = 10, shape=(1, 28, 28)):
        super().__init__(latent_dim)
        g = torch.Generator().manual_seed(0)
        self.pseudo = nn.Parameter(0.1 * torch.randn(components, *shape, generator=g))  # sigmoid(0) = mid-grey
        self._encode = None

    def attach(self, encode_float) -> None:
        object.__setattr__(self, "_encode", encode_float)  # a function, not a submodule: no double registration

    def components(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._encode(torch.sigmoid(self.pseudo))

    def log_prob(self, z):
        mu, logvar = self.components()
        comp = log_normal_components(z, mu.float(), logvar.float())
        return torch.logsumexp(comp, dim=-1) - math.log(len(mu))

    def sample(self, n, generator=None):
        mu, logvar = self.components()
        k = torch.randint(len(mu), (n,), generator=generator).to(mu.device)
        eps = torch.randn(n, self.latent_dim, generator=generator).to(mu.device)
        return mu[k] + torch.exp(0.5 * logvar[k]) * eps


PRIORS: dict[str, type[Prior]] = {"standard": StandardNormal, "mog": MixtureOfGaussians, "vamp": VampPrior}
