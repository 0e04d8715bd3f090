"""Tomczak & Welling's two-level hierarchical VAE (2018, section 4; their code's HVAE_2level): q(z2|x) q(z1|x, z2),
p(z2) p(z1|z2) p(x|z1, z2), every network two gated dense layers of 300 units, log-variances in [-6, 2]."""

from __future__ import annotations

import math

import torch
from torch import nn

from vaelab.models import noise
from vaelab.models.losses import log_normal, make_likelihood
from vaelab.models.nets import GatedDense, fp32_out, he_normal
from vaelab.models.posteriors import HardtanhGaussianPosterior
from vaelab.models.priors import PRIORS, VampPrior
from vaelab.models.stacked import TwoStochasticLayers

HIDDEN = 300
# every Gaussian of theirs has its log-variance through Hardtanh(-6, 2): the gaussian_hardtanh posterior's head
Head = HardtanhGaussianPosterior


class Joint(nn.Module):
    """Two inputs through a gated layer each, then one gated layer on both (their `*_layers_x`, `*_layers_z2` and
    `*_layers_joint`); `a` may come in as its features already (`a_features`), computed once for K draws."""

    def __init__(self, d_a: int, d_b: int):
        super().__init__()
        self.a, self.b, self.joint = GatedDense(d_a, HIDDEN), GatedDense(d_b, HIDDEN), GatedDense(2 * HIDDEN, HIDDEN)

    def forward(self, a_features: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.joint(torch.cat([a_features, self.b(b)], -1))


def _stack(d_in: int) -> nn.Sequential:
    return nn.Sequential(GatedDense(d_in, HIDDEN), GatedDense(HIDDEN, HIDDEN))


class GatedHVAE(TwoStochasticLayers):
    """z2 (`latent_dim` units, the code) on top with the prior p(z2) (N(0, I) or the VampPrior over q(z2|u_k)), z1
    (`latent_dim` units) below it. Offers what the flat VAE offers: named terms (the KL as the one-draw
    log q(z1, z2|x) - log p(z1, z2), as their code estimates it), K draws for the iwae objective, `log_weights`,
    `encode` (q(z2|x)), `decode` (a z2 code, z1 drawn from p(z1|z2) at `temperature`; 0: its mean) and
    `reconstruct` (both posterior means decoded)."""

    def __init__(
        self,
        shape,
        latent_dim: int = 40,
        likelihood: str = "bernoulli",
        prior: str = "standard",
        prior_components: int = 500,
        temperature: float = 1.0,
    ):
        super().__init__()
        self.shape, self.latent_dim, self.num_classes = tuple(shape), latent_dim, 0
        self.temperature = temperature
        n_pix = math.prod(self.shape)
        self.likelihood = make_likelihood(likelihood, 0.0, 10)
        self.q2_net, self.q2 = _stack(n_pix), Head(HIDDEN, latent_dim)
        self.q1_net, self.q1 = Joint(n_pix, latent_dim), Head(HIDDEN, latent_dim)
        self.p1_net, self.p1 = _stack(latent_dim), Head(HIDDEN, latent_dim)
        self.px_net = Joint(latent_dim, latent_dim)
        self.out = nn.Linear(HIDDEN, self.likelihood.channels(self.shape[0]) * n_pix // self.shape[0])
        he_normal(self)  # their code: every linear layer He-normal; the pseudo-inputs keep their own start
        self.prior = PRIORS[prior](latent_dim, prior_components, self.shape)
        if isinstance(self.prior, VampPrior):
            self.prior.attach(self._q2_of_intensities)

    def _q2_of_intensities(self, x: torch.Tensor, y=None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q2.gaussian(self.q2_net(x.flatten(1)))

    def _params(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        c = self.likelihood.channels(self.shape[0])
        return fp32_out(self.out, self.px_net(self.px_net.a(z1), z2)).view(-1, c, *self.shape[1:])

    def _draws(self, x: torch.Tensor, k: int) -> tuple:
        """K ancestral draws from q per image: (log p(x|z1, z2), log p(z1, z2) - log q(z1, z2|x)) each (B, K), the
        z2 draws (B, K, D), the decoder's params (B*K, ...) and q(z2|x)'s mean and log-variance."""
        b, d = x.shape[0], self.latent_dim
        xf = x.flatten(1).float() / 255.0
        m2, lv2 = self._q2_of_intensities(xf)
        z2 = m2[:, None] + torch.exp(0.5 * lv2[:, None]) * noise.normal((b, k, d), m2)
        hx = self.q1_net.a(xf)[:, None].expand(-1, k, -1)  # x's features once for the K draws
        m1, lv1 = self.q1.gaussian(self.q1_net(hx, z2))
        z1 = m1 + torch.exp(0.5 * lv1) * noise.normal((b, k, d), m1)
        pm1, plv1 = self.p1.gaussian(self.p1_net(z2))
        params = self._params(z1.reshape(b * k, d), z2.reshape(b * k, d))
        log_px = self.likelihood.log_prob(params, x.repeat_interleave(k, dim=0)).view(b, k)
        z1f, z2f = z1.float(), z2.float()
        log_ratio = (
            self.prior.log_prob(z2f)
            + log_normal(z1f, pm1.float(), plv1.float())
            - log_normal(z1f, m1.float(), lv1.float())
            - log_normal(z2f, m2[:, None].float(), lv2[:, None].float())
        )
        return log_px, log_ratio, z2, params, m2, lv2

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z2|x): the code maps and probes read."""
        return self._q2_of_intensities(x.float() / 255.0)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """A z2 code -> the likelihood's parameters, z1 drawn from p(z1|z2) at `temperature` (0: its mean)."""
        pm1, plv1 = self.p1.gaussian(self.p1_net(z))
        z1 = pm1 + self.temperature * torch.exp(0.5 * plv1) * torch.randn_like(pm1) if self.temperature else pm1
        return self._params(z1, z)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x -> the posterior means of z2, then of z1 given it -> p(x|z1, z2)'s mean."""
        xf = x.flatten(1).float() / 255.0
        m2 = self._q2_of_intensities(xf)[0]
        m1 = self.q1.gaussian(self.q1_net(self.q1_net.a(xf), m2))[0]
        return self.likelihood.mean(self._params(m1, m2))


def gated_hvae(cfg, shape, num_classes):
    return GatedHVAE(shape, cfg.latent_dim, cfg.likelihood, cfg.prior, cfg.prior_components, cfg.temperature)
