"""A VAE with two stochastic layers of dense units (Burda et al. 2016, section 5; the hierarchical rows of the
likelihood tables): q(z1|x) q(z2|z1), p(z2) p(z1|z2) p(x|z1), each conditional a diagonal Gaussian from an MLP."""

from __future__ import annotations

import torch
from torch import nn

from vaelab.models import noise
from vaelab.models.losses import log_normal, make_likelihood
from vaelab.models.nets import ImageModel, fp32_out
from vaelab.models.priors import StandardNormal


class GaussianMLP(nn.Module):
    """Two dense tanh layers of `hidden` units, then the mean and log-variance of a diagonal Gaussian over `out`."""

    def __init__(self, d_in: int, hidden: int, out: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.mu, self.logvar = nn.Linear(hidden, out), nn.Linear(hidden, out)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(h)
        return self.mu(h), self.logvar(h).clamp(-12, 8)


class TwoStochasticLayers(ImageModel):
    """What a model of two stochastic layers offers from its `_draws(x, k)` (K ancestral draws from q per image:
    log p(x|z), log p(z) - log q(z|x) each (B, K), the code's draws (B, K, D), the decoder's params (B*K, ...) and the
    code posterior's mean and log-variance): named terms with the KL as the draws' log q - log p, and the importance
    log-weights."""

    analytic_kl = False

    def _draws(self, x: torch.Tensor, k: int) -> tuple:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, k: int | None = None) -> dict:
        log_px, log_ratio, z2, params, mu, logvar = self._draws(x, k or 1)
        recon, kl = -log_px.mean(1), -log_ratio.mean(1)
        terms = dict(mu=mu, logvar=logvar, z=z2[:, 0], params=params[:: (k or 1)], recon=recon, kl=kl)
        terms["elbo"] = -(recon + kl)
        return {**terms, "log_px": log_px, "log_ratio": log_ratio} if k is not None else terms

    def log_weights(self, x: torch.Tensor, y: torch.Tensor | None, k: int, max_batch: int = 4096) -> torch.Tensor:
        """K importance log-weights per image over both layers (Burda et al. 2016, eq. 8): (B, K)."""
        chunk = max(1, max_batch // x.shape[0])
        parts = [self._draws(x, min(chunk, k - s))[:2] for s in range(0, k, chunk)]
        return torch.cat([log_px + log_ratio for log_px, log_ratio in parts], 1)


class TwoLayerVAE(TwoStochasticLayers):
    """Burda et al.'s two-stochastic-layer VAE: x -> 200-200 tanh -> z1 (2 latent_dim units) -> 100-100 tanh -> z2
    (latent_dim units, the code), and the generative model mirrored, p(z2) = N(0, I). Offers what the flat VAE
    offers: named terms (KL as the one-draw log q(z1, z2|x) - log p(z1, z2)), K draws for the iwae objective,
    `log_weights`, `encode` (z2's posterior from z1's mean), `decode` (a z2 code, z1 drawn at `temperature`; 0: its
    mean) and `reconstruct` (z1's posterior mean decoded)."""

    def __init__(self, shape, latent_dim: int = 50, likelihood: str = "bernoulli", temperature: float = 1.0):
        super().__init__()
        self.shape, self.latent_dim, self.num_classes = tuple(shape), latent_dim, 0
        self.temperature = temperature
        n_pix = self.shape[0] * self.shape[1] * self.shape[2]
        self.likelihood = make_likelihood(likelihood, 0.0, 10)
        z1 = 2 * latent_dim
        self.q1, self.q2 = GaussianMLP(n_pix, 200, z1), GaussianMLP(z1, 100, latent_dim)
        self.p1 = GaussianMLP(latent_dim, 100, z1)
        self.px = nn.Sequential(nn.Linear(z1, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh())
        self.out = nn.Linear(200, self.likelihood.channels(self.shape[0]) * self.shape[1] * self.shape[2])
        self.prior = StandardNormal(latent_dim)

    def _x(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).float() / 255.0

    def _params(self, z1: torch.Tensor) -> torch.Tensor:
        c = self.likelihood.channels(self.shape[0])
        return fp32_out(self.out, self.px(z1)).view(-1, c, *self.shape[1:])

    def _draws(self, x: torch.Tensor, k: int) -> tuple:
        """K ancestral draws from q per image: (log p(x|z1), log p(z1, z2) - log q(z1, z2|x)) each (B, K), the z2
        draws (B, K, D), the decoder's params (B*K, ...) and q(z2|z1)'s mean and log-variance at the first draw."""
        b = x.shape[0]
        m1, lv1 = self.q1(self._x(x))
        m1, lv1 = m1[:, None].expand(-1, k, -1), lv1[:, None].expand(-1, k, -1)
        z1 = m1 + torch.exp(0.5 * lv1) * noise.normal((b, k, m1.shape[-1]), m1)
        m2, lv2 = self.q2(z1)
        z2 = m2 + torch.exp(0.5 * lv2) * noise.normal((b, k, self.latent_dim), m2)
        pm1, plv1 = self.p1(z2)
        params = self._params(z1.reshape(b * k, -1))
        log_px = self.likelihood.log_prob(params, x.repeat_interleave(k, dim=0)).view(b, k)
        z1f, z2f = z1.float(), z2.float()
        log_ratio = (
            log_normal(z2f)
            + log_normal(z1f, pm1.float(), plv1.float())
            - log_normal(z1f, m1.float(), lv1.float())
            - log_normal(z2f, m2.float(), lv2.float())
        )
        return log_px, log_ratio, z2, params, m2[:, 0], lv2[:, 0]

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z2 | z1 = the mean of q(z1|x)): the code maps and probes read."""
        return self.q2(self.q1(self._x(x))[0])

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """A z2 code -> the likelihood's parameters, z1 drawn from p(z1|z2) at `temperature` (0: its mean)."""
        pm1, plv1 = self.p1(z)
        z1 = pm1 + self.temperature * torch.exp(0.5 * plv1) * torch.randn_like(pm1) if self.temperature else pm1
        return self._params(z1)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.likelihood.mean(self._params(self.q1(self._x(x))[0]))  # x -> z1's posterior mean -> p(x|z1)


def two_layer(cfg, shape, num_classes):
    return TwoLayerVAE(shape, cfg.latent_dim, cfg.likelihood, cfg.temperature)
