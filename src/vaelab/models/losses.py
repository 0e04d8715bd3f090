"""Decoder likelihoods p(x|z) over 8-bit images, the Gaussian KL, KL-weight schedules and the objective registry."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2 * math.pi)


class Likelihood(nn.Module):
    """p(x|z) from the decoder's output `params` of shape (B, channels(C), H, W); x is uint8 (B, C, H, W)."""

    n_params = 1  # parameters per sub-pixel, for the likelihoods that have a fixed number
    discrete = False  # True when log_prob is a probability mass over 8-bit pixels, so bits/dim are meaningful

    def channels(self, c: int) -> int:
        """How many channels the decoder must emit for an image with c channels."""
        return c * self.n_params

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # (B,)
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) in [0, 1]
        raise NotImplementedError

    def sample(self, params: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) in [0, 1]
        raise NotImplementedError


class Bernoulli(Likelihood):
    """The seed study's (and Keras') convention: binary cross-entropy against intensities in [0, 1].

    With non-binary targets this is not a normalised likelihood of 8-bit images, so no bits/dim.
    """

    def log_prob(self, params, x):
        target = x.float() / 255.0
        return -F.binary_cross_entropy_with_logits(params, target, reduction="none").flatten(1).sum(1)

    def mean(self, params):
        return torch.sigmoid(params)

    def sample(self, params):
        return torch.bernoulli(torch.sigmoid(params))


class Gaussian(Likelihood):
    """N(x; mu, sigma^2) on intensities in [0, 1]; sigma fixed, or one shared learned sigma (sigma-VAE)."""

    def __init__(self, sigma: float = 0.0):
        super().__init__()
        self.fixed = sigma > 0
        init = math.log(sigma) if self.fixed else 0.0
        if self.fixed:
            self.register_buffer("log_sigma", torch.tensor(init))
        else:
            self.log_sigma = nn.Parameter(torch.tensor(init))

    def _log_sigma(self):
        return self.log_sigma.clamp(min=-7.0)

    def log_prob(self, params, x):
        target = x.float() / 255.0
        log_sigma = self._log_sigma()
        lp = -0.5 * ((target - params) * torch.exp(-log_sigma)) ** 2 - log_sigma - 0.5 * LOG_2PI
        return lp.flatten(1).sum(1)

    def mean(self, params):
        return params.clamp(0, 1)

    def sample(self, params):
        return (params + torch.exp(self._log_sigma()) * torch.randn_like(params)).clamp(0, 1)


def log_bin_mass(x: torch.Tensor, mu: torch.Tensor, log_s: torch.Tensor) -> torch.Tensor:
    """log P(x) of a logistic(mu, exp(log_s)) on [-1, 1] integrated over x's bin among 256 (PixelCNN++ eq. 2); the
    edge bins take the whole tail mass. x is uint8 (broadcast against mu); elementwise log-masses."""
    xs = x.float() * (2.0 / 255.0) - 1.0  # pixel centres in [-1, 1]; bins are 2/255 wide
    centred = xs - mu
    inv_s = torch.exp(-log_s)
    plus_in = inv_s * (centred + 1.0 / 255.0)
    min_in = inv_s * (centred - 1.0 / 255.0)
    log_cdf_plus = plus_in - F.softplus(plus_in)  # log sigmoid: the whole mass below 0.5 for x = 0
    log_one_minus_cdf_min = -F.softplus(min_in)  # the whole mass above 254.5 for x = 255
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    mid_in = inv_s * centred
    log_pdf_mid = mid_in - log_s - 2.0 * F.softplus(mid_in)  # density at the centre, when the bin mass underflows
    log_mid = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid - math.log(127.5))
    return torch.where(x == 0, log_cdf_plus, torch.where(x == 255, log_one_minus_cdf_min, log_mid))


def _to_pixel_levels(xs: torch.Tensor) -> torch.Tensor:
    """Values on [-1, 1] -> the nearest of the 256 pixel levels, as intensities in [0, 1]."""
    return torch.round(((xs + 1.0) / 2.0).clamp(0, 1) * 255.0) / 255.0


class DiscretizedLogistic(Likelihood):
    """One logistic per sub-pixel, integrated over each of the 256 bins (Salimans et al. 2017, PixelCNN++ eq. 2).

    A proper probability mass over 8-bit pixels: bits/dim compare with the literature.
    """

    n_params = 2
    discrete = True

    @staticmethod
    def split(params):
        mu, log_s = params.chunk(2, dim=1)
        return mu, log_s.clamp(min=-7.0)

    def log_prob(self, params, x):
        return log_bin_mass(x, *self.split(params)).flatten(1).sum(1)

    def mean(self, params):
        mu, _ = self.split(params)
        return ((mu + 1.0) / 2.0).clamp(0, 1)

    def sample(self, params):
        mu, log_s = self.split(params)
        u = torch.rand_like(mu).clamp(1e-5, 1 - 1e-5)
        return _to_pixel_levels(mu + torch.exp(log_s) * (torch.log(u) - torch.log1p(-u)))


class MixtureOfLogistics(Likelihood):
    """A mixture of K discretized logistics per pixel with linear channel coupling (Salimans et al. 2017, PixelCNN++
    eq. 2-3): one set of mixture weights per pixel, shared by its channels; channel c's mean is
    mu_c + sum_{j<c} tanh(a_cj) x_j, so within a component a colour pixel is p(r) p(g | r) p(b | r, g).
    Decoder output per pixel: K logits, K*C means, K*C log-scales, K*C(C-1)/2 coupling coefficients."""

    discrete = True

    def __init__(self, components: int = 10):
        super().__init__()
        self.k = components

    def channels(self, c: int) -> int:
        return self.k * (1 + 2 * c + c * (c - 1) // 2)

    def _n_channels(self, params: torch.Tensor) -> int:
        for c in range(1, 5):
            if self.channels(c) == params.shape[1]:
                return c
        raise ValueError(f"{params.shape[1]} parameter channels fit no image of 1-4 channels with {self.k} components")

    def split(self, params: torch.Tensor):
        """(B, channels, H, W) -> logits (B,K,H,W), means and log-scales (B,K,C,H,W), coefficients (B,K,C(C-1)/2,H,W)."""
        c = self._n_channels(params)
        b, _, h, w = params.shape
        k, n_coef = self.k, c * (c - 1) // 2
        logits, mu, log_s, coef = params.split([k, k * c, k * c, k * n_coef], dim=1)
        return (
            logits,
            mu.reshape(b, k, c, h, w),
            log_s.reshape(b, k, c, h, w).clamp(min=-7.0),
            torch.tanh(coef.reshape(b, k, n_coef, h, w)),
        )

    @staticmethod
    def _channel_mean(mu: torch.Tensor, coef: torch.Tensor, prev, ch: int) -> torch.Tensor:
        """Channel ch's mean in each component, shifted by the earlier channels' values prev[j] on [-1, 1] (eq. 3)."""
        out = mu[:, :, ch]
        for j in range(ch):
            out = out + coef[:, :, ch * (ch - 1) // 2 + j] * prev[j]
        return out

    def log_prob(self, params, x):
        logits, mu, log_s, coef = self.split(params)
        xs = (x.float() * (2.0 / 255.0) - 1.0).unsqueeze(1)  # (B, 1, C, H, W): the observed values condition
        prev = xs.unbind(2)
        means = torch.stack([self._channel_mean(mu, coef, prev, ch) for ch in range(mu.shape[2])], 2)
        lp = log_bin_mass(x.unsqueeze(1), means, log_s).sum(2)  # (B, K, H, W): the channels multiply
        return torch.logsumexp(lp + torch.log_softmax(logits, 1), dim=1).flatten(1).sum(1)

    def mean(self, params):
        """The mixture's mean: in each component E[x_c] = mu_c + sum_j a_cj E[x_j] (edge-bin clipping ignored)."""
        logits, mu, _, coef = self.split(params)
        m: list[torch.Tensor] = []
        for ch in range(mu.shape[2]):
            m.append(self._channel_mean(mu, coef, m, ch))
        pi = torch.softmax(logits, 1).unsqueeze(2)
        return (((pi * torch.stack(m, 2)).sum(1) + 1.0) / 2.0).clamp(0, 1)

    def sample(self, params):
        logits, mu, log_s, coef = self.split(params)
        gumbel = -torch.log(-torch.log(torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)))
        pick = F.one_hot((logits + gumbel).argmax(1), self.k).permute(0, 3, 1, 2).unsqueeze(2).to(mu.dtype)
        mu, log_s, coef = ((t * pick).sum(1, keepdim=True) for t in (mu, log_s, coef))  # the chosen component
        xs: list[torch.Tensor] = []
        for ch in range(mu.shape[2]):  # channel by channel: later means depend on the earlier sampled values
            u = torch.rand_like(mu[:, :, ch]).clamp(1e-5, 1 - 1e-5)
            draw = self._channel_mean(mu, coef, xs, ch) + torch.exp(log_s[:, :, ch]) * (torch.log(u) - torch.log1p(-u))
            xs.append(_to_pixel_levels(draw) * 2.0 - 1.0)  # the pixel's value, as the coupling sees it
        return ((torch.stack(xs, 2)[:, 0] + 1.0) / 2.0).clamp(0, 1)


LIKELIHOODS: dict[str, type[Likelihood]] = {
    "bernoulli": Bernoulli,
    "gaussian": Gaussian,
    "discretized_logistic": DiscretizedLogistic,
    "dmol": MixtureOfLogistics,
}


def make_likelihood(name: str, gaussian_sigma: float = 0.0, components: int = 10) -> Likelihood:
    if name == "gaussian":
        return Gaussian(gaussian_sigma)
    return MixtureOfLogistics(components) if name == "dmol" else LIKELIHOODS[name]()


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per latent dimension (Kingma & Welling 2014, appendix B)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def log_normal(z: torch.Tensor, mu: torch.Tensor | None = None, logvar: torch.Tensor | None = None) -> torch.Tensor:
    """log N(z; mu, diag exp(logvar)) summed over the last dimension; standard normal when mu is None."""
    if mu is None:
        return (-0.5 * (z.pow(2) + LOG_2PI)).sum(-1)
    return (-0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI)).sum(-1)


def log_normal_components(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu_k, diag exp(logvar_k)) for every code z (..., D) and component k (mu, logvar: (K, D)): (..., K).
    The square expands into two matrix products, sum_d z_d^2 / v_kd - 2 z_d mu_kd / v_kd + mu_kd^2 / v_kd, so a
    mixture prior's density costs GEMMs instead of a (..., K, D) tensor (the VampPrior's K = 500 components made
    K = 1,000 importance sampling 16x slower)."""
    inv_var = torch.exp(-logvar)
    const = (mu.pow(2) * inv_var + logvar + LOG_2PI).sum(-1)  # (K,)
    quad = z.pow(2) @ inv_var.T - 2.0 * (z @ (mu * inv_var).T)
    return -0.5 * (quad + const)


def kl_weight(beta: float, step: int, warmup_steps: int) -> float:
    """beta, ramped linearly from 0 over the first warmup_steps optimiser steps (KL annealing, Bowman et al. 2016)."""
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, step / warmup_steps)


def cyclical_weight(beta: float, progress: float, cycles: int, ratio: float) -> float:
    """Cyclical annealing (Fu et al. 2019, eq. 8): training (progress in [0, 1]) splits into `cycles` equal cycles;
    in each the weight rises linearly from 0 to beta over the first `ratio` of the cycle, then stays at beta."""
    tau = (progress * cycles) % 1.0
    return beta * min(1.0, tau / ratio) if ratio > 0 else beta


def scheduled_beta(cfg, step: int, steps_per_epoch: int, progress: float) -> float:
    """The KL weight at this optimiser step under cfg.kl_schedule; `progress` is the share of training done (of its
    steps, or of its time budget)."""
    if cfg.kl_schedule == "cyclical":
        return cyclical_weight(cfg.beta, progress, cfg.kl_cycles, cfg.kl_cycle_ratio)
    return kl_weight(cfg.beta, step, round(cfg.warmup_epochs * steps_per_epoch))


KL_SCHEDULES = ("linear", "cyclical")  # linear: warm-up over warmup_epochs (0 = constant beta)


# ---------------------------------------------------------------- objectives: small functions over the named terms
# Each gets the model's per-example terms, the scheduled KL weight, the config and the training progress in
# [0, 1], and returns the scalar to minimise. A new objective is one function and one entry, never a new model
# (disentanglement_lib's regularizer hook).


def beta_elbo(terms: dict[str, torch.Tensor], beta: float, cfg=None, progress: float = 0.0) -> torch.Tensor:
    """The beta-VAE loss (Higgins et al. 2017): mean over the batch of recon + beta * KL, in nats."""
    return (terms["recon"] + beta * terms["kl"]).mean()


def free_bits(terms, beta, cfg, progress=0.0) -> torch.Tensor:
    """Free bits (Kingma et al. 2016, eq. 15): each latent dimension's batch-mean KL counts at least lambda nats,
    so the optimiser gains nothing by pushing a dimension below it (against posterior collapse). A hierarchical
    model floors each group's KL instead (the paper's groups of latents)."""
    kl_d = terms["kl_per_group" if "kl_per_group" in terms else "kl_per_dim"].mean(0)
    return terms["recon"].mean() + beta * torch.clamp(kl_d, min=cfg.free_bits).sum()


def capacity(terms, beta, cfg, progress=0.0) -> torch.Tensor:
    """Controlled capacity (Burgess et al. 2018, eq. 8): recon + gamma * |KL - C|, the target C raised linearly
    from 0 to capacity_max nats over training."""
    c = cfg.capacity_max * min(1.0, progress)
    return (terms["recon"] + cfg.capacity_gamma * (terms["kl"] - c).abs()).mean()


def _mss_log_weights(b: int, n_data: int, device) -> torch.Tensor:
    """log of the minibatch stratified sampling weights (Chen et al. 2018, appendix C.2): row i mixes q(z_i | x_j)
    over the batch with weight 1/N on its own x_i, (N - M)/(N M) on one other and 1/M on the rest (M = B - 1),
    so each row sums to 1 and estimates the aggregate posterior q(z) over a dataset of N images."""
    n, m = max(n_data, b), b - 1
    w = torch.full((b, b), 1.0 / m, device=device)
    idx = torch.arange(b, device=device)
    w[idx, idx] = 1.0 / n
    w[idx, (idx + 1) % b] = (n - m) / (n * m)
    return w.log()


def tc_decomposition(terms: dict[str, torch.Tensor], n_data: int) -> dict[str, torch.Tensor]:
    """The KL split of beta-TCVAE (Chen et al. 2018, eq. 2): index-code mutual information, total correlation and
    dimension-wise KL, per example, with q(z) and its marginals estimated over the minibatch by stratified
    sampling. The three sum to log q(z|x) - log p(z) at the same z (N(0, I) prior), the one-sample KL."""
    z, mu, logvar = terms["z"].float(), terms["mu"].float(), terms["logvar"].float()
    b = z.shape[0]
    if b < 2:
        raise ValueError("beta_tcvae needs batches of at least 2 images")
    # log q(z_i,d | x_j) for every pair (i, j) and dimension d: (B, B, D)
    pair = -0.5 * ((z[:, None] - mu[None]) ** 2 * torch.exp(-logvar[None]) + logvar[None] + LOG_2PI)
    log_w = _mss_log_weights(b, n_data, z.device)
    log_qz = torch.logsumexp(log_w + pair.sum(2), dim=1)
    log_prod_qzd = torch.logsumexp(log_w[..., None] + pair, dim=1).sum(1)
    log_qz_x = log_normal(z, mu, logvar)
    log_pz = log_normal(z)
    return {"mi": log_qz_x - log_qz, "tc": log_qz - log_prod_qzd, "dwkl": log_prod_qzd - log_pz}


def beta_tcvae(terms, beta, cfg, progress=0.0, n_data: int = 0) -> torch.Tensor:
    """beta-TCVAE: recon + alpha * MI + beta * TC + gamma * dimension-wise KL (beta = the scheduled KL weight, so
    --beta and --kl-schedule act on the total correlation, as in the paper)."""
    parts = tc_decomposition(terms, n_data)
    return (terms["recon"] + cfg.tc_alpha * parts["mi"] + beta * parts["tc"] + cfg.tc_gamma * parts["dwkl"]).mean()


def _dip_regularizer(cov: torch.Tensor, lambda_od: float, lambda_d: float) -> torch.Tensor:
    """DIP-VAE's moment matching (Kumar et al. 2018, eq. 6-7): off-diagonal covariance to 0, diagonal to 1."""
    diag = torch.diagonal(cov)
    return lambda_od * (cov - torch.diag(diag)).pow(2).sum() + lambda_d * (diag - 1).pow(2).sum()


def dip_vae_i(terms, beta, cfg, progress=0.0) -> torch.Tensor:
    """DIP-VAE-I (Kumar et al. 2018, eq. 6): the beta-ELBO plus matching Cov[mu(x)] over the batch to I;
    lambda_od = dip_lambda and lambda_d = 10 dip_lambda (disentanglement_lib's factor for DIP-VAE-I)."""
    mu = terms["mu"].float()
    cov = torch.cov(mu.T, correction=0)
    return beta_elbo(terms, beta) + _dip_regularizer(cov, cfg.dip_lambda, 10 * cfg.dip_lambda)


def dip_vae_ii(terms, beta, cfg, progress=0.0) -> torch.Tensor:
    """DIP-VAE-II (Kumar et al. 2018, eq. 7): matches Cov_q(z) = Cov[mu(x)] + E[diag sigma^2(x)], the aggregate
    posterior's covariance, to I; lambda_od = lambda_d = dip_lambda."""
    mu, var = terms["mu"].float(), terms["logvar"].float().exp()
    cov = torch.cov(mu.T, correction=0) + torch.diag(var.mean(0))
    return beta_elbo(terms, beta) + _dip_regularizer(cov, cfg.dip_lambda, cfg.dip_lambda)


def factor_vae(terms, beta, cfg, progress=0.0) -> torch.Tensor:
    """FactorVAE (Kim & Mnih 2018, eq. 2): the beta-ELBO plus factor_gamma times the total correlation, estimated
    by the density-ratio trick as the critic's logit log D(z) / (1 - D(z)) (`tc`, put in the terms by the trainer
    from its TCCritic; the critic has its own optimizer)."""
    return beta_elbo(terms, beta) + cfg.factor_gamma * terms["tc"].mean()


def iwae(terms, beta, cfg, progress=0.0) -> torch.Tensor:
    """The importance-weighted bound (Burda et al. 2016, eq. 8) over K = train_samples draws per image, negated:
    -log (1/K) sum_k p(x|z_k) p(z_k)^beta / q(z_k|x)^beta, where beta (the scheduled KL weight) is 1 for the paper's
    bound. K = 1 is the beta-ELBO."""
    log_w = terms["log_px"] + beta * terms["log_ratio"]
    return -(torch.logsumexp(log_w, dim=1) - math.log(log_w.shape[1])).mean()


class TCCritic(nn.Module):
    """FactorVAE's discriminator: tells codes z ~ q(z) from codes whose dimensions were shuffled across the batch
    (samples of prod_j q(z_j)). Kim & Mnih use 6 x 1000 units; 3 x 256 keeps a CPU step cheap at 10 dimensions."""

    def __init__(self, latent_dim: int, hidden: int = 256, layers: int = 3):
        super().__init__()
        dims = [latent_dim] + [hidden] * layers
        net: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            net += [nn.Linear(a, b), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*net, nn.Linear(hidden, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The logit of 'z came from q(z)': per example, the total correlation's density-ratio estimate."""
        return self.net(z).squeeze(1)

    def loss(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Binary cross-entropy on the batch's codes (label 1) and their dimension-wise shuffle (label 0, Kim &
        Mnih's algorithm 2; here from the same batch, as disentanglement_lib does)."""
        order = torch.rand(z.shape, generator=generator, device=z.device).argsort(0)
        z_perm = torch.gather(z, 0, order)
        return F.softplus(-self(z)).mean() + F.softplus(self(z_perm)).mean()


@dataclass(frozen=True)
class Objective:
    """An objective and what the rest of vaelab must know about it: the trainer, the config's checks, the stacked
    trainer and the findings read these facts here, so a new objective is this one entry (and its test)."""

    loss: Callable[..., torch.Tensor]  # (terms, beta, cfg, progress[, n_data]) -> the scalar to minimise
    main_weight: str = "beta"  # the config field a study sweeps for it (Locatello et al. 2019, table 2)
    needs_critic: bool = False  # trains a TCCritic beside the model (the trainer makes and steps it)
    needs_gaussian_code: bool = False  # reads a flat Gaussian code (mu, logvar, z) under the factorised N(0, I) prior
    needs_data_size: bool = False  # also gets the training set's size (minibatch-weighted sampling)
    hierarchical: bool = False  # works with the hierarchical model's per-group terms
    stackable: bool = False  # vaelab.training.multirun's stacked step can train it
    samples: str = ""  # the config field with the posterior draws per image it reads (the model's k-draw terms)

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self.loss(*args, **kwargs)


OBJECTIVES: dict[str, Objective | Callable[..., torch.Tensor]] = {
    "elbo": Objective(beta_elbo, hierarchical=True, stackable=True),
    "free_bits": Objective(free_bits, "free_bits", needs_gaussian_code=True, hierarchical=True),
    "capacity": Objective(capacity, "capacity_max", hierarchical=True),
    "beta_tcvae": Objective(beta_tcvae, needs_gaussian_code=True, needs_data_size=True),
    "factor_vae": Objective(factor_vae, "factor_gamma", needs_critic=True, needs_gaussian_code=True),
    "dip_vae_i": Objective(dip_vae_i, "dip_lambda", needs_gaussian_code=True),
    "dip_vae_ii": Objective(dip_vae_ii, "dip_lambda", needs_gaussian_code=True),
    "iwae": Objective(iwae, "train_samples", samples="train_samples"),
}


def draws(cfg) -> dict:
    """The keyword a model's forward takes for the configured objective: {"k": K} for one that reads K draws per
    image (iwae), else nothing (the one-draw terms)."""
    entry = objective_entry(getattr(cfg, "objective", "elbo"))
    return {"k": getattr(cfg, entry.samples)} if entry.samples else {}


def objective_entry(name: str) -> Objective:
    """The registry's entry; a bare function registered by a user is an objective with the default facts."""
    entry = OBJECTIVES[name]
    return entry if isinstance(entry, Objective) else Objective(entry)


def perceptual_term(features, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """DFC-VAE's feature-perceptual term (Hou et al. 2017, eq. 5), per example: the squared distance between a fixed
    network's features of the image and of its reconstruction (here the reference classifier's pooled features)."""
    with torch.no_grad():
        target = features(x.float() / 255.0)
    return (features(x_hat) - target).pow(2).flatten(1).sum(1)


def objective(
    terms: dict[str, torch.Tensor], beta: float, cfg=None, progress: float = 0.0, n_data: int = 0
) -> torch.Tensor:
    """The configured objective (the beta-ELBO when no config is given), plus perceptual_weight times the
    perceptual term when the trainer computed one. That sum is no likelihood bound: reports quote bits/dim from
    the likelihood terms alone."""
    entry = objective_entry(getattr(cfg, "objective", "elbo") if cfg is not None else "elbo")
    if entry.needs_data_size:
        loss = entry(terms, beta, cfg, progress, n_data=n_data)
    else:
        loss = entry(terms, beta, cfg, progress)
    if "perceptual" in terms:
        loss = loss + cfg.perceptual_weight * terms["perceptual"].mean()
    return loss


def bits_per_dim(nats: torch.Tensor | float, n_dims: int) -> torch.Tensor | float:
    return nats / (n_dims * math.log(2))
