"""The VAE: encoder/decoder architecture registry, priors p(z), importance log-weights and named per-example terms."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .losses import kl_per_dim, log_normal, make_likelihood


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


# ---------------------------------------------------------------- priors p(z)

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
        comp = log_normal(z.unsqueeze(-2), self.means, self.logvars)  # (..., K)
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
        comp = log_normal(z.unsqueeze(-2), mu, logvar)
        return torch.logsumexp(comp, dim=-1) - math.log(len(mu))

    def sample(self, n, generator=None):
        mu, logvar = self.components()
        k = torch.randint(len(mu), (n,), generator=generator).to(mu.device)
        eps = torch.randn(n, self.latent_dim, generator=generator).to(mu.device)
        return mu[k] + torch.exp(0.5 * logvar[k]) * eps


PRIORS: dict[str, type[Prior]] = {"standard": StandardNormal, "mog": MixtureOfGaussians, "vamp": VampPrior}


# ---------------------------------------------------------------- posteriors q(z|x): a diagonal Gaussian, then a flow

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

    def rsample(self, h: torch.Tensor, k: int | None = None):
        """z ~ q(z|x): k=None gives (B, D), else (B, k, D). Returns (z, log_q, mu, logvar), mu and logvar those of
        the base Gaussian."""
        mu, logvar = self.gaussian(h)
        m, lv = (mu, logvar) if k is None else (mu[:, None], logvar[:, None])
        z = m + torch.exp(0.5 * lv) * torch.randn(m.shape if k is None else (mu.shape[0], k, mu.shape[1]),
                                                  device=mu.device, dtype=mu.dtype)
        return z, log_normal(z.float(), m.float(), lv.float()), mu, logvar

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        return self.to_mu(h)


class IAFPosterior(GaussianPosterior):
    """The Gaussian's sample pushed through `steps` IAF steps with a context from the encoder (Kingma et al. 2016):
    log q(z_T|x) = log N(z_0; mu, sigma^2) - sum_t log|det dz_t/dz_(t-1)|."""

    analytic_kl = False

    def __init__(self, features: int, latent_dim: int, steps: int = 2, hidden: int = 128):
        super().__init__(features, latent_dim)
        self.to_context = nn.Linear(features, hidden)
        self.flow = IAF(latent_dim, hidden, steps, hidden)

    def rsample(self, h, k=None):
        z, log_q, mu, logvar = super().rsample(h, k)
        ctx = self.to_context(h)
        z, logdet = self.flow(z, ctx if k is None else ctx[:, None].expand(-1, k, -1))
        return z, log_q - logdet.float(), mu, logvar

    def mean(self, h):  # the Gaussian's mean pushed through the flow
        return self.flow(self.to_mu(h), self.to_context(h))[0]


POSTERIORS: dict[str, type[GaussianPosterior]] = {"gaussian": GaussianPosterior, "iaf": IAFPosterior}
# Checkpoints written before the posterior became a part kept its layers on the VAE itself.
_LEGACY_KEYS = ("to_mu.", "to_logvar.", "to_context.", "flow.")


class VAE(nn.Module):
    """encoder -> posterior q(z|x) -> prior p(z) -> decoder -> likelihood p(x|z), each from its registry
    (ARCHS, POSTERIORS, PRIORS, losses.LIKELIHOODS).

    forward() returns named per-example terms; the trainer decides how to weight them (beta lives there).
    """

    def __init__(self, shape: tuple[int, int, int], latent_dim: int, arch: str = "conv",
                 likelihood: str = "discretized_logistic", gaussian_sigma: float = 0.0, num_classes: int = 0,
                 prior: str = "standard", prior_components: int = 10, posterior: str = "gaussian",
                 flow_steps: int = 2, flow_hidden: int = 128):
        super().__init__()
        self.shape, self.latent_dim, self.num_classes = tuple(shape), latent_dim, num_classes
        enc_cls, dec_cls = ARCHS[arch]
        self.likelihood = make_likelihood(likelihood, gaussian_sigma)
        self.encoder = enc_cls(self.shape, n_cond=num_classes)
        self.posterior = POSTERIORS[posterior](self.encoder.out_dim, latent_dim, flow_steps, flow_hidden)
        self.decoder = dec_cls(self.shape, latent_dim + num_classes, self.likelihood.n_params)
        # Built last, so that adding a prior leaves the other parts' initial weights (and old checkpoints) as they were.
        self.prior = PRIORS[prior](latent_dim, prior_components, self.shape)
        if isinstance(self.prior, VampPrior):
            if num_classes:
                raise ValueError("the VampPrior needs an unconditional encoder (no --conditional)")
            self.prior.attach(self.encode_float)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        state_dict = {f"posterior.{k}" if k.startswith(_LEGACY_KEYS) else k: v for k, v in state_dict.items()}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @classmethod
    def from_config(cls, cfg: TrainConfig, shape: tuple[int, int, int], num_classes: int = 10) -> "VAE":
        return cls(shape, cfg.latent_dim, cfg.arch, cfg.likelihood, cfg.gaussian_sigma,
                   num_classes if cfg.conditional else 0, cfg.prior, cfg.prior_components, cfg.posterior,
                   cfg.flow_steps, cfg.flow_hidden)

    @property
    def analytic_kl(self) -> bool:
        """KL(q || p) in closed form, also per dimension: a Gaussian posterior and the standard prior."""
        return self.prior.analytic_kl and self.posterior.analytic_kl

    @property
    def n_dims(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    def _cond(self, y):
        if not self.num_classes:
            return None
        if y is None:
            raise ValueError("this is a conditional VAE: pass the labels y")
        return F.one_hot(y, self.num_classes).to(next(self.decoder.parameters()).dtype)

    def features(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x: uint8 (B, C, H, W) -> the encoder's features h, which the posterior reads."""
        return self.encoder(x.float() / 255.0, self._cond(y))

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (code, logvar): the posterior's mean code (for a flow, the Gaussian's mean pushed through it) and
        the base Gaussian's log-variances. Latent maps, probes and active units read the code."""
        h = self.features(x, y)
        return self.posterior.mean(h), self.posterior.gaussian(h)[1]

    def posterior_sample(self, x: torch.Tensor, y: torch.Tensor | None, k: int | None = None):
        """z ~ q(z|x) with its log-density, by reparameterisation: k=None gives (B, D), else (B, k, D).
        Returns (z, log_q, mu, logvar) with mu, logvar those of the Gaussian the flow (if any) starts from."""
        return self.posterior.rsample(self.features(x, y), k)

    def encode_float(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Intensities in [0, 1] -> (mu, logvar) of the base Gaussian; the VampPrior's pseudo-inputs go through here."""
        return self.posterior.gaussian(self.encoder(x, self._cond(y)))

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """z -> the likelihood's parameters."""
        cond = self._cond(y)
        return self.decoder(z if cond is None else torch.cat([z, cond], 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Named per-example terms of the ELBO. KL(q || p) is analytic where the prior allows it (N(0, I); then
        also per dimension, `kl_per_dim`), else the one-sample estimate log q(z|x) - log p(z) at the same z."""
        z, log_q, mu, logvar = self.posterior_sample(x, y)
        params = self.decode(z, y).float()
        recon = -self.likelihood.log_prob(params, x)
        terms = dict(mu=mu, logvar=logvar, z=z, params=params, recon=recon)
        if self.analytic_kl:
            terms["kl_per_dim"] = kl_per_dim(mu.float(), logvar.float())
            terms["kl"] = terms["kl_per_dim"].sum(1)
        else:
            terms["kl"] = log_q - self.prior.log_prob(z.float())
        terms["elbo"] = -(recon + terms["kl"])
        return terms

    def log_weights(self, x: torch.Tensor, y: torch.Tensor | None, k: int, max_batch: int = 4096) -> torch.Tensor:
        """K importance log-weights per image, log p(x|z) + log p(z) - log q(z|x) with z ~ q(z|x): shape (B, K).
        The IWAE bound is their log-mean-exp (Burda et al. 2016, eq. 8); K = 1 gives the Monte-Carlo ELBO."""
        b, d = x.shape[0], self.latent_dim
        log_w = torch.empty(b, k, device=x.device)
        chunk = max(1, max_batch // b)
        for s in range(0, k, chunk):
            kk = min(chunk, k - s)
            z, log_q, _, _ = self.posterior_sample(x, y, kk)
            yf = y.repeat_interleave(kk) if y is not None else None
            params = self.decode(z.reshape(b * kk, d), yf).float()
            log_px = self.likelihood.log_prob(params, x.repeat_interleave(kk, dim=0)).view(b, kk)
            log_w[:, s:s + kk] = log_px + self.prior.log_prob(z.float()) - log_q
        return log_w

    def x_hat(self, params: torch.Tensor) -> torch.Tensor:
        return self.likelihood.mean(params)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decode the posterior mean: the deterministic reconstruction in [0, 1]."""
        mu, _ = self.encode(x, y)
        return self.likelihood.mean(self.decode(mu, y).float())
