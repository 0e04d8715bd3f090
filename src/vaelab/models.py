"""The VAE: encoder/decoder architecture registry, reparameterisation, and named per-example terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .losses import kl_per_dim, make_likelihood


class ConvEncoder(nn.Module):
    """The study's reference encoder: Conv(C->32,3,s2)+ReLU, Conv(32->64,3,s2)+ReLU, Dense 256+ReLU."""

    def __init__(self, shape: tuple[int, int, int], n_cond: int = 0, hidden: int = 256):
        super().__init__()
        c, h, w = shape
        self.conv = nn.Sequential(
            nn.Conv2d(c, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(64 * (h // 4) * (w // 4) + n_cond, hidden), nn.ReLU())
        self.out_dim = hidden

    def forward(self, x, cond=None):
        h = self.conv(x)
        return self.fc(h if cond is None else torch.cat([h, cond], 1))


class ConvDecoder(nn.Module):
    """The mirror: Dense 256, Dense to 64xH/4xW/4, ConvT 64->32 k4 s2, ConvT 32->C k4 s2 (C x n_params out)."""

    def __init__(self, shape: tuple[int, int, int], in_dim: int, n_params: int, hidden: int = 256):
        super().__init__()
        c, h, w = shape
        self.grid = (64, h // 4, w // 4)
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(),
                                nn.Linear(hidden, 64 * (h // 4) * (w // 4)), nn.ReLU())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(32, c * n_params, 4, stride=2, padding=1))

    def forward(self, z):
        return self.deconv(self.fc(z).view(-1, *self.grid))


class MLPEncoder(nn.Module):
    def __init__(self, shape, n_cond: int = 0, hidden: tuple[int, ...] = (512, 256)):
        super().__init__()
        dims = [shape[0] * shape[1] * shape[2] + n_cond, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.out_dim = dims[-1]

    def forward(self, x, cond=None):
        h = x.flatten(1)
        return self.net(h if cond is None else torch.cat([h, cond], 1))


class MLPDecoder(nn.Module):
    def __init__(self, shape, in_dim: int, n_params: int, hidden: tuple[int, ...] = (256, 512)):
        super().__init__()
        c, h, w = shape
        self.out_shape = (c * n_params, h, w)
        dims = [in_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(dims[-1], c * n_params * h * w))

    def forward(self, z):
        return self.net(z).view(-1, *self.out_shape)


ARCHS: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "conv": (ConvEncoder, ConvDecoder),
    "mlp": (MLPEncoder, MLPDecoder),
}


class VAE(nn.Module):
    """q(z|x) = N(mu, diag exp(logvar)), p(z) = N(0, I), p(x|z) from the likelihood registry.

    forward() returns named per-example terms; the trainer decides how to weight them (beta lives there).
    """

    def __init__(self, shape: tuple[int, int, int], latent_dim: int, arch: str = "conv",
                 likelihood: str = "discretized_logistic", gaussian_sigma: float = 0.0, num_classes: int = 0):
        super().__init__()
        self.shape, self.latent_dim, self.num_classes = tuple(shape), latent_dim, num_classes
        enc_cls, dec_cls = ARCHS[arch]
        self.likelihood = make_likelihood(likelihood, gaussian_sigma)
        self.encoder = enc_cls(self.shape, n_cond=num_classes)
        self.to_mu = nn.Linear(self.encoder.out_dim, latent_dim)
        self.to_logvar = nn.Linear(self.encoder.out_dim, latent_dim)
        self.decoder = dec_cls(self.shape, latent_dim + num_classes, self.likelihood.n_params)

    @classmethod
    def from_config(cls, cfg: TrainConfig, shape: tuple[int, int, int], num_classes: int = 10) -> "VAE":
        return cls(shape, cfg.latent_dim, cfg.arch, cfg.likelihood, cfg.gaussian_sigma,
                   num_classes if cfg.conditional else 0)

    @property
    def n_dims(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    def _cond(self, y):
        if not self.num_classes:
            return None
        if y is None:
            raise ValueError("this is a conditional VAE: pass the labels y")
        return F.one_hot(y, self.num_classes).to(self.to_mu.weight.dtype)

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: uint8 (B, C, H, W) -> (mu, logvar) of q(z|x)."""
        h = self.encoder(x.float() / 255.0, self._cond(y))
        return self.to_mu(h), self.to_logvar(h)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """z -> the likelihood's parameters."""
        cond = self._cond(y)
        return self.decoder(z if cond is None else torch.cat([z, cond], 1))

    @staticmethod
    def reparameterize(mu, logvar):
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        mu, logvar = self.encode(x, y)
        z = self.reparameterize(mu, logvar)
        params = self.decode(z, y).float()
        recon = -self.likelihood.log_prob(params, x)
        kl_d = kl_per_dim(mu.float(), logvar.float())
        kl = kl_d.sum(1)
        return dict(recon=recon, kl=kl, kl_per_dim=kl_d, elbo=-(recon + kl),
                    mu=mu, logvar=logvar, z=z, params=params)

    def x_hat(self, params: torch.Tensor) -> torch.Tensor:
        return self.likelihood.mean(params)

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None, mean: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode z ~ N(0, I): the likelihood's mean (default) or a draw from it, in [0, 1]."""
        device = self.to_mu.weight.device
        z = torch.randn(n, self.latent_dim, device=device, generator=generator)
        params = self.decode(z, y).float()
        return self.likelihood.mean(params) if mean else self.likelihood.sample(params)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decode the posterior mean: the deterministic reconstruction in [0, 1]."""
        mu, _ = self.encode(x, y)
        return self.likelihood.mean(self.decode(mu, y).float())
