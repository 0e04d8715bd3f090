"""Posteriors q(z|x) on the encoder's features: a diagonal Gaussian, and the Gaussian through an IAF (POSTERIORS)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.models import noise
from vaelab.models.losses import log_normal


class MaskedLinear(nn.Linear):
    def __init__(self, d_in: int, d_out: int, mask: torch.Tensor):
        super().__init__(d_in, d_out)
        self.register_buffer("mask", mask.float(), persistent=False)

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """A masked autoencoder (Germain et al. 2015) with a context: output d (a shift m_d and a gate s_d) depends on
    z_<d and the context only, so the Jacobian of each IAF step is triangular."""

    def __init__(self, dim: int, context: int, hidden: int):
        super().__init__()
        deg_in = torch.arange(1, dim + 1)
        deg_h = torch.arange(hidden) % max(dim - 1, 1) + 1
        self.inp = MaskedLinear(dim, hidden, deg_h[:, None] >= deg_in[None])
        self.ctx = nn.Linear(context, hidden)
        self.mid = MaskedLinear(hidden, hidden, deg_h[:, None] >= deg_h[None])
        out_mask = (deg_in[:, None] > deg_h[None]).repeat(2, 1)  # strictly earlier dimensions only
        self.out = MaskedLinear(hidden, 2 * dim, out_mask)
        nn.init.zeros_(self.out.weight)  # start near the identity: the flow first refines the Gaussian
        nn.init.zeros_(self.out.bias)

    def forward(self, z, h):
        a = F.elu(self.inp(z) + self.ctx(h))
        return self.out(F.elu(self.mid(a))).chunk(2, dim=-1)


class IAF(nn.Module):
    """Inverse autoregressive flow (Kingma et al. 2016, eq. 11-14, the numerically stable gated update):
    z <- sigma * z + (1 - sigma) * m with sigma = sigmoid(s + 1.5), log|det| = sum log sigma; the order of the
    dimensions is reversed between steps."""

    FORGET_BIAS = 1.5

    def __init__(self, dim: int, context: int, steps: int, hidden: int):
        super().__init__()
        self.steps = nn.ModuleList(MADE(dim, context, hidden) for _ in range(steps))

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = torch.zeros(z.shape[:-1], device=z.device, dtype=z.dtype)
        for i, made in enumerate(self.steps):
            if i:
                z = z.flip(-1)
            m, s = made(z, h)
            gate = s + self.FORGET_BIAS
            z = torch.sigmoid(gate) * z + (1 - torch.sigmoid(gate)) * m
            logdet = logdet + F.logsigmoid(gate).sum(-1)
        if len(self.steps) % 2 == 0 and len(self.steps):
            z = z.flip(-1)  # an even number of reversals: back to the encoder's order
        return z, logdet


class GaussianPosterior(nn.Module):
    """q(z|x) = N(mu, diag exp(logvar)), mu and logvar linear in the encoder's features h (Kingma & Welling 2014).

    The interface every posterior offers: `gaussian(h)` (the base Gaussian: VampPrior components, per-dimension KL),
    `rsample(h, k)` (reparameterised draws with their log-density) and `mean(h)` (the code maps and probes read)."""

    analytic_kl = True  # KL to N(0, I) in closed form, also per dimension

    def __init__(self, features: int, latent_dim: int, steps: int = 2, hidden: int = 128):
        super().__init__()
        self.to_mu = nn.Linear(features, latent_dim)
        self.to_logvar = nn.Linear(features, latent_dim)

    def gaussian(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.to_mu(h), self.to_logvar(h)

    def rsample(self, h: torch.Tensor, k: int | None = None, eps: torch.Tensor | None = None):
        """z ~ q(z|x): k=None gives (B, D), else (B, k, D). Returns (z, log_q, mu, logvar), mu and logvar those of
        the base Gaussian. `eps` is the standard-normal noise when the caller draws it (multirun: one stream per run),
        else it comes from torch's global generator."""
        mu, logvar = self.gaussian(h)
        m, lv = (mu, logvar) if k is None else (mu[:, None], logvar[:, None])
        if eps is None:
            eps = noise.normal(tuple(m.shape) if k is None else (mu.shape[0], k, mu.shape[1]), mu)
        z = m + torch.exp(0.5 * lv) * eps
        return z, log_normal(z.float(), m.float(), lv.float()), mu, logvar

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        return self.to_mu(h)


class HardtanhGaussianPosterior(GaussianPosterior):
    """The Gaussian with its log-variance through a hard tanh to [-6, 2] and its KL estimated from the one sample
    (log q(z|x) - log p(z)), as Tomczak & Welling's code has it (jmtomczak/vae_vampprior, models/VAE.py): the
    posterior's standard deviation stays within [e^-3, e]."""

    analytic_kl = False
    LOGVAR_RANGE = (-6.0, 2.0)

    def gaussian(self, h):
        return self.to_mu(h), F.hardtanh(self.to_logvar(h), *self.LOGVAR_RANGE)


class IAFPosterior(GaussianPosterior):
    """The Gaussian's sample pushed through `steps` IAF steps with a context from the encoder (Kingma et al. 2016):
    log q(z_T|x) = log N(z_0; mu, sigma^2) - sum_t log|det dz_t/dz_(t-1)|."""

    analytic_kl = False

    def __init__(self, features: int, latent_dim: int, steps: int = 2, hidden: int = 128):
        super().__init__(features, latent_dim)
        self.to_context = nn.Linear(features, hidden)
        self.flow = IAF(latent_dim, hidden, steps, hidden)

    def rsample(self, h, k=None, eps=None):
        z, log_q, mu, logvar = super().rsample(h, k, eps)
        ctx = self.to_context(h)
        z, logdet = self.flow(z, ctx if k is None else ctx[:, None].expand(-1, k, -1))
        return z, log_q - logdet.float(), mu, logvar

    def mean(self, h):  # the Gaussian's mean pushed through the flow
        return self.flow(self.to_mu(h), self.to_context(h))[0]


POSTERIORS: dict[str, type[GaussianPosterior]] = {
    "gaussian": GaussianPosterior,
    "gaussian_hardtanh": HardtanhGaussianPosterior,
    "iaf": IAFPosterior,
}
