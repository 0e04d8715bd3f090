"""The VAE: encoder -> posterior -> prior -> decoder -> likelihood, importance log-weights and named terms."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from vaelab.models.losses import kl_per_dim, make_likelihood
from vaelab.models.nets import ARCHS, INITS, ImageModel
from vaelab.models.posteriors import POSTERIORS
from vaelab.models.priors import PRIORS, VampPrior

if TYPE_CHECKING:  # a config builds a model; the model only reads it
    from vaelab.runs.config import TrainConfig

# Checkpoints written before the posterior became a part kept its layers on the VAE itself.
_LEGACY_KEYS = ("to_mu.", "to_logvar.", "to_context.", "flow.")


class VAE(ImageModel):
    """encoder -> posterior q(z|x) -> prior p(z) -> decoder -> likelihood p(x|z), each from its registry
    (ARCHS, POSTERIORS, PRIORS, losses.LIKELIHOODS).

    forward() returns named per-example terms; the trainer decides how to weight them (beta lives there).
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        latent_dim: int,
        arch: str = "conv",
        likelihood: str = "discretized_logistic",
        *,  # the parts beyond these four by keyword
        gaussian_sigma: float = 0.0,
        num_classes: int = 0,
        prior: str = "standard",
        prior_components: int = 10,
        posterior: str = "gaussian",
        flow_steps: int = 2,
        flow_hidden: int = 128,
        width: int = 64,
        depth: int = 2,
        components: int = 10,
        init: str = "torch",
    ):
        super().__init__()
        self.shape, self.latent_dim, self.num_classes = tuple(shape), latent_dim, num_classes
        net = ARCHS[arch]
        size = dict(width=width, depth=depth) if net.sized else {}
        self.likelihood = make_likelihood(likelihood, gaussian_sigma, components)
        self.encoder = net.encoder(self.shape, n_cond=num_classes, **size)
        self.posterior = POSTERIORS[posterior](self.encoder.out_dim, latent_dim, flow_steps, flow_hidden)
        self.decoder = net.decoder(
            self.shape, latent_dim + num_classes, self.likelihood.channels(self.shape[0]), **size
        )
        if INITS[init] is not None:  # before the prior: a VampPrior's pseudo-inputs keep their own initialisation
            for part in (self.encoder, self.posterior, self.decoder):
                INITS[init](part)
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
    def from_config(cls, cfg: TrainConfig, shape: tuple[int, int, int], num_classes: int = 10) -> VAE:
        return cls(
            shape,
            cfg.latent_dim,
            cfg.net,
            cfg.likelihood,
            gaussian_sigma=cfg.gaussian_sigma,
            num_classes=num_classes if cfg.conditional else 0,
            prior=cfg.prior,
            prior_components=cfg.prior_components,
            posterior=cfg.posterior,
            flow_steps=cfg.flow_steps,
            flow_hidden=cfg.flow_hidden,
            width=cfg.width,
            depth=cfg.depth,
            components=cfg.likelihood_components,
            init=cfg.init,
        )

    @property
    def analytic_kl(self) -> bool:
        """KL(q || p) in closed form, also per dimension: a Gaussian posterior and the standard prior."""
        return self.prior.analytic_kl and self.posterior.analytic_kl

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

    def posterior_sample(
        self, x: torch.Tensor, y: torch.Tensor | None, k: int | None = None, eps: torch.Tensor | None = None
    ):
        """z ~ q(z|x) with its log-density, by reparameterisation: k=None gives (B, D), else (B, k, D).
        Returns (z, log_q, mu, logvar) with mu, logvar those of the Gaussian the flow (if any) starts from."""
        h = self.features(x, y)
        # a posterior added by a user may take (h, k) only: eps is passed when a caller draws it (multirun)
        return self.posterior.rsample(h, k) if eps is None else self.posterior.rsample(h, k, eps)

    def encode_float(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Intensities in [0, 1] -> (mu, logvar) of the base Gaussian; the VampPrior's pseudo-inputs go through here."""
        return self.posterior.gaussian(self.encoder(x, self._cond(y)))

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """z -> the likelihood's parameters."""
        cond = self._cond(y)
        return self.decoder(z if cond is None else torch.cat([z, cond], 1))

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, eps: torch.Tensor | None = None, k: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Named per-example terms of the ELBO. KL(q || p) is analytic where the prior allows it (N(0, I); then
        also per dimension, `kl_per_dim`), else the one-sample estimate log q(z|x) - log p(z) at the same z.
        `eps` (B, D): the posterior's standard-normal noise, when the caller draws it. With `k`, K draws per image
        instead (the IWAE objective): `log_px` and `log_ratio` (B, K), log p(x|z) and log p(z) - log q(z|x) of each,
        recon and kl their means over the draws, mu and logvar the posterior's, z and params the first draw's."""
        if k is not None:
            return self._k_terms(x, y, k)
        z, log_q, mu, logvar = self.posterior_sample(x, y, eps=eps)
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

    def _k_terms(self, x: torch.Tensor, y: torch.Tensor | None, k: int) -> dict[str, torch.Tensor]:
        h = self.features(x, y)
        log_px, log_ratio, z, params, mu, logvar = self._draws(h, x, y, k)
        recon, kl = -log_px.mean(1), -log_ratio.mean(1)
        terms = dict(mu=mu, logvar=logvar, z=z[:, 0], params=params[:, 0], recon=recon, kl=kl, elbo=-(recon + kl))
        return {**terms, "log_px": log_px, "log_ratio": log_ratio}

    def _draws(self, h: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None, k: int) -> tuple:
        """K posterior draws per image from the encoder's features h: (log p(x|z), log p(z) - log q(z|x)) each (B, K),
        the draws z (B, K, D), the decoder's params (B, K, ...), and the base Gaussian's mu and logvar."""
        b = x.shape[0]
        z, log_q, mu, logvar = self.posterior.rsample(h, k)
        yf = y.repeat_interleave(k) if y is not None else None
        params = self.decode(z.reshape(b * k, self.latent_dim), yf).float()
        log_px = self.likelihood.log_prob(params, x.repeat_interleave(k, dim=0)).view(b, k)
        log_ratio = self.prior.log_prob(z.float()) - log_q
        return log_px, log_ratio, z, params.view(b, k, *params.shape[1:]), mu, logvar

    def log_weights(self, x: torch.Tensor, y: torch.Tensor | None, k: int, max_batch: int = 4096) -> torch.Tensor:
        """K importance log-weights per image, log p(x|z) + log p(z) - log q(z|x) with z ~ q(z|x): shape (B, K).
        The IWAE bound is their log-mean-exp (Burda et al. 2016, eq. 8); K = 1 gives the Monte-Carlo ELBO."""
        b = x.shape[0]
        log_w = torch.empty(b, k, device=x.device)
        chunk = max(1, max_batch // b)
        h = self.features(x, y)  # the encoder runs once; only the posterior's draws repeat per chunk
        for s in range(0, k, chunk):
            kk = min(chunk, k - s)
            log_px, log_ratio = self._draws(h, x, y, kk)[:2]
            log_w[:, s : s + kk] = log_px + log_ratio
        return log_w

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decode the posterior mean: the deterministic reconstruction in [0, 1]."""
        mu, _ = self.encode(x, y)
        return self.likelihood.mean(self.decode(mu, y).float())
