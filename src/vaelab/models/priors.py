"""Priors p(z): a log-density and a sampler each (PRIORS)."""

from __future__ import annotations

import math

import torch
from torch import nn

from vaelab.models.losses import log_normal, log_normal_components


class Prior(nn.Module):
    """p(z): a log-density and a sampler. `analytic_kl` says whether KL(q || p) has a closed form for a diagonal
    Gaussian q (then the ELBO uses it; otherwise a one-sample Monte-Carlo estimate). `uses_encoder` says whether it
    is built from the model's own encoder (a VampPrior: then the posterior must be Gaussian and the model
    unconditional)."""

    analytic_kl = False
    uses_encoder = False

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

    uses_encoder = True

    def __init__(self, latent_dim: int, components: int = 10, shape=(1, 28, 28)):
        super().__init__(latent_dim)
        g = torch.Generator().manual_seed(0)  # the same start in every run, whatever its seed
        self.pseudo = nn.Parameter(self.start(torch.randn(components, *shape, generator=g)))
        self._encode = None

    @staticmethod
    def start(noise: torch.Tensor) -> torch.Tensor:
        """The pseudo-inputs' parameters at the start, from standard-normal noise: near 0, sigmoid(0) = mid-grey."""
        return 0.1 * noise

    def attach(self, encode_float) -> None:
        object.__setattr__(self, "_encode", encode_float)  # a function, not a submodule: no double registration

    def pseudo_inputs(self) -> torch.Tensor:
        """The K pseudo-inputs as images in [0, 1]."""
        return torch.sigmoid(self.pseudo)

    def components(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._encode(self.pseudo_inputs())

    def log_prob(self, z):
        mu, logvar = self.components()
        comp = log_normal_components(z, mu.float(), logvar.float())
        return torch.logsumexp(comp, dim=-1) - math.log(len(mu))

    def sample(self, n, generator=None):
        mu, logvar = self.components()
        k = torch.randint(len(mu), (n,), generator=generator).to(mu.device)
        eps = torch.randn(n, self.latent_dim, generator=generator).to(mu.device)
        return mu[k] + torch.exp(0.5 * logvar[k]) * eps


class HardtanhVampPrior(VampPrior):
    """The VampPrior as Tomczak & Welling's code builds it (jmtomczak/vae_vampprior, models/Model.py and
    utils/load_data.py): each pseudo-input's pixels are parameters clipped to [0, 1] by a hard tanh, started at
    N(0.05, 0.01^2) (near-black images, inside the hard tanh's slope so that every pixel has a gradient)."""

    @staticmethod
    def start(noise: torch.Tensor) -> torch.Tensor:
        return 0.05 + 0.01 * noise

    def pseudo_inputs(self) -> torch.Tensor:
        return nn.functional.hardtanh(self.pseudo, 0.0, 1.0)


PRIORS: dict[str, type[Prior]] = {
    "standard": StandardNormal,
    "mog": MixtureOfGaussians,
    "vamp": VampPrior,
    "vamp_hardtanh": HardtanhVampPrior,
}
