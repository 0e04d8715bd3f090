"""A top-down hierarchical VAE (Ladder VAE, Sønderby et al. 2016; NVAE, Vahdat & Kautz 2020; VDVAE, Child 2021):
groups of latents at several resolutions, each group's prior conditioned on the groups above it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.models import noise
from vaelab.models.hvae import gated_hvae
from vaelab.models.losses import log_normal, make_likelihood
from vaelab.models.nets import ImageModel, ResBlock, fp32_out, need_multiple_of_4, res_stage
from vaelab.models.stacked import two_layer


def gaussian_kl(qm, qlv, pm, plv) -> torch.Tensor:
    """KL(N(qm, e^qlv) || N(pm, e^plv)) elementwise."""
    return 0.5 * (plv - qlv + (torch.exp(qlv) + (qm - pm) ** 2) * torch.exp(-plv) - 1.0)


class TopDownGroup(nn.Module):
    """One group of latents in the top-down pass (VDVAE's decoder block): the prior p(z | h) from the top-down state
    h, the posterior q(z | x, h) from h and the bottom-up features of x at this resolution; then h += proj(z) and a
    residual cell. Prior and posterior start as N(0, I) (their output convs are zero), so training starts at KL 0."""

    def __init__(self, width: int, z_channels: int):
        super().__init__()
        self.zc = z_channels
        self.prior = nn.Conv2d(width, 2 * z_channels + width, 1)
        self.posterior = nn.Sequential(
            nn.SiLU(), nn.Conv2d(2 * width, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, 2 * z_channels, 1)
        )
        self.z_proj = nn.Conv2d(z_channels, width, 1)
        self.cell = ResBlock(width)
        for conv in (self.prior, self.posterior[-1]):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.z_proj.weight.data.mul_(0.1)  # small: many groups add into h

    def prior_params(self, h):
        pm, plv, feat = self.prior(h).split([self.zc, self.zc, h.shape[1]], dim=1)
        return pm, plv.clamp(-10, 10), feat

    def posterior_params(self, h, a):
        qm, qlv = self.posterior(torch.cat([h, a], 1)).chunk(2, dim=1)
        return qm, qlv.clamp(-10, 10)

    def forward(self, h, a=None, z=None, temperature: float = 1.0, mean: bool = False):
        """One step down. With bottom-up features a: z ~ q (its mean if `mean`), plus the analytic KL and the
        one-sample log q - log p per image. Without: z ~ p at `temperature` unless z is given."""
        pm, plv, feat = self.prior_params(h)
        stats = None
        if a is not None:
            qm, qlv = self.posterior_params(h, a)
            z = qm if mean else qm + torch.exp(0.5 * qlv) * noise.normal_like(qm)
            kl = gaussian_kl(qm, qlv, pm, plv).flatten(1).sum(1)
            zf = z.flatten(1)
            log_ratio = log_normal(zf, qm.flatten(1), qlv.flatten(1)) - log_normal(zf, pm.flatten(1), plv.flatten(1))
            stats = (kl, log_ratio, qm, qlv)
        elif z is None:
            z = pm if mean else pm + temperature * torch.exp(0.5 * plv) * torch.randn_like(pm)
        h = self.cell(h + feat + self.z_proj(z))
        return h, z, stats


class TopPrior(nn.Module):
    """p(z_top): the first group's prior, a diagonal Gaussian computed from the learned initial state. It is the
    model's `prior` (codes for sampling, GMM and class fits are top-group codes)."""

    analytic_kl = False

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self._model = None

    def attach(self, model) -> None:
        object.__setattr__(self, "_model", model)  # no submodule: the model's weights stay registered once

    def _params(self):
        m = self._model
        pm, plv, _ = m.groups[0].prior_params(m.h0)
        return pm.flatten(1)[0], plv.flatten(1)[0]

    def log_prob(self, z):
        pm, plv = self._params()
        return log_normal(z, pm, plv)

    def sample(self, n, generator=None):
        pm, plv = self._params()
        eps = torch.randn(n, self.latent_dim, generator=generator).to(pm.device)
        return pm + torch.exp(0.5 * plv) * eps


class HierarchicalVAE(ImageModel):
    """Bottom-up: a stem and `depth` residual cells per resolution (H, H/2, H/4, 1x1), keeping each resolution's
    features. Top-down: from a learned state at 1x1, `groups` latent groups (`latent_dim` channels each) at each of
    1x1, H/4 x W/4 and H/2 x W/2, each with its prior from the state above and its posterior from that state and
    the bottom-up features; residual cells between; upsampled to H x W and out to the likelihood's parameters.

    Offers what the flat VAE offers: named terms (with `kl_per_group`), `log_weights` for the IWAE bound, `encode`
    (the top group's posterior, the code that maps and probes read), `decode` (a top code, lower groups from their
    priors at `temperature`), `reconstruct` (posterior means throughout) and `prior` (the top group's)."""

    analytic_kl = False  # KL per group is analytic (Gaussian to Gaussian), but there is no per-dimension KL

    def __init__(
        self,
        shape: tuple[int, int, int],
        latent_dim: int = 8,
        likelihood: str = "dmol",
        gaussian_sigma: float = 0.0,
        width: int = 32,
        depth: int = 1,
        components: int = 10,
        groups: int = 2,
        temperature: float = 1.0,
    ):
        super().__init__()
        c, hh, ww = shape
        need_multiple_of_4(shape, "hierarchical")
        self.shape, self.latent_dim, self.num_classes = tuple(shape), latent_dim, 0
        self.temperature = temperature
        self.sizes = [(1, 1), (hh // 4, ww // 4), (hh // 2, ww // 2)]  # top-down order
        self.likelihood = make_likelihood(likelihood, gaussian_sigma, components)
        self.stem = nn.Conv2d(c, width, 3, padding=1)
        self.bottom_up = nn.ModuleList(res_stage(width, depth) for _ in range(4))  # H, H/2, H/4, 1x1
        self.h0 = nn.Parameter(torch.zeros(1, width, 1, 1))
        self.groups = nn.ModuleList(TopDownGroup(width, latent_dim) for _ in range(groups * len(self.sizes)))
        self.group_size = groups
        self.top_down = nn.ModuleList(res_stage(width, depth) for _ in self.sizes)
        self.out = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            res_stage(width, depth),
            nn.SiLU(),
            nn.Conv2d(width, self.likelihood.channels(c), 3, padding=1),
        )
        self.prior = TopPrior(latent_dim)
        self.prior.attach(self)

    def features(self, x: torch.Tensor) -> dict[tuple[int, int], torch.Tensor]:
        """The bottom-up pass: features at each resolution the top-down pass reads."""
        a = self.bottom_up[0](self.stem(x.float() / 127.5 - 1.0))
        out = {}
        a = self.bottom_up[1](F.avg_pool2d(a, 2))
        out[self.sizes[2]] = a
        a = self.bottom_up[2](F.avg_pool2d(a, 2))
        out[self.sizes[1]] = a
        out[self.sizes[0]] = self.bottom_up[3](a.mean((2, 3), keepdim=True))
        return out

    def _top_down(self, n: int, acts=None, top=None, mean: bool = False, temperature: float = 1.0):
        """Returns (likelihood params, per-group stats or None, top z)."""
        h = self.h0.expand(n, -1, -1, -1)
        stats, z_top, i = [], None, 0
        for size, cells in zip(self.sizes, self.top_down):
            if h.shape[-2:] != size:
                h = F.interpolate(h, size=size, mode="nearest")
            for _ in range(self.group_size):
                given = top.view(n, -1, 1, 1) if (i == 0 and top is not None) else None
                h, z, st = self.groups[i](h, None if acts is None else acts[size], given, temperature, mean)
                z_top = z if i == 0 else z_top
                stats.append(st)
                i += 1
            h = cells(h)
        return fp32_out(self.out[-1], self.out[:-1](h)), (stats if acts is not None else None), z_top

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        params, stats, z_top = self._top_down(len(x), self.features(x))
        recon = -self.likelihood.log_prob(params, x)
        kl_per_group = torch.stack([s[0] for s in stats], 1).float()
        qm, qlv = stats[0][2].flatten(1), stats[0][3].flatten(1)
        kl = kl_per_group.sum(1)
        return dict(
            mu=qm,
            logvar=qlv,
            z=z_top.flatten(1),
            params=params,
            recon=recon,
            kl=kl,
            kl_per_group=kl_per_group,
            elbo=-(recon + kl),
        )

    def log_weights(self, x: torch.Tensor, y: torch.Tensor | None, k: int, max_batch: int = 4096) -> torch.Tensor:
        """K importance log-weights per image, log p(x|z) + log p(z) - log q(z|x) over all groups: (B, K)."""
        b = x.shape[0]
        acts = self.features(x)
        log_w = torch.empty(b, k, device=x.device)
        chunk = max(1, max_batch // b)
        for s in range(0, k, chunk):
            kk = min(chunk, k - s)
            rep = {size: a.repeat_interleave(kk, dim=0) for size, a in acts.items()}
            params, stats, _ = self._top_down(b * kk, rep)
            xr = x.repeat_interleave(kk, dim=0)
            lw = self.likelihood.log_prob(params, xr) - torch.stack([st[1] for st in stats], 1).sum(1).float()
            log_w[:, s : s + kk] = lw.view(b, kk)
        return log_w

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The top group's posterior (mean, log-variance): it depends on x alone, not on sampled latents."""
        a = self.features(x)[self.sizes[0]]
        g = self.groups[0]
        h = self.h0.expand(x.shape[0], -1, -1, -1)
        qm, qlv = g.posterior_params(h, a)
        return qm.flatten(1), qlv.flatten(1)

    @torch.no_grad()
    def group_means(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every group's posterior mean, taking the means of the groups above (for active units per group)."""
        _, stats, _ = self._top_down(len(x), self.features(x), mean=True)
        return [s[2].flatten(1) for s in stats]

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """A top-group code -> likelihood parameters, the lower groups drawn from their priors at `temperature`
        (0: their means)."""
        t = self.temperature
        return self._top_down(z.shape[0], top=z, temperature=t, mean=t == 0)[0]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.likelihood.mean(self._top_down(len(x), self.features(x), mean=True)[0])


def _hierarchical(cfg, shape, num_classes):
    return HierarchicalVAE(
        shape,
        cfg.latent_dim,
        cfg.likelihood,
        cfg.gaussian_sigma,
        cfg.width,
        cfg.depth,
        cfg.likelihood_components,
        cfg.latent_groups,
        cfg.temperature,
    )


# Models other than the flat VAE, by `model` (models.build); model "vae" is the flat VAE with the network `net`.
MODELS = {"hierarchical": _hierarchical, "two_layer": two_layer, "hvae": gated_hvae}
